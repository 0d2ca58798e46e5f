/**
 * The generation of a sharpening iteration on several cores. The wasm
 * backend runs on one core in Node, and some 95% of an RLHF iteration's
 * network evaluations are generation: the online samples (DDIM 50, CFG 5)
 * and the n paths with their continuation to t = 0. The pool splits both
 * by batch item over `threads` threads, the main thread counting as one:
 * the main thread computes its shard while each worker
 * ({@link GenerationWorker}) computes one other on a replica of the policy.
 *
 * Every random draw stays on the run's generator in the main thread, in the
 * one-thread order (the caller draws, the pool only computes), and eta 0
 * DDIM is deterministic given its noise, so the result is the one-thread
 * result row for row (tested) and `--resume` is unchanged. A job carries the
 * policy's current weights as one flat array (4.6 MB for the default model:
 * a few ms per call against seconds of generation).
 *
 * The same threads differentiate the image-level objectives' micro-batch
 * parts (`gradients`, used by `Optimizer.step` for parts with a
 * `PortablePart` form): the update is then one thread's up to the order in
 * which the parts' gradients are summed.
 *
 * @since 0.5.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Context, Effect, Layer } from "effect"
import { Worker } from "node:worker_threads"
import * as Schedule from "../diffusion/Schedule.ts"
import { defaultWorkers, workerExecArgv } from "./ParallelGenerate.ts"
import * as Denoiser from "../model/Denoiser.ts"
import * as GradientJobs from "../objective/GradientJobs.ts"
import * as PortablePart from "../objective/PortablePart.ts"
import { Backend, isGpu, usesWorkerThreads } from "../tensor/Backend.ts"
import * as HostRead from "../tensor/HostRead.ts"
import * as WasmHeap from "../tensor/WasmHeap.ts"
import * as GenerationJobs from "../trajectory/GenerationJobs.ts"
import { GenerationWorkerFailed, type GenerationError } from "../trajectory/GenerationJobs.ts"
import * as Trajectory from "../trajectory/Trajectory.ts"
import * as TrajectoryShards from "../trajectory/TrajectoryShards.ts"
import { flatten } from "./DataParallel.ts"
import type { Init, Job, Reply } from "./GenerationWorker.ts"

export { GenerationWorkerFailed } from "../trajectory/GenerationJobs.ts"
export type { GenerationError, SampleOptions } from "../trajectory/GenerationJobs.ts"
export type { RemoteGradients } from "../objective/GradientJobs.ts"

/**
 * Generation and gradient jobs on `threads` threads (see the module
 * comment). The tensors returned belong to the caller.
 *
 * @since 0.5.0
 */
export interface Pool extends GenerationJobs.Jobs, GradientJobs.Jobs {
  readonly threads: number
  /** Worker threads running now (0 after `close`). */
  readonly liveThreads: () => number
  /** Stop the worker threads. */
  readonly close: () => Promise<void>
}

/** The pool of one thread: everything computed here, exactly as before pools existed. */
export const inline: Pool = {
  ...GenerationJobs.inline,
  ...GradientJobs.inline,
  threads: 1,
  liveThreads: () => 0,
  close: () => Promise.resolve()
}

interface Thread {
  readonly worker: Worker
  readonly pending: Map<number, (r: Reply | GenerationError) => void>
}

/**
 * Start `threads - 1` worker threads for models of `config` on `backend`
 * (`worker`: the thread's script, a test may give one that fails). A thread
 * that dies fails its jobs with {@link GenerationWorkerFailed} and is started
 * again for the next job; one whose job is interrupted is stopped.
 *
 * @since 0.5.0
 */
