/**
 * Neural network building blocks as pure functions of a parameter record.
 *
 * Every op here has a gradient on every tfjs backend, wasm included: convs
 * go through {@link conv2dSame}, embeddings are one-hot matMuls (wasm has no
 * UnsortedSegmentSum for a gather's gradient), upsampling is a broadcast
 * multiply (cpu's ResizeNearestNeighborGrad is wrong for batch > 1), and
 * downsampling is average pooling (wasm's MaxPoolGrad is wrong for all-negative
 * windows).
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { conv2dSame } from "../tensor/Conv.ts"
import type { Rng } from "../tensor/Random.ts"

/**
 * Named parameters of a network. Variables when training, plain tensors when
 * frozen; the forward pass does not care.
 *
 * @since 0.1.0
 */
export type Params = Readonly<Record<string, tf.Tensor>>

export type { ParamSpec } from "../io/ModelDir.ts"
import type { ParamSpec } from "../io/ModelDir.ts"

/**
 * Initialise parameters from specs with a seeded generator, in spec order.
 *
 * @since 0.1.0
 */
export const initParams = (specs: ReadonlyArray<ParamSpec>, rng: Rng): Record<string, tf.Tensor> => {
  const out: Record<string, tf.Tensor> = {}
  for (const s of specs) {
    const size = s.shape.reduce((a, b) => a * b, 1)
    const values = s.init === "normal"
      ? rng.normals(size, s.std)
      : new Float32Array(size).fill(s.init === "ones" ? 1 : 0)
    out[s.name] = tf.tensor(values, s.shape as Array<number>, "float32")
  }
  return out
}

/** Spec helpers with fan-in scaled initialisation. */
export const spec = {
  conv: (name: string, k: number, cin: number, cout: number, zero = false): Array<ParamSpec> => [
    { name: `${name}.w`, shape: [k, k, cin, cout], init: zero ? "zeros" : "normal", std: Math.sqrt(2 / (k * k * cin)) },
    { name: `${name}.b`, shape: [cout], init: "zeros", std: 0 }
  ],
  linear: (name: string, cin: number, cout: number, zero = false, bias = true): Array<ParamSpec> => [
    { name: `${name}.w`, shape: [cin, cout], init: zero ? "zeros" : "normal", std: Math.sqrt(1 / cin) },
    ...(bias ? [{ name: `${name}.b`, shape: [cout], init: "zeros" as const, std: 0 }] : [])
  ],
  norm: (name: string, c: number): Array<ParamSpec> => [
    { name: `${name}.g`, shape: [c], init: "ones", std: 0 },
    { name: `${name}.b`, shape: [c], init: "zeros", std: 0 }
  ],
  embedding: (name: string, n: number, d: number): Array<ParamSpec> => [
    { name, shape: [n, d], init: "normal", std: 0.02 }
  ]
}

/**
 * Looks up a parameter, failing loudly with its name (a missing weight is a
 * programming or file error, never something to paper over).
 */
export const param = (p: Params, name: string): tf.Tensor => {
  const t = p[name]
  if (t === undefined) throw new Error(`missing parameter "${name}"`)
  return t
}

/**
 * Kernel choices that make the layers faster on wasm, each tested equal to
 * the plain form it replaces. Only bench/fusion.ts changes them, to time
 * both forms in one process.
 *
 * @since 0.4.0
 */
export const speedups = {
  /**
   * {@link groupNorm} and {@link groupNormSilu} as one op with a closed-form
   * gradient (false: the plain ops, differentiated by tfjs).
   */
  groupNorm: true,
  /**
   * Rows from which a dense layer runs as a 1x1 convolution. On wasm
   * (XNNPACK) that is 3-5x faster than BatchMatMul for image-sized inputs
   * (2,048-8,192 rows of 64-128 channels), and about 2x for the text
   * encoder's 96 rows (batch 8 x 12 tokens; its gradient's transposed
   * BatchMatMul is a plain loop on wasm); at 24 rows and below BatchMatMul is
   * faster. Was 256.
   */
  denseConvRows: 64
}

export const conv = (p: Params, name: string, x: tf.Tensor4D): tf.Tensor4D =>
  tf.add(conv2dSame(x, param(p, `${name}.w`) as tf.Tensor4D), param(p, `${name}.b`))

// Above this many rows the 1x1-conv gradient's extra copies can exhaust the
// wasm heap on large sharpening batches (a "memory access out of bounds"
// in RLHF with 48 images of 32 px = 49k rows); matMul fits there.
const CONV_MAX_ROWS = 16_384

