/**
 * The transports of the job protocol ({@link JobProtocol}). `inline` is
 * this thread alone: the callers compute everything here, calling the
 * handlers directly. `workers` adds worker threads, each with its own tfjs
 * backend and model replica, served by `effect/rpc`'s worker protocol
 * (`RpcServer.layerProtocolWorkerRunner` in the thread, one
 * `RpcClient.layerProtocolWorker` per thread here, on
 * `@effect/platform-node`'s `NodeWorker`/`NodeWorkerRunner`). One client
 * per thread, so that a job goes to the thread its caller names and an
 * interrupted job can stop the very thread that runs it.
 *
 * A thread that fails its job or dies fails the call with
 * `GenerationWorkerFailed` (`WasmHeapExhausted` when its heap ran out),
 * never a hang, and a fresh thread takes the next job. A call interrupted
 * while its thread computes (Ctrl-C) terminates that thread at once,
 * rather than wait for the job's next step (`tensor/Steps`), which is how a
 * runner process, that cannot be terminated from here, stops. The threads
 * belong to the scope that made them.
 *
 * @since 0.7.0
 */
import { NodeWorker, NodeWorkerRunner } from "@effect/platform-node"
import { Context, Deferred, Effect, Exit, Fiber, Layer, Scope } from "effect"
import { RpcClient, type RpcClientError, type RpcGroup, RpcServer, RpcWorker } from "effect/rpc"
import type { Rpc } from "effect/rpc"
import * as os from "node:os"
import { Worker } from "node:worker_threads"
import * as Denoiser from "../model/Denoiser.ts"
import { Backend, isGpu, usesWorkerThreads } from "../tensor/Backend.ts"
import type * as WasmHeap from "../tensor/WasmHeap.ts"
import { type GenerationError, GenerationWorkerFailed } from "../trajectory/GenerationJobs.ts"
import { Init, type JobFailed, JobRpcs } from "./JobProtocol.ts"

/** Worker threads to use by default: one per core, at most 4 (memory), from SHARPEN_WORKERS if set. */
export const defaultWorkers = (): number => {
  const env = Number(process.env.SHARPEN_WORKERS)
  return Number.isInteger(env) && env > 0 ? env : Math.max(1, Math.min(4, os.availableParallelism()))
}

/** tsx's loader, so a worker can run TypeScript sources in any host (tsx, vitest). */
export const workerExecArgv = (): Array<string> => {
  try {
    return ["--import", import.meta.resolve("tsx")]
  } catch {
    return []
  }
}

export type Client = RpcClient.RpcClient<RpcGroup.Rpcs<typeof JobRpcs>, RpcClientError.RpcClientError>

/** A job on one thread: a call of the client, failing as the protocol's jobs fail. */
export type Job<A> = (client: Client) => Effect.Effect<A, WasmHeap.WasmHeapExhausted | JobFailed | RpcClientError.RpcClientError>

/**
 * @since 0.7.0
 */
export interface Threads {
  /**
   * Shares the work is spread over: this thread's and one per worker (1:
   * this thread only), or, where this thread computes none
   * (`computesHere` false), one per worker.
   */
  readonly threads: number
  /**
   * Whether this thread computes a share; absent: it does. A coordinating
   * transport (a trainer that only draws, sums and updates, its jobs on
   * runners) says false: every share of a call is then a job ({@link shares}).
   */
  readonly computesHere?: boolean | undefined
  /** Run a job on worker thread `thread` (1 to the workers' count). */
  readonly call: <A>(thread: number, job: Job<A>) => Effect.Effect<A, GenerationError>
  /**
   * Send `remote[k]` to worker thread k + 1, then run `here` on this thread
   * while they compute, then wait for their replies. Each job is posted
   * before `here` starts: `here` is synchronous work that holds this
   * thread, and a job still waiting to be sent would wait for it.
   */
  readonly fanOut: <H, E, A>(remote: ReadonlyArray<Job<A>>, here: Effect.Effect<H, E>) => Effect.Effect<readonly [H, Array<A>], E | GenerationError>
  /** Worker threads running now (0 once the scope closed). */
  readonly liveThreads: () => number
  /**
   * A transport whose threads can change (effect/cluster runners joining or
   * leaving) changes `threads` here and nowhere else. The training loop
   * calls it before each iteration (iteration `iteration`, 1-based), so that
   * every call of an iteration sees one split. Absent: the threads are fixed.
   */
  readonly refresh?: ((iteration: number) => Effect.Effect<void>) | undefined
}

/**
 * This thread alone.
 *
 * @since 0.7.0
 */
