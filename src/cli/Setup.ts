/**
 * The set-up every pipeline script shares: the `--backend` and `--model`
 * flags, the tensor backend layer, the denoiser on it, the clip model
 * (reward and evaluation), loaded for the caller's scope, and the
 * `--runners` flags (a run's jobs on effect/cluster runners).
 *
 * @since 0.6.0
 */
import { Context, Duration, Effect, Layer, Option } from "effect"
import { Flag } from "effect/cli"
import * as ClusterJobs from "../cluster/ClusterJobs.ts"
import * as Storage from "../cluster/Storage.ts"
import * as Denoiser from "../model/Denoiser.ts"
import * as JobThreads from "../parallel/JobThreads.ts"
import * as ClipModel from "../reward/ClipModel.ts"
import { Backend, BackendName } from "../tensor/Backend.ts"
import * as Scoped from "../tensor/Scoped.ts"

/** The base generator every script starts from. */
export const DEFAULT_MODEL = "models/shapeworld-base"

/** The clip reward model (reward and evaluation). */
export const DEFAULT_CLIP_MODEL = "models/shapeworld-clip"

/**
 * `--backend` (default `auto`, or `SHARPEN_BACKEND`).
 *
 * @since 0.6.0
 */
export const backendFlag = Flag.Literals("backend", BackendName.literals).pipe(
  Flag.withDescription("tensor backend (auto: SHARPEN_BACKEND, else tfjs-node-gpu, tfjs-node, webgpu on a hardware adapter, wasm, cpu; docs/runtime.md)"),
  Flag.withDefault("auto" as const)
)

/**
 * `--model`: a model directory.
 *
 * @since 0.6.0
 */
export const modelFlag = (description = "model directory", fallback = DEFAULT_MODEL) =>
  Flag.String("model").pipe(Flag.withDescription(description), Flag.withDefault(fallback))

/**
 * The backend a `--backend` value names (`Backend.fromFlag`), fresh for
 * each use so a test or a second command in one process gets its own.
 *
 * @since 0.6.0
 */
export const backend = (flag: BackendName) => Layer.fresh(Backend.fromFlag(flag))

/**
 * The denoiser of `model` on the `--backend` (weights checked at load),
 * with the backend it runs on.
 *
 * @since 0.6.0
 */
export const denoiser = (model: string, flag: BackendName) => Denoiser.Denoiser.fromDir(model, false).pipe(Layer.provideMerge(Backend.fromFlag(flag)))

/**
 * The clip model of `dir`, released with the caller's scope.
 *
 * @since 0.6.0
 */
export const clip = (dir: string) =>
  Effect.flatMap(ClipModel.loadFiles(dir), (c) => Scoped.acquireWith(() => ClipModel.fromStored(c.config, c.weights, false), ClipModel.dispose))

/**
 * `--runners STORAGE`, `--runner-count N`, `--connect-timeout S`,
 * `--job-timeout S`, `--coordinate`: the iterations' jobs on effect/cluster runners
 * (`pipelines/runner.ts`, docs/scaling.md) instead of worker threads.
 *
 * @since 0.8.0
 */
export const runnersFlags = (jobs: string, extra = "") => ({
  runners: Flag.String("runners").pipe(
    Flag.withDescription(
      `send ${jobs} to the runners registered in this runner storage instead of worker threads: sqlite:PATH (one host) or postgres://USER:PASSWORD@HOST:PORT/DB (several machines), as given to pipelines/runner.ts; this process computes one share too (unless --coordinate), and every random draw stays here (the one-thread result up to float summation order); shared secret from SHARPEN_CLUSTER_SECRET; docs/scaling.md${extra}`
    ),
    Flag.optional
  ),
  runnerCount: Flag.Int("runner-count").pipe(Flag.withDescription("with --runners: wait for this many runners, and use those up at start (default 1)"), Flag.optional),
  connectTimeout: Flag.Finite("connect-timeout").pipe(Flag.withDescription("with --runners: seconds to wait for the runners and their handshake before failing with ClusterUnavailable (default 30)"), Flag.optional),
  jobTimeout: Flag.Finite("job-timeout").pipe(Flag.withDescription("with --runners: seconds after which a runner that has not answered a job is dropped from the run (reported) and its job sent to another (default: no timeout)"), Flag.optional),
  coordinate: Flag.Boolean("coordinate").pipe(
    Flag.withDescription("with --runners: this process computes no share of the jobs, the runners all of them (for a trainer that shares its cores with runners, or should not compute); it still draws, sums and updates; with every runner gone it computes alone"),
    Flag.withDefault(false)
  )
})

/**
 * Where a run's jobs went: the runner storage (a password masked), and the
 * addresses of every runner used (also those that joined or left during
 * the run).
 *
 * @since 0.8.0
 */
export interface RunnersUsed {
  readonly storage: string
  readonly count: number
  readonly addresses: ReadonlyArray<string>
  /** This process computed no share (`--coordinate`). */
  readonly coordinate?: boolean | undefined
}

