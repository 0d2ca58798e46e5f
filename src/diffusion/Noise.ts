/**
 * Forward noising, training targets and the conversions between the
 * epsilon / x0 / v parameterisations, in the DDPM convention of
 * {@link Schedule}:
 *
 *   x_t = alpha_t * x0 + sigma_t * eps,   v_t = alpha_t * eps - sigma_t * x0
 *
 * with alpha_t = sqrt(alphas_cumprod[t]) and sigma_t = sqrt(1 - alphas_cumprod[t]).
 *
 * Every function takes the timestep either as one integer for the whole batch
 * or as one integer per batch item (`t.length === x.shape[0]`, the batch axis
 * is axis 0, tensors of any rank >= 1). Tensors must be float32 and of equal
 * shape; coefficients are evaluated in float64 and rounded to float32 once.
 * Functions are synchronous, allocate inside `tf.tidy` and return a new tensor
 * owned by the caller; they throw {@link DiffusionError}s on invalid input
 * (`InvalidTimestep` for t outside [0, trainSteps), `ShapeMismatch` for
 * mismatched tensors or per-batch timestep lists).
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import type { Rng } from "../tensor/Random.ts"
import { checkFloat32, checkShape, checkTimestep } from "./DiffusionError.ts"
import * as Schedule from "./Schedule.ts"

/**
 * One timestep for the whole batch, or one per batch item.
 *
 * @since 0.1.0
 */
export type Timesteps = number | ReadonlyArray<number>

/**
 * Validates `t` against the schedule (and, for a list, against the batch size
 * of `like`), returning the list of per-item timesteps (length 1 for a scalar).
 *
 * @since 0.1.0
 */
export const checkTimesteps = (
  schedule: Schedule.Schedule,
  t: Timesteps,
  like: tf.Tensor,
  allowClean = false
): ReadonlyArray<number> => {
  const ts = typeof t === "number" ? [t] : t
  if (typeof t !== "number") {
    if (like.rank < 1) checkShape("tensor with a batch axis (per-batch timesteps)", [t.length], like.shape)
    checkShape("timesteps (one per batch item)", [like.shape[0]], [t.length])
  }
  for (const s of ts) checkTimestep(s, schedule.trainSteps, allowClean)
  return ts
}

/**
 * A float32 coefficient tensor broadcastable against `like`: a scalar for a
 * scalar timestep, shape [B, 1, ..., 1] for per-batch timesteps. Call inside
 * `tf.tidy`.
 *
 * @since 0.1.0
 */
export const coefficient = (
  t: Timesteps,
  like: tf.Tensor,
  f: (t: number) => number
): tf.Tensor => {
  if (typeof t === "number") return tf.scalar(f(t), "float32")
  const shape = [t.length, ...Array.from({ length: like.rank - 1 }, () => 1)]
  return tf.tensor(Float32Array.from(t, f), shape, "float32")
}

const validate2 = (
  schedule: Schedule.Schedule,
  t: Timesteps,
  aName: string,
  a: tf.Tensor,
  bName: string,
  b: tf.Tensor
) => {
  checkFloat32(aName, a)
  checkFloat32(bName, b)
  checkShape(bName, a.shape, b.shape)
  checkTimesteps(schedule, t, a)
}

/** a * alpha_t + b * sigma_t-style linear combination `ca(t) * a + cb(t) * b`. */
const combine = <T extends tf.Tensor>(
  t: Timesteps,
  a: T,
  ca: (t: number) => number,
  b: tf.Tensor,
  cb: (t: number) => number
): T => tf.tidy(() => tf.add(tf.mul(a, coefficient(t, a, ca)), tf.mul(b, coefficient(t, a, cb))) as T)

/**
 * Forward noising q(x_t | x0): `alpha_t * x0 + sigma_t * eps`.
 *
 * @since 0.1.0
 */
export const addNoise = <T extends tf.Tensor>(schedule: Schedule.Schedule, x0: T, eps: tf.Tensor, t: Timesteps): T => {
  validate2(schedule, t, "x0", x0, "eps", eps)
  return combine(t, x0, (s) => Schedule.alpha(schedule, s), eps, (s) => Schedule.sigma(schedule, s))
}

