/**
 * How much a denoiser uses its prompt: on fresh training renders noised at
 * several timesteps, the noise-prediction error with the true prompt and
 * with the null prompt, and the error of the x0 estimate. A model that
 * ignores its text has the two noise errors equal (the first base model
 * here did, docs/models.md); a working one is clearly better with the
 * prompt at mid and high noise.
 *
 * @since 0.2.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import * as Dataset from "../data/Dataset.ts"
import * as Noise from "../diffusion/Noise.ts"
import * as Denoiser from "../model/Denoiser.ts"
import * as HostRead from "../tensor/HostRead.ts"
import { Rng } from "../tensor/Random.ts"

export interface Row {
  readonly t: number
  /** Mean squared error of the predicted noise, true prompt. */
  readonly epsPrompt: number
  /** The same with the null prompt. */
  readonly epsNull: number
  /** 1 - epsPrompt / epsNull: the share of the error the prompt removes. */
  readonly gain: number
  /** Mean squared error of the (clipped) x0 estimate with the prompt, pixels in [-1, 1]. */
  readonly x0: number
}

export const DEFAULT_TIMESTEPS = [10, 50, 150, 300, 500, 700, 900, 990]

/**
 * The report on `batch` renders of the training split (seeded).
 *
 * @since 0.2.0
 */
export const report = (model: Denoiser.Model, batch = 32, seed = 5, timesteps: ReadonlyArray<number> = DEFAULT_TIMESTEPS): Effect.Effect<Array<Row>> =>
  Effect.suspend(() => {
    const rng = Rng.fromSeed(seed)
    const data = Dataset.nextBatch(rng, { batchSize: batch, split: "train" })
    const a = Denoiser.unetConfig(model.config).architecture
    const shape: [number, number, number, number] = [batch, a.imageSize, a.imageSize, a.channels]
    const schedule = Denoiser.scheduleOf(model.config)
    return Effect.forEach(timesteps, (t) => {
      const noise = rng.normals(batch * a.imageSize * a.imageSize * a.channels)
      // The three errors of a timestep in one read.
      return Effect.map(
        HostRead.consumeFloat32(() => {
          const x0 = tf.tensor4d(data.images, shape)
          const eps = tf.tensor4d(noise, shape)
          const xt = Noise.addNoise(schedule, x0, eps, t)
          const withPrompt = Denoiser.eps(model, xt, t, data.prompts)
          const withNull = Denoiser.eps(model, xt, t, data.prompts.map(() => ""))
          const mse = (p: tf.Tensor, q: tf.Tensor) => tf.mean(tf.squaredDifference(p, q))
          const x0Hat = tf.clipByValue(Noise.x0FromEps(schedule, xt, withPrompt, t), -1, 1)
          return tf.stack([mse(withPrompt, eps), mse(withNull, eps), mse(x0Hat, x0)])
        }),
        ([epsPrompt, epsNull, x0]) => ({ t, epsPrompt, epsNull, gain: 1 - epsPrompt / epsNull, x0 })
      )
    })
  })

/** A markdown table of the report. */
export const markdown = (rows: ReadonlyArray<Row>): string =>
  [
    "| t | noise MSE, prompt | noise MSE, null prompt | error removed by the prompt | x0 MSE |",
    "|---|---|---|---|---|",
    ...rows.map((r) => `| ${r.t} | ${r.epsPrompt.toFixed(4)} | ${r.epsNull.toFixed(4)} | ${(100 * r.gain).toFixed(1)}% | ${r.x0.toFixed(4)} |`)
  ].join("\n")