export const make = (
  config: Denoiser.ModelConfig,
  threads: number,
  backend: string,
  worker: URL = new URL("./GenerationWorker.ts", import.meta.url)
): Pool => {
  if (threads <= 1 || !usesWorkerThreads(backend)) return inline
  const slots: Array<Thread | undefined> = new Array(threads - 1).fill(undefined)
  let nextId = 0
  const spawn = (i: number): Thread => {
    const init: Init = { backend: backend as Init["backend"], config }
    const thread: Thread = { worker: new Worker(worker, { workerData: init, execArgv: workerExecArgv() }), pending: new Map() }
    const failAll = (message: string) => {
      if (slots[i] === thread) slots[i] = undefined
      const waiting = [...thread.pending.values()]
      thread.pending.clear()
      for (const resume of waiting) resume(new GenerationWorkerFailed({ thread: i + 1, message }))
    }
    thread.worker.on("message", (m: Reply) => {
      const resume = thread.pending.get(m.id)
      thread.pending.delete(m.id)
      resume?.(m)
    })
    thread.worker.on("error", (e) => failAll(`generation worker ${i + 1} crashed: ${e.message}`))
    thread.worker.on("messageerror", (e) => failAll(`generation worker ${i + 1}: a message could not be read: ${e.message}`))
    thread.worker.on("exit", (code) => failAll(`generation worker ${i + 1} exited (code ${code})`))
    slots[i] = thread
    return thread
  }
  for (let i = 0; i < slots.length; i++) spawn(i)

  /** Post a job now; the Effect waits for its reply (interrupting it stops the thread). */
  const post = (i: number, job: Job): Effect.Effect<Reply, GenerationError> => {
    const thread = slots[i] ?? spawn(i)
    let settled: Reply | GenerationError | undefined
    let resume: ((r: Reply | GenerationError) => void) | undefined
    thread.pending.set(job.id, (r) => {
      settled = r
      resume?.(r)
    })
    thread.worker.postMessage(job)
    const toEffect = (r: Reply | GenerationError): Effect.Effect<Reply, GenerationError> =>
      r instanceof GenerationWorkerFailed || r instanceof WasmHeap.WasmHeapExhausted
        ? Effect.fail(r)
        : r.heap !== undefined
        ? Effect.fail(new WasmHeap.WasmHeapExhausted(r.heap))
        : r.error !== undefined
        ? Effect.fail(new GenerationWorkerFailed({ thread: i + 1, message: `generation worker ${i + 1}: ${r.error}` }))
        : Effect.succeed(r)
    return Effect.callback<Reply, GenerationError>((done) => {
      if (settled !== undefined) return done(toEffect(settled))
      resume = (r) => done(toEffect(r))
      // Interrupted (Ctrl-C): the thread cannot be stopped mid-job, so it is
      // terminated, and a fresh one is started for the next job.
      return Effect.sync(() => {
        if (thread.pending.delete(job.id)) {
          if (slots[i] === thread) slots[i] = undefined
          void thread.worker.terminate()
        }
      })
    })
  }

  /** Post every shard but the first to a worker, compute the first here (plain arrays), then collect. */
  const fanOut = <S, A>(
    shards: ReadonlyArray<S>,
    job: (s: S, id: number) => Job,
    here: (s: S) => Effect.Effect<A>,
    fromReply: (r: Reply) => A
  ): Effect.Effect<Array<A>, GenerationError> =>
    Effect.suspend(() => {
      const remote = shards.slice(1).map((s, i) => post(i, job(s, nextId++)))
      return Effect.flatMap(here(shards[0]), (mine) => Effect.map(Effect.all(remote, { concurrency: "unbounded" }), (replies) => [mine, ...replies.map(fromReply)]))
    })

  return {
    threads,
    sample: (model, prompts, xT, o) =>
      Effect.gen(function*() {
        const per = xT.length / prompts.length
        // Every row costs the same: contiguous shards of near-equal size.
        const count = Math.min(threads, prompts.length)
        const size = Math.floor(prompts.length / count)
        const extra = prompts.length % count
        const parts = Array.from({ length: count }, (_, k) => {
          const start = k * size + Math.min(k, extra)
          return { start, end: start + size + (k < extra ? 1 : 0) }
        })
        if (parts.length <= 1) return yield* inline.sample(model, prompts, xT, o)
        const params = yield* flatten(model.params)
        return yield* fanOut(
          parts,
          (s, id) => ({ kind: "sample", id, params, prompts: prompts.slice(s.start, s.end), xT: xT.slice(s.start * per, s.end * per), steps: o.steps, cfg: o.cfg }),
          (s) => HostRead.consumeFloat32(() => GenerationJobs.sampleHere(model, prompts.slice(s.start, s.end), xT.subarray(s.start * per, s.end * per), o)),
          (r) => r.x0!
        ).pipe(Effect.map((arrays) => {
          const out = new Float32Array(xT.length)
          arrays.forEach((a, k) => out.set(a, parts[k].start * per))
          return tf.tensor(out, [prompts.length, ...Denoiser.sampleShape(model.config)], "float32")
        }))
      }),
    trajectories: (model, x0, prompts, draws, o) =>
      Effect.gen(function*() {
        const schedule = Schedule.make(model.config.schedule)
        const items = TrajectoryShards.partition(draws.itemT0, threads, o, schedule.trainSteps)
        if (items.length <= 1) return yield* inline.trajectories(model, x0, prompts, draws, o)
        const [whole, params] = yield* Effect.all([
          Effect.map(HostRead.float32(x0), (data) => ({ x0: data, prompts, draws })),
          flatten(model.params)
        ], { concurrency: "unbounded" })
        return yield* fanOut(
          items.map((its) => ({ items: its, ...TrajectoryShards.shard(whole, its, o.n) })),
          (s, id) => ({ kind: "trajectories", id, params, x0: s.x0, prompts: s.prompts, draws: s.draws, options: o }),
          (s) =>
            Effect.acquireUseRelease(
              Effect.sync(() => {
                const x = tf.tensor(s.x0, [s.items.length, ...x0.shape.slice(1)], "float32")
                try {
                  return Trajectory.fromDraws(model, schedule, x, s.prompts, s.draws, o)
                } finally {
                  x.dispose()
                }
              }),
              TrajectoryShards.toData,
              (t) => Effect.sync(() => Trajectory.dispose(t))
            ),
          (r) => r.trajectories!
        ).pipe(Effect.map((data) => TrajectoryShards.fromData(TrajectoryShards.merge(data.map((d, k) => ({ items: items[k], data: d })), prompts.length))))
      }),
    gradients: (model, groups, here) =>
      Effect.gen(function*() {
        if (groups.length > slots.length) return yield* Effect.die(new RangeError(`${groups.length} gradient groups for ${slots.length} worker threads`))
        const params = yield* flatten(model.params)
        const remote = groups.map((parts, i) => post(i, { kind: "gradients", id: nextId++, params, parts }))
        const mine = here()
        const replies = yield* Effect.all(remote, { concurrency: "unbounded" })
        return { here: mine, remote: replies.map((r) => ({ value: r.value!, grads: r.grads!, present: r.present! })) }
      }),
    errors: (model, inputs) =>
      Effect.gen(function*() {
        // Set k on thread k mod threads (thread 0 is this one).
        const shards = Array.from({ length: Math.min(threads, inputs.length) }, (_, s) => inputs.flatMap((p, k) => (k % threads === s ? [{ p, k }] : [])))
        if (shards.length <= 1) return yield* inline.errors(model, inputs)
        const params = yield* flatten(model.params)
        return yield* fanOut(
          shards,
          (s, id) => ({ kind: "errors", id, params, inputs: s.map((e) => e.p) }),
          (s) => Effect.forEach(s, (e) => PortablePart.errorsOf(model, e.p)),
          (r) => [...r.errors!]
        ).pipe(Effect.map((results) => {
          const out = new Array<Float32Array>(inputs.length)
          results.forEach((arrays, s) => shards[s].forEach((e, j) => (out[e.k] = arrays[j])))
          return out
        }))
      }),
    liveThreads: () => slots.filter((t) => t !== undefined).length,
    close: async () => {
      const running = slots.filter((t) => t !== undefined)
      slots.fill(undefined)
      await Promise.all(running.map((t) => t.worker.terminate()))
    }
  }
}