/** The runner options of the flags (or a config file's `run.runners` / `run.runnerCount` / `run.coordinate`), checked. */
export interface RunnersOptions {
  readonly storage: string
  readonly runners?: number | undefined
  readonly connectTimeout?: number | undefined
  readonly jobTimeout?: number | undefined
  /** This process computes no share (`--coordinate`). */
  readonly coordinate?: boolean | undefined
}

/**
 * The runner options of the `--runners` flags, or undefined when not given
 * (neither by flag nor by `file`, a config file's `run` entries). Fails
 * with `StorageUnsupported` for a URL of another form.
 *
 * @since 0.8.0
 */
export const runnersOptions = (
  f: {
    readonly runners: Option.Option<string>
    readonly runnerCount: Option.Option<number>
    readonly connectTimeout: Option.Option<number>
    readonly jobTimeout: Option.Option<number>
    readonly coordinate?: boolean | undefined
  },
  file: { readonly runners?: string | undefined; readonly runnerCount?: number | undefined; readonly coordinate?: boolean | undefined } = {}
) =>
  Effect.gen(function*() {
    const storage = Option.getOrUndefined(f.runners) ?? file.runners
    if (storage === undefined) return undefined
    yield* Storage.parse(storage).pipe(Effect.mapError((e) => new Storage.StorageUnsupported({ url: Storage.redact(e.url), message: e.message })))
    const runners = Option.getOrUndefined(f.runnerCount) ?? file.runnerCount
    const positive = (name: string, v: number | undefined) =>
      v !== undefined && !(v > 0) ? Effect.fail(new Storage.StorageUnsupported({ url: Storage.redact(storage), message: `${name} must be positive, got ${v}` })) : Effect.void
    yield* positive("--runner-count", runners)
    yield* positive("--connect-timeout", Option.getOrUndefined(f.connectTimeout))
    yield* positive("--job-timeout", Option.getOrUndefined(f.jobTimeout))
    const options: RunnersOptions = {
      storage,
      runners: runners === undefined ? undefined : Math.floor(runners),
      connectTimeout: Option.getOrUndefined(f.connectTimeout),
      jobTimeout: Option.getOrUndefined(f.jobTimeout),
      coordinate: f.coordinate === true || file.coordinate === true
    }
    return options
  })

const clusterOptions = (options: RunnersOptions): ClusterJobs.Options => ({
  storage: options.storage,
  runners: options.runners,
  connectTimeout: options.connectTimeout === undefined ? undefined : Duration.millis(options.connectTimeout * 1000),
  jobTimeout: options.jobTimeout === undefined ? undefined : Duration.millis(options.jobTimeout * 1000),
  coordinate: options.coordinate
})

/**
 * Note who the runners are once `layer` is built (`used`: every runner used
 * so far), and log them; `transport`: the transport over them (for the
 * run's evaluation images), once built.
 */
const noting = <L extends Layer.Layer<ClusterJobs.ClusterRunners | JobThreads.JobThreads, unknown, unknown>>(options: RunnersOptions, layer: L) => {
  // The transport's list of the runners used: it grows as runners join.
  let runners: ReadonlyArray<{ readonly runner: string }> | undefined
  let threads: JobThreads.Threads | undefined
  const storage = Storage.redact(options.storage)
  const noted = (layer as Layer.Layer<ClusterJobs.ClusterRunners | JobThreads.JobThreads, unknown, unknown>).pipe(Layer.tap((context) =>
    Effect.gen(function*() {
      runners = Context.get(context, ClusterJobs.ClusterRunners)
      threads = Context.get(context, JobThreads.JobThreads)
      yield* Effect.logInfo(`jobs on ${runners.length} runner(s) of ${storage}${options.coordinate === true ? " (this process coordinates)" : " and this process"}: ${runners.map((r) => r.runner).join(", ")}`)
    })
  ))
  const used = (): RunnersUsed | undefined => runners === undefined ? undefined : { storage, count: runners.length, addresses: runners.map((r) => r.runner), ...(options.coordinate === true ? { coordinate: true } : {}) }
  return { layer: noted as unknown as L, used, transport: () => threads }
}

/**
 * `GenerationJobs` and `GradientJobs` over the runners of `options.storage`
 * (`ClusterJobs.layer`, for the `Denoiser`'s model; the shared secret from
 * `SHARPEN_CLUSTER_SECRET`), and who they turned out to be once the layer
 * is built (`used`), logged then; `transport()`, the same runners for the
 * run's evaluation images.
 *
 * @since 0.8.0
 */
export const clusterJobs = (options: RunnersOptions) => noting(options, ClusterJobs.layer(clusterOptions(options)))

/**
 * The job protocol's transport over the runners of `options.storage` for a
 * model of `config` (`ClusterJobs.transportLayer`: pretraining's gradient
 * shards), and who they turned out to be (`used`), logged.
 *
 * @since 0.8.0
 */
export const clusterTransport = (config: Denoiser.ModelConfig, options: RunnersOptions) => noting(options, ClusterJobs.transportLayer(config, clusterOptions(options)))
