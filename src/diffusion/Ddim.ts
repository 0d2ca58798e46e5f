/**
 * DDIM (Song, Meng & Ermon 2021) sampling with stochasticity `eta`, the
 * per-step Gaussian log-likelihood used by policy-gradient / preference
 * methods (as DDPO's `ddim_step_with_logprob`), and classifier-free guidance.
 *
 * Notation (Schedule.ts): a_t = alphas_cumprod[t]; timestep -1 is the clean
 * data with a_{-1} = 1.
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { attempt, checkFloat32, checkNumber, checkShape, type DiffusionError, InvalidArgument, InvalidTimestep } from "./DiffusionError.ts"
import type { Effect } from "effect"
import { checkTimesteps, coefficient, type NoiseSource, type Timesteps } from "./Noise.ts"
import type * as Schedule from "./Schedule.ts"
import * as Steps from "../tensor/Steps.ts"

// ---------------------------------------------------------------------------
// Timestep grids
// ---------------------------------------------------------------------------

const checkSteps = (trainSteps: number, inferenceSteps: number, stepsOffset: number) => {
  checkNumber("trainSteps", trainSteps, (v) => Number.isInteger(v) && v > 0, "a positive integer")
  checkNumber(
    "inferenceSteps",
    inferenceSteps,
    (v) => Number.isInteger(v) && v >= 1 && v <= trainSteps,
    `an integer in [1, trainSteps = ${trainSteps}]`
  )
  const ratio = Math.floor(trainSteps / inferenceSteps)
  const maxOffset = trainSteps - 1 - (inferenceSteps - 1) * ratio
  checkNumber(
    "stepsOffset",
    stepsOffset,
    (v) => Number.isInteger(v) && v >= 0 && v <= maxOffset,
    `an integer in [0, ${maxOffset}]`
  )
  return ratio
}

/**
 * The descending inference timesteps, diffusers' "leading" spacing:
 * `ratio = floor(trainSteps / inferenceSteps)`, `t_i = i * ratio + stepsOffset`
 * for i = 0..inferenceSteps-1, reversed. E.g. (1000, 50) gives 980, 960, ..., 0.
 *
 * The step after the last timestep goes to t = -1, the clean data, with
 * a_{-1} = 1 (diffusers `set_alpha_to_one=True`): the last DDIM step then
 * returns its x0 prediction exactly, which is what an x0 estimator and the
 * exact-recovery property need. (The Stable Diffusion / SDXL scheduler configs
 * use `steps_offset=1, set_alpha_to_one=False`, i.e. final a = a_0, a tiny
 * 0.99915 vs 1 difference; pass `stepsOffset: 1` to reproduce their grid.)
 *
 * Throws `InvalidArgument` unless 1 <= inferenceSteps <= trainSteps and the
 * offset keeps every timestep below trainSteps.
 *
 * @since 0.1.0
 */
export const timesteps = (trainSteps: number, inferenceSteps: number, stepsOffset = 0): ReadonlyArray<number> => {
  const ratio = checkSteps(trainSteps, inferenceSteps, stepsOffset)
  return Array.from({ length: inferenceSteps }, (_, i) => (inferenceSteps - 1 - i) * ratio + stepsOffset)
}

/**
 * The timestep a DDIM step from `t` lands on: `t - floor(trainSteps /
 * inferenceSteps)`, or -1 (clean data) when that is negative; as diffusers'
 * `prev_timestep` with `set_alpha_to_one=True`. This is also how the
 * reference sharpening code walks a trajectory from a mid-way t.
 *
 * @since 0.1.0
 */
export const prevTimestep = (t: number, trainSteps: number, inferenceSteps: number): number => {
  const ratio = checkSteps(trainSteps, inferenceSteps, 0)
  if (!Number.isInteger(t) || t < 0 || t >= trainSteps) throw new InvalidTimestep({ t, trainSteps })
  const p = t - ratio
  return p < 0 ? -1 : p
}

// ---------------------------------------------------------------------------
// One step
// ---------------------------------------------------------------------------

/** a_t = alphas_cumprod[t], with a_{-1} = 1. */
const abar = (schedule: Schedule.Schedule, t: number) => (t < 0 ? 1 : schedule.alphasCumprod[t])

/**
 * Per-step coefficients of DDIM for a_t -> a_prev with stochasticity eta:
 *
 *   std    = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)
 *   dirCoef = sqrt(1 - a_prev - std^2)
 *
 * @since 0.1.0
 */
