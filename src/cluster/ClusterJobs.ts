/**
 * The trainer's side: a transport of the job protocol (`JobThreads.Threads`)
 * whose "threads" are the runners registered in runner storage, so that
 * `GenerationPool.fromThreads` / `fromTransport` provide `GenerationJobs`
 * and `GradientJobs` over them exactly as over worker threads. The trainer
 * counts as one (it computes its own shard while the runners compute
 * theirs), and every random draw stays in it: the jobs carry the weights
 * and the draws, so a run over N runners gives the one-thread result up to
 * the order of float sums.
 *
 * The trainer is an `effect/cluster` client (client-only sharding: it owns
 * no shards). At start it waits for runners in the storage (at least
 * `runners`, within `connectTimeout`), and picks one entity id per runner:
 * an id whose shard the cluster's hash ring (`HashRing`, as `Sharding`
 * computes it) gives to that runner, so that job k goes to runner k. It
 * then says `Hello` to each (the model config, the package version, the
 * shared secret), and fails with `RunnerRefused` if one refuses, or
 * `ClusterUnavailable` naming the storage if none answers in time. With a
 * `jobTimeout`, a runner that does not answer a job in time (hung) is
 * dropped and its job sent to the next runner left.
 *
 * A runner killed mid-job: its shards move to the others, and
 * `effect/cluster` sends its unanswered jobs there (jobs are pure, so the
 * result is unchanged). The weights go to a runner once per version (a
 * content hash; the runner caches a few). Not yet (docs/scaling.md): the
 * split growing when runners join (the set is fixed when the trainer
 * connects).
 *
 * @since 0.8.0
 */
import { NodeClusterSocket } from "@effect/platform-node"
import { Cause, Context, Deferred, Duration, Effect, Equal, Exit, Fiber, HashRing, Layer, Option, Schema, type Scope } from "effect"
import { EntityId, MessageStorage, type Runner, type RunnerAddress, Runners, RunnerStorage, Sharding, ShardingConfig, SocketRunner, SqlRunnerStorage } from "effect/cluster"
import { RpcSerialization } from "effect/rpc"
import * as Denoiser from "../model/Denoiser.ts"
import * as GenerationPool from "../parallel/GenerationPool.ts"
import * as JobThreads from "../parallel/JobThreads.ts"
import type * as WasmHeap from "../tensor/WasmHeap.ts"
import { type GenerationError, GenerationWorkerFailed } from "../trajectory/GenerationJobs.ts"
import { JobEntity, packageVersion, type RunnerInfo, RunnerRefused, secretHeader, weightsDigest, weightsHeader, weightsNotCached } from "./JobEntity.ts"
import { maxMessageBytes, noModel, secretFromEnv, shardingTiming } from "./Runner.ts"
import * as Storage from "./Storage.ts"
import type { StorageUnsupported } from "./Storage.ts"

/**
 * No runner could be reached: none registered (and healthy) in the storage,
 * or none answered within the connect timeout.
 *
 * @since 0.8.0
 */
export class ClusterUnavailable extends Schema.TaggedError<ClusterUnavailable>()("ClusterUnavailable", {
  storage: Schema.String,
  message: Schema.String
}) {}

export interface Options {
  /** Runner storage URL (`sqlite:PATH`), as the runners were given. */
  readonly storage: string
  /** Wait for at least this many runners (default 1). */
  readonly runners?: number | undefined
  /** How long to wait for them and their `Hello` (default 30 s). */
  readonly connectTimeout?: Duration.Input | undefined
  /** The shared secret (default: `SHARPEN_CLUSTER_SECRET`). */
  readonly secret?: string | undefined
  /**
   * A job not answered within this is taken from its runner, which is
   * dropped from the run (reported in a warning and by `dropped`), and sent
   * to the next runner left (default: no timeout).
   */
  readonly jobTimeout?: Duration.Input | undefined
}

/** The transport over runners, and who they are. */
export interface Runners extends JobThreads.Threads {
  readonly runners: ReadonlyArray<RunnerInfo>
  /** The entity id that reaches each runner (job k + 1 goes to `entities[k]`). */
  readonly entities: ReadonlyArray<string>
  /** Runners dropped so far for a job that timed out (their jobs went to the others). */
  readonly dropped: () => ReadonlyArray<string>
  /** Jobs that carried the weights, per runner (the others named them by hash). */
  readonly weightsSent: () => ReadonlyArray<number>
}

