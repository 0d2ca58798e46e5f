/**
 * Pretraining of the base generator on ShapeWorld-32's training split:
 * epsilon-prediction MSE at uniform timesteps, a fraction of null prompts
 * for classifier-free guidance, AdamW, an exponential moving average of the
 * weights (the EMA is the released model), atomic checkpoints and exact
 * resume.
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect, FileSystem, Layer, Option, Path, Schema } from "effect"
import * as Dataset from "../data/Dataset.ts"
import * as Schedule from "../diffusion/Schedule.ts"
import * as Plot from "../eval/Plot.ts"
import * as AtomicFile from "../io/AtomicFile.ts"
import * as ModelDir from "../io/ModelDir.ts"
import * as Denoiser from "../model/Denoiser.ts"
import { defaultConfig, UNetConfig } from "../model/UNetConfig.ts"
import * as Weights from "../model/Weights.ts"
import * as AdamW from "../optim/AdamW.ts"
import { Checkpointer } from "../optim/Checkpointer.ts"
import { Ema } from "../optim/Ema.ts"
import { StepMetrics } from "../optim/Metrics.ts"
import * as Optimizer from "../optim/Optimizer.ts"
import type { Rng } from "../tensor/Random.ts"
import { RandomSource } from "../tensor/RandomSource.ts"
import { Backend, usesWorkerThreads } from "../tensor/Backend.ts"
import * as Scoped from "../tensor/Scoped.ts"
import type { WasmHeapExhausted } from "../tensor/WasmHeap.ts"
import * as DataParallel from "../parallel/DataParallel.ts"
import * as JobThreads from "../parallel/JobThreads.ts"
import * as LrSchedule from "../optim/LrSchedule.ts"
import * as TrainingLoop from "./TrainingLoop.ts"

export const PretrainOptions = Schema.Struct({
  steps: Schema.Int.check(Schema.isGreaterThan(0)),
  batchSize: Schema.Int.check(Schema.isGreaterThan(0)),
  lr: Schema.Number.check(Schema.isGreaterThan(0)),
  warmupSteps: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  emaDecay: Schema.Number.check(Schema.isGreaterThanOrEqualTo(0), Schema.isLessThan(1)),
  nullPromptFraction: Schema.Number.check(Schema.isGreaterThanOrEqualTo(0), Schema.isLessThanOrEqualTo(1)),
  seed: Schema.Int,
  checkpointEvery: Schema.Int.check(Schema.isGreaterThan(0)),
  /** Learning-rate shape after warm-up: constant, or cosine decay to `minLr` at the last step. */
  lrSchedule: Schema.Literals(["constant", "cosine"]),
  minLr: Schema.Number.check(Schema.isGreaterThanOrEqualTo(0)),
  /** Threads computing gradient shards (the main thread counts as one); see DataParallel. */
  workers: Schema.Int.check(Schema.isGreaterThan(0)),
  /** Stop (with a checkpoint) after this many minutes of training; 0 = no limit. */
  maxMinutes: Schema.Number.check(Schema.isGreaterThanOrEqualTo(0)),
  runDir: Schema.String,
  out: Schema.String,
  resume: Schema.Boolean,
  config: UNetConfig
})
export type PretrainOptions = typeof PretrainOptions.Type

/**
 * Learning rate of a 0-based step: linear warm-up, then constant or a cosine
 * decay from `lr` to `minLr` over the remaining steps.
 *
 * @since 0.2.0
 */
export const lrAt = (o: Pick<PretrainOptions, "lr" | "minLr" | "warmupSteps" | "steps" | "lrSchedule">, step: number): number =>
  LrSchedule.at({ lr: o.lr, minLr: o.minLr, warmupSteps: o.warmupSteps, totalSteps: o.steps, schedule: o.lrSchedule }, step)

/** The timesteps and noise of a batch, drawn in a fixed order (so resume is exact). */
const drawShard = (schedule: Schedule.Schedule, model: Denoiser.Model, batch: Dataset.Batch, rng: Rng): DataParallel.Shard => {
  const b = batch.batchSize
  const { channels, imageSize } = Denoiser.unetConfig(model.config).architecture
  const t = Array.from({ length: b }, () => rng.int(schedule.trainSteps))
  const noise = rng.normals(b * imageSize * imageSize * channels)
  return { batch: b, images: batch.images, prompts: batch.prompts, t, noise }
}

/**
 * The loss and gradients of a batch on this thread, or in shards over a
 * worker pool (same random draws, the same sum in another order): tensors,
 * or one flat array from the pool.
 *
 * @since 0.7.0
 */
export const gradients = (
  pool: DataParallel.Pool | undefined,
  model: Denoiser.Model,
  schedule: Schedule.Schedule,
  batch: Dataset.Batch,
  rng: Rng
): Effect.Effect<Optimizer.Gradients, WasmHeapExhausted> =>
  Effect.suspend(() => {
    const shard = drawShard(schedule, model, batch, rng)
    return pool !== undefined && pool.workers > 1 ? pool.lossAndGrads(model, shard) : DataParallel.lossAndGrads(model, shard)
  })