/** Dense layer on the last axis, any rank. */
export const linear = (p: Params, name: string, x: tf.Tensor): tf.Tensor => {
  const w = param(p, `${name}.w`) as tf.Tensor2D
  const shape = x.shape
  const cin = shape[shape.length - 1]
  const rows = x.size / cin
  let y: tf.Tensor = rows >= speedups.denseConvRows && rows <= CONV_MAX_ROWS
    ? conv2dSame(tf.reshape(x, [1, rows, 1, cin]) as tf.Tensor4D, tf.reshape(w, [1, 1, cin, w.shape[1]]) as tf.Tensor4D)
    : tf.matMul(tf.reshape(x, [-1, cin]) as tf.Tensor2D, w)
  const b = p[`${name}.b`]
  if (b !== undefined) y = tf.add(y, b)
  return tf.reshape(y, [...shape.slice(0, -1), w.shape[1]])
}

export const silu = (x: tf.Tensor): tf.Tensor => tf.mul(x, tf.sigmoid(x))


type NormOp = (x: tf.Tensor4D, gamma: tf.Tensor1D, beta: tf.Tensor1D) => tf.Tensor4D
const normOps = new Map<string, NormOp>()

/**
 * GroupNorm (optionally followed by SiLU) as one op with a hand-written
 * gradient: tfjs differentiates the plain form op by op, ~40 small kernels
 * per norm, most of them broadcasts that wasm runs without SIMD; the
 * closed form below needs about half as many.
 */
const fusedNorm = (groups: number, eps: number, withSilu: boolean): NormOp => {
  const key = `${groups}/${eps}/${withSilu}`
  const cached = normOps.get(key)
  if (cached !== undefined) return cached
  const op = tf.customGrad(((x: tf.Tensor4D, gamma: tf.Tensor1D, beta: tf.Tensor1D, save: tf.GradSaveFunc) => {
    const [b, h, w, c] = x.shape
    const g = Math.min(groups, c)
    const xg = tf.reshape(x, [b, h * w, g, c / g])
    const mean = tf.mean(xg, [1, 3], true)
    const xc = tf.sub(xg, mean)
    const rstd = tf.rsqrt(tf.add(tf.mean(tf.square(xc), [1, 3], true), eps))
    const xhat = tf.reshape(tf.mul(xc, rstd), [b, h, w, c]) as tf.Tensor4D
    const y = tf.add(tf.mul(xhat, gamma), beta) as tf.Tensor4D
    const s = withSilu ? tf.sigmoid(y) : undefined
    save(withSilu ? [xhat, rstd, gamma, y, s!] : [xhat, rstd, gamma])
    return {
      value: withSilu ? tf.mul(y, s!) as tf.Tensor4D : y,
      gradFunc: (dout: tf.Tensor4D, saved: Array<tf.Tensor>) => {
        const [xh, rs, gm] = saved
        // d silu(y)/dy = s (1 + y (1 - s))
        const dy = withSilu ? tf.mul(dout, tf.mul(saved[4], tf.add(tf.mul(saved[3], tf.sub(1, saved[4])), 1))) : dout
        const dgamma = tf.sum(tf.mul(dy, xh), [0, 1, 2])
        const dbeta = tf.sum(dy, [0, 1, 2])
        const shape = [b, h * w, g, c / g]
        const dxh = tf.reshape(tf.mul(dy, gm), shape)
        const xhg = tf.reshape(xh, shape)
        // dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), means over each group
        const dx = tf.mul(tf.sub(tf.sub(dxh, tf.mean(dxh, [1, 3], true)), tf.mul(xhg, tf.mean(tf.mul(dxh, xhg), [1, 3], true))), rs)
        return [tf.reshape(dx, [b, h, w, c]), dgamma, dbeta]
      }
    }
  }) as never) as unknown as NormOp
  normOps.set(key, op)
  return op
}

/** GroupNorm over NHWC. */
export const groupNorm = (p: Params, name: string, x: tf.Tensor4D, groups: number, eps = 1e-5): tf.Tensor4D =>
  speedups.groupNorm
    ? fusedNorm(groups, eps, false)(x, param(p, `${name}.g`) as tf.Tensor1D, param(p, `${name}.b`) as tf.Tensor1D)
    : groupNormPlain(p, name, x, groups, eps)

/**
 * `silu(groupNorm(...))`, the pre-activation of every conv in a res block.
 *
 * @since 0.4.0
 */
