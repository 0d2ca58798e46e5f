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
import * as Denoiser from "../model/Denoiser.ts"
import type { Rng } from "../tensor/Random.ts"
import * as Steps from "../tensor/Steps.ts"

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
  Schema.Struct({ kind: Schema.Literal("range"), min: Schema.Int, max: Schema.Int }),
  /** The top of the grid: paths from (almost) pure noise, i.e. fresh samples. */
  Schema.Struct({ kind: Schema.Literal("top") })
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
  /**
   * Draw the start timestep per prompt (from `timestep`'s range) instead of
   * once per batch (the paper's code). Default false.
   */
  readonly perPrompt?: boolean
  /**
   * Continue every path to t = 0 (DDIM eta 0, same grid and guidance), so
   * each path ends in its own final image (`Trajectories.final`): the
   * image-level variants compare those. Default false (the paper).
   */
  readonly continuation?: boolean
}

export interface Step {
  /** Timestep of row 0 (of every row unless `ts` is given). */
  readonly t: number
  /** Per-row timesteps, when the start timestep is drawn per prompt. */
  readonly ts?: ReadonlyArray<number>
  /** x_{t_k}, [n*B, H, W, C]. */
  readonly xt: tf.Tensor
  /** Guided noise prediction at x_{t_k}. */
  readonly eps: tf.Tensor
  /** The x0 estimate c(x_{t_k}, t_k), clipped to [-1, 1]. */
  readonly x0: tf.Tensor
}

export interface Trajectories {
  readonly n: number
  readonly batch: number
  /** One prompt per batch item. */
  readonly prompts: ReadonlyArray<string>
  /** The clean images the paths start from, [B, H, W, C]. */
  readonly x0: tf.Tensor
  /** The n noises, [n*B, H, W, C] (the reference code's epsilon target). */
  readonly noise: tf.Tensor
  readonly steps: ReadonlyArray<Step>
  /** With `continuation`: every path's final image at t = 0, [n*B, ...]. */
  readonly final?: tf.Tensor
  /** Model evaluations spent (one per image per network call, guidance counts 2). */
  readonly nfe: number
}

export const dispose = (t: Trajectories): void => {
  t.x0.dispose()
  t.noise.dispose()
  for (const s of t.steps) tf.dispose([s.xt, s.eps, s.x0])
  t.final?.dispose()
}

/** The timestep of every row of a step. */
export const rowTimesteps = (s: Step, rows: number): ReadonlyArray<number> => s.ts ?? new Array<number>(rows).fill(s.t)

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
  return range.kind === "range" ? grid.filter((t) => t >= range.min && t <= range.max) : range.kind === "top" ? grid.slice(0, 1) : grid
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

/** Scalar timesteps when all rows agree: the same kernels as before per-row timesteps existed. */
const asArg = (ts: ReadonlyArray<number>): number | ReadonlyArray<number> => (ts.every((t) => t === ts[0]) ? ts[0] : ts)

const repeatRows = (x: tf.Tensor, n: number): tf.Tensor => tf.tidy(() => tf.concat(Array.from({ length: n }, () => x), 0) as tf.Tensor)

/**
 * The random draws of one batch's trajectories: the start timestep of every
 * item and the n noises ([n*B, ...] row-major, row i*B + b). Drawn apart from
 * the computation so that the computation can run on worker threads while
 * every draw stays on the run's generator, in the one-thread order.
 *
 * @since 0.5.0
 */
export interface Draws {
  readonly itemT0: ReadonlyArray<number>
  readonly noise: Float32Array
}

/**
 * Draw a batch's start timesteps and noises from `rng`, in the order
 * {@link generate} always has (timesteps, then noise).
 *
 * @since 0.5.0
 */
