/**
 * Denoising trajectories for sharpening (paper Sec. 3.2, Algorithms 1-2):
 * from clean images x0 (data for SFT, online samples for RLHF) draw n noises,
 * noise to a timestep t, run m DDIM steps, and record at every step the
 * state x_{t_k}, the timestep, the predicted noise and the x0 estimate
 * c(x_{t_k}, t_k) that the reward will judge.
 *
 * States are recorded without gradient: the objectives treat them as data
 * and recompute the model's prediction (with gradient) on the selected paths
 * only, which is the usual denoising-loss view of a sample and costs one
 * backward pass instead of n.
 *
 * Layout: every step tensor has n*B rows, row i*B + b is sample i of batch item b.
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Schema } from "effect"
import * as Ddim from "../diffusion/Ddim.ts"
import * as Estimators from "../diffusion/Estimators.ts"
import * as Noise from "../diffusion/Noise.ts"
import type * as Schedule from "../diffusion/Schedule.ts"
import * as Generate from "../eval/Generate.ts"
import * as Denoiser from "../model/Denoiser.ts"
import type { Rng } from "../tensor/Random.ts"

export const Estimator = Schema.Union([
  Schema.Struct({ kind: Schema.Literal("tweedie") }),
  /** The paper's Eq. 6: k probability-flow ODE (DDIM, eta 0) steps to clean data. */
  Schema.Struct({ kind: Schema.Literal("pf-ode"), k: Schema.Int.check(Schema.isGreaterThan(0)) })
])
export type Estimator = typeof Estimator.Type

export const TimestepChoice = Schema.Union([
  /** Uniform over the sampler grid, keeping all m steps above clean data. */
  Schema.Struct({ kind: Schema.Literal("uniform") }),
  /** Uniform over grid timesteps within [min, max]. */
  Schema.Struct({ kind: Schema.Literal("range"), min: Schema.Int, max: Schema.Int })
])
export type TimestepChoice = typeof TimestepChoice.Type

export interface TrajectoryOptions {
  /** Trajectories per item (paper: n = 3). */
  readonly n: number
  /** Denoising steps per trajectory (paper: m = 3). */
  readonly m: number
  /** Sampler grid the steps walk on (paper: DDIM 50, so a step is 20 timesteps). */
  readonly inferenceSteps: number
  /** Classifier-free guidance of the trajectory steps (paper: 5). */
  readonly cfg: number
  readonly estimator: Estimator
  readonly timestep: TimestepChoice
}

export interface Step {
  readonly t: number
  /** x_{t_k}, [n*B, H, W, C]. */
  readonly xt: tf.Tensor4D
  /** Guided noise prediction at x_{t_k}. */
  readonly eps: tf.Tensor4D
  /** The x0 estimate c(x_{t_k}, t_k), clipped to [-1, 1]. */
  readonly x0: tf.Tensor4D
}

export interface Trajectories {
  readonly n: number
  readonly batch: number
  /** One prompt per batch item. */
  readonly prompts: ReadonlyArray<string>
  /** The clean images the paths start from, [B, H, W, C]. */
  readonly x0: tf.Tensor4D
  /** The n noises, [n*B, H, W, C] (the reference code's epsilon target). */
  readonly noise: tf.Tensor4D
  readonly steps: ReadonlyArray<Step>
  /** Model evaluations spent (one per image per network call, guidance counts 2). */
  readonly nfe: number
}

export const dispose = (t: Trajectories): void => {
  t.x0.dispose()
  t.noise.dispose()
  for (const s of t.steps) tf.dispose([s.xt, s.eps, s.x0])
}

/** Spacing of the sampler grid in training timesteps. */
export const stride = (trainSteps: number, inferenceSteps: number): number => Math.floor(trainSteps / inferenceSteps)

/**
 * The grid timesteps {@link chooseTimestep} draws from (descending): those
 * that leave room for all m steps, within the chosen range.
 *
 * @since 0.3.0
 */