export const coefficients = (
  schedule: Schedule.Schedule,
  t: number,
  tPrev: number,
  eta: number
): { readonly alphaProd: number; readonly alphaProdPrev: number; readonly std: number; readonly dirCoef: number } => {
  const at = abar(schedule, t)
  const ap = abar(schedule, tPrev)
  const variance = ((1 - ap) / (1 - at)) * (1 - at / ap)
  const std = eta * Math.sqrt(Math.max(variance, 0))
  const dir2 = 1 - ap - std * std
  if (dir2 < -1e-12) {
    throw new InvalidArgument({
      name: "eta",
      value: eta,
      message: `eta = ${eta} too large for the step ${t} -> ${tPrev}: std^2 = ${std * std} exceeds 1 - a_prev = ${1 - ap}`
    })
  }
  return { alphaProd: at, alphaProdPrev: ap, std, dirCoef: Math.sqrt(Math.max(dir2, 0)) }
}

/**
 * Options of {@link step}.
 *
 * @since 0.1.0
 */
export interface StepOptions {
  readonly schedule: Schedule.Schedule
  /** Predicted noise at (xt, t). */
  readonly eps: tf.Tensor
  /** Current timestep(s), in [0, trainSteps). One per batch item allowed. */
  readonly t: Timesteps
  /** Target timestep(s), in [-1, t): -1 is clean data (a = 1). */
  readonly tPrev: Timesteps
  readonly xt: tf.Tensor
  /** Stochasticity, >= 0 (0 = deterministic DDIM / probability-flow ODE; 1 = DDPM posterior variance). Default 0. */
  readonly eta?: number
  /** Standard normal noise of xt's shape; required when some std > 0, ignored otherwise. Not disposed. */
  readonly noise?: tf.Tensor
  /**
   * Clip the x0 prediction to [-clipSample, clipSample] (then re-derive eps
   * from the clipped x0, as diffusers). Default: no clipping. diffusers'
   * DDIMScheduler defaults to `clip_sample=True` (range 1) for pixel-space
   * models in [-1, 1]; latent (Stable Diffusion / SDXL) configs disable it.
   */
  readonly clipSample?: number
}

/**
 * Result of {@link step}. Tensors are owned by the caller; `std` is a number
 * for scalar t/tPrev, else one number per batch item.
 *
 * @since 0.1.0
 */
export interface StepResult {
  /** mean + std * noise: the sample at tPrev. */
  readonly prevSample: tf.Tensor
  /** The x0 prediction used by this step (after optional clipping). */
  readonly x0Pred: tf.Tensor
  /** Deterministic part: sqrt(a_prev) * x0Pred + sqrt(1 - a_prev - std^2) * eps. */
  readonly mean: tf.Tensor
  readonly std: number | ReadonlyArray<number>
}

const perItem = (t: Timesteps, i: number) => (typeof t === "number" ? t : t[i])

/**
 * One DDIM step x_t -> x_{tPrev}:
 *
 *   x0Pred     = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
 *   std        = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)
 *   mean       = sqrt(a_prev) x0Pred + sqrt(1 - a_prev - std^2) eps
 *   prevSample = mean + std * noise
 *
 * Throws `InvalidTimestep`, `ShapeMismatch` or `InvalidArgument` (eta < 0,
 * tPrev >= t, noise missing while std > 0, eta too large for the step).
 *
 * @since 0.1.0
 */
