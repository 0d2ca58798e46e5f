/**
 * The sharpening objectives as pure tensor functions (call inside a
 * gradient function). Paths are given as row indices into a
 * {@link Trajectories}' n*B rows, one per batch item.
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { isGpu } from "../tensor/Backend.ts"
import { Schema } from "effect"
import * as Noise from "../diffusion/Noise.ts"
import type * as Schedule from "../diffusion/Schedule.ts"
import * as Denoiser from "../model/Denoiser.ts"
import { rowTimesteps, type Trajectories } from "../trajectory/Trajectory.ts"

/**
 * Epsilon target along a path.
 * - "consistent" (default): at step k the noise that x_{t_k} actually holds
 *   relative to the clean image, (x_{t_k} - alpha_k x0) / sigma_k. After a DDIM
 *   step x_{t_k} is no longer alpha x0 + sigma eps_original, so this is the
 *   target that makes Eq. 9 the denoising loss of the visited states.
 * - "original": the first step's noise at every step (the reference code).
 * Both agree at the first step.
 */
/**
 * What a step differentiates: one loss closure, or parts whose gradients are
 * summed into one update (gradient accumulation). Each part's graph is freed
 * before the next is built, so a batch too large for memory (the wasm heap)
 * can be split into micro-batches without changing the update.
 */
export type Loss = (() => tf.Scalar) | ReadonlyArray<() => tf.Scalar>

export const EpsTarget = Schema.Literals(["consistent", "original"])
export type EpsTarget = typeof EpsTarget.Type

/**
 * Where the reward margin of Eq. 11 goes.
 * - "inside" (the paper's Eq. 11): inside the log-sigmoid,
 *   -log sigma(beta * logits - (R_w - R_l)): a larger margin demands a
 *   larger likelihood gap (reward-modulated DPO).
 * - "outside" (the paper's reference code): -log sigma(beta * logits) +
 *   (R_w - R_l): a constant offset, so the margin has no effect on the
 *   gradient.
 * Older settings and run records spell them "paper" and "reference-code"
 * (read as these by `SharpenConfig.aliases`).
 */
export const MarginPlacement = Schema.Literals(["inside", "outside"])
export type MarginPlacement = typeof MarginPlacement.Type

/**
 * Inputs of selected path rows (any number, each row r = i*B + b belongs to
 * item b = r mod B), stacked over the m steps: [m * rows] network inputs.
 */
export const pathBatch = (
  schedule: Schedule.Schedule,
  traj: Trajectories,
  rows: ReadonlyArray<number>,
  target: EpsTarget
): { x: tf.Tensor; t: Array<number>; prompts: Array<string>; target: tf.Tensor } =>
  tf.tidy(() => {
    const idx = tf.tensor1d(rows as Array<number>, "int32")
    const items = rows.map((r) => r % traj.batch)
    const x0 = tf.gather(traj.x0, tf.tensor1d(items, "int32")) as tf.Tensor
    const xs: Array<tf.Tensor> = []
    const targets: Array<tf.Tensor> = []
    const ts: Array<number> = []
    const prompts: Array<string> = []
    const original = tf.gather(traj.noise, idx) as tf.Tensor
    for (const step of traj.steps) {
      const x = tf.gather(step.xt, idx) as tf.Tensor
      const all = rowTimesteps(step, traj.n * traj.batch)
      const t = rows.map((r) => all[r])
      xs.push(x)
      targets.push(target === "original" ? original : Noise.epsFromX0(schedule, x, x0, step.ts === undefined ? step.t : t))
      ts.push(...t)
      prompts.push(...items.map((b) => traj.prompts[b]))
    }
    return { x: tf.concat(xs, 0) as tf.Tensor, t: ts, prompts, target: tf.concat(targets, 0) as tf.Tensor }
  }) as never

/**
 * Batch items 0..batch-1 in consecutive groups of at most `size` (0: one
 * group of all), for gradient micro-batches.
 */
export const microBatches = (batch: number, size: number): Array<Array<number>> => {
  const step = size <= 0 ? batch : size
  const out: Array<Array<number>> = []
  for (let s = 0; s < batch; s += step) out.push(Array.from({ length: Math.min(step, batch - s) }, (_, k) => s + k))
  return out
}

/**
 * Whole batch items in groups of at most `rows / rowsPerItem` (at least one
 * item per group; `rows` 0: one group of all): a memory budget in UNet rows
 * that holds whatever m is.
 */
/**
 * Micro-batch rows when a run sets none: 24 on the JS backends, where one
 * part of 48 rows can exhaust the wasm heap; the whole batch (0) on a GPU,
 * where memory is not the limit and one larger batch keeps the device busy.
 *
 * @since 0.2.0
 */
export const defaultMicroBatchRows = (backend: string = tf.getBackend()): number => (isGpu(backend) ? 0 : 24)

export const microBatchesByRows = (batch: number, rowsPerItem: number, rows: number): Array<Array<number>> =>
  microBatches(batch, rows <= 0 ? 0 : Math.max(1, Math.floor(rows / rowsPerItem)))

