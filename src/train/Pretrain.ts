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
import { Effect, FileSystem, Option, Path, Schema } from "effect"
import * as Dataset from "../data/Dataset.ts"
import * as Schedule from "../diffusion/Schedule.ts"
import * as Plot from "../eval/Plot.ts"
import * as AtomicFile from "../io/AtomicFile.ts"
import * as CheckpointDir from "../io/CheckpointDir.ts"
import * as ModelDir from "../io/ModelDir.ts"
import * as Safetensors from "../io/Safetensors.ts"
import * as Denoiser from "../model/Denoiser.ts"
import { defaultConfig, UNetConfig } from "../model/UNetConfig.ts"
import * as AdamW from "../optim/AdamW.ts"
import { Rng, RngState } from "../tensor/Random.ts"
import { Backend, usesWorkerThreads } from "../tensor/Backend.ts"
import * as Scoped from "../tensor/Scoped.ts"
import type { WasmHeapExhausted } from "../tensor/WasmHeap.ts"
import * as DataParallel from "../parallel/DataParallel.ts"
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

/** What survives between steps besides tensors (state.json of a checkpoint). */
const TrainState = Schema.Struct({
  step: Schema.Int,
  rng: RngState,
  adamStep: Schema.Int,
  wallMs: Schema.Number,
  losses: Schema.Array(Schema.Number),
  options: Schema.Unknown
})
type TrainState = typeof TrainState.Type

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

const apply = (
  model: Denoiser.Model,
  adam: AdamW.AdamWState,
  lr: number,
  adamConfig: AdamW.AdamWConfig,
  r: { loss: number; grads: Record<string, tf.Tensor> | Float32Array }
): Effect.Effect<{ loss: number; gradNorm: number }> => {
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
 * One optimisation step on this thread; returns the loss (NaN/Infinity are
 * reported, not applied).
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
  Effect.suspend(() => DataParallel.lossAndGrads(model, drawShard(schedule, model, batch, rng))).pipe(
    Effect.flatMap((r) => apply(model, adam, lr, adamConfig, r))
  )

/**
 * {@link trainStep} with the batch's gradients computed in shards over a
 * worker pool (same random draws, same update).
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
    Effect.flatMap((r) => apply(model, adam, lr, adamConfig, r))
  )

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

export const run = Effect.fn("Pretrain.run")(function*(o: PretrainOptions) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const backend = yield* Backend
  const schedule = Schedule.make(o.config.schedule)
  const model = yield* Scoped.acquireWith(() => Denoiser.init(o.config, o.seed), Denoiser.dispose)
  const ema = yield* Scoped.acquireWith(() => Denoiser.clone(model, false), Denoiser.dispose)
  const adam = yield* Scoped.acquireWith(() => AdamW.init(model.params), AdamW.dispose)
  const adamConfig = { ...AdamW.defaults, maxGradNorm: 1 }
  // Threads only help the single-threaded JS backends.
  const workers = !usesWorkerThreads(backend.name) ? 1 : Math.min(o.workers, o.batchSize)
  const pool = yield* DataParallel.make(model, workers, backend.name)
  let rng = Rng.fromSeed(o.seed + 1)
  let state: TrainState = { step: 0, rng: rng.state(), adamStep: 0, wallMs: 0, losses: [], options: {} }
  const losses: Array<number> = []

  if (o.resume) {
    const restored = yield* CheckpointDir.resume(o.runDir, (ck) =>
      Effect.gen(function*() {
        const st = yield* ck.readState(TrainState)
        const saved = (st.options as { architecture?: object } | null)?.architecture
        // Key order can differ between a decoded and a literal config.
        const canonical = (a: object) => JSON.stringify(a, Object.keys(a).sort())
        if (saved !== undefined && canonical(saved) !== canonical(o.config.architecture)) {
          return yield* new ModelDir.ModelLoadError({
            file: ck.dir,
            message: `checkpoint was trained with architecture ${JSON.stringify(saved)}, not ${JSON.stringify(o.config.architecture)}; pass the same --architecture to resume`
          })
        }
        yield* ck.restore("params.safetensors", model.params)
        yield* ck.restore("ema.safetensors", ema.params)
        yield* AdamW.restoreMoments(ck, "adam.safetensors", adam)
        return st
      }))
    if (Option.isSome(restored)) {
      const st = restored.value.value
      adam.step = st.adamStep
      rng = Rng.fromState(st.rng)
      state = st
      losses.push(...st.losses)
      yield* Effect.logInfo(`resumed from ${restored.value.dir} at step ${st.step}`)
    } else {
      yield* Effect.logInfo(`no checkpoint in ${o.runDir}; starting fresh`)
    }
  }

  const checkpoint = Effect.fn("Pretrain.checkpoint")(function*(step: number, wallMs: number) {
    const st: TrainState = { step, rng: rng.state(), adamStep: adam.step, wallMs, losses, options: { ...o, config: undefined, architecture: o.config.architecture } }
    const [params, average, moments] = yield* Effect.all(
      [ModelDir.toStored(model.params), ModelDir.toStored(ema.params), AdamW.storedMoments(adam)],
      { concurrency: "unbounded" }
    )
    yield* CheckpointDir.save(o.runDir, step, {
      "params.safetensors": Safetensors.encode(params),
      "ema.safetensors": Safetensors.encode(average),
      "adam.safetensors": Safetensors.encode(moments),
      "state.json": new TextEncoder().encode(JSON.stringify(Schema.encodeSync(TrainState)(st)))
    })
  })

  const data: Dataset.DatasetOptions = { batchSize: o.batchSize, split: "train", nullPromptFraction: o.nullPromptFraction }
  const { steps: step, wallMs } = yield* TrainingLoop.run({
    label: "pretrain",
    total: o.steps,
    start: state.step,
    startWallMs: state.wallMs,
    maxMinutes: o.maxMinutes,
    checkpointEvery: o.checkpointEvery,
    step: (index) =>
      Effect.gen(function*() {
        const batch = Dataset.nextBatch(rng, data)
        const r = pool.workers > 1
          ? yield* trainStepParallel(pool, model, schedule, adam, batch, rng, lrAt(o, index), adamConfig)
          : yield* trainStep(model, schedule, adam, batch, rng, lrAt(o, index), adamConfig)
        if (Number.isFinite(r.loss) && Number.isFinite(r.gradNorm)) {
          updateEma(ema.params, model.params, Math.min(o.emaDecay, (1 + index) / (10 + index)))
          losses.push(r.loss)
        }
        const recent = losses.slice(-50)
        return { ...r, show: { loss: recent.reduce((a, b) => a + b, 0) / recent.length, lr: lrAt(o, index) } }
      }),
    checkpoint
  })

  const wallMinutes = wallMs / 60_000
  yield* Denoiser.save(o.out, ema, {
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
  yield* fs.exists(o.out)
  return { step, wallMinutes, finalLoss: losses.slice(-100).reduce((a, b) => a + b, 0) / Math.min(100, losses.length) }
})