export const step = (options: StepOptions): StepResult => {
  const { clipSample, eps, noise, schedule, t, tPrev, xt } = options
  const eta = checkNumber("eta", options.eta ?? 0, (v) => v >= 0, "a finite number >= 0")
  checkFloat32("xt", xt)
  checkFloat32("eps", eps)
  checkShape("eps", xt.shape, eps.shape)
  const ts = checkTimesteps(schedule, t, xt)
  const ps = checkTimesteps(schedule, tPrev, xt, true)
  if (clipSample !== undefined) checkNumber("clipSample", clipSample, (v) => v > 0, "a finite number > 0")
  const n = Math.max(ts.length, ps.length)
  const coefs = Array.from({ length: n }, (_, i) => {
    const ti = perItem(t, i)
    const pi = perItem(tPrev, i)
    if (pi >= ti) {
      throw new InvalidArgument({ name: "tPrev", value: pi, message: `tPrev (${pi}) must be below t (${ti})` })
    }
    return coefficients(schedule, ti, pi, eta)
  })
  const stds = coefs.map((c) => c.std)
  const stochastic = stds.some((s) => s > 0)
  if (stochastic) {
    if (noise === undefined) {
      throw new InvalidArgument({ name: "noise", value: undefined, message: `noise is required when eta > 0 (eta = ${eta})` })
    }
    checkFloat32("noise", noise)
    checkShape("noise", xt.shape, noise.shape)
  }
  const batched: Timesteps = typeof t === "number" && typeof tPrev === "number" ? 0 : Array.from({ length: n }, (_, i) => i)
  const coef = (f: (c: (typeof coefs)[number]) => number) => coefficient(batched, xt, (i) => f(coefs[i]))
  const out = tf.tidy(() => {
    // same coefficients and operation order as Noise.x0FromEps (so k = 1 PF-ODE == tweedie bit for bit)
    let x0Pred: tf.Tensor = tf.add(
      tf.mul(xt, coef((c) => 1 / Math.sqrt(c.alphaProd))),
      tf.mul(eps, coef((c) => -Math.sqrt(1 - c.alphaProd) / Math.sqrt(c.alphaProd)))
    )
    let epsUsed: tf.Tensor = eps
    if (clipSample !== undefined) {
      x0Pred = tf.clipByValue(x0Pred, -clipSample, clipSample)
      epsUsed = tf.div(
        tf.sub(xt, tf.mul(x0Pred, coef((c) => Math.sqrt(c.alphaProd)))),
        coef((c) => Math.sqrt(1 - c.alphaProd))
      )
    }
    const mean: tf.Tensor = tf.add(
      tf.mul(x0Pred, coef((c) => Math.sqrt(c.alphaProdPrev))),
      tf.mul(epsUsed, coef((c) => c.dirCoef))
    )
    const prevSample: tf.Tensor = stochastic ? tf.add(mean, tf.mul(noise!, coef((c) => c.std))) : mean.clone()
    return { prevSample, x0Pred, mean }
  })
  return { ...out, std: typeof t === "number" && typeof tPrev === "number" ? stds[0] : stds }
}

/**
 * Gaussian log density log N(sample; mean, std^2 I) per batch item, reduced
 * over all non-batch axes. `std` is a number or one per batch item (as
 * returned by {@link step}); result shape [B].
 *
 * `reduce: "sum"` (default) is the exact log density of the step. DDPO's
 * `ddim_step_with_logprob` computes the same elementwise terms
 * `-(x - m)^2 / (2 std^2) - log std - log sqrt(2 pi)` but then takes the
 * *mean* over pixels; `reduce: "mean"` reproduces that scaling (a per-pixel
 * average, same gradient direction, 1/D the magnitude).
 *
 * Differentiable in `mean` (and `sample`); throws `InvalidArgument` for std <= 0
 * (a deterministic step, eta = 0, has no density) and `ShapeMismatch`.
 *
 * @since 0.1.0
 */
export const logProb = (
  sample: tf.Tensor,
  mean: tf.Tensor,
  std: number | ReadonlyArray<number>,
  reduce: "sum" | "mean" = "sum"
): tf.Tensor1D => {
  checkFloat32("sample", sample)
  checkFloat32("mean", mean)
  checkShape("mean", sample.shape, mean.shape)
  if (sample.rank < 1) checkShape("sample (needs a batch axis)", [1], sample.shape)
  const stds = typeof std === "number" ? [std] : std
  if (typeof std !== "number") checkShape("std (one per batch item)", [sample.shape[0]], [std.length])
  for (const s of stds) {
    if (!(Number.isFinite(s) && s > 0)) {
      throw new InvalidArgument({
        name: "std",
        value: s,
        message: `std must be finite and > 0 for a log density, got ${s} (a deterministic step, eta = 0, has no density)`
      })
    }
  }
  const axes = Array.from({ length: sample.rank - 1 }, (_, i) => i + 1)
  const perBatch: Timesteps = typeof std === "number" ? 0 : Array.from({ length: std.length }, (_, i) => i)
  return tf.tidy(() => {
    const s = coefficient(perBatch, sample, (i) => stds[i])
    const logS = coefficient(perBatch, sample, (i) => Math.log(stds[i]) + 0.5 * Math.log(2 * Math.PI))
    const z = tf.div(tf.sub(sample, mean), s)
    const elem = tf.sub(tf.mul(tf.square(z), -0.5), logS)
    const red = axes.length === 0 ? elem : reduce === "sum" ? tf.sum(elem, axes) : tf.mean(elem, axes)
    return tf.reshape(red, [sample.shape[0]]) as tf.Tensor1D
  })
}