/**
 * The generation pool of a sharpening run: the online samples
 * (`BatchSource.online`) and the trajectories (`TrajectoryGenerator.layer`)
 * use it when it is provided, else they compute in this thread.
 *
 * @since 0.5.0
 */
export class GenerationPool extends Context.Service<GenerationPool, Pool>()("sharpen/parallel/GenerationPool") {
  /**
   * `threads` threads for the policy (the main thread counts as one; 1: no
   * worker threads), released with the layer's scope (no thread outlives
   * the run, also on interruption).
   */
  static readonly layer = (threads: number | "auto") =>
    Layer.effect(
      GenerationPool,
      Effect.gen(function*() {
        const { model } = yield* Denoiser.Denoiser
        const backend = yield* Backend
        const count = threads === "auto" ? (usesWorkerThreads(backend.name) ? defaultWorkers() : 1) : threads
        if (count > 1 && !usesWorkerThreads(backend.name)) {
          yield* Effect.logWarning(
            `--threads ${count} on ${backend.name}: running with 1, since ${isGpu(backend.name) ? "each worker thread would open the GPU and fight the others over it; the iteration's batches run in this process" : "native TensorFlow is multi-threaded itself"}`
          )
        }
        return yield* Effect.acquireRelease(
          Effect.sync(() => make(model.config, count, backend.name)),
          (pool) => Effect.promise(() => pool.close())
        )
      })
    ).pipe(Layer.flatMap((context) => {
      const pool = Context.get(context, GenerationPool)
      return Layer.mergeAll(
        Layer.succeed(GenerationPool, pool),
        Layer.succeed(GenerationJobs.GenerationJobs, pool),
        Layer.succeed(GradientJobs.GradientJobs, pool)
      )
    }))
}
