/**
 * The lab's base model: the MLP denoiser (`Mlp.labConfig`) trained on the
 * ring mixture with the standard epsilon loss, and an evaluation over fresh
 * DDIM samples. Effects over tensor functions; `pipelines/lab.ts` wraps them.
 *
 * @since 0.4.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import * as Ddim from "../diffusion/Ddim.ts"
import * as Noise from "../diffusion/Noise.ts"
import * as Schedule from "../diffusion/Schedule.ts"
import * as Denoiser from "../model/Denoiser.ts"
import * as AdamW from "../optim/AdamW.ts"
import * as LrSchedule from "../optim/LrSchedule.ts"
import { paramGrads } from "../tensor/Grad.ts"
import * as HostRead from "../tensor/HostRead.ts"
import { Rng } from "../tensor/Random.ts"
import * as Scoped from "../tensor/Scoped.ts"
import * as TrainingLoop from "../train/TrainingLoop.ts"
import * as LabReward from "./LabReward.ts"
import * as Ring from "./Ring.ts"

export interface PretrainOptions {
  readonly steps: number
  readonly batch: number
  readonly lr: number
  readonly seed: number
}

export const pretrainDefaults: PretrainOptions = { steps: 3000, batch: 256, lr: 2e-3, seed: 0 }

/**
 * Trains `model` in place on ring samples: eps MSE at t ~ U[0, T), AdamW
 * (0.9, 0.999), cosine learning rate, on the project's training loop
 * (`TrainingLoop.run`: progress bar, stop on a non-finite loss; no
 * checkpoints, it takes seconds). Returns the mean loss of the last 100 steps.
 *
 * @since 0.4.0
 */
export const pretrain = Effect.fn("LabModel.pretrain")(function*(model: Denoiser.Model, o: PretrainOptions) {
  const rng = Rng.fromSeed(o.seed)
  const schedule = Denoiser.scheduleOf(model.config)
  const state = AdamW.init(model.params)
  const recent: Array<number> = []
  const step = (index: number) =>
    Effect.gen(function*() {
      const x0 = Ring.sampleModel(rng, o.batch)
      const ts = Array.from({ length: o.batch }, () => rng.int(schedule.trainSteps))
      const eps = rng.normals(2 * o.batch)
      const { loss, gradNorm } = yield* Scoped.use(() =>
        paramGrads(() =>
          tf.tidy(() => {
            const e = tf.tensor2d(eps, [o.batch, 2])
            const xt = Noise.addNoise(schedule, tf.tensor2d(x0, [o.batch, 2]), e, ts)
            return tf.mean(tf.squaredDifference(Denoiser.eps(model, xt, ts, new Array<string>(o.batch).fill("")), e)) as tf.Scalar
          }), model.params), ({ grads, value }) =>
        Effect.gen(function*() {
          const loss = yield* HostRead.scalar(value)
          const lr = LrSchedule.at({ lr: o.lr, warmupSteps: 100, schedule: "cosine", totalSteps: o.steps }, index)
          const gradNorm = yield* AdamW.step(model.params, grads, state, lr, { ...AdamW.defaults, maxGradNorm: 1 })
          return { loss, gradNorm }
        }))
      recent.push(loss)
      if (recent.length > 100) recent.shift()
      return { loss, gradNorm, show: { loss } }
    })
  yield* TrainingLoop.run({
    label: "lab base",
    total: o.steps,
    start: 0,
    startWallMs: 0,
    maxMinutes: 0,
    checkpointEvery: o.steps + 1,
    step,
    checkpoint: () => Effect.void
  }).pipe(Effect.ensuring(Effect.sync(() => AdamW.dispose(state))))
  return recent.reduce((a, b) => a + b, 0) / recent.length
})

export interface LabMetrics {
  /** Mean reward of the samples. */
  readonly reward: number
  /** Fraction within `Ring.MODE_RADIUS` of the rewarded mode. */
  readonly inMode: number
  /** Fraction within 3 std of the ring (on the data manifold). */
  readonly onRing: number
}

/**
 * `count` fresh DDIM samples (eta 0, `steps` steps) in lab units, seeded.
 *
 * @since 0.4.0
 */
export const sample = (model: Denoiser.Model, count: number, seed: number, steps = 50): Effect.Effect<Float32Array> =>
  HostRead.consumeFloat32(() => {
    const rng = Rng.fromSeed(seed)
    const schedule = Schedule.make(model.config.schedule)
    const prompts = new Array<string>(count).fill("")
    const xT = tf.tensor2d(rng.normals(2 * count), [count, 2])
    return Ddim.sample({ schedule, denoise: (x, t) => Denoiser.eps(model, x, t, prompts), xT, inferenceSteps: steps, clipSample: 1 })
  }).pipe(Effect.map((x) => x.map((v) => v * Ring.SCALE)), Effect.withSpan("LabModel.sample"))

/** The lab's measures of points in lab units. */
export const measure = (points: Float32Array, reward: LabReward.LabRewardName): LabMetrics => {
  const count = points.length / 2
  let r = 0
  let mode = 0
  let ring = 0
  for (let i = 0; i < count; i++) {
    const x = points[2 * i]
    const y = points[2 * i + 1]
    r += LabReward.score(reward, x, y)
    if (Ring.inMode(x, y, LabReward.TARGET_MODE)) mode++
    if (Ring.onRing(x, y)) ring++
  }
  return { reward: r / count, inMode: mode / count, onRing: ring / count }
}

/**
 * Best-of-N at inference: N samples per point, the best by the reward kept
 * (N times the sampling NFE, no training).
 *
 * @since 0.4.0
 */
export const bestOfN = Effect.fn("LabModel.bestOfN")(function*(
  model: Denoiser.Model,
  count: number,
  n: number,
  seed: number,
  reward: LabReward.LabRewardName,
  steps = 50
) {
  const all = yield* sample(model, count * n, seed, steps)
  const out = new Float32Array(2 * count)
  for (let i = 0; i < count; i++) {
    let best = -Infinity
    for (let j = 0; j < n; j++) {
      const k = j * count + i
      const s = LabReward.score(reward, all[2 * k], all[2 * k + 1])
      if (s > best) {
        best = s
        out[2 * i] = all[2 * k]
        out[2 * i + 1] = all[2 * k + 1]
      }
    }
  }
  return out
})