// ---------------------------------------------------------------------------
// Denoisers and classifier-free guidance
// ---------------------------------------------------------------------------

/**
 * An epsilon-prediction model at one timestep for the whole batch. It must
 * return a *new* tensor of xt's shape (the sampler disposes it after use) and
 * must not dispose `xt`.
 *
 * @since 0.1.0
 */
export type Denoiser = (xt: tf.Tensor, t: number) => tf.Tensor

/**
 * A conditional model evaluated on a doubled batch in one call, diffusers'
 * convention: it receives `concat([xt, xt])` (batch 2B) and must return eps of
 * batch 2B whose first B items are the *unconditional* (negative-prompt)
 * predictions and last B the *conditional* ones; the implementation pairs the
 * first half with the null/negative conditioning and the second half with the
 * prompt. Same ownership rules as {@link Denoiser}.
 *
 * @since 0.1.0
 */
export type PairedDenoiser = (xtPair: tf.Tensor, t: number) => tf.Tensor

/**
 * Classifier-free guidance combination `epsUncond + scale * (epsCond - epsUncond)`
 * (scale 1 = the conditional model, 0 = unconditional).
 *
 * @since 0.1.0
 */
export const cfg = (epsCond: tf.Tensor, epsUncond: tf.Tensor, scale: number): tf.Tensor => {
  checkNumber("scale", scale, () => true, "a finite number")
  checkShape("epsUncond", epsCond.shape, epsUncond.shape)
  return tf.tidy(() => tf.add(epsUncond, tf.mul(tf.sub(epsCond, epsUncond), scale)))
}

/**
 * A guided {@link Denoiser} from a {@link PairedDenoiser}: one model call on
 * the doubled batch per step, then {@link cfg}.
 *
 * @since 0.1.0
 */
export const guided = (denoisePair: PairedDenoiser, scale: number): Denoiser => {
  checkNumber("scale", scale, () => true, "a finite number")
  return (xt, t) => {
    const b = xt.shape[0]
    const pairShape = [2 * b, ...xt.shape.slice(1)]
    const pair = tf.concat([xt, xt], 0)
    let both: tf.Tensor
    try {
      both = denoisePair(pair, t)
    } finally {
      pair.dispose()
    }
    try {
      checkShape("paired denoiser output", pairShape, both.shape)
      return tf.tidy(() => {
        const [uncond, cond] = tf.split<tf.Tensor>(both, [b, b], 0)
        return cfg(cond, uncond, scale)
      })
    } finally {
      both.dispose()
    }
  }
}

/**
 * A guided {@link Denoiser} from two separate calls (conditional and
 * unconditional models), for models that cannot batch the two.
 *
 * @since 0.1.0
 */
export const guidedSeparate = (denoiseCond: Denoiser, denoiseUncond: Denoiser, scale: number): Denoiser => {
  checkNumber("scale", scale, () => true, "a finite number")
  return (xt, t) => {
    const c = denoiseCond(xt, t)
    try {
      const u = denoiseUncond(xt, t)
      try {
        return cfg(c, u, scale)
      } finally {
        u.dispose()
      }
    } finally {
      c.dispose()
    }
  }
}

// ---------------------------------------------------------------------------
// Sampler
// ---------------------------------------------------------------------------

/**
 * What {@link SampleOptions.onStep} sees after each step. The tensors are
 * disposed when the callback returns: `clone()` what you keep.
 *
 * @since 0.1.0
 */
export interface StepInfo {
  /** 0-based step index. */
  readonly index: number
  readonly t: number
  readonly tPrev: number
  readonly xt: tf.Tensor
  readonly eps: tf.Tensor
  readonly prevSample: tf.Tensor
  readonly x0Pred: tf.Tensor
  readonly mean: tf.Tensor
  readonly std: number
}

/**
 * Options of {@link sample}.
 *
 * @since 0.1.0
 */