export const draw = (rng: Rng, trainSteps: number, batch: number, sampleShape: ReadonlyArray<number>, o: TrajectoryOptions): Draws => {
  // One draw per batch keeps the faithful runs' random stream unchanged.
  const itemT0 = o.perPrompt === true
    ? Array.from({ length: batch }, () => chooseTimestep(rng, trainSteps, o))
    : new Array<number>(batch).fill(chooseTimestep(rng, trainSteps, o))
  if (o.perPrompt === true && o.estimator.kind === "pf-ode" && o.estimator.k > 1) {
    throw new RangeError("the pf-ode estimator needs one start timestep per batch (perPrompt false)")
  }
  return { itemT0, noise: rng.normals(o.n * batch * sampleShape.reduce((a, b) => a * b, 1)) }
}

/**
 * Generate the trajectories of Algorithms 1-2 (no gradient).
 *
 * @since 0.1.0
 */
export const generate = (
  model: Denoiser.Model,
  schedule: Schedule.Schedule,
  x0: tf.Tensor,
  prompts: ReadonlyArray<string>,
  rng: Rng,
  o: TrajectoryOptions
): Trajectories => {
  const b = x0.shape[0]
  if (prompts.length !== b) throw new RangeError(`${prompts.length} prompts for a batch of ${b}`)
  return fromDraws(model, schedule, x0, prompts, draw(rng, schedule.trainSteps, b, x0.shape.slice(1), o), o)
}

/**
 * The trajectories of given draws (no gradient, no randomness): the same
 * rows whatever else is in the batch, so a batch may be computed in shards
 * of items ({@link shardDraws}, {@link merge}).
 *
 * @since 0.5.0
 */
export const fromDraws = (
  model: Denoiser.Model,
  schedule: Schedule.Schedule,
  x0: tf.Tensor,
  prompts: ReadonlyArray<string>,
  draws: Draws,
  o: TrajectoryOptions
): Trajectories => Steps.drain(fromDrawsSteps(model, schedule, x0, prompts, draws, o))

/**
 * {@link fromDraws} as steps (one per denoising step of the paths and of
 * their continuation), for a job that must stop between them when
 * interrupted (`Steps.run`). `x0` must live until the steps end.
 *
 * @since 0.8.0
 */
export function* fromDrawsSteps(
  model: Denoiser.Model,
  schedule: Schedule.Schedule,
  x0: tf.Tensor,
  prompts: ReadonlyArray<string>,
  draws: Draws,
  o: TrajectoryOptions
): Steps.Steps<Trajectories> {
  const b = x0.shape[0]
  if (prompts.length !== b) throw new RangeError(`${prompts.length} prompts for a batch of ${b}`)
  const ratio = stride(schedule.trainSteps, o.inferenceSteps)
  const itemT0 = draws.itemT0
  const rows = o.n * b
  const allPrompts = Array.from({ length: rows }, (_, r) => prompts[r % b])
  let rowT: Array<number> = Array.from({ length: rows }, (_, r) => itemT0[r % b])
  const noise = tf.tensor(draws.noise, [rows, ...x0.shape.slice(1)], "float32")
  const guidance = o.cfg === 1 ? 1 : 2
  let nfe = 0
  const denoise = (x: tf.Tensor, t: number | ReadonlyArray<number>, p: ReadonlyArray<string> = allPrompts) => {
    nfe += x.shape[0] * guidance
    return Denoiser.guidedEps(model, x, t, p, o.cfg)
  }
  const down = (t: number) => (t - ratio >= 0 ? t - ratio : -1)
  const steps: Array<Step> = []
  let x = tf.tidy(() => Noise.addNoise(schedule, repeatRows(x0, o.n), noise, asArg(rowT)))
  let final: tf.Tensor | undefined
  try {
    for (let k = 0; k < o.m; k++) {
      const t = asArg(rowT)
      const eps = denoise(x, t)
      const estimate = o.estimator.kind === "tweedie" || o.estimator.k === 1
        ? Estimators.tweedie(schedule, x, eps, t)
        : Estimators.pfOde({ schedule, denoise, xt: x, t: rowT[0], k: Math.min(o.estimator.k, rowT[0] + 1), epsAtT: eps })
      const x0k = tf.tidy(() => tf.clipByValue(estimate, -1, 1))
      estimate.dispose()
      steps.push({ t: rowT[0], ...(typeof t === "number" ? {} : { ts: rowT.slice() }), xt: x, eps, x0: x0k })
      if (k + 1 < o.m) {
        const r = Ddim.step({ schedule, eps, t, tPrev: asArg(rowT.map(down)), xt: x, eta: 0, clipSample: 1 })
        tf.dispose([r.x0Pred, r.mean])
        x = r.prevSample
        rowT = rowT.map(down)
        yield
      }
    }
    if (o.continuation === true) final = yield* continueToZero(schedule, steps[steps.length - 1], rowT, allPrompts, down, denoise)
  } catch (e) {
    for (const s of steps) tf.dispose([s.xt, s.eps, s.x0])
    if (!steps.some((s) => s.xt === x)) x.dispose()
    noise.dispose()
    throw e
  }
  return { n: o.n, batch: b, prompts, x0: x0.clone(), noise, steps, nfe, ...(final === undefined ? {} : { final }) }
}