type EntityClient = ReturnType<Effect.Success<typeof JobEntity.client>>

/** The entity client of one runner as a client of the job protocol, every call with the shared secret. */
/** Each array's content hash, computed once (a fan-out sends one weights array to every runner). */
const digests = new WeakMap<Float32Array, string>()
const digestOf = (params: Float32Array): string => {
  let d = digests.get(params)
  if (d === undefined) digests.set(params, d = weightsDigest(params))
  return d
}

/**
 * The entity client of one runner as a client of the job protocol, every
 * call with the shared secret. The weights go once per version: a job
 * names them by content hash, and carries them only when the runner has
 * not got them yet (or says it has not). `sent` counts the sends.
 */
const asJobClient = (client: EntityClient, secret: string | undefined, sent: { full: number }): JobThreads.Client => {
  const base: Record<string, string> = secret === undefined ? {} : { [secretHeader]: secret }
  const known = new Set<string>()
  const send = (tag: string, payload: unknown, headers: Record<string, string>) =>
    (client as unknown as Record<string, (p: unknown, o: unknown) => Effect.Effect<unknown, { readonly _tag: string }>>)[tag](payload, { headers })
  const call = (tag: string) => (payload: { readonly params?: unknown }) => {
    if (!(payload.params instanceof Float32Array) || payload.params.length === 0) return send(tag, payload, base)
    const hash = digestOf(payload.params)
    const headers = { ...base, [weightsHeader]: hash }
    const full = Effect.suspend(() => {
      sent.full++
      return send(tag, payload, headers)
    }).pipe(Effect.tap(() => Effect.sync(() => known.add(hash))))
    if (!known.has(hash)) return full
    return send(tag, { ...payload, params: new Float32Array(0) }, headers).pipe(
      Effect.catchIf(
        (e): boolean => e._tag === "JobFailed" && (e as unknown as { message: string }).message.includes(weightsNotCached),
        () => Effect.andThen(Effect.sync(() => known.delete(hash)), full)
      )
    )
  }
  return new Proxy({}, { get: (_, tag) => (typeof tag === "string" ? call(tag) : undefined) }) as JobThreads.Client
}

const messageOf = (e: unknown): string =>
  typeof e === "object" && e !== null
    ? `${"_tag" in e ? String(e._tag) : "error"}${"message" in e && e.message !== "" ? `: ${String(e.message)}` : ""}`
    : String(e)

/**
 * Connect to the runners of `options.storage` for a model of `config`
 * (see the module comment). The transport lives as long as the scope.
 *
 * @since 0.8.0
 */
