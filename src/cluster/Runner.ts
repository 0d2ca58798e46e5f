/**
 * A runner: a process that serves the job protocol ({@link JobEntity}) as
 * an `effect/cluster` runner over TCP sockets (`@effect/platform-node`'s
 * `NodeClusterSocket`), registered in SQL runner storage ({@link Storage}).
 * It computes jobs on its own tensor backend with a replica of the model
 * that the trainer names in its `Hello`; each job carries the weights (the
 * parameters, flat) and every random draw, as for a worker thread, so a
 * runner holds no state of the run but the model's shape.
 *
 * One job at a time per runner (a job assigns the weights to the one
 * replica). A request without the shared secret (`SHARPEN_CLUSTER_SECRET`,
 * when the runner has one) is refused: `Hello` fails with `RunnerRefused`,
 * a job with `JobFailed`. A runner without a secret accepts any trainer
 * and may therefore listen only on a loopback address.
 *
 * A job computes in steps (`Steps.run`: a denoising step, a micro-batch)
 * with a turn of the event loop between them, so that the trainer's
 * interrupt (its Ctrl-C, a job timeout) stops it at the next step instead
 * of after the whole job; the runner says so on its output and serves the
 * next job as usual.
 *
 * @since 0.8.0
 */
import { NodeClusterSocket } from "@effect/platform-node"
import { Effect, Layer, Option, Schema, Semaphore } from "effect"
import { RunnerAddress } from "effect/cluster"
import * as crypto from "node:crypto"
import * as net from "node:net"
import * as os from "node:os"
import * as Denoiser from "../model/Denoiser.ts"
import * as DataParallel from "../parallel/DataParallel.ts"
import * as JobHandlers from "../parallel/JobHandlers.ts"
import { JobFailed } from "../parallel/JobProtocol.ts"
import { Backend } from "../tensor/Backend.ts"
import * as Steps from "../tensor/Steps.ts"
import * as WasmHeap from "../tensor/WasmHeap.ts"
import * as WebGpu from "../tensor/WebGpu.ts"
import * as Generate from "../trajectory/Generate.ts"
import { JobEntity, packageVersion, RunnerRefused, secretHeader, weightsDigest, weightsHeader, weightsNotCached } from "./JobEntity.ts"
import * as Storage from "./Storage.ts"

/** The environment variable that holds the shared secret. */
export const secretEnv = "SHARPEN_CLUSTER_SECRET"

/** The shared secret of this process, if set (never logged). */
export const secretFromEnv = (): string | undefined => {
  const s = process.env[secretEnv]
  return s === undefined || s === "" ? undefined : s
}

/** Whether `given` is `expected`, in constant time (over their digests). */
export const secretMatches = (expected: string, given: string | undefined): boolean =>
  given !== undefined &&
  crypto.timingSafeEqual(crypto.createHash("sha256").update(expected).digest(), crypto.createHash("sha256").update(given).digest())

/**
 * A runner could not start: a non-loopback address without a secret, a
 * port in use.
 *
 * @since 0.8.0
 */
export class RunnerStartFailed extends Schema.TaggedError<RunnerStartFailed>()("RunnerStartFailed", {
  message: Schema.String
}) {}

export interface Options {
  /** Address to listen on (default 127.0.0.1). */
  readonly host: string
  /** TCP port; 0 picks a free one. */
  readonly port: number
  /** Address the trainer and the other runners reach this one at (default: `host`). */
  readonly advertise?: string | undefined
  /** Runner storage URL (`sqlite:PATH`). */
  readonly storage: string
  /** The shared secret (default: `SHARPEN_CLUSTER_SECRET`). */
  readonly secret?: string | undefined
  /**
   * How runners judge each other alive (default ping): `k8s` asks the
   * Kubernetes API whether a runner's pod is ready (`RunnerHealth.layerK8s`;
   * the pod's service account must list pods, and each runner advertises its
   * pod IP).
   */
  readonly health?: Health | undefined
}

/** Runner health: pings over the runners' sockets, or Kubernetes pod readiness. */
export type Health =
  | { readonly kind: "ping" }
  | { readonly kind: "k8s"; readonly namespace?: string | undefined; readonly labelSelector?: string | undefined }

const loopback = (host: string) => host === "localhost" || host === "::1" || /^127\./.test(host)

/** A free TCP port on `host` (the kernel's pick for port 0, released at once). */
export const freePort = (host: string): Effect.Effect<number, RunnerStartFailed> =>
  Effect.callback<number, RunnerStartFailed>((resume) => {
    const server = net.createServer()
    server.once("error", (e) => resume(Effect.fail(new RunnerStartFailed({ message: `no free port on ${host}: ${e.message}` }))))
    server.listen(0, host, () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      server.close(() => resume(Effect.succeed(port)))
    })
  })