export const inline: Threads = {
  threads: 1,
  call: (thread) => Effect.die(new RangeError(`no worker thread ${thread}: the inline transport has none`)),
  fanOut: (remote, here) =>
    remote.length > 0 ? Effect.die(new RangeError(`${remote.length} jobs for the inline transport's 0 worker threads`)) : Effect.map(here, (h) => [h, []] as const),
  liveThreads: () => 0
}

/**
 * One result per share, in share order: share 0 computed here by `here`
 * while share k goes to worker thread k as `job(share, k)`, or, on a
 * transport that computes nothing here, share k to worker k + 1. One share
 * on a transport that computes here is computed here alone.
 *
 * @since 0.8.0
 */
export const shares = <S, A, E>(
  transport: Threads,
  items: ReadonlyArray<S>,
  job: (share: S) => Job<A>,
  here: (share: S) => Effect.Effect<A, E>
): Effect.Effect<Array<A>, E | GenerationError> => {
  if (transport.computesHere === false) return Effect.map(transport.fanOut(items.map(job), Effect.void), ([, theirs]) => theirs)
  if (items.length <= 1) return Effect.forEach(items, here)
  return Effect.map(transport.fanOut(items.slice(1).map(job), here(items[0])), ([mine, theirs]) => [mine, ...theirs])
}

/** A job on its way to a thread (not the protocol's own messages). */
const isRequest = (message: unknown): boolean =>
  Array.isArray(message) && typeof message[1] === "object" && message[1] !== null && (message[1] as { _tag?: unknown })._tag === "Request"

/** One worker thread: its current Worker, and why the last one ended. */
interface Slot {
  worker: Worker | undefined
  ended: string | undefined
  /** Resumed by the next message posted to the thread (a job sent). */
  posted: Array<() => void>
}

/**
 * `workers` worker threads for `init` (none when `workers` is 0), released
 * with the scope. `worker`: the thread's script (a test may give one that
 * fails).
 *
 * @since 0.7.0
 */
export const make = (
  init: Init,
  workers: number,
  options: { readonly worker?: URL } = {}
): Effect.Effect<Threads, never, Scope.Scope> =>
  Effect.gen(function*() {
    if (workers <= 0) return inline
    const script = options.worker ?? new URL("./JobWorker.ts", import.meta.url)
    const scope = yield* Effect.scope
    const slots: Array<Slot> = Array.from({ length: workers }, () => ({ worker: undefined, ended: undefined, posted: [] }))
    const spawn = (slot: Slot) => (): Worker => {
      let worker: Worker
      try {
        worker = new Worker(script, { execArgv: workerExecArgv() })
      } catch (e) {
        slot.ended = `could not start: ${e instanceof Error ? e.message : String(e)}`
        throw e
      }
      slot.worker = worker
      slot.ended = undefined
      // The worker protocol posts through the Worker: a job is on its way once this returns.
      const post = worker.postMessage.bind(worker)
      worker.postMessage = (...args: Parameters<Worker["postMessage"]>) => {
        post(...args)
        const [message] = args
        if (isRequest(message)) for (const resume of slot.posted.splice(0)) resume()
      }
      worker.on("error", (e) => (slot.ended ??= `crashed: ${e.message}`))
      worker.on("messageerror", (e) => (slot.ended ??= `a message could not be read: ${e.message}`))
      worker.on("exit", (code) => {
        slot.ended ??= `exited (code ${code})`
        if (slot.worker === worker) slot.worker = undefined
      })
      return worker
    }
    const terminate = (slot: Slot) => {
      const worker = slot.worker
      slot.worker = undefined
      if (worker !== undefined) void worker.terminate()
    }
    const clients = yield* Effect.forEach(slots, (slot) =>
      Effect.flatMap(
        Layer.buildWithScope(
          RpcClient.layerProtocolWorker({ size: 1, concurrency: 1 }).pipe(
            Layer.provide(NodeWorker.layer(spawn(slot))),
            Layer.provide(RpcWorker.layerInitialMessage(Init, Effect.succeed(init))),
            Layer.orDie
          ),
          scope
        ),
        (context) => Effect.provide(RpcClient.make(JobRpcs, { disableTracing: true }), context)
      ))
    // Added last, so run first: a busy thread is stopped now, not after the
    // worker protocol's grace period for a clean exit.
    yield* Scope.addFinalizer(scope, Effect.sync(() => slots.forEach(terminate)))
    // The threads start as the clients connect; wait until each is spawned,
    // so that `liveThreads` counts them from here on.
    while (slots.some((s) => s.worker === undefined && s.ended === undefined)) yield* Effect.yieldNow

    const fail = (thread: number, slot: Slot) => (e: WasmHeap.WasmHeapExhausted | JobFailed | RpcClientError.RpcClientError): GenerationError =>
      e._tag === "WasmHeapExhausted"
        ? e
        : new GenerationWorkerFailed({ thread, message: `worker thread ${thread} ${e._tag === "JobFailed" ? `failed: ${e.message}` : slot.ended ?? e.message}` })
    const call = <A>(thread: number, job: Job<A>): Effect.Effect<A, GenerationError> => {
      const slot = slots[thread - 1]
      if (slot === undefined) return Effect.die(new RangeError(`no worker thread ${thread} of ${workers}`))
      return job(clients[thread - 1]).pipe(
        Effect.mapError(fail(thread, slot)),
        Effect.onInterrupt(() => Effect.sync(() => terminate(slot)))
      )
    }
    const fanOut = <H, E, A>(remote: ReadonlyArray<Job<A>>, here: Effect.Effect<H, E>) => {
      if (remote.length > workers) return Effect.die(new RangeError(`${remote.length} jobs for ${workers} worker threads`))
      const fibers: Array<Fiber.Fiber<A, GenerationError>> = []
      return Effect.gen(function*() {
        for (const [k, job] of remote.entries()) {
          const sent = Deferred.makeUnsafe<void>()
          slots[k].posted.push(() => Deferred.doneUnsafe(sent, Exit.void))
          const fiber = yield* Effect.forkChild(call(k + 1, job), { startImmediately: true })
          fibers.push(fiber)
          // Posted, or failed before it could be (a dead thread).
          yield* Effect.raceFirst(Deferred.await(sent), Effect.asVoid(Fiber.await(fiber)))
        }
        const mine = yield* here
        const replies = yield* Effect.all(fibers.map(Fiber.join), { concurrency: "unbounded" })
        return [mine, replies] as const
      }).pipe(
        // A failed or interrupted fan-out stops the jobs still running.
        Effect.onError(() => Effect.forEach(fibers, Fiber.interrupt))
      )
    }
    return {
      threads: workers + 1,
      call,
      fanOut,
      liveThreads: () => slots.filter((s) => s.worker !== undefined).length
    }
  })