/** One AdamW update with a bare state (outside the services); gradient tensors are disposed. */
const applyBare = (model: Denoiser.Model, adam: AdamW.AdamWState, lr: number, adamConfig: AdamW.AdamWConfig, r: Optimizer.Gradients) => {
  const ok = Number.isFinite(r.loss)
  const grads = r.grads
  if (grads instanceof Float32Array) {
    return Effect.sync(() => ({ loss: r.loss, gradNorm: ok ? AdamW.stepFlat(model.params, grads, adam, lr, adamConfig) : NaN }))
  }
  return (ok ? AdamW.step(model.params, grads, adam, lr, adamConfig) : Effect.succeed(NaN)).pipe(
    Effect.map((gradNorm) => ({ loss: r.loss, gradNorm })),
    Effect.ensuring(Effect.sync(() => Scoped.disposeAll(grads)))
  )
}

/**
 * One optimisation step on this thread with a bare AdamW state, outside the
 * services (test/tensor/Scoped.test.ts, bench/); returns the loss
 * (NaN/Infinity are reported, not applied). `run` steps through the
 * `Optimizer`.
 *
 * @since 0.1.0
 */
export const trainStep = (
  model: Denoiser.Model,
  schedule: Schedule.Schedule,
  adam: AdamW.AdamWState,
  batch: Dataset.Batch,
  rng: Rng,
  lr: number,
  adamConfig: AdamW.AdamWConfig
): Effect.Effect<{ loss: number; gradNorm: number }, WasmHeapExhausted> =>
  Effect.flatMap(gradients(undefined, model, schedule, batch, rng), (r) => applyBare(model, adam, lr, adamConfig, r))

/**
 * {@link trainStep} with the batch's gradients computed in shards over a
 * worker pool (same random draws, same update; bench/).
 *
 * @since 0.2.0
 */
export const trainStepParallel = (
  pool: DataParallel.Pool,
  model: Denoiser.Model,
  schedule: Schedule.Schedule,
  adam: AdamW.AdamWState,
  batch: Dataset.Batch,
  rng: Rng,
  lr: number,
  adamConfig: AdamW.AdamWConfig
): Effect.Effect<{ loss: number; gradNorm: number }, WasmHeapExhausted> =>
  Effect.suspend(() => pool.lossAndGrads(model, drawShard(schedule, model, batch, rng))).pipe(
    Effect.flatMap((r) => applyBare(model, adam, lr, adamConfig, r))
  )

/** The weight average's update outside the services (test/tensor/Scoped.test.ts); `run` uses the `Ema`. */
export const updateEma = (ema: Readonly<Record<string, tf.Variable>>, params: Readonly<Record<string, tf.Tensor>>, decay: number) =>
  tf.tidy(() => {
    for (const [k, e] of Object.entries(ema)) e.assign(tf.add(tf.mul(e, decay), tf.mul(params[k], 1 - decay)))
  })

export const lossPlot = (losses: ReadonlyArray<number>, title: string) =>
  Plot.lineSvg({
    title,
    x: "step",
    y: "loss",
    logY: true,
    smooth: Math.max(1, Math.round(losses.length / 50)),
    // Thin out very long runs: the plot keeps every k-th point.
    rows: losses.flatMap((l, i) => (i % Math.max(1, Math.floor(losses.length / 2000)) === 0 ? [{ step: i + 1, loss: l }] : []))
  })

/**
 * The default UNet config with the architecture fields of a JSON file
 * overriding its own; the result is decoded with the config Schema, so a
 * wrong field fails naming the file and the field.
 *
 * @since 0.3.0
 */
export const configWith = Effect.fn("Pretrain.configWith")(function*(file: string) {
  const fs = yield* FileSystem.FileSystem
  const text = yield* fs.readFileString(file).pipe(
    Effect.mapError((e) => new ModelDir.ModelLoadError({ file, message: `cannot read: ${e.message}` }))
  )
  const overrides = yield* Effect.fromResult(ModelDir.decodeJson(Schema.Record(Schema.String, Schema.Unknown), text, file))
  const merged = { ...defaultConfig, architecture: { ...defaultConfig.architecture, ...overrides } }
  return yield* Effect.fromResult(ModelDir.decodeJson(UNetConfig, JSON.stringify(merged), file))
})

/** The optimiser of a pretraining: AdamW (0.9, 0.999), clip 1, warm-up then the schedule. */
export const optimizerConfig = (o: Pick<PretrainOptions, "lr" | "minLr" | "warmupSteps" | "steps" | "lrSchedule">): Optimizer.OptimizerConfig => ({
  ...AdamW.defaults,
  maxGradNorm: 1,
  lr: o.lr,
  warmupSteps: o.warmupSteps,
  schedule: o.lrSchedule,
  totalSteps: o.steps,
  minLr: o.minLr
})