export const startTimesteps = (trainSteps: number, o: Pick<TrajectoryOptions, "m" | "inferenceSteps" | "timestep">): Array<number> => {
  const ratio = stride(trainSteps, o.inferenceSteps)
  const grid = Ddim.timesteps(trainSteps, o.inferenceSteps).filter((t) => t - (o.m - 1) * ratio >= 0)
  const range = o.timestep
  return range.kind === "range" ? grid.filter((t) => t >= range.min && t <= range.max) : grid
}

/**
 * A starting timestep on the sampler grid such that all m steps stay at
 * t >= 0 (the last step then lands on the next grid point or clean data).
 *
 * @since 0.1.0
 */
export const chooseTimestep = (rng: Rng, trainSteps: number, o: Pick<TrajectoryOptions, "m" | "inferenceSteps" | "timestep">): number => {
  const allowed = startTimesteps(trainSteps, o)
  if (allowed.length === 0) throw new RangeError(`no grid timestep allows ${o.m} steps in the chosen range`)
  return allowed[rng.int(allowed.length)]
}

const repeatRows = (x: tf.Tensor4D, n: number): tf.Tensor4D => tf.tidy(() => tf.concat(Array.from({ length: n }, () => x), 0) as tf.Tensor4D)

/**
 * Generate the trajectories of Algorithms 1-2 (no gradient).
 *
 * @since 0.1.0
 */
export const generate = (
  model: Denoiser.Model,
  schedule: Schedule.Schedule,
  x0: tf.Tensor4D,
  prompts: ReadonlyArray<string>,
  rng: Rng,
  o: TrajectoryOptions
): Trajectories => {
  const b = x0.shape[0]
  if (prompts.length !== b) throw new RangeError(`${prompts.length} prompts for a batch of ${b}`)
  const ratio = stride(schedule.trainSteps, o.inferenceSteps)
  const t0 = chooseTimestep(rng, schedule.trainSteps, o)
  const rows = o.n * b
  const allPrompts = Array.from({ length: rows }, (_, r) => prompts[r % b])
  const noise = Generate.normalTensor(rng, [rows, ...x0.shape.slice(1)]) as tf.Tensor4D
  const perCall = rows * (o.cfg === 1 ? 1 : 2)
  let nfe = 0
  const denoise = (x: tf.Tensor4D, t: number) => {
    nfe += perCall
    return Denoiser.guidedEps(model, x, t, allPrompts, o.cfg)
  }
  const steps: Array<Step> = []
  let x = tf.tidy(() => Noise.addNoise(schedule, repeatRows(x0, o.n), noise, t0))
  try {
    for (let k = 0; k < o.m; k++) {
      const t = t0 - k * ratio
      const eps = denoise(x, t)
      const estimate = o.estimator.kind === "tweedie" || o.estimator.k === 1
        ? Estimators.tweedie(schedule, x, eps, t)
        : Estimators.pfOde({ schedule, denoise, xt: x, t, k: Math.min(o.estimator.k, t + 1), epsAtT: eps })
      const x0k = tf.tidy(() => tf.clipByValue(estimate, -1, 1) as tf.Tensor4D)
      estimate.dispose()
      steps.push({ t, xt: x, eps, x0: x0k })
      if (k + 1 < o.m) {
        const r = Ddim.step({ schedule, eps, t, tPrev: t - ratio >= 0 ? t - ratio : -1, xt: x, eta: 0, clipSample: 1 })
        tf.dispose([r.x0Pred, r.mean])
        x = r.prevSample
      }
    }
  } catch (e) {
    for (const s of steps) tf.dispose([s.xt, s.eps, s.x0])
    if (!steps.some((s) => s.xt === x)) x.dispose()
    noise.dispose()
    throw e
  }
  return { n: o.n, batch: b, prompts, x0: x0.clone(), noise, steps, nfe }
}

/**
 * Rows of one path per batch item: `paths[b]` in [0, n) picks the sample of
 * item b. Returns an index vector into the n*B rows.
 */
export const rowIndex = (t: Pick<Trajectories, "batch">, paths: ReadonlyArray<number>): Array<number> =>
  paths.map((i, b) => i * t.batch + b)