export const connect = (
  config: Denoiser.ModelConfig,
  options: Options
): Effect.Effect<Runners, ClusterUnavailable | RunnerRefused, Sharding.Sharding | RunnerStorage.RunnerStorage | ShardingConfig.ShardingConfig | Scope.Scope> =>
  Effect.gen(function*() {
    const storage = Storage.redact(options.storage)
    const wanted = options.runners ?? 1
    const timeout = Duration.fromInputUnsafe(options.connectTimeout ?? Duration.seconds(30))
    const secret = options.secret ?? secretFromEnv()
    const runnerStorage = yield* RunnerStorage.RunnerStorage
    const sharding = yield* Sharding.Sharding
    const shardingConfig = yield* ShardingConfig.ShardingConfig
    const probe = Option.getOrElse(yield* Effect.serviceOption(SendProbe), (): SendProbe["Service"] => ({ count: Number.POSITIVE_INFINITY, waiters: [] }))
    const deadline = Date.now() + Duration.toMillis(timeout)
    const unavailable = (message: string) => new ClusterUnavailable({ storage, message: `runner storage ${storage}: ${message}` })

    // 1. Runners registered and healthy in the storage.
    let seen = "none registered"
    let healthy: Array<Runner.Runner> = []
    while (true) {
      const listed = yield* Effect.result(runnerStorage.getRunners)
      if (listed._tag === "Success") {
        healthy = listed.success.filter(([, ok]) => ok).map(([r]) => r).sort((a, b) => a.address.toString().localeCompare(b.address.toString()))
        seen = listed.success.length === 0 ? "none registered" : listed.success.map(([r, ok]) => `${r.address.host}:${r.address.port}${ok ? "" : " (unhealthy)"}`).join(", ")
      } else seen = `storage unreadable: ${messageOf(listed.failure)}`
      if (healthy.length >= wanted) break
      if (Date.now() > deadline) {
        return yield* unavailable(`${healthy.length} of ${wanted} runner(s) up within ${Duration.format(timeout)} (runners in the storage: ${seen})`)
      }
      yield* Effect.sleep(Duration.millis(250))
    }

    // 2. One entity id per runner, from the cluster's own shard assignment.
    const group = JobEntity.getShardGroup(EntityId.make("job"))
    const ring = HashRing.make<RunnerAddress.RunnerAddress>()
    for (const r of healthy) if (r.groups.includes(group)) HashRing.add(ring, r.address, { weight: r.weight })
    const assigned = HashRing.getShards(ring, shardingConfig.shardsPerGroup) ?? []
    const ids = healthy.map((r) => {
      for (let i = 0; i < 100_000; i++) {
        const id = `job-${i}`
        const shard = sharding.getShardId(EntityId.make(id), group)
        const owner = assigned[shard.id - 1]
        if (owner !== undefined && Equal.equals(owner, r.address)) return id
      }
      return undefined
    })
    const reachable = healthy.flatMap((r, k) => (ids[k] === undefined ? [] : [{ address: `${r.address.host}:${r.address.port}`, id: ids[k]! }]))
    if (reachable.length === 0) return yield* unavailable(`no shard of group ${group} is assigned to the runners ${seen}`)

    // 3. Hello: until each runner answers as itself (the trainer's view of the shards may lag a moment).
    const clientFor = yield* JobEntity.client
    const clients = reachable.map((r) => clientFor(r.id))
    const hello = (k: number): Effect.Effect<RunnerInfo, ClusterUnavailable | RunnerRefused> =>
      Effect.gen(function*() {
        const options = secret === undefined ? {} : { headers: { [secretHeader]: secret } }
        let last = "no answer"
        while (Date.now() <= deadline) {
          const left = Math.max(1, deadline - Date.now())
          const reply = yield* clients[k].Hello({ config, version: packageVersion }, options).pipe(Effect.timeoutOption(Duration.millis(Math.min(left, 5_000))), Effect.result)
          if (reply._tag === "Failure") {
            if (reply.failure._tag === "RunnerRefused") return yield* reply.failure
            last = messageOf(reply.failure)
          } else if (reply.success._tag === "Some") {
            if (reply.success.value.runner === reachable[k].address) return reply.success.value
            last = `answered by ${reply.success.value.runner}`
          } else last = "no answer"
          yield* Effect.sleep(Duration.millis(200))
        }
        return yield* unavailable(`runner ${reachable[k].address} did not answer within ${Duration.format(timeout)}: ${last}`)
      })
    const infos = yield* Effect.forEach(reachable, (_, k) => hello(k), { concurrency: "unbounded" })
    const sent = clients.map(() => ({ full: 0 }))
    const jobClients = clients.map((c, k) => asJobClient(c, secret, sent[k]))

    const fail = (thread: number) => (e: WasmHeap.WasmHeapExhausted | { readonly _tag: string }): GenerationError =>
      e._tag === "WasmHeapExhausted"
        ? (e as WasmHeap.WasmHeapExhausted)
        : e instanceof GenerationWorkerFailed
        ? e
        : new GenerationWorkerFailed({ thread, message: `runner ${infos[thread - 1].runner} ${e._tag === "JobFailed" ? `failed: ${(e as unknown as { message: string }).message}` : messageOf(e)}` })
    // Runners dropped for a job that timed out (0-based); their jobs go to the next runner left.
    const dropped = new Set<number>()
    const jobTimeout = options.jobTimeout === undefined ? undefined : Duration.fromInputUnsafe(options.jobTimeout)
    const substitute = (k: number): number | undefined => {
      for (let i = 0; i < jobClients.length; i++) if (!dropped.has((k + i) % jobClients.length)) return (k + i) % jobClients.length
      return undefined
    }
    // A job that reached a runner without a replica (one that joined, or came back, and took
    // this entity's shard): say Hello to it through the same entity id, and send the job again.
    const helloAgain = (k: number) =>
      clients[k].Hello({ config, version: packageVersion }, secret === undefined ? {} : { headers: { [secretHeader]: secret } }).pipe(
        Effect.tap((info) => Effect.logInfo(`runner ${info.runner} joined the run (for runner ${infos[k].runner}'s jobs)`)),
        Effect.mapError((e) => new GenerationWorkerFailed({ thread: k + 1, message: `runner for ${infos[k].runner}'s jobs refused Hello: ${messageOf(e)}` }))
      )
    const once = <A>(k: number, job: JobThreads.Job<A>): Effect.Effect<A, GenerationError> =>
      job(jobClients[k]).pipe(
        Effect.catchIf(
          (e): boolean => e._tag === "JobFailed" && (e as unknown as { message: string }).message.endsWith(noModel),
          () => Effect.andThen(helloAgain(k), job(jobClients[k]))
        ),
        Effect.mapError(fail(k + 1))
      )
    const attempt = <A>(k: number, job: JobThreads.Job<A>): Effect.Effect<A, GenerationError> => {
      const run = once(k, job)
      if (jobTimeout === undefined) return run
      return Effect.gen(function*() {
        const fiber = yield* Effect.forkChild(run, { startImmediately: true })
        const done = yield* Fiber.await(fiber).pipe(Effect.timeoutOption(jobTimeout))
        if (done._tag === "Some") return yield* done.value
        // Hung: stop waiting for it (its interrupt is sent on the side), drop it, send the job on.
        yield* Effect.forkDetach(Fiber.interrupt(fiber))
        dropped.add(k)
        const next = substitute(k)
        const what = `runner ${infos[k].runner} did not answer a job within ${Duration.format(jobTimeout)}`
        if (next === undefined) return yield* new GenerationWorkerFailed({ thread: k + 1, message: `${what}, and no runner is left` })
        yield* Effect.logWarning(`${what}: dropped from the run; its job goes to runner ${infos[next].runner}`)
        return yield* attempt(next, job)
      })
    }
    const call = <A>(thread: number, job: JobThreads.Job<A>): Effect.Effect<A, GenerationError> =>
      thread < 1 || thread > jobClients.length
        ? Effect.die(new RangeError(`no runner ${thread} of ${jobClients.length}`))
        : Effect.suspend(() => attempt(substitute(thread - 1) ?? thread - 1, job))
    const fanOut = <H, E, A>(remote: ReadonlyArray<JobThreads.Job<A>>, here: Effect.Effect<H, E>) => {
      if (remote.length > jobClients.length) return Effect.die(new RangeError(`${remote.length} jobs for ${jobClients.length} runners`))
      const fibers: Array<Fiber.Fiber<A, GenerationError>> = []
      return Effect.gen(function*() {
        const target = probe.count + remote.length
        for (const [k, job] of remote.entries()) fibers.push(yield* Effect.forkChild(call(k + 1, job), { startImmediately: true }))
        // `here` holds this thread (synchronous kernels): wait until the requests are written
        // to their sockets first (at most 10 s), or the runners would wait for it.
        const until = Date.now() + 10_000
        while (probe.count < target && Date.now() < until && !fibers.every((f) => f.pollUnsafe() !== undefined)) {
          const next = Deferred.makeUnsafe<void>()
          probe.waiters.push(() => Deferred.doneUnsafe(next, Exit.void))
          yield* Deferred.await(next).pipe(Effect.timeoutOption(Duration.millis(50)))
        }
        const mine = yield* here
        const replies = yield* Effect.all(fibers.map(Fiber.join), { concurrency: "unbounded" })
        return [mine, replies] as const
      }).pipe(Effect.onError(() => Effect.forEach(fibers, Fiber.interrupt)))
    }
    return {
      threads: jobClients.length + 1,
      call,
      fanOut,
      liveThreads: () => jobClients.length - dropped.size,
      runners: infos,
      entities: reachable.map((r) => r.id),
      dropped: () => [...dropped].map((k) => infos[k].runner),
      weightsSent: () => sent.map((s) => s.full)
    } satisfies Runners
  })

