/**
 * Single-timestep training data of the fine-tuning baselines (standard
 * fine-tuning, Diffusion-DPO): every row is a clean image noised once,
 *
 *   x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps,   t uniform in [0, T) per item,
 *
 * and the objectives regress the policy's conditional eps_theta(x_t, t, c)
 * on eps, as in standard diffusion training.
 *
 * It is a {@link Trajectories} value so the pipeline's stages pass it along
 * unchanged: one "step" whose `xt` holds the noised rows and whose `x0` the
 * clean rows (what a reward scores), `noise` the eps of every row. Rows are
 * laid out as in sharpening, row i*B + b is sample i of item b; all rows of
 * an item share its timestep (a Diffusion-DPO pair is noised at one t).
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Layer } from "effect"
import * as Noise from "../diffusion/Noise.ts"
import * as Schedule from "../diffusion/Schedule.ts"
import * as Generate from "./Generate.ts"
import * as Denoiser from "../model/Denoiser.ts"
import type { Rng } from "../tensor/Random.ts"
import { RandomSource } from "../tensor/RandomSource.ts"
import * as Scoped from "../tensor/Scoped.ts"
import type { Trajectories } from "./Trajectory.ts"
import { TrajectoryGenerator } from "./TrajectoryGenerator.ts"

export interface NoisedSamples extends Trajectories {
  readonly kind: "noised"
  /** The clean image of every row, [n*B, H, W, C] (also `steps[0].x0`). */
  readonly clean: tf.Tensor
  /** The training timestep of every row (`steps[0].t` is row 0's). */
  readonly timesteps: ReadonlyArray<number>
}

/** Whether trajectories are single-timestep samples (a mis-wired stack is a defect). */
export const isNoisedSamples = (t: Trajectories): t is NoisedSamples => (t as Partial<NoisedSamples>).kind === "noised"

/**
 * Noise `clean` rows ([n*B], row i*B + b belongs to item b) with `noise` at
 * one timestep per item. Takes ownership of `clean` and `noise`; `x0` of the
 * result is sample 0 of every item.
 *
 * @since 0.1.0
 */
export const make = (
  schedule: Schedule.Schedule,
  o: {
    readonly clean: tf.Tensor
    readonly noise: tf.Tensor
    /** One training timestep per item, [B]. */
    readonly itemTimesteps: ReadonlyArray<number>
    readonly prompts: ReadonlyArray<string>
    readonly n: number
    readonly nfe: number
  }
): NoisedSamples => {
  const b = o.prompts.length
  if (o.clean.shape[0] !== o.n * b) throw new RangeError(`${o.clean.shape[0]} rows for n = ${o.n} and ${b} prompts`)
  if (o.itemTimesteps.length !== b) throw new RangeError(`${o.itemTimesteps.length} timesteps for ${b} items`)
  const timesteps = Array.from({ length: o.n * b }, (_, r) => o.itemTimesteps[r % b])
  const { x0, xt } = tf.tidy(() => ({
    xt: Noise.addNoise(schedule, o.clean, o.noise, timesteps),
    x0: tf.slice(o.clean, 0, b)
  }))
  return {
    kind: "noised",
    n: o.n,
    batch: b,
    prompts: o.prompts,
    x0,
    noise: o.noise,
    clean: o.clean,
    timesteps,
    // eps: the noise itself (no model evaluation happens at x_t here).
    steps: [{ t: timesteps[0], xt, eps: o.noise, x0: o.clean }],
    nfe: o.nfe
  }
}

export const dispose = (s: NoisedSamples): void => {
  tf.dispose([...new Set([s.x0, s.noise, s.clean, ...s.steps.flatMap((k) => [k.xt, k.eps, k.x0])])])
}

/** A training timestep per item, uniform in [0, trainSteps) (standard diffusion training). */
export const drawTimesteps = (rng: Rng, trainSteps: number, count: number): Array<number> =>
  Array.from({ length: count }, () => rng.int(trainSteps))

/**
 * Per-row epsilon MSE of a model's conditional prediction,
 * mean over pixels of (eps_theta(x_t, t, c) - eps)^2, on the given rows
 * ([rows.length]). Differentiable in the model's parameters.
 *
 * @since 0.1.0
 */
export const rowErrors = (model: Denoiser.Model, s: NoisedSamples, rows: ReadonlyArray<number>): tf.Tensor1D =>
  tf.tidy(() => {
    const idx = tf.tensor1d(rows as Array<number>, "int32")
    const x = tf.gather(s.steps[0].xt, idx) as tf.Tensor
    const target = tf.gather(s.noise, idx) as tf.Tensor
    const pred = Denoiser.eps(model, x, rows.map((r) => s.timesteps[r]), rows.map((r) => s.prompts[r % s.batch]))
    return tf.mean(tf.reshape(tf.squaredDifference(pred, target), [rows.length, -1]), 1) as tf.Tensor1D
  })

/**
 * Standard fine-tuning data: the batch's clean images (data for SFT), one
 * noise and one timestep uniform in [0, T) per image; no model evaluation
 * (NFE 0). Noise and timesteps come from the run's generator.
 *
 * @since 0.1.0
 */
export const generatorLayer = Layer.effect(
  TrajectoryGenerator,
  Effect.gen(function*() {
    const { model } = yield* Denoiser.Denoiser
    const { rng } = yield* RandomSource
    const schedule = Schedule.make(model.config.schedule)
    return TrajectoryGenerator.of({
      options: { n: 1, m: 1, inferenceSteps: schedule.trainSteps, cfg: 1, estimator: { kind: "tweedie" }, timestep: { kind: "uniform" } },
      generate: (x0, prompts) =>
        Scoped.acquireWith(() => {
          const b = x0.shape[0]
          if (prompts.length !== b) throw new RangeError(`${prompts.length} prompts for a batch of ${b}`)
          const itemTimesteps = drawTimesteps(rng, schedule.trainSteps, b)
          const noise = Generate.normalTensor(rng, x0.shape) as tf.Tensor
          return make(schedule, { clean: x0.clone(), noise, itemTimesteps, prompts, n: 1, nfe: 0 }) as Trajectories
        }, (t) => dispose(t as NoisedSamples)).pipe(Effect.withSpan("NoisedSamples.generate"))
    })
  })
)