/** Per-item mean squared error over the m steps and pixels: [m*B] rows -> [B]. */
const perItemMse = (pred: tf.Tensor, target: tf.Tensor, m: number, b: number): tf.Tensor1D =>
  tf.mean(tf.reshape(tf.squaredDifference(pred, target), [m, b, -1]), [0, 2]) as tf.Tensor1D

/**
 * SFT-Diffusion-Sharpening, Eq. 9: epsilon MSE of the model along the best
 * path (conditional prediction, as in training), averaged over steps and items.
 *
 * @since 0.1.0
 */
export const sftLoss = (
  model: Denoiser.Model,
  schedule: Schedule.Schedule,
  traj: Trajectories,
  best: ReadonlyArray<number>,
  target: EpsTarget = "consistent"
): tf.Scalar =>
  tf.tidy(() => {
    const p = pathBatch(schedule, traj, best, target)
    const pred = Denoiser.eps(model, p.x, p.t, p.prompts)
    return tf.mean(perItemMse(pred, p.target, traj.steps.length, best.length)) as tf.Scalar
  })

export interface DpoTerms {
  /** [B] per-item model MSE on the winner / loser path. */
  readonly modelW: tf.Tensor1D
  readonly modelL: tf.Tensor1D
  readonly refW: tf.Tensor1D
  readonly refL: tf.Tensor1D
}

/**
 * Reward-modulated Diffusion-DPO (paper Eq. 11) from per-item errors.
 * logits = (ref_w - ref_l) - (model_w - model_l): positive when the policy
 * has raised the winner's likelihood relative to the loser's, compared with
 * the reference (Diffusion-DPO's approximation of the log-likelihood ratios;
 * its constant T * omega(lambda) / 2 is folded into beta).
 *
 * @since 0.1.0
 */
export const dpoFromTerms = (
  terms: DpoTerms,
  margin: ReadonlyArray<number>,
  beta: number,
  placement: MarginPlacement
): tf.Scalar =>
  tf.tidy(() => {
    const logits = tf.sub(tf.sub(terms.refW, terms.refL), tf.sub(terms.modelW, terms.modelL))
    const dr = tf.tensor1d(margin as Array<number>)
    // -log sigmoid(z) = softplus(-z). Not tf.logSigmoid: its gradient reads a
    // closure-captured input that a nested tf.tidy has already disposed.
    const nls = (z: tf.Tensor) => tf.softplus(tf.neg(z))
    const perItem = placement === "inside"
      ? nls(tf.sub(tf.mul(logits, beta), dr))
      : tf.add(nls(tf.mul(logits, beta)), dr)
    return tf.mean(perItem) as tf.Scalar
  })

/**
 * The winner and loser halves of errors on [winner rows; loser rows]
 * (call inside `tf.tidy`, or own both halves).
 *
 * @since 0.4.0
 */
export const splitPair = (e: tf.Tensor1D): { readonly w: tf.Tensor1D; readonly l: tf.Tensor1D } => {
  const k = e.shape[0] / 2
  const [w, l] = tf.split(e, [k, k]) as [tf.Tensor1D, tf.Tensor1D]
  return { w, l }
}

/**
 * One micro-batch part of a pairwise DPO objective: the policy's errors on
 * the part's [winner rows; loser rows] against the reference's, Eq. 11's
 * loss over the part, scaled by the part's share of the batch mean.
 * `winnerSft` > 0 adds that multiple of the winners' mean denoising error
 * (an anchor on the preferred images, as RPO adds the chosen NLL to DPO).
 *
 * @since 0.4.0
 */
export const dpoPart = (
  policy: tf.Tensor1D,
  reference: { readonly w: tf.Tensor1D; readonly l: tf.Tensor1D },
  margin: ReadonlyArray<number>,
  beta: number,
  placement: MarginPlacement,
  share: number,
  winnerSft = 0
): tf.Scalar =>
  tf.tidy(() => {
    const { l, w } = splitPair(policy)
    const dpo = dpoFromTerms({ modelW: w, modelL: l, refW: reference.w, refL: reference.l }, margin, beta, placement)
    return tf.mul(winnerSft > 0 ? tf.add(dpo, tf.mul(tf.mean(w), winnerSft)) : dpo, share) as tf.Scalar
  })

/**
 * Per-row MSE of a model on path rows ([rows.length], averaged over the first
 * `steps` steps and pixels); used for the policy (inside the gradient) and
 * the frozen reference (outside it). Pass winner and loser rows together to
 * run them as one batch.
 */
export const pathErrors = (
  model: Denoiser.Model,
  schedule: Schedule.Schedule,
  traj: Trajectories,
  rows: ReadonlyArray<number>,
  target: EpsTarget,
  steps = traj.steps.length
): tf.Tensor1D =>
  tf.tidy(() => {
    const sub = steps === traj.steps.length ? traj : { ...traj, steps: traj.steps.slice(0, steps) }
    const p = pathBatch(schedule, sub, rows, target)
    return perItemMse(Denoiser.eps(model, p.x, p.t, p.prompts), p.target, steps, rows.length)
  })