/**
 * Requests written to the runners' sockets so far (a count, and who waits
 * for the next): a fan-out starts the trainer's own shard only once its
 * jobs are out.
 *
 * @since 0.8.0
 */
export class SendProbe extends Context.Service<SendProbe, { count: number; readonly waiters: Array<() => void> }>()("sharpen/cluster/SendProbe") {}

/** The socket client protocol, counting the requests written (`SendProbe`). */
const probedClientProtocol = Layer.effectContext(Effect.gen(function*() {
  const inner = yield* Runners.RpcClientProtocol
  const probe: SendProbe["Service"] = { count: 0, waiters: [] }
  const sent = () => {
    probe.count++
    for (const resume of probe.waiters.splice(0)) resume()
  }
  const protocol = Runners.RpcClientProtocol.of({
    codecFor: inner.codecFor,
    make: (address) =>
      Effect.map(inner.make(address), (p) => ({
        ...p,
        send: (clientId, request, transferables) => (request._tag === "Request" ? Effect.tap(p.send(clientId, request, transferables), () => Effect.sync(sent)) : p.send(clientId, request, transferables))
      }))
  })
  return Context.make(Runners.RpcClientProtocol, protocol).pipe(Context.add(SendProbe, probe))
})).pipe(Layer.provide(NodeClusterSocket.layerClientProtocol))