/** Key order can differ between a decoded and a literal config. */
const canonical = (a: object) => JSON.stringify(a, Object.keys(a).sort())

/**
 * Pretrain on the services of a training run (`TrainingLoop.supervised`):
 * the `Optimizer`, the `Ema` with its warm-up (the released model), the
 * `Checkpointer` in `runDir` (refusing a checkpoint of another
 * architecture) and `StepMetrics` (`runDir/metrics.jsonl`). The gradient
 * shards go to `workers - 1` worker threads, or, when the context holds a
 * `JobThreads` transport (pipelines/pretrain.ts --runners: effect/cluster
 * runners), over it; every draw stays here either way.
 *
 * @since 0.1.0
 */
export const run = Effect.fn("Pretrain.run")(function*(o: PretrainOptions) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const backend = yield* Backend
  const schedule = Schedule.make(o.config.schedule)
  const model = yield* Scoped.acquireWith(() => Denoiser.init(o.config, o.seed), Denoiser.dispose)
  // A transport in the context (pretrain.ts --runners: effect/cluster runners) takes the place of
  // the worker threads. Threads only help the single-threaded JS backends.
  const transport = yield* Effect.serviceOption(JobThreads.JobThreads)
  const workers = Option.isSome(transport) ? transport.value.threads : !usesWorkerThreads(backend.name) ? 1 : Math.min(o.workers, o.batchSize)
  const pool = Option.isSome(transport) ? DataParallel.fromThreads(transport.value) : yield* DataParallel.make(model, workers, backend.name)
  yield* fs.makeDirectory(o.runDir, { recursive: true })
  const config = optimizerConfig(o)
  const services = Checkpointer.steps(o.runDir, {
    run: { ...o, config: undefined, architecture: o.config.architecture },
    check: (saved) => {
      const architecture = (saved as { architecture?: object } | null)?.architecture
      return architecture !== undefined && canonical(architecture) !== canonical(o.config.architecture)
        ? `checkpoint was trained with architecture ${JSON.stringify(architecture)}, not ${JSON.stringify(o.config.architecture)}; pass the same --architecture to resume`
        : undefined
    },
    legacy: config
  }).pipe(
    Layer.provideMerge(Layer.mergeAll(Optimizer.Optimizer.adamW(config), Ema.layer(o.emaDecay, { warmup: true }), StepMetrics.jsonl(path.join(o.runDir, "metrics.jsonl"), o.steps, "pretrain"))),
    Layer.provideMerge(Layer.mergeAll(Layer.succeed(Denoiser.Denoiser, Denoiser.Denoiser.of({ model })), RandomSource.fromSeed(o.seed + 1)))
  )

  const { steps: step, records, average } = yield* Effect.gen(function*() {
    const optimizer = yield* Optimizer.Optimizer
    const ema = yield* Ema
    const { rng } = yield* RandomSource
    const data: Dataset.DatasetOptions = { batchSize: o.batchSize, split: "train", nullPromptFraction: o.nullPromptFraction }
    const done = yield* TrainingLoop.supervised({
      total: o.steps,
      resume: o.resume,
      maxMinutes: o.maxMinutes,
      checkpointEvery: o.checkpointEvery,
      step: (index) =>
        Effect.gen(function*() {
          // A transport whose threads can change (runners joining or leaving) changes them here,
          // before the step's shards go out; the draws stay here, so only summation order moves.
          if (Option.isSome(transport) && transport.value.refresh !== undefined) yield* transport.value.refresh(index + 1)
          const batch = Dataset.nextBatch(rng, data)
          const r = yield* optimizer.apply(yield* gradients(pool, model, schedule, batch, rng), index + 1)
          yield* ema.updateAt(index)
          return r
        })
    })
    // The released weights: the average (the policy itself with ema 0), read before the layers close.
    return { ...done, average: yield* ModelDir.toStored(ema.model().params) }
  }).pipe(Effect.provide(services))

  const losses = records.map((r) => r.loss)
  const wallMinutes = records.reduce((a, r) => a + r.wallMs, 0) / 60_000
  yield* Weights.save(o.out, model.config, average, {
    trainedSteps: String(step),
    batchSize: String(o.batchSize),
    wallMinutes: wallMinutes.toFixed(1),
    seed: String(o.seed),
    backend: backend.name,
    workers: String(workers),
    lrSchedule: o.lrSchedule
  })
  const svg = yield* Effect.promise(() => lossPlot(losses, `ShapeWorld-32 base pretraining (batch ${o.batchSize})`))
  yield* AtomicFile.writeText(path.join(o.out, "loss.svg"), svg)
  yield* AtomicFile.writeFile(path.join(o.runDir, "loss.png"), Plot.svgToPng(svg))
  yield* AtomicFile.writeText(
    path.join(o.runDir, "losses.json"),
    JSON.stringify({ step, wallMinutes, losses })
  )
  return { step, wallMinutes, finalLoss: losses.slice(-100).reduce((a, b) => a + b, 0) / Math.min(100, losses.length) }
})
