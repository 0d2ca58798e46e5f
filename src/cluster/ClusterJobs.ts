/**
 * The trainer's side: a transport of the job protocol (`JobThreads.Threads`)
 * whose "threads" are the runners registered in runner storage, so that
 * `GenerationPool.fromThreads` / `fromTransport` provide `GenerationJobs`
 * and `GradientJobs` over them exactly as over worker threads. The trainer
 * counts as one (it computes its own shard while the runners compute
 * theirs), unless it only coordinates (`coordinate`: every shard goes to a
 * runner, for a trainer on a machine that should not compute, or that
 * shares its cores with runners), and every random draw stays in it: the jobs carry the weights
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
 * The runner set may change between iterations: `refresh` (called by the
 * training loop before each iteration, `Sharpen.loop`) re-reads the
 * storage, says `Hello` to runners that appeared (waiting `joinWait` for a
 * first answer, then leaving it in the background for a later refresh),
 * reports and never uses one that refuses, drops runners gone from the
 * storage (or dropped for a timeout), and recomputes the entity ids for
 * the new ring. `threads` changes there and nowhere else, so each call of
 * an iteration sees one split; a fan-out keeps the split it started with.
 * As every draw stays in the trainer, a changed split changes only the
 * order of float sums. `used` (the `ClusterRunners` service) lists every
 * runner used.
 *
 * A runner killed mid-job: its shards move to the others, and
 * `effect/cluster` sends its unanswered jobs there (jobs are pure, so the
 * result is unchanged); it leaves the split at the next refresh after its
 * heartbeat lapsed. A runner that takes over an entity id mid-iteration
 * without a replica gets `Hello` through that id. The weights go to a
 * runner once per version (a content hash; the runner caches a few).
 *
 * @since 0.8.0
 */
import { NodeClusterSocket } from "@effect/platform-node"
import { Cause, Context, Deferred, Duration, Effect, Exit, Fiber, HashRing, Layer, Option, Schema, type Scope } from "effect"
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
  /**
   * The trainer computes no share: each iteration's generation, gradient
   * parts and reference errors are split over the runners alone (default:
   * the trainer computes one share beside them).
   */
  readonly coordinate?: boolean | undefined
}

/** The transport over runners, and who they are. */
export interface Runners extends JobThreads.Threads {
  /** The runners of the split now (job k + 1 goes to `runners[k]`); it changes only in `refresh`. */
  readonly runners: ReadonlyArray<RunnerInfo>
  /** The entity id that reaches each runner (job k + 1 goes to `entities[k]`). */
  readonly entities: ReadonlyArray<string>
  /** Runners dropped so far for a job that timed out (their jobs went to the others). */
  readonly dropped: () => ReadonlyArray<string>
  /** Jobs that carried the weights, per runner of `runners` (the others named them by hash). */
  readonly weightsSent: () => ReadonlyArray<number>
  /** Every runner the run has used, in the order they joined (the list grows; `ClusterRunners`). */
  readonly used: ReadonlyArray<RunnerInfo>
  /** Jobs answered so far through each runner's entity id, by address (every runner used). */
  readonly jobsDone: () => ReadonlyMap<string, number>
  /** Jobs out now (sent, not answered) through each runner's entity id, by address. */
  readonly inFlight: () => ReadonlyMap<string, number>
  /** The changes of the runner set so far: who joined, left or refused, at which iteration. */
  readonly changes: () => ReadonlyArray<Change>
  /** Re-read the runner storage and change the split (see the module comment); never fails. */
  readonly refresh: (iteration: number) => Effect.Effect<void>
}

/** A change of the runner set at a refresh. */
export interface Change {
  readonly iteration: number
  readonly runner: string
  readonly change: "joined" | "left" | "refused" | "no answer"
  readonly detail: string
}

type EntityClient = ReturnType<Effect.Success<typeof JobEntity.client>>

/** Each array's content hash, computed once (a fan-out sends one weights array to every runner). */
const digests = new WeakMap<Float32Array, string>()
const digestOf = (params: Float32Array): string => {
  let d = digests.get(params)
  if (d === undefined) digests.set(params, d = weightsDigest(params))
  return d
}

/** What the trainer keeps of one runner across changes of its entity id. */
interface Tally {
  /** Jobs that carried the weights. */
  full: number
  /** Jobs answered. */
  done: number
  /** Jobs out. */
  out: number
  /** The weight versions it has (by content hash). */
  readonly known: Set<string>
}