/** The device a backend computes on, in words. */
export const deviceOf = (backend: { readonly name: string; readonly adapter?: WebGpu.AdapterInfo }): string =>
  backend.adapter !== undefined
    ? WebGpu.format(backend.adapter)
    : backend.name === "tensorflow-gpu"
    ? "GPU (TensorFlow native)"
    : `CPU: ${os.cpus()[0]?.model?.trim() ?? "unknown"}, ${os.availableParallelism()} cores (this runner's jobs use ${backend.name === "tensorflow" ? "TensorFlow's threads" : "one"})`

const message = (e: unknown) => (e instanceof Error ? e.message : typeof e === "object" && e !== null && "message" in e ? String(e.message) : String(e))

/**
 * The entity's handlers on this process's backend (`Backend`), for the
 * runner at `address`, refusing requests without `secret` when given.
 *
 * @since 0.8.0
 */
export const handlers = (address: string, secret: string | undefined) =>
  // One state per process (the cluster builds an entity's handlers per entity id): one replica, one job at a time.
  Layer.unwrap(
    Effect.gen(function*() {
      const backend = yield* Backend
      const device = deviceOf(backend)
      const lock = yield* Semaphore.make(1)
      let replica: { readonly key: string; readonly model: Denoiser.Model; readonly size: number } | undefined
      const allowed = (headers: Readonly<Record<string, string | undefined>>): string | undefined =>
        secret === undefined || secretMatches(secret, headers[secretHeader]) ? undefined : `no or a wrong shared secret (${secretHeader}; the runner's ${secretEnv})`
      // Weights by content hash: a trainer sends a version once, then names it (a few versions kept:
      // the policy's and the frozen reference's).
      const cached = new Map<string, Float32Array>()
      const weightsOf = (headers: Readonly<Record<string, string | undefined>>, params: Float32Array): Float32Array | string => {
        const hash = headers[weightsHeader]
        if (hash === undefined) return params
        const known = cached.get(hash)
        if (params.length === 0 && known === undefined) return `${weightsNotCached} ${hash.slice(0, 12)}`
        if (params.length > 0 && known === undefined && weightsDigest(params) !== hash) return `got weights that do not match their hash ${hash.slice(0, 12)}`
        const weights = known ?? params
        cached.delete(hash)
        cached.set(hash, weights)
        for (const old of cached.keys()) if (cached.size > 4) cached.delete(old)
        return weights
      }
      const job = <A, E>(
        envelope: { readonly headers: Readonly<Record<string, string | undefined>>; readonly tag: string },
        params: Float32Array,
        f: (model: Denoiser.Model) => Effect.Effect<A, E>
      ): Effect.Effect<A, WasmHeap.WasmHeapExhausted | JobFailed> =>
        Effect.suspend((): Effect.Effect<A, E | JobFailed> => {
          const refused = allowed(envelope.headers)
          if (refused !== undefined) return Effect.fail(new JobFailed({ message: `runner ${address} refused the job: ${refused}` }))
          if (replica === undefined) return Effect.fail(new JobFailed({ message: `runner ${address} ${noModel}` }))
          const weights = weightsOf(envelope.headers, params)
          if (typeof weights === "string") return Effect.fail(new JobFailed({ message: `runner ${address} ${weights}` }))
          if (weights.length !== replica.size) return Effect.fail(new JobFailed({ message: `weights of ${weights.length} values for a replica of ${replica.size}` }))
          DataParallel.assignFlat(replica.model.params, weights)
          return interruptible(envelope.tag, f(replica.model))
        }).pipe(
          Effect.catchCause((cause): Effect.Effect<never, WasmHeap.WasmHeapExhausted | JobFailed> => {
            const e = cause.reasons.find((r) => r._tag === "Fail" || r._tag === "Die")
            const error = e === undefined ? undefined : e._tag === "Fail" ? e.error : e.defect
            return error instanceof WasmHeap.WasmHeapExhausted
              ? Effect.fail(new WasmHeap.WasmHeapExhausted({ ...error, what: `${error.what} (runner ${address})` }))
              : error instanceof JobFailed
              ? Effect.fail(error)
              : e === undefined
              ? Effect.failCause(cause as never)
              : Effect.fail(new JobFailed({ message: message(error) }))
          }),
          lock.withPermits(1)
        )
      // The handlers compute in steps with a turn of the event loop between them (`Steps.run`):
      // the trainer's interrupt (its Ctrl-C) is read at the next step boundary and stops the job
      // there. Said on the runner's output, with the longest step: the most the interrupt can have
      // waited after it arrived.
      const interruptible = <A, E>(tag: string, computation: Effect.Effect<A, E>): Effect.Effect<A, E> => {
        const watch = { longestMs: 0 }
        const started = Date.now()
        return computation.pipe(
          Effect.provideService(Steps.StepWatch, watch),
          Effect.onInterrupt(() =>
            Effect.sync(() => {
              const now = new Date()
              console.log(
                `runner ${address}: job ${tag} interrupted: stopped ${((now.getTime() - started) / 1000).toFixed(2)} s into it, ` +
                  `at most ${(watch.longestMs / 1000).toFixed(2)} s after the interrupt arrived (its longest step), at ${now.toISOString()}`
              )
            })
          )
        )
      }
      const served = JobEntity.of({
        Hello: (envelope) =>
          Effect.suspend(() => {
            const refused = allowed(envelope.headers)
            if (refused !== undefined) return Effect.fail(new RunnerRefused({ runner: address, reason: refused }))
            if (envelope.payload.version !== packageVersion) {
              return Effect.fail(new RunnerRefused({ runner: address, reason: `package version ${packageVersion}, the trainer's ${envelope.payload.version}` }))
            }
            const key = JSON.stringify(envelope.payload.config)
            if (replica?.key !== key) {
              if (replica !== undefined) Denoiser.dispose(replica.model)
              const model = Denoiser.init(envelope.payload.config, 0, true)
              replica = { key, model, size: Object.values(model.params).reduce((a, p) => a + p.size, 0) }
              console.log(`runner ${address}: a trainer said Hello; replica of ${replica.size} parameters`)
            }
            return Effect.succeed({ runner: address, backend: backend.name, device, pid: process.pid, version: packageVersion })
          }).pipe(lock.withPermits(1)),
        Sample: (r) => job(r, r.payload.params, (m) => JobHandlers.sample(m, r.payload)),
        Trajectories: (r) => job(r, r.payload.params, (m) => JobHandlers.trajectories(m, r.payload)),
        Gradients: (r) => job(r, r.payload.params, (m) => JobHandlers.gradients(m, r.payload.parts)),
        Errors: (r) => job(r, r.payload.params, (m) => JobHandlers.errors(m, r.payload.inputs)),
        Images: (r) => job(r, r.payload.params, (m) => Generate.generateStepped(m, r.payload.prompts, r.payload.sampler, r.payload.firstIndex)),
        PretrainShard: (r) => job(r, r.payload.params, (m) => DataParallel.shardGrads(m, r.payload.shard))
      })
      return JobEntity.toLayer(served, { concurrency: 1 })
    })
  )