/**
 * DDIM (eta 0) from the last recorded step to clean data, every row on its
 * own grid; rows that reach t = 0 sooner (a lower start) wait for the others.
 * Returns the final samples (clipped to [-1, 1] by the last step).
 */
function* continueToZero(
  schedule: Schedule.Schedule,
  last: Step,
  start: ReadonlyArray<number>,
  prompts: ReadonlyArray<string>,
  down: (t: number) => number,
  denoise: (x: tf.Tensor, t: number | ReadonlyArray<number>, p: ReadonlyArray<string>) => tf.Tensor
): Steps.Steps<tf.Tensor> {
  let rowT = start.slice()
  let x = last.xt.clone()
  let eps: tf.Tensor | undefined = last.eps.clone()
  let active = rowT.map((_, r) => r)
  try {
    while (active.length > 0) {
      const idx = tf.tensor1d(active, "int32")
      const ts = active.map((r) => rowT[r])
      const next = tf.tidy(() => {
        const xa = active.length === rowT.length ? x : tf.gather(x, idx)
        const r = Ddim.step({ schedule, eps: eps!, t: ts, tPrev: ts.map(down), xt: xa, eta: 0, clipSample: 1 })
        if (active.length === rowT.length) return r.prevSample
        // Put the stepped rows back in place: [stepped; waiting] rows, gathered in row order.
        const waiting = rowT.map((_, q) => q).filter((q) => !active.includes(q))
        const order = [...active, ...waiting]
        const position = new Array<number>(order.length)
        order.forEach((q, k) => (position[q] = k))
        const both = tf.concat([r.prevSample, tf.gather(x, tf.tensor1d(waiting, "int32"))], 0)
        return tf.gather(both, tf.tensor1d(position, "int32"))
      })
      idx.dispose()
      eps.dispose()
      eps = undefined
      x.dispose()
      x = next
      for (const r of active) rowT[r] = down(rowT[r])
      active = active.filter((r) => rowT[r] >= 0)
      if (active.length === 0) break
      const sub = tf.tidy(() => (active.length === rowT.length ? x.clone() : tf.gather(x, tf.tensor1d(active, "int32"))))
      eps = denoise(sub, asArg(active.map((r) => rowT[r])), active.map((r) => prompts[r]))
      sub.dispose()
      yield
    }
    return x
  } catch (e) {
    x.dispose()
    eps?.dispose()
    throw e
  }
}

/**
 * Rows of one path per batch item: `paths[b]` in [0, n) picks the sample of
 * item b. Returns an index vector into the n*B rows.
 */
export const rowIndex = (t: Pick<Trajectories, "batch">, paths: ReadonlyArray<number>): Array<number> =>
  paths.map((i, b) => i * t.batch + b)