/**
 * The trainer's cluster client of `storage`: client-only sharding over TCP
 * sockets, its storage's SQL client.
 *
 * @since 0.8.0
 */
export const client = (storage: string) =>
  SocketRunner.layerClientOnly.pipe(
    Layer.provideMerge(probedClientProtocol),
    Layer.provide(RpcSerialization.layerSchemaBinary({ maxFrameSize: maxMessageBytes })),
    // Volatile messages only: nothing is stored by the trainer.
    Layer.provideMerge(MessageStorage.layerNoop),
    Layer.provideMerge(Layer.orDie(SqlRunnerStorage.layer)),
    Layer.provideMerge(ShardingConfig.layer(shardingTiming)),
    Layer.provide(Storage.sqlClient(storage))
  )

/**
 * The runners a run uses (its record names them).
 *
 * @since 0.8.0
 */
export class ClusterRunners extends Context.Service<ClusterRunners, ReadonlyArray<RunnerInfo>>()("sharpen/cluster/ClusterRunners") {}

/**
 * The job protocol's transport (`JobThreads`) over the runners of
 * `options.storage` for a model of `config`, and who they are
 * (`ClusterRunners`): what pretraining's `DataParallel` takes in place of
 * worker threads. A storage that cannot be used (a PostgreSQL server down)
 * is a `ClusterUnavailable` naming it, its password masked.
 *
 * @since 0.8.0
 */
export const transportLayer = (config: Denoiser.ModelConfig, options: Options) =>
  withClient(options, Effect.map(connect(config, options), (runners) => Context.make(JobThreads.JobThreads, runners).pipe(Context.add(ClusterRunners, runners.runners))))

const withClient = <R>(options: Options, build: Effect.Effect<Context.Context<JobThreads.JobThreads | ClusterRunners>, ClusterUnavailable | RunnerRefused, R>) =>
  Layer.effectContext(build).pipe(
    Layer.provide(client(options.storage)),
    // A storage that cannot be opened or read (a PostgreSQL server down, a bad SQLite file) fails
    // inside the cluster's layers (a defect there): named here, the URL's password masked.
    Layer.catchCause((cause) => {
      type E = ClusterUnavailable | RunnerRefused | StorageUnsupported
      const fail = (c: Cause.Cause<E>) => Layer.effectContext<JobThreads.JobThreads | ClusterRunners, E, never>(Effect.failCause(c))
      if (Cause.hasInterruptsOnly(cause) || cause.reasons.some((r) => r._tag === "Fail")) return fail(cause)
      const storage = Storage.redact(options.storage)
      return fail(Cause.fail(new ClusterUnavailable({ storage, message: `runner storage ${storage} could not be used: ${Storage.redact(messageOf(Cause.squash(cause)).split("\n")[0])}` })))
    })
  )

/**
 * `GenerationJobs` and `GradientJobs` (and `GenerationPool`) over the
 * runners of `options.storage`, for the `Denoiser`'s model: the same
 * services as `GenerationPool.layer(threads)`, sent to other processes.
 *
 * @since 0.8.0
 */
export const layer = (options: Options) => {
  const transport = withClient(options, Effect.gen(function*() {
    const { model } = yield* Denoiser.Denoiser
    const runners = yield* connect(model.config, options)
    return Context.make(JobThreads.JobThreads, runners).pipe(Context.add(ClusterRunners, runners.runners))
  }))
  return GenerationPool.GenerationPool.fromTransport.pipe(Layer.provideMerge(transport))
}