/** How a job fails on a runner that has had no `Hello` (a new runner, or one that came back): the trainer says it and resends. */
export const noModel = "has no model: the trainer said no Hello"

/** Largest message (bytes): weights of large models, a batch's trajectories. */
export const maxMessageBytes = 512 * 1024 * 1024

/** The cluster's timing: fast enough for a test on loopback, calm for a real run. */
export const shardingTiming = {
  // A dead runner's shards (its jobs' entity ids) go to the others once its locks expire.
  shardLockRefreshInterval: "1 second",
  shardLockExpiration: "5 seconds",
  refreshAssignmentsInterval: "1 second",
  runnerJoinDebounce: "0 millis",
  sendRetryInterval: "100 millis",
  runnerHealthCheckInterval: "2 seconds",
  entityMessagePollInterval: "2 seconds"
} as const

/**
 * A runner: its address (port 0 resolved), its storage, its handlers and
 * the cluster's sharding, on the `Backend` provided. Built, it is
 * registered and serving; released (the scope closes: SIGINT, SIGTERM), it
 * unregisters and stops.
 *
 * @since 0.8.0
 */
export const make = (options: Options) =>
  Effect.gen(function*() {
    const secret = options.secret ?? secretFromEnv()
    const advertise = options.advertise ?? options.host
    if (secret === undefined && !loopback(options.host)) {
      return yield* new RunnerStartFailed({ message: `listening on ${options.host} needs a shared secret: set ${secretEnv} (the same for the trainer and every runner)` })
    }
    if (options.host === "0.0.0.0" && options.advertise === undefined) {
      return yield* new RunnerStartFailed({ message: "listening on 0.0.0.0 needs --advertise HOST: the address the trainer and the other runners reach this one at" })
    }
    const port = options.port === 0 ? yield* freePort(options.host) : options.port
    const address = `${advertise}:${port}`
    const health = options.health ?? { kind: "ping" }
    const sharding = NodeClusterSocket.layer({
      serializationMaxBufferSize: maxMessageBytes,
      runnerHealth: health.kind,
      ...(health.kind === "k8s" ? { runnerHealthK8s: { namespace: health.namespace, labelSelector: health.labelSelector } } : {}),
      shardingConfig: {
        runnerAddress: Option.some(RunnerAddress.make(advertise, port)),
        runnerListenAddress: Option.some(RunnerAddress.make(options.host, port)),
        ...shardingTiming
      }
    }).pipe(Layer.provide(Storage.sqlClient(options.storage)))
    const layer = handlers(address, secret).pipe(Layer.provideMerge(sharding))
    return { address, port, secret: secret !== undefined, layer }
  })