export interface SampleOptions {
  readonly schedule: Schedule.Schedule
  readonly denoise: Denoiser
  /** Starting sample at the first grid timestep (usually pure noise). Not disposed. */
  readonly xT: tf.Tensor
  readonly inferenceSteps: number
  /** Default 0 (deterministic). */
  readonly eta?: number
  /** Required when eta > 0: a seeded source; each returned tensor is disposed by the sampler. */
  readonly noise?: NoiseSource
  /** See {@link StepOptions.clipSample}. Default: no clipping. */
  readonly clipSample?: number
  /** Default 0; see {@link timesteps}. */
  readonly stepsOffset?: number
  /**
   * Start at this timestep instead of the top of the grid: the grid is
   * `t0, t0 - ratio, ..., ` down to clean data (img2img-style / mid-trajectory
   * sampling). Must be in [0, trainSteps).
   */
  readonly startTimestep?: number
  readonly onStep?: (info: StepInfo) => void
}

/**
 * Runs DDIM from `xT` over the {@link timesteps} grid down to clean data and
 * returns the final sample (owned by the caller). One model call per step
 * (NFE = inferenceSteps, or twice the batch with {@link guided}). No tensors
 * other than the result survive the call, also when it throws.
 *
 * @since 0.1.0
 */
export const sample = (options: SampleOptions): tf.Tensor => Steps.drain(sampleSteps(options))

/**
 * {@link sample} as steps: the generator yields after each DDIM step (at
 * which point it may be abandoned: `Steps.run`).
 *
 * @since 0.8.0
 */
export function* sampleSteps(options: SampleOptions): Steps.Steps<tf.Tensor> {
  const { clipSample, denoise, inferenceSteps, noise, onStep, schedule, xT } = options
  const eta = checkNumber("eta", options.eta ?? 0, (v) => v >= 0, "a finite number >= 0")
  if (eta > 0 && noise === undefined) {
    throw new InvalidArgument({ name: "noise", value: undefined, message: `a noise source is required when eta > 0 (eta = ${eta})` })
  }
  checkFloat32("xT", xT)
  // Any sample shape behind the batch axis: images [B, H, W, C], latents, the lab's points [B, 2].
  if (xT.rank < 2) {
    throw new InvalidArgument({ name: "xT", value: xT.shape, message: `xT must have a batch axis and a sample shape (rank >= 2), got shape [${xT.shape.join(", ")}]` })
  }
  const grid = options.startTimestep === undefined
    ? timesteps(schedule.trainSteps, inferenceSteps, options.stepsOffset ?? 0)
    : trajectory(schedule.trainSteps, inferenceSteps, options.startTimestep)
  let x: tf.Tensor = xT
  try {
    for (let i = 0; i < grid.length; i++) {
      const t = grid[i]
      const tPrev = i + 1 < grid.length ? grid[i + 1] : -1
      const eps = denoise(x, t)
      let z: tf.Tensor | undefined
      let next: tf.Tensor | undefined
      try {
        checkShape(`denoiser output at t = ${t}`, x.shape, eps.shape)
        if (eta > 0) {
          z = noise!(x.shape) as tf.Tensor
          checkShape("noise source output", x.shape, z.shape)
        }
        const r = step({ schedule, eps, t, tPrev, xt: x, eta, noise: z, clipSample })
        next = r.prevSample
        try {
          onStep?.({ index: i, t, tPrev, xt: x, eps, ...r, std: r.std as number })
        } finally {
          r.x0Pred.dispose()
          r.mean.dispose()
        }
      } catch (e) {
        next?.dispose()
        throw e
      } finally {
        if (eps !== x) eps.dispose()
        z?.dispose()
      }
      if (x !== xT) x.dispose()
      x = next
      if (i + 1 < grid.length) yield
    }
  } catch (e) {
    if (x !== xT) x.dispose()
    throw e
  }
  return x === xT ? xT.clone() : x
}

/**
 * The descending grid `t0, t0 - ratio, ...` (ratio = floor(trainSteps /
 * inferenceSteps)) while >= 0: the timesteps a mid-trajectory DDIM run
 * starting at t0 visits before landing on clean data.
 *
 * @since 0.1.0
 */
export const trajectory = (trainSteps: number, inferenceSteps: number, t0: number): ReadonlyArray<number> => {
  const ratio = checkSteps(trainSteps, inferenceSteps, 0)
  if (!Number.isInteger(t0) || t0 < 0 || t0 >= trainSteps) throw new InvalidTimestep({ t: t0, trainSteps })
  const out: Array<number> = []
  for (let t = t0; t >= 0; t -= ratio) out.push(t)
  return out
}

/**
 * {@link sample} as an Effect with typed failures.
 *
 * @since 0.1.0
 */
export const sampleEffect = (options: SampleOptions): Effect.Effect<tf.Tensor, DiffusionError> =>
  attempt(() => sample(options))
