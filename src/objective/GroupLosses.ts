/**
 * The per-part losses of the group objectives (GroupRelative's pairs and
 * awr forms, DiffusionNFT's implicit policies) as pure tensor functions of
 * a part's errors or predictions: the objectives' closures call them on this
 * thread, and `PortablePart.loss` calls the same functions on any thread.
 *
 * @since 0.8.0
 */
import * as tf from "@tensorflow/tfjs-core"
import type * as Losses from "./Losses.ts"

/**
 * One weighted preference pair of a prompt: image `w` preferred to image `l`.
 *
 * @since 0.7.0
 */
export interface WeightedPair {
  readonly w: number
  readonly l: number
  readonly weight: number
}

/**
 * One part of the pairs form: `policy` and `reference` are the errors of
 * the part's rows ([n * k], image-major over its k items), `pairs[j]` the
 * weighted pairs of its j-th item and `margin[j]` their reward margins.
 * Each item's weighted DPO loss, summed and divided by the batch size
 * (the part's share of the batch mean).
 *
 * @since 0.7.0
 */
export const pairsPart = (
  policy: tf.Tensor1D,
  reference: tf.Tensor1D,
  pairs: ReadonlyArray<ReadonlyArray<WeightedPair & { readonly margin: number }>>,
  beta: number,
  placement: Losses.MarginPlacement,
  batch: number
): tf.Scalar =>
  tf.tidy(() => {
    const k = pairs.length
    const flat = pairs.flatMap((ps, j) => ps.map((p) => ({ ...p, w: p.w * k + j, l: p.l * k + j })))
    if (flat.length === 0) return tf.mul(tf.sum(policy), 0) as tf.Scalar
    // e_w - e_l of every pair as one product with a +1/-1 matrix: tf.gather's gradient
    // (UnsortedSegmentSum) has no wasm kernel.
    const signs = new Float32Array(flat.length * policy.shape[0])
    flat.forEach((p, q) => {
      signs[q * policy.shape[0] + p.w] = 1
      signs[q * policy.shape[0] + p.l] = -1
    })
    const gap = (x: tf.Tensor1D) => tf.reshape(tf.matMul(tf.tensor2d(signs, [flat.length, policy.shape[0]]), tf.reshape(x, [-1, 1])), [-1])
    const logits = tf.sub(gap(reference), gap(policy))
    const dr = tf.tensor1d(flat.map((p) => p.margin))
    // -log sigmoid(z) = softplus(-z), as Losses.dpoFromTerms (and for the same reason).
    const nls = (z: tf.Tensor) => tf.softplus(tf.neg(z))
    const perPair = placement === "inside" ? nls(tf.sub(tf.mul(logits, beta), dr)) : tf.add(nls(tf.mul(logits, beta)), dr)
    return tf.div(tf.sum(tf.mul(perPair, tf.tensor1d(flat.map((p) => p.weight)))), batch) as tf.Scalar
  })

/**
 * One part of the awr form: the part's errors ([n * k], image-major) times
 * their weights, summed and divided by the batch size.
 *
 * @since 0.7.0
 */
export const awrPart = (policy: tf.Tensor1D, weights: ReadonlyArray<number>, batch: number): tf.Scalar =>
  tf.tidy(() => tf.div(tf.sum(tf.mul(policy, tf.tensor1d(weights as Array<number>))), batch) as tf.Scalar)

/** Floor of the adaptive weight (the paper's code: 1e-5). */
export const WEIGHT_FLOOR = 1e-5

/** Identity whose gradient is zero: the adaptive weight is a constant of the step (torch.no_grad in the paper's code). */
const stopGradient = tf.customGrad(((x: tf.Tensor) => ({
  value: tf.clone(x),
  gradFunc: (dy: tf.Tensor) => tf.zerosLike(dy)
})) as never) as unknown as (x: tf.Tensor) => tf.Tensor

/**
 * Per-row NFT loss ([rows]) from the trained prediction `epsTheta`, the old
 * policy's `epsOld` (a constant), the true noise, each row's x0 scale
 * (sigma/alpha, or 1 for the eps form) and optimality weight r:
 * (c / beta) (r L+ + (1 - r) L-). Pure; call inside a gradient function.
 *
 * @since 0.7.0
 */
export const nftRowLosses = (
  epsTheta: tf.Tensor,
  epsOld: tf.Tensor,
  noise: tf.Tensor,
  scale: ReadonlyArray<number>,
  r: ReadonlyArray<number>,
  beta: number,
  clip: number
): tf.Tensor1D =>
  tf.tidy(() => {
    const rows = scale.length
    const flat = (x: tf.Tensor) => tf.reshape(x, [rows, -1])
    const s = tf.tensor2d(scale as Array<number>, [rows, 1])
    const dTheta = tf.sub(flat(epsTheta), flat(noise))
    const dOld = tf.sub(flat(epsOld), flat(noise))
    // x0 errors of the implicit policies (sign dropped: only squares and magnitudes enter).
    const positive = tf.mul(s, tf.add(tf.mul(dOld, 1 - beta), tf.mul(dTheta, beta)))
    const negative = tf.mul(s, tf.sub(tf.mul(dOld, 1 + beta), tf.mul(dTheta, beta)))
    const normalised = (d: tf.Tensor) => tf.div(tf.mean(tf.square(d), 1), stopGradient(tf.maximum(tf.mean(tf.abs(d), 1), WEIGHT_FLOOR)))
    const rt = tf.tensor1d(r as Array<number>)
    const mixed = tf.add(tf.mul(rt, normalised(positive)), tf.mul(tf.sub(1, rt), normalised(negative)))
    return tf.mul(mixed, clip / beta) as tf.Tensor1D
  })