/**
 * The transport of a run's jobs.
 *
 * @since 0.7.0
 */
export class JobThreads extends Context.Service<JobThreads, Threads>()("sharpen/parallel/JobThreads") {
  /** This thread alone. */
  static readonly inline = Layer.succeed(JobThreads, inline)

  /** `workers` worker threads for `init`, stopped with the layer's scope. */
  static readonly workers = (init: Init, workers: number, options: { readonly worker?: URL } = {}) => Layer.effect(JobThreads, make(init, workers, options))

  /**
   * The transport of a run: `threads` threads for the `Denoiser`'s model on
   * the `Backend`, the main thread counting as one ("auto": one per core).
   * On a GPU or native backend, this thread alone whatever is asked, with a
   * warning when more were: each worker thread would open the device and
   * fight the others over it (`Backend.usesWorkerThreads`).
   */
  static readonly forRun = (threads: number | "auto") =>
    Layer.effect(
      JobThreads,
      Effect.gen(function*() {
        const { model } = yield* Denoiser.Denoiser
        const backend = yield* Backend
        const count = threads === "auto" ? (usesWorkerThreads(backend.name) ? defaultWorkers() : 1) : threads
        if (count > 1 && !usesWorkerThreads(backend.name)) {
          yield* Effect.logWarning(
            `--threads ${count} on ${backend.name}: running with 1, since ${isGpu(backend.name) ? "each worker thread would open the GPU and fight the others over it; the iteration's batches run in this process" : "native TensorFlow is multi-threaded itself"}`
          )
          return inline
        }
        return yield* make({ backend: backend.name as Init["backend"], config: model.config }, count - 1)
      })
    )
}

/**
 * Serve the job protocol in this worker thread with `handlers` (the
 * worker's entry; a test may serve other handlers).
 *
 * @since 0.7.0
 */
export const serve = (handlers: Layer.Layer<Rpc.ToHandler<RpcGroup.Rpcs<typeof JobRpcs>>, never, RpcServer.Protocol>): void => {
  // One job at a time: a job that awaits its reads must not see the next job's weights assigned under it.
  const server = RpcServer.layer(JobRpcs, { concurrency: 1, disableTracing: true }).pipe(
    Layer.provide(handlers),
    Layer.provide(RpcServer.layerProtocolWorkerRunner),
    Layer.provide(NodeWorkerRunner.layer)
  )
  Effect.runFork(Layer.launch(server).pipe(Effect.orDie))
}

