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
import { Effect, Schema } from "effect"
import type * as CheckpointDir from "../io/CheckpointDir.ts"
import * as ModelDir from "../io/ModelDir.ts"
import * as HostRead from "../tensor/HostRead.ts"

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

/** Global L2 norm of a set of gradients, as a number (one read of the summed squares). */
export const globalNorm = (grads: Readonly<Record<string, tf.Tensor>>): Effect.Effect<number> =>
  // stack + sum, not addN: tfjs-webgpu's AddN binds every input at once and
  // the GPU refuses more than 8 (its result is then zeros).
  Effect.map(HostRead.consumeScalar(() => tf.sum(tf.stack(Object.values(grads).map((g) => tf.sum(tf.square(g)))))), Math.sqrt)

/**
 * One AdamW update in place. Returns the gradient norm before clipping
 * (non-finite means the caller must stop: nothing was applied).
 *
 * The update runs over plain arrays, one pass per parameter, instead of a
 * dozen tensor ops per parameter: on wasm the per-kernel cost of those
 * ~3,700 small calls made the UNet's update ~40 ms, several times the
 * arithmetic (bench/fusion.ts has the before/after). Equal to
 * {@link stepPerTensor} within float32 rounding (test/optim/AdamW.test.ts).
 * On the native and GPU backends (tfjs-node, CUDA, webgpu), where reading a
 * tensor is a download, the tensor ops stay.
 *
 * @since 0.1.0
 */
export const step = Effect.fn("AdamW.step")(function*(
  params: Readonly<Record<string, tf.Variable>>,
  grads: Readonly<Record<string, tf.Tensor>>,
  state: AdamWState,
  lr: number,
  c: AdamWConfig
) {
  if (!HostRead.isResident()) return yield* stepPerTensor(params, grads, state, lr, c)
  return update(
    params,
    Object.keys(params).flatMap((k) => (grads[k] === undefined ? [] : [[k, HostRead.resident(grads[k], "AdamW.step")] as const])),
    state,
    lr,
    c
  )
})

/**
 * {@link step} with the gradient as one flat array: every parameter's
 * gradient in the key order of `params`, concatenated (the layout of
 * `DataParallel.flatten`), as data-parallel shards return it.
 *
 * @since 0.4.0
 */
export const stepFlat = (
  params: Readonly<Record<string, tf.Variable>>,
  grads: Float32Array,
  state: AdamWState,
  lr: number,
  c: AdamWConfig
): number => {
  let o = 0
  const views = Object.entries(params).map(([k, p]) => {
    const view = grads.subarray(o, o + p.size)
    o += p.size
    return [k, view] as const
  })
  if (o !== grads.length) throw new Error(`AdamW.stepFlat: gradient has ${grads.length} values, parameters ${o}`)
  return update(params, views, state, lr, c)
}

const update = (
  params: Readonly<Record<string, tf.Variable>>,
  grads: ReadonlyArray<readonly [string, Float32Array]>,
  state: AdamWState,
  lr: number,
  c: AdamWConfig
): number => {
  // Before anything is applied: the reads below would fail midway elsewhere.
  if (!HostRead.isResident()) throw new HostRead.ResidentReadUnsupported({ backend: tf.getBackend(), what: "AdamW's fused update" })
  let sq = 0
  for (const [, g] of grads) {
    for (let i = 0; i < g.length; i++) sq += g[i] * g[i]
  }
  const norm = Math.sqrt(sq)
  if (!Number.isFinite(norm)) return norm
  const scale = c.maxGradNorm > 0 && norm > c.maxGradNorm ? c.maxGradNorm / norm : 1
  state.step += 1
  const bc1 = 1 - c.beta1 ** state.step
  const bc2 = 1 - c.beta2 ** state.step
  const decay = 1 - lr * c.weightDecay
  const { beta1, beta2, eps } = c
  const stepSize = lr / bc1
  const rbc2 = 1 / Math.sqrt(bc2)
  // A synchronous pass over JS-resident arrays (wasm, cpu only: elsewhere
  // `step` runs the tensor ops). wasm's read is a copy, which the update may
  // overwrite and upload; cpu's is the tensor's own storage, so there the
  // update writes fresh arrays.
  const inPlace = tf.getBackend() === "wasm"
  for (const [k, g] of grads) {
    const p = params[k]
    const p0 = HostRead.resident(p, "AdamW's fused update")
    const m0 = HostRead.resident(state.m[k], "AdamW's fused update")
    const v0 = HostRead.resident(state.v[k], "AdamW's fused update")
    const n = p0.length
    const p1 = inPlace ? p0 : new Float32Array(n)
    const m1 = inPlace ? m0 : new Float32Array(n)
    const v1 = inPlace ? v0 : new Float32Array(n)
    for (let i = 0; i < n; i++) {
      const gi = g[i] * scale
      const mi = beta1 * m0[i] + (1 - beta1) * gi
      const vi = beta2 * v0[i] + (1 - beta2) * gi * gi
      m1[i] = mi
      v1[i] = vi
      // (m / bc1) / (sqrt(v / bc2) + eps), one division
      p1[i] = p0[i] * decay - stepSize * mi / (Math.sqrt(vi) * rbc2 + eps)
    }
    tf.tidy(() => {
      state.m[k].assign(tf.tensor(m1, p.shape, "float32"))
      state.v[k].assign(tf.tensor(v1, p.shape, "float32"))
      p.assign(tf.tensor(p1, p.shape, "float32"))
    })
  }
  return norm
}

/**
 * The update as tensor ops per parameter: what {@link step} was, kept as
 * the reference it is tested and benchmarked against, and {@link step}'s
 * form on the backends whose tensors live on a device. The norm is read
 * (asynchronously) before anything is applied.
 *
 * @since 0.4.0
 */
export const stepPerTensor = Effect.fn("AdamW.stepPerTensor")(function*(
  params: Readonly<Record<string, tf.Variable>>,
  grads: Readonly<Record<string, tf.Tensor>>,
  state: AdamWState,
  lr: number,
  c: AdamWConfig
) {
  const norm = yield* globalNorm(grads)
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
})

/**
 * The moments as stored tensors, `m.<name>` and `v.<name>`: the one layout
 * of every checkpoint's optimizer file (sharpening, pretraining, the clip
 * reward).
 *
 * @since 0.7.0
 */
export const storedMoments = (state: AdamWState) =>
  Effect.map(
    Effect.all([ModelDir.toStored(state.m, "m."), ModelDir.toStored(state.v, "v.")], { concurrency: "unbounded" }),
    ([m, v]) => ({ ...m, ...v })
  )

/**
 * Restore the moments from a checkpoint's `file` in the layout of
 * {@link storedMoments} (the step is the caller's, from its state).
 *
 * @since 0.7.0
 */
export const restoreMoments = (checkpoint: CheckpointDir.Reader, file: string, state: AdamWState) =>
  Effect.andThen(checkpoint.restore(file, state.m, "m."), checkpoint.restore(file, state.v, "v."))

