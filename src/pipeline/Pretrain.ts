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
import * as Noise from "../diffusion/Noise.ts"
import * as Schedule from "../diffusion/Schedule.ts"
import * as Plot from "../eval/Plot.ts"
import * as AtomicFile from "../io/AtomicFile.ts"
import * as CheckpointDir from "../io/CheckpointDir.ts"
import * as ModelDir from "../io/ModelDir.ts"
import * as Safetensors from "../io/Safetensors.ts"
import * as Denoiser from "../model/Denoiser.ts"
import { forward } from "../model/UNet.ts"
import { UNetConfig } from "../model/UNetConfig.ts"
import * as AdamW from "../optim/AdamW.ts"
import { Rng, RngState } from "../tensor/Random.ts"
import { Backend } from "../tensor/Backend.ts"
import { paramGrads } from "../tensor/Grad.ts"
import * as Scoped from "../tensor/Scoped.ts"
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

const lrAt = (o: PretrainOptions, step: number) => (o.warmupSteps > 0 ? o.lr * Math.min(1, (step + 1) / o.warmupSteps) : o.lr)

/**
 * One optimisation step; returns the loss (NaN/Infinity are reported, not applied).
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
): { loss: number; gradNorm: number } => {
  const b = batch.batchSize
  const s = model.config.architecture.imageSize
  const c = model.config.architecture.channels
  const t = Array.from({ length: b }, () => rng.int(schedule.trainSteps))
  const noise = rng.normals(b * s * s * c)
  const { value, grads } = paramGrads(() =>
    tf.tidy(() => {
      const x0 = tf.tensor4d(batch.images, [b, s, s, c])
      const eps = tf.tensor4d(noise, [b, s, s, c])
      const xt = Noise.addNoise(schedule, x0, eps, t)
      const inputs = Denoiser.encodeInputs(model.config, xt, t, batch.prompts)
      return tf.mean(tf.squaredDifference(forward(model.params, model.config.architecture, inputs), eps)) as tf.Scalar
    }), model.params)
  const loss = value.dataSync()[0]
  value.dispose()
  const gradNorm = Number.isFinite(loss) ? AdamW.step(model.params, grads, adam, lr, adamConfig) : NaN
  Scoped.disposeAll(grads)
  return { loss, gradNorm }
}

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

export const run = Effect.fn("Pretrain.run")(function*(o: PretrainOptions) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const backend = yield* Backend
  const schedule = Schedule.make(o.config.schedule)
  const model = yield* Scoped.acquireWith(() => Denoiser.init(o.config, o.seed), Denoiser.dispose)
  const ema = yield* Scoped.acquireWith(() => Denoiser.clone(model, false), Denoiser.dispose)
  const adam = yield* Scoped.acquireWith(() => AdamW.init(model.params), AdamW.dispose)
  const adamConfig = { ...AdamW.defaults, maxGradNorm: 1 }
  let rng = Rng.fromSeed(o.seed + 1)
  let state: TrainState = { step: 0, rng: rng.state(), adamStep: 0, wallMs: 0, losses: [], options: {} }
  const losses: Array<number> = []

  if (o.resume) {
    const ckpt = yield* CheckpointDir.latest(o.runDir)
    if (Option.isSome(ckpt)) {
      const st = yield* ckpt.value.readState(TrainState)
      yield* ckpt.value.restore("params.safetensors", model.params)
      yield* ckpt.value.restore("ema.safetensors", ema.params)
      yield* ckpt.value.restore("adam.safetensors", adam.m, "m.")
      yield* ckpt.value.restore("adam.safetensors", adam.v, "v.")
      adam.step = st.adamStep
      rng = Rng.fromState(st.rng)
      state = st
      losses.push(...st.losses)
      yield* Effect.logInfo(`resumed from ${ckpt.value.dir} at step ${st.step}`)
    } else {
      yield* Effect.logInfo(`no checkpoint in ${o.runDir}; starting fresh`)
    }
  }

  const checkpoint = Effect.fn("Pretrain.checkpoint")(function*(step: number, wallMs: number) {
    const st: TrainState = { step, rng: rng.state(), adamStep: adam.step, wallMs, losses, options: { ...o, config: undefined } }
    yield* CheckpointDir.save(o.runDir, step, {
      "params.safetensors": Safetensors.encode(ModelDir.toStored(model.params)),
      "ema.safetensors": Safetensors.encode(ModelDir.toStored(ema.params)),
      "adam.safetensors": Safetensors.encode({ ...ModelDir.toStored(adam.m, "m."), ...ModelDir.toStored(adam.v, "v.") }),
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
    step: (index) => {
      const batch = Dataset.nextBatch(rng, data)
      const r = trainStep(model, schedule, adam, batch, rng, lrAt(o, index), adamConfig)
      if (Number.isFinite(r.loss) && Number.isFinite(r.gradNorm)) {
        updateEma(ema.params, model.params, Math.min(o.emaDecay, (1 + index) / (10 + index)))
        losses.push(r.loss)
      }
      const recent = losses.slice(-50)
      return { ...r, show: { loss: recent.reduce((a, b) => a + b, 0) / recent.length, lr: lrAt(o, index) } }
    },
    checkpoint
  })

  const wallMinutes = wallMs / 60_000
  yield* Denoiser.save(o.out, ema, {
    trainedSteps: String(step),
    batchSize: String(o.batchSize),
    wallMinutes: wallMinutes.toFixed(1),
    seed: String(o.seed),
    backend: backend.name
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