export const groupNormSilu = (p: Params, name: string, x: tf.Tensor4D, groups: number, eps = 1e-5): tf.Tensor4D =>
  speedups.groupNorm
    ? fusedNorm(groups, eps, true)(x, param(p, `${name}.g`) as tf.Tensor1D, param(p, `${name}.b`) as tf.Tensor1D)
    : silu(groupNormPlain(p, name, x, groups, eps)) as tf.Tensor4D

/** GroupNorm as plain tfjs ops (differentiated op by op): the reference of the fused form. */
export const groupNormPlain = (p: Params, name: string, x: tf.Tensor4D, groups: number, eps = 1e-5): tf.Tensor4D => {
  const [b, h, w, c] = x.shape
  const g = Math.min(groups, c)
  const xg = tf.reshape(x, [b, h, w, g, c / g])
  const { mean, variance } = tf.moments(xg, [1, 2, 4], true)
  const norm = tf.mul(tf.sub(xg, mean), tf.rsqrt(tf.add(variance, eps)))
  return tf.add(tf.mul(tf.reshape(norm, [b, h, w, c]), param(p, `${name}.g`)), param(p, `${name}.b`)) as tf.Tensor4D
}

/** LayerNorm over the last axis. */
export const layerNorm = (p: Params, name: string, x: tf.Tensor, eps = 1e-5): tf.Tensor => {
  const { mean, variance } = tf.moments(x, -1, true)
  const norm = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps)))
  return tf.add(tf.mul(norm, param(p, `${name}.g`)), param(p, `${name}.b`))
}

/** 2x nearest upsampling as a broadcast multiply (gradient = sum, any backend). */
export const upsample2x = (x: tf.Tensor4D): tf.Tensor4D => {
  const [b, h, w, c] = x.shape
  const expanded = tf.mul(tf.reshape(x, [b, h, 1, w, 1, c]), tf.ones([1, 1, 2, 1, 2, 1]))
  return tf.reshape(expanded, [b, 2 * h, 2 * w, c])
}

export const downsample2x = (x: tf.Tensor4D): tf.Tensor4D => tf.avgPool(x, 2, 2, "valid")

/**
 * Multi-head attention. q: [B, N, C], kv: [B, M, D]; keyMask [B, M] with 1
 * for real tokens (or undefined). Returns [B, N, C] after the output projection.
 */
export const attention = (
  p: Params,
  name: string,
  q: tf.Tensor3D,
  kv: tf.Tensor3D,
  heads: number,
  keyBias?: tf.Tensor
): tf.Tensor3D => {
  const [b, n, c] = q.shape
  const m = kv.shape[1]
  const dh = c / heads
  const split = (t: tf.Tensor, len: number) => tf.transpose(tf.reshape(t, [b, len, heads, dh]), [0, 2, 1, 3]) as tf.Tensor4D
  const Q = split(linear(p, `${name}.q`, q), n)
  const K = split(linear(p, `${name}.k`, kv), m)
  const V = split(linear(p, `${name}.v`, kv), m)
  let scores: tf.Tensor = tf.mul(tf.matMul(Q, K, false, true), 1 / Math.sqrt(dh))
  if (keyBias !== undefined) scores = tf.add(scores, keyBias)
  const attn = tf.softmax(scores)
  const out = tf.reshape(tf.transpose(tf.matMul(attn, V), [0, 2, 1, 3]), [b, n, c])
  return linear(p, `${name}.o`, out) as tf.Tensor3D
}

/** Additive attention bias from a 0/1 key mask [B, M] -> [B, 1, 1, M]. */
export const maskBias = (mask: tf.Tensor2D): tf.Tensor4D => {
  const [b, m] = mask.shape
  return tf.reshape(tf.mul(tf.sub(1, mask), -1e9), [b, 1, 1, m])
}

/** Sinusoidal embedding of (possibly fractional) timesteps, [B] -> [B, dim]. */
export const timestepEmbedding = (t: ReadonlyArray<number>, dim: number, maxPeriod = 10000): tf.Tensor2D => {
  const half = dim / 2
  const out = new Float32Array(t.length * dim)
  for (let i = 0; i < t.length; i++) {
    for (let j = 0; j < half; j++) {
      const freq = Math.exp((-Math.log(maxPeriod) * j) / half)
      out[i * dim + j] = Math.cos(t[i] * freq)
      out[i * dim + half + j] = Math.sin(t[i] * freq)
    }
  }
  return tf.tensor2d(out, [t.length, dim])
}
