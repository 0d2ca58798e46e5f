/**
 * Estimators of the clean sample x0 from an intermediate state x_t, used to
 * score intermediate states with a reward (paper Sec. 3.2, Eq. 6-7:
 * R(x_t, c) = Reward(c(x_t, t))).
 *
 * - {@link tweedie}: one-step posterior-mean estimate (x_t - sigma_t eps) / alpha_t
 *   from an already-computed eps (0 extra NFE). This is what the authors'
 *   reference code scores (the scheduler's `pred_original_sample`).
 * - {@link pfOde}: the paper's c(x_t, t) (Eq. 6): x_t transported to t = 0 by
 *   the probability-flow ODE, integrated with k deterministic DDIM steps
 *   (eta = 0). DDIM with eta = 0 is the exact-in-the-linear-part (first-order
 *   exponential-integrator / Euler in sigma/alpha) discretisation of the PF-ODE,
 *   so the estimate converges to the ODE solution as k grows.
 *   Cost: NFE = k model calls (k = 1 reproduces {@link tweedie}).
 *
 * @since 0.1.0
 */
import type * as tf from "@tensorflow/tfjs-core"
import type { Effect } from "effect"
import * as Ddim from "./Ddim.ts"
import { attempt, checkFloat32, checkNumber, checkShape, type DiffusionError, InvalidArgument, InvalidTimestep } from "./DiffusionError.ts"
import * as Noise from "./Noise.ts"
import type * as Schedule from "./Schedule.ts"

/**
 * Tweedie's one-step estimate x0 = (x_t - sigma_t eps) / alpha_t (per-batch
 * timesteps allowed). Same as `Noise.x0FromEps`.
 *
 * @since 0.1.0
 */
export const tweedie = <T extends tf.Tensor>(schedule: Schedule.Schedule, xt: T, eps: tf.Tensor, t: Noise.Timesteps): T =>
  Noise.x0FromEps(schedule, xt, eps, t)

/**
 * The PF-ODE integration grid from t to clean data in k steps:
 * `s_j = t - round(j * (t + 1) / k)` for j = 0..k, so s_0 = t, s_k = -1, and
 * the k steps split the index range [t, -1] as evenly as integers allow.
 * Requires 1 <= k <= t + 1 (every step must move at least one timestep).
 *
 * @since 0.1.0
 */
export const pfOdeGrid = (trainSteps: number, t: number, k: number): ReadonlyArray<number> => {
  if (!Number.isInteger(t) || t < 0 || t >= trainSteps) throw new InvalidTimestep({ t, trainSteps })
  checkNumber("k", k, (v) => Number.isInteger(v) && v >= 1 && v <= t + 1, `an integer in [1, t + 1 = ${t + 1}]`)
  return Array.from({ length: k + 1 }, (_, j) => t - Math.round((j * (t + 1)) / k))
}

/**
 * Options of {@link pfOde}.
 *
 * @since 0.1.0
 */
export interface PfOdeOptions {
  readonly schedule: Schedule.Schedule
  /** Epsilon model; called k times (NFE = k). */
  readonly denoise: Ddim.Denoiser
  /** State at timestep t. Not disposed. */
  readonly xt: tf.Tensor
  readonly t: number
  /** Number of DDIM (eta = 0) solver steps, 1 <= k <= t + 1. */
  readonly k: number
  /**
   * Precomputed eps at (xt, t), e.g. from the training step that produced xt;
   * saves one model call (NFE = k - 1). Not disposed.
   */
  readonly epsAtT?: tf.Tensor
  /** See `Ddim.StepOptions.clipSample`. Default: no clipping. */
  readonly clipSample?: number
}

/**
 * The paper's x0 estimate c(x_t, t) (Eq. 6): k deterministic DDIM steps on
 * the grid {@link pfOdeGrid} from t down to clean data (t = -1, alpha = 1).
 * Returns x0 (owned by the caller); no other tensor survives the call.
 * NFE = k (k - 1 with `epsAtT`); k = 1 equals {@link tweedie}.
 *
 * @since 0.1.0
 */
export const pfOde = (options: PfOdeOptions): tf.Tensor => {
  const { clipSample, denoise, epsAtT, k, schedule, t, xt } = options
  checkFloat32("xt", xt)
  if (xt.rank < 2) {
    throw new InvalidArgument({ name: "xt", value: xt.shape, message: `xt must have a batch axis and a sample shape (rank >= 2), got shape [${xt.shape.join(", ")}]` })
  }
  if (epsAtT !== undefined) checkShape("epsAtT", xt.shape, epsAtT.shape)
  const grid = pfOdeGrid(schedule.trainSteps, t, k)
  let x: tf.Tensor = xt
  try {
    for (let j = 0; j < k; j++) {
      const s = grid[j]
      const eps = j === 0 && epsAtT !== undefined ? epsAtT : denoise(x, s)
      try {
        checkShape(`denoiser output at t = ${s}`, x.shape, eps.shape)
        const r = Ddim.step({ schedule, eps, t: s, tPrev: grid[j + 1], xt: x, eta: 0, clipSample })
        r.x0Pred.dispose()
        r.mean.dispose()
        if (x !== xt) x.dispose()
        x = r.prevSample
      } finally {
        if (eps !== epsAtT && eps !== xt) eps.dispose()
      }
    }
  } catch (e) {
    if (x !== xt) x.dispose()
    throw e
  }
  return x
}

/**
 * {@link pfOde} as an Effect with typed failures.
 *
 * @since 0.1.0
 */
export const pfOdeEffect = (options: PfOdeOptions): Effect.Effect<tf.Tensor, DiffusionError> =>
  attempt(() => pfOde(options))
