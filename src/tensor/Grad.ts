/**
 * Gradients keyed by parameter name.
 *
 * tfjs keys `variableGrads` by its global variable names (auto-numbered,
 * unique per process), which differ between a model and its clones; the
 * project keys parameters by their role ("down0.res0.c1.w"). This maps one
 * to the other.
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"

export const paramGrads = (
  f: () => tf.Scalar,
  params: Readonly<Record<string, tf.Variable>>
): { value: tf.Scalar; grads: Record<string, tf.Tensor> } => {
  const entries = Object.entries(params).filter(([, v]) => v.trainable)
  const { value, grads } = tf.variableGrads(f, entries.map(([, v]) => v))
  const out: Record<string, tf.Tensor> = {}
  for (const [k, v] of entries) {
    const g = grads[v.name]
    if (g !== undefined) out[k] = g
  }
  return { value, grads: out }
}