/**
 * The epsilon-prediction training target: the noise itself (a copy, so the
 * result is owned by the caller like every other result here). Validated like
 * {@link vTarget} so the two are interchangeable.
 *
 * @since 0.1.0
 */
export const epsilonTarget = <T extends tf.Tensor>(schedule: Schedule.Schedule, x0: T, eps: T, t: Timesteps): T => {
  validate2(schedule, t, "x0", x0, "eps", eps)
  return eps.clone()
}

/**
 * The v-prediction training target (Salimans & Ho 2022):
 * `alpha_t * eps - sigma_t * x0`.
 *
 * @since 0.1.0
 */
export const vTarget = <T extends tf.Tensor>(schedule: Schedule.Schedule, x0: T, eps: T, t: Timesteps): T =>
  vFromEpsX0(schedule, eps, x0, t)

/**
 * `x0 = (x_t - sigma_t * eps) / alpha_t` (Tweedie's one-step estimate when eps
 * is the model's prediction).
 *
 * @since 0.1.0
 */
export const x0FromEps = <T extends tf.Tensor>(schedule: Schedule.Schedule, xt: T, eps: tf.Tensor, t: Timesteps): T => {
  validate2(schedule, t, "xt", xt, "eps", eps)
  return combine(t, xt, (s) => 1 / Schedule.alpha(schedule, s), eps, (s) => -Schedule.sigma(schedule, s) / Schedule.alpha(schedule, s))
}

/**
 * `eps = (x_t - alpha_t * x0) / sigma_t`: the noise consistent with x_t and
 * x0 (the consistent epsilon target along a trajectory, NOTES item 2).
 *
 * @since 0.1.0
 */
export const epsFromX0 = <T extends tf.Tensor>(schedule: Schedule.Schedule, xt: T, x0: tf.Tensor, t: Timesteps): T => {
  validate2(schedule, t, "xt", xt, "x0", x0)
  return combine(t, xt, (s) => 1 / Schedule.sigma(schedule, s), x0, (s) => -Schedule.alpha(schedule, s) / Schedule.sigma(schedule, s))
}

/**
 * `x0 = alpha_t * x_t - sigma_t * v`.
 *
 * @since 0.1.0
 */
export const x0FromV = <T extends tf.Tensor>(schedule: Schedule.Schedule, xt: T, v: tf.Tensor, t: Timesteps): T => {
  validate2(schedule, t, "xt", xt, "v", v)
  return combine(t, xt, (s) => Schedule.alpha(schedule, s), v, (s) => -Schedule.sigma(schedule, s))
}

/**
 * `eps = sigma_t * x_t + alpha_t * v`.
 *
 * @since 0.1.0
 */
export const epsFromV = <T extends tf.Tensor>(schedule: Schedule.Schedule, xt: T, v: tf.Tensor, t: Timesteps): T => {
  validate2(schedule, t, "xt", xt, "v", v)
  return combine(t, xt, (s) => Schedule.sigma(schedule, s), v, (s) => Schedule.alpha(schedule, s))
}

/**
 * `v = alpha_t * eps - sigma_t * x0` (note the argument order: eps, then x0).
 *
 * @since 0.1.0
 */
export const vFromEpsX0 = <T extends tf.Tensor>(schedule: Schedule.Schedule, eps: T, x0: tf.Tensor, t: Timesteps): T => {
  validate2(schedule, t, "eps", eps, "x0", x0)
  return combine(t, eps, (s) => Schedule.alpha(schedule, s), x0, (s) => -Schedule.sigma(schedule, s))
}

/**
 * A source of standard-normal noise of a given shape. Each call returns a new
 * float32 tensor owned by the caller.
 *
 * @since 0.1.0
 */
export type NoiseSource = (shape: ReadonlyArray<number>) => tf.Tensor

/**
 * A {@link NoiseSource} drawing from a seeded, resumable {@link Rng}
 * (draws advance the generator, so the noise stream is reproducible from the
 * generator's state).
 *
 * @since 0.1.0
 */
export const gaussianSource = (rng: Rng): NoiseSource => (shape) => {
  const n = shape.reduce((a, b) => a * b, 1)
  return tf.tensor(rng.normals(n), [...shape], "float32")
}
