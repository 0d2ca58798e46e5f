/**
 * Typed errors of the diffusion math (noising, DDIM, x0 estimators).
 *
 * The math functions are synchronous (they sit on the sampling / training hot
 * path) and *throw* these errors on bad input; every error is a
 * `Schema.TaggedError`, hence also a yieldable `Error`. Use {@link attempt} to
 * run such a function as an `Effect` whose typed failure channel carries the
 * error (anything else thrown becomes a defect).
 *
 * @since 0.1.0
 */
import { Effect, Schema } from "effect"
import type * as tf from "@tensorflow/tfjs-core"

/**
 * A timestep outside its allowed range or not an integer. Noising and
 * conversions need `0 <= t < trainSteps`; a DDIM step's target `tPrev` may
 * also be `-1` (clean data).
 *
 * @since 0.1.0
 */
export class InvalidTimestep extends Schema.TaggedError<InvalidTimestep>()("InvalidTimestep", {
  t: Schema.Number,
  trainSteps: Schema.Number
}) {
  override get message(): string {
    return `invalid timestep ${this.t}: expected an integer in [0, ${this.trainSteps}) (or -1 for clean data where allowed)`
  }
}

/**
 * Two tensors (or a tensor and a per-batch timestep list) whose shapes must
 * agree do not. `what` names the offending argument.
 *
 * @since 0.1.0
 */
export class ShapeMismatch extends Schema.TaggedError<ShapeMismatch>()("ShapeMismatch", {
  what: Schema.String,
  expected: Schema.Array(Schema.Number),
  got: Schema.Array(Schema.Number)
}) {
  override get message(): string {
    return `shape mismatch for ${this.what}: expected [${this.expected.join(", ")}], got [${this.got.join(", ")}]`
  }
}

/**
 * Any other invalid argument (negative eta, inferenceSteps > trainSteps,
 * zero standard deviation in a log-density, wrong dtype, ...).
 *
 * @since 0.1.0
 */
export class InvalidArgument extends Schema.TaggedError<InvalidArgument>()("InvalidArgument", {
  name: Schema.String,
  value: Schema.Unknown,
  message: Schema.String
}) {}

/** @since 0.1.0 */
export type DiffusionError = InvalidTimestep | ShapeMismatch | InvalidArgument

/** @since 0.1.0 */
export const isDiffusionError = (u: unknown): u is DiffusionError =>
  u instanceof InvalidTimestep || u instanceof ShapeMismatch || u instanceof InvalidArgument

/**
 * Runs a synchronous function of this module family as an Effect: a thrown
 * {@link DiffusionError} becomes a typed failure, anything else a defect.
 *
 * @since 0.1.0
 */
export const attempt = <A>(f: () => A): Effect.Effect<A, DiffusionError> =>
  Effect.suspend(() => {
    try {
      return Effect.succeed(f())
    } catch (e) {
      return isDiffusionError(e) ? Effect.fail(e) : Effect.die(e)
    }
  })

// ---------------------------------------------------------------------------
// Validation helpers shared by Noise, Ddim and Estimators (throwing).
// ---------------------------------------------------------------------------

/**
 * Checks an integer timestep in `[0, trainSteps)`, or in `[-1, trainSteps)`
 * when `allowClean` (t = -1 is the clean data).
 *
 * @since 0.1.0
 */
export const checkTimestep = (t: number, trainSteps: number, allowClean = false): number => {
  const lo = allowClean ? -1 : 0
  if (!Number.isInteger(t) || t < lo || t >= trainSteps) throw new InvalidTimestep({ t, trainSteps })
  return t
}

const sameShape = (a: ReadonlyArray<number>, b: ReadonlyArray<number>) =>
  a.length === b.length && a.every((d, i) => d === b[i])

/**
 * Checks that `got` has exactly the shape of `expected`.
 *
 * @since 0.1.0
 */
export const checkShape = (what: string, expected: ReadonlyArray<number>, got: ReadonlyArray<number>): void => {
  if (!sameShape(expected, got)) throw new ShapeMismatch({ what, expected: [...expected], got: [...got] })
}

/**
 * Checks that a tensor is float32 (all math here is float32; coefficients are
 * computed in float64 and rounded once).
 *
 * @since 0.1.0
 */
export const checkFloat32 = (name: string, x: tf.Tensor): void => {
  if (x.dtype !== "float32") {
    throw new InvalidArgument({ name, value: x.dtype, message: `${name} must be float32, got ${x.dtype}` })
  }
}

/**
 * Checks a finite number satisfying `ok`.
 *
 * @since 0.1.0
 */
export const checkNumber = (name: string, value: number, ok: (v: number) => boolean, requirement: string): number => {
  if (typeof value !== "number" || !Number.isFinite(value) || !ok(value)) {
    throw new InvalidArgument({ name, value, message: `${name} must be ${requirement}, got ${value}` })
  }
  return value
}
