/**
 * AdamW (Loshchilov & Hutter) with global grad-norm clipping, written out so
 * that its moments are plain named tensors: they go into checkpoints and a
 * resumed run continues bit-for-bit.
 *
 * The paper trains with AdamW, betas (0.0, 0.99) and no weight decay; the
 * defaults here are the usual (0.9, 0.999) for pretraining, and the
 * sharpening pipelines pass the paper's values.
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Schema } from "effect"

export const AdamWConfig = Schema.Struct({
  beta1: Schema.Number.check(Schema.isGreaterThanOrEqualTo(0), Schema.isLessThan(1)),
  beta2: Schema.Number.check(Schema.isGreaterThanOrEqualTo(0), Schema.isLessThan(1)),
  eps: Schema.Number.check(Schema.isGreaterThan(0)),
  weightDecay: Schema.Number.check(Schema.isGreaterThanOrEqualTo(0)),
  /** Clip the global gradient norm to this value; 0 disables clipping. */
  maxGradNorm: Schema.Number.check(Schema.isGreaterThanOrEqualTo(0))
})
export type AdamWConfig = typeof AdamWConfig.Type

export const defaults: AdamWConfig = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, maxGradNorm: 1 }

/** The paper's optimiser (Sec. 4.1). */
export const paper: AdamWConfig = { beta1: 0, beta2: 0.99, eps: 1e-8, weightDecay: 0, maxGradNorm: 1 }

/**
 * Mutable optimiser state: step count and first/second moments per parameter.
 * The tensors are owned by whoever owns the state (see Scoped.ts).
 *
 * @since 0.1.0
 */
export interface AdamWState {
  step: number
  readonly m: Record<string, tf.Variable>
  readonly v: Record<string, tf.Variable>
}

export const init = (params: Readonly<Record<string, tf.Tensor>>): AdamWState => {
  const m: Record<string, tf.Variable> = {}
  const v: Record<string, tf.Variable> = {}
  const zeros = (p: tf.Tensor) => {
    const z = tf.zerosLike(p)
    const variable = tf.variable(z, false)
    z.dispose()
    return variable
  }
  for (const [k, p] of Object.entries(params)) {
    m[k] = zeros(p)
    v[k] = zeros(p)
  }
  return { step: 0, m, v }
}

export const dispose = (s: AdamWState): void => {
  for (const t of Object.values(s.m)) t.dispose()
  for (const t of Object.values(s.v)) t.dispose()
}

/** Global L2 norm of a set of gradients, as a number. */
export const globalNorm = (grads: Readonly<Record<string, tf.Tensor>>): number =>
  tf.tidy(() => {
    const squares = Object.values(grads).map((g) => tf.sum(tf.square(g)))
    return Math.sqrt(tf.addN(squares).dataSync()[0])
  })

/**
 * One AdamW update in place. Returns the gradient norm before clipping
 * (non-finite means the caller must stop: nothing was applied).
 *
 * @since 0.1.0
 */
export const step = (
  params: Readonly<Record<string, tf.Variable>>,
  grads: Readonly<Record<string, tf.Tensor>>,
  state: AdamWState,
  lr: number,
  c: AdamWConfig
): number => {
  const norm = globalNorm(grads)
  if (!Number.isFinite(norm)) return norm
  const scale = c.maxGradNorm > 0 && norm > c.maxGradNorm ? c.maxGradNorm / norm : 1
  state.step += 1
  const bc1 = 1 - c.beta1 ** state.step
  const bc2 = 1 - c.beta2 ** state.step
  tf.tidy(() => {
    for (const [k, p] of Object.entries(params)) {
      const g0 = grads[k]
      if (g0 === undefined) continue
      const g = scale === 1 ? g0 : tf.mul(g0, scale)
      const m = tf.add(tf.mul(state.m[k], c.beta1), tf.mul(g, 1 - c.beta1))
      const v = tf.add(tf.mul(state.v[k], c.beta2), tf.mul(tf.square(g), 1 - c.beta2))
      state.m[k].assign(m)
      state.v[k].assign(v)
      const update = tf.div(tf.div(m, bc1), tf.add(tf.sqrt(tf.div(v, bc2)), c.eps))
      const decayed = c.weightDecay > 0 ? tf.mul(p, 1 - lr * c.weightDecay) : p
      p.assign(tf.sub(decayed, tf.mul(update, lr)))
    }
  })
  return norm
}