const tally = (): Tally => ({ full: 0, done: 0, out: 0, known: new Set() })

/**
 * The entity client of one runner as a client of the job protocol, every
 * call with the shared secret. The weights go once per version: a job
 * names them by content hash, and carries them only when the runner has
 * not got them yet (or says it has not). `t` counts the sends.
 */
const asJobClient = (client: EntityClient, secret: string | undefined, t: Tally): JobThreads.Client => {
  const base: Record<string, string> = secret === undefined ? {} : { [secretHeader]: secret }
  const known = t.known
  const send = (tag: string, payload: unknown, headers: Record<string, string>) =>
    (client as unknown as Record<string, (p: unknown, o: unknown) => Effect.Effect<unknown, { readonly _tag: string }>>)[tag](payload, { headers })
  const call = (tag: string) => (payload: { readonly params?: unknown }) => {
    if (!(payload.params instanceof Float32Array) || payload.params.length === 0) return send(tag, payload, base)
    const hash = digestOf(payload.params)
    const headers = { ...base, [weightsHeader]: hash }
    const full = Effect.suspend(() => {
      t.full++
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

const addressOf = (r: Runner.Runner) => `${r.address.host}:${r.address.port}`

/** One runner of the split: who it is, the entity id that reaches it now, its job client. */
interface Member {
  readonly info: RunnerInfo
  readonly address: string
  readonly id: string
  readonly client: EntityClient
  readonly jobs: JobThreads.Client
  readonly tally: Tally
}

/** How long a refresh waits for the `Hello` of runners that joined (it goes on in the background after). */
const joinWait = Duration.seconds(10)

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
    const coordinate = options.coordinate === true
    const timeout = Duration.fromInputUnsafe(options.connectTimeout ?? Duration.seconds(30))
    const secret = options.secret ?? secretFromEnv()
    const headers = secret === undefined ? {} : { headers: { [secretHeader]: secret } }
    const runnerStorage = yield* RunnerStorage.RunnerStorage
    const sharding = yield* Sharding.Sharding
    const shardingConfig = yield* ShardingConfig.ShardingConfig
    const scope = yield* Effect.scope
    const probe = Option.getOrElse(yield* Effect.serviceOption(SendProbe), (): SendProbe["Service"] => ({ count: Number.POSITIVE_INFINITY, waiters: [] }))
    const unavailable = (message: string) => new ClusterUnavailable({ storage, message: `runner storage ${storage}: ${message}` })

    // The runners registered and healthy in the storage (by address), and what it lists, in words.
    const listed = Effect.map(runnerStorage.getRunners, (all) => ({
      healthy: all.filter(([, ok]) => ok).map(([r]) => r).sort((a, b) => addressOf(a).localeCompare(addressOf(b))),
      seen: all.length === 0 ? "none registered" : all.map(([r, ok]) => `${addressOf(r)}${ok ? "" : " (unhealthy)"}`).join(", ")
    }))

    // One entity id per runner, from the cluster's own shard assignment over all the healthy runners.
    const group = JobEntity.getShardGroup(EntityId.make("job"))
    const idsFor = (healthy: ReadonlyArray<Runner.Runner>): Map<string, string> => {
      const ring = HashRing.make<RunnerAddress.RunnerAddress>()
      for (const r of healthy) if (r.groups.includes(group)) HashRing.add(ring, r.address, { weight: r.weight })
      const assigned = HashRing.getShards(ring, shardingConfig.shardsPerGroup) ?? []
      const ids = new Map<string, string>()
      for (let i = 0; i < 100_000 && ids.size < healthy.length; i++) {
        const id = `job-${i}`
        const owner = assigned[sharding.getShardId(EntityId.make(id), group).id - 1]
        if (owner === undefined) continue
        const address = `${owner.host}:${owner.port}`
        if (!ids.has(address)) ids.set(address, id)
      }
      return ids
    }
    const clientFor = yield* JobEntity.client

    // Hello until the runner answers as itself (the trainer's view of the shards may lag a moment).
    const greet = (address: string, id: string, within: Duration.Duration): Effect.Effect<RunnerInfo, ClusterUnavailable | RunnerRefused> =>
      Effect.gen(function*() {
        const deadline = Date.now() + Duration.toMillis(within)
        const client = clientFor(id)
        let last = "no answer"
        while (Date.now() <= deadline) {
          const left = Math.max(1, deadline - Date.now())
          const reply = yield* client.Hello({ config, version: packageVersion }, headers).pipe(Effect.timeoutOption(Duration.millis(Math.min(left, 5_000))), Effect.result)
          if (reply._tag === "Failure") {
            // Believed only from the runner addressed: while the trainer's view of the shards lags a
            // joining runner, its Hello can reach another runner, which may refuse for itself.
            if (reply.failure._tag === "RunnerRefused" && reply.failure.runner === address) return yield* reply.failure
            last = reply.failure._tag === "RunnerRefused" ? `refused by ${reply.failure.runner}, not by it` : messageOf(reply.failure)
          } else if (reply.success._tag === "Some") {
            if (reply.success.value.runner === address) return reply.success.value
            last = `answered by ${reply.success.value.runner}`
          } else last = "no answer"
          yield* Effect.sleep(Duration.millis(200))
        }
        return yield* unavailable(`runner ${address} did not answer within ${Duration.format(within)}: ${last}`)
      })

    const tallies = new Map<string, Tally>()
    const member = (info: RunnerInfo, address: string, id: string): Member => {
      let t = tallies.get(address)
      if (t === undefined) tallies.set(address, t = tally())
      const client = clientFor(id)
      return { info, address, id, client, jobs: asJobClient(client, secret, t), tally: t }
    }

    // 1. Runners registered and healthy in the storage.
    const deadline = Date.now() + Duration.toMillis(timeout)
    let seen = "none registered"
    let healthy: ReadonlyArray<Runner.Runner> = []
    while (true) {
      const found = yield* Effect.result(listed)
      if (found._tag === "Success") ({ healthy, seen } = found.success)
      else seen = `storage unreadable: ${messageOf(found.failure)}`
      if (healthy.length >= wanted) break
      if (Date.now() > deadline) {
        return yield* unavailable(`${healthy.length} of ${wanted} runner(s) up within ${Duration.format(timeout)} (runners in the storage: ${seen})`)
      }
      yield* Effect.sleep(Duration.millis(250))
    }

    // 2. One entity id per runner, so that job k goes to runner k.
    const firstIds = idsFor(healthy)
    const reachable = healthy.flatMap((r) => {
      const id = firstIds.get(addressOf(r))
      return id === undefined ? [] : [{ address: addressOf(r), id }]
    })
    if (reachable.length === 0) return yield* unavailable(`no shard of group ${group} is assigned to the runners ${seen}`)

    // 3. Hello to each.
    const infos = yield* Effect.forEach(reachable, (r) => greet(r.address, r.id, Duration.millis(Math.max(1, deadline - Date.now()))), { concurrency: "unbounded" })
    // The split now; replaced (never changed in place) by `refresh`, between iterations.
    let members: ReadonlyArray<Member> = reachable.map((r, k) => member(infos[k], r.address, r.id))
    const used: Array<RunnerInfo> = [...infos]
    const changes: Array<Change> = []
    // Runners dropped for a job that timed out, and runners that refused a Hello: not used again.
    const dropped = new Set<string>()
    const refused = new Set<string>()
    // Hellos of joining runners still going on (a refresh waits for them a while, then leaves them).
    const greetings = new Map<string, Fiber.Fiber<RunnerInfo, ClusterUnavailable | RunnerRefused>>()
    const tried = new Set<string>(reachable.map((r) => r.address))
    const answeredIn = new Map<string, number>()

    const fail = (m: Member, thread: number) => (e: WasmHeap.WasmHeapExhausted | { readonly _tag: string }): GenerationError =>
      e._tag === "WasmHeapExhausted"
        ? (e as WasmHeap.WasmHeapExhausted)
        : e instanceof GenerationWorkerFailed
        ? e
        : new GenerationWorkerFailed({ thread, message: `runner ${m.info.runner} ${e._tag === "JobFailed" ? `failed: ${(e as unknown as { message: string }).message}` : messageOf(e)}` })
    const jobTimeout = options.jobTimeout === undefined ? undefined : Duration.fromInputUnsafe(options.jobTimeout)
    // The runner that takes job k of a split: runner k, or the next one not dropped.
    const substitute = (split: ReadonlyArray<Member>, k: number): number | undefined => {
      for (let i = 0; i < split.length; i++) if (!dropped.has(split[(k + i) % split.length].address)) return (k + i) % split.length
      return undefined
    }
    // A job that reached a runner without a replica (one that joined, or came back, and took
    // this entity's shard): say Hello to it through the same entity id, and send the job again.
    const helloAgain = (m: Member, thread: number) =>
      m.client.Hello({ config, version: packageVersion }, headers).pipe(
        Effect.tap((info) => Effect.logInfo(`runner ${info.runner} joined the run (for runner ${m.info.runner}'s jobs)`)),
        Effect.mapError((e) => new GenerationWorkerFailed({ thread, message: `runner for ${m.info.runner}'s jobs refused Hello: ${messageOf(e)}` }))
      )
    const once = <A>(m: Member, thread: number, job: JobThreads.Job<A>): Effect.Effect<A, GenerationError> =>
      Effect.suspend(() => {
        m.tally.out++
        return job(m.jobs)
      }).pipe(
        Effect.catchIf(
          (e): boolean => e._tag === "JobFailed" && (e as unknown as { message: string }).message.endsWith(noModel),
          () => Effect.andThen(helloAgain(m, thread), job(m.jobs))
        ),
        Effect.tap(() => Effect.sync(() => m.tally.done++)),
        Effect.ensuring(Effect.sync(() => m.tally.out--)),
        Effect.mapError(fail(m, thread))
      )
    const attempt = <A>(split: ReadonlyArray<Member>, k: number, job: JobThreads.Job<A>): Effect.Effect<A, GenerationError> => {
      const run = once(split[k], k + 1, job)
      if (jobTimeout === undefined) return run
      return Effect.gen(function*() {
        const fiber = yield* Effect.forkChild(run, { startImmediately: true })
        const done = yield* Fiber.await(fiber).pipe(Effect.timeoutOption(jobTimeout))
        if (done._tag === "Some") return yield* done.value
        // Hung: stop waiting for it (its interrupt is sent on the side), drop it, send the job on.
        yield* Effect.forkDetach(Fiber.interrupt(fiber))
        dropped.add(split[k].address)
        const next = substitute(split, k)
        const what = `runner ${split[k].info.runner} did not answer a job within ${Duration.format(jobTimeout)}`
        if (next === undefined) return yield* new GenerationWorkerFailed({ thread: k + 1, message: `${what}, and no runner is left` })
        yield* Effect.logWarning(`${what}: dropped from the run; its job goes to runner ${split[next].info.runner}`)
        return yield* attempt(split, next, job)
      })
    }
    const callIn = <A>(split: ReadonlyArray<Member>, thread: number, job: JobThreads.Job<A>): Effect.Effect<A, GenerationError> =>
      thread < 1 || thread > split.length
        ? Effect.die(new RangeError(`no runner ${thread} of ${split.length}`))
        : Effect.suspend(() => attempt(split, substitute(split, thread - 1) ?? thread - 1, job))
    const fanOut = <H, E, A>(remote: ReadonlyArray<JobThreads.Job<A>>, here: Effect.Effect<H, E>) => {
      // The split of this call, whatever a refresh does meanwhile.
      const split = members
      if (remote.length > split.length) return Effect.die(new RangeError(`${remote.length} jobs for ${split.length} runners`))
      const fibers: Array<Fiber.Fiber<A, GenerationError>> = []
      return Effect.gen(function*() {
        const target = probe.count + remote.length
        for (const [k, job] of remote.entries()) fibers.push(yield* Effect.forkChild(callIn(split, k + 1, job), { startImmediately: true }))
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

    // Between iterations: the runners healthy in the storage now (less the dropped and the
    // refused) become the split. A joining runner gets Hello first (in the background past
    // `joinWait`, joining at a later refresh); the ids are recomputed for the new ring.
    const refresh = Effect.fn("ClusterJobs.refresh")(function*(iteration: number) {
      const found = yield* Effect.result(listed)
      if (found._tag === "Failure") {
        yield* Effect.logWarning(`runner storage ${storage} unreadable before iteration ${iteration}; the runners stay as they were: ${messageOf(found.failure)}`)
        return
      }
      const healthy = found.success.healthy
      const usable = healthy.filter((r) => !dropped.has(addressOf(r)) && !refused.has(addressOf(r)))
      const current = new Set(members.map((m) => m.address))
      const ids = idsFor(healthy)
      const joining = usable.filter((r) => !current.has(addressOf(r)) && ids.has(addressOf(r)))
      const fresh: Array<Fiber.Fiber<RunnerInfo, ClusterUnavailable | RunnerRefused>> = []
      for (const r of joining) {
        const address = addressOf(r)
        if (greetings.has(address)) continue
        const started = Date.now()
        const fiber = yield* Effect.forkIn(greet(address, ids.get(address)!, timeout).pipe(Effect.tap(() => Effect.sync(() => answeredIn.set(address, Date.now() - started)))), scope)
        greetings.set(address, fiber)
        // A runner's first Hello is waited for a while; one that did not answer before is not.
        if (!tried.has(address)) fresh.push(fiber)
        tried.add(address)
      }
      if (fresh.length > 0) yield* Effect.forEach(fresh, Fiber.await, { concurrency: "unbounded", discard: true }).pipe(Effect.timeoutOption(joinWait))
      const greeted = new Map<string, RunnerInfo>()
      for (const [address, fiber] of [...greetings]) {
        const exit = fiber.pollUnsafe()
        if (exit === undefined) continue
        greetings.delete(address)
        if (Exit.isSuccess(exit)) greeted.set(address, exit.value)
        else {
          const e = Cause.squash(exit.cause)
          const refusal = e instanceof RunnerRefused
          if (refusal) refused.add(address)
          const detail = refusal ? `refused: ${e.reason}; not used` : `${messageOf(e)}; tried again at the next iteration`
          changes.push({ iteration, runner: address, change: refusal ? "refused" : "no answer", detail })
          yield* Effect.logWarning(`runner ${address} did not join the run at iteration ${iteration}: ${detail}`)
        }
      }
      const next = usable.flatMap((r) => {
        const address = addressOf(r)
        const id = ids.get(address)
        const info = members.find((m) => m.address === address)?.info ?? greeted.get(address)
        return id === undefined || info === undefined ? [] : [member(info, address, id)]
      })
      const left = members.filter((m) => !next.some((n) => n.address === m.address))
      const joined = next.filter((n) => !current.has(n.address))
      const same = left.length === 0 && joined.length === 0 && next.every((n, k) => n.id === members[k].id)
      if (same) return
      members = next
      const split = coordinate
        ? `the batch is split over ${next.length} runner(s) (this process coordinates)`
        : `the batch is split over ${next.length + 1} (this process and ${next.length} runner(s))`
      for (const m of left) {
        const why = dropped.has(m.address) ? "dropped for a job timeout" : "gone from the runner storage"
        changes.push({ iteration, runner: m.info.runner, change: "left", detail: why })
        yield* Effect.logInfo(`runner ${m.info.runner} left the run at iteration ${iteration} (${why}); ${split}`)
      }
      for (const m of joined) {
        if (!used.some((u) => u.runner === m.info.runner)) used.push(m.info)
        const hello = answeredIn.get(m.address)
        changes.push({ iteration, runner: m.info.runner, change: "joined", detail: `${m.info.backend}, pid ${m.info.pid}${hello === undefined ? "" : `, Hello answered in ${(hello / 1000).toFixed(1)} s`}` })
        yield* Effect.logInfo(`runner ${m.info.runner} joined the run at iteration ${iteration}; ${split}`)
      }
    })

    const byAddress = (f: (t: Tally) => number) => () => new Map([...tallies].map(([a, t]) => [a, f(t)] as const))
    return {
      // A coordinating trainer left with no runner computes the iteration itself rather than nothing.
      get threads() {
        return coordinate && members.length > 0 ? members.length : members.length + 1
      },
      get computesHere() {
        return !coordinate || members.length === 0
      },
      call: (thread, job) => callIn(members, thread, job),
      fanOut,
      liveThreads: () => members.filter((m) => !dropped.has(m.address)).length,
      get runners() {
        return members.map((m) => m.info)
      },
      get entities() {
        return members.map((m) => m.id)
      },
      dropped: () => [...dropped],
      weightsSent: () => members.map((m) => m.tally.full),
      used,
      jobsDone: byAddress((t) => t.done),
      inFlight: byAddress((t) => t.out),
      changes: () => [...changes],
      refresh
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
 * Every runner a run has used so far, in the order they joined: a list that
 * grows as runners join between iterations (its record names them).
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
  withClient(options, Effect.map(connect(config, options), (runners) => Context.make(JobThreads.JobThreads, runners).pipe(Context.add(ClusterRunners, runners.used))))

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
    return Context.make(JobThreads.JobThreads, runners).pipe(Context.add(ClusterRunners, runners.used))
  }))
  return GenerationPool.GenerationPool.fromTransport.pipe(Layer.provideMerge(transport))
}
