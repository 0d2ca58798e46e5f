/**
 * Conditional UNet eps_theta(x_t, t, text) for small images, as pure
 * functions: `paramSpecs(arch, vocabSize)` lists every weight with its shape,
 * `forward(params, arch, input)` computes the predicted noise.
 *
 * Layout (levels at 32/16/8 px for the default config):
 *   conv_in -> [res (+cross-attn)] x numResBlocks per level, avg-pool between
 *   -> mid: res, self-attn, cross-attn, res
 *   -> mirror with skip concatenations and nearest upsampling -> conv_out.
 * Text: one-hot word embeddings + learned positions -> pre-LN transformer.
 * Timestep: sinusoidal -> 2-layer MLP, added inside every res block.
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import {
  attention,
  conv,
  downsample2x,
  groupNorm,
  groupNormSilu,
  layerNorm,
  linear,
  maskBias,
  param,
  type Params,
  type ParamSpec,
  silu,
  spec,
  timestepEmbedding,
  upsample2x
} from "./Layers.ts"
import type { Architecture } from "./UNetConfig.ts"

/**
 * Model inputs. `tokens`/`mask` are [B, maxTokens] (see Tokenizer); `t` holds
 * one (possibly fractional) timestep per batch item.
 *
 * @since 0.1.0
 */
export interface Input {
  readonly x: tf.Tensor4D
  readonly t: ReadonlyArray<number>
  readonly tokens: tf.Tensor2D
  readonly mask: tf.Tensor2D
}

/** Accumulates multiply-add FLOPs (2 per MAC) of convs and matMuls. */
export interface FlopCounter {
  flops: number
}

/** Side of a patch folded into channels at the input (1 = none). */
const patchOf = (a: Architecture) => a.patchSize ?? 1

const levels = (a: Architecture) =>
  a.channelMult.map((m, i) => ({ ch: a.baseChannels * m, res: (a.imageSize / patchOf(a)) >> i, i }))

const timeDim = (a: Architecture) => a.baseChannels * 4

const resSpecs = (name: string, cin: number, cout: number, tdim: number): Array<ParamSpec> => [
  ...spec.norm(`${name}.n1`, cin),
  ...spec.conv(`${name}.c1`, 3, cin, cout),
  ...spec.linear(`${name}.t`, tdim, cout),
  ...spec.norm(`${name}.n2`, cout),
  // Zero-initialised last conv: each block starts as the identity, which
  // keeps early training stable without normalisation tricks.
  ...spec.conv(`${name}.c2`, 3, cout, cout, true),
  ...(cin !== cout ? spec.linear(`${name}.skip`, cin, cout) : [])
]

const attnSpecs = (name: string, c: number, kvDim: number): Array<ParamSpec> => [
  ...spec.norm(`${name}.n`, c),
  ...spec.linear(`${name}.q`, c, c, false, false),
  ...spec.linear(`${name}.k`, kvDim, c, false, false),
  ...spec.linear(`${name}.v`, kvDim, c, false, false),
  ...spec.linear(`${name}.o`, c, c, true)
]

const textSpecs = (a: Architecture, vocabSize: number): Array<ParamSpec> => {
  const d = a.textDim
  const out: Array<ParamSpec> = [
    ...spec.embedding("text.tok", vocabSize + 2, d),
    ...spec.embedding("text.pos", a.maxTokens, d)
  ]
  for (let l = 0; l < a.textLayers; l++) {
    out.push(
      ...spec.norm(`text.l${l}.n1`, d),
      ...attnSpecs(`text.l${l}.attn`, d, d).filter((s) => !s.name.endsWith(".n.g") && !s.name.endsWith(".n.b")),
      ...spec.norm(`text.l${l}.n2`, d),
      ...spec.linear(`text.l${l}.fc1`, d, 4 * d),
      ...spec.linear(`text.l${l}.fc2`, 4 * d, d, true)
    )
  }
  out.push(...spec.norm("text.out", d))
  return out
}

/**
 * Every parameter of the model, in a fixed order (the order initialisation
 * draws from the generator, so one seed gives one model).
 *
 * @since 0.1.0
 */
export const paramSpecs = (a: Architecture, vocabSize: number): Array<ParamSpec> => {
  const L = levels(a)
  const td = timeDim(a)
  const hasAttn = (res: number) => a.attentionResolutions.includes(res)
  const out: Array<ParamSpec> = [
    ...textSpecs(a, vocabSize),
    ...spec.linear("time.fc1", a.baseChannels, td),
    ...spec.linear("time.fc2", td, td),
    ...(a.pooledText === true ? spec.linear("text.pool", a.textDim, td) : []),
    ...spec.conv("in", 3, a.channels * patchOf(a) ** 2, L[0].ch)
  ]
  const skips: Array<number> = [L[0].ch]
  let ch = L[0].ch
  for (const lv of L) {
    for (let r = 0; r < a.numResBlocks; r++) {
      out.push(...resSpecs(`down${lv.i}.res${r}`, ch, lv.ch, td))
      ch = lv.ch
      if (hasAttn(lv.res)) out.push(...attnSpecs(`down${lv.i}.xattn${r}`, ch, a.textDim))
      skips.push(ch)
    }
    if (lv.i < L.length - 1) skips.push(ch)
  }
  out.push(
    ...resSpecs("mid.res0", ch, ch, td),
    ...attnSpecs("mid.sattn", ch, ch),
    ...attnSpecs("mid.xattn", ch, a.textDim),
    ...resSpecs("mid.res1", ch, ch, td)
  )
  for (const lv of [...L].reverse()) {
    for (let r = 0; r <= a.numResBlocks; r++) {
      const skip = skips.pop()!
      out.push(...resSpecs(`up${lv.i}.res${r}`, ch + skip, lv.ch, td))
      ch = lv.ch
      if (hasAttn(lv.res)) out.push(...attnSpecs(`up${lv.i}.xattn${r}`, ch, a.textDim))
    }
  }
  out.push(...spec.norm("out.n", ch), ...spec.conv("out", 3, ch, a.channels * patchOf(a) ** 2, true))
  return out
}

const countConv = (fc: FlopCounter | undefined, x: tf.Tensor4D, k: number, cout: number) => {
  if (fc) fc.flops += 2 * x.shape[0] * x.shape[1] * x.shape[2] * x.shape[3] * k * k * cout
}
const countLinear = (fc: FlopCounter | undefined, x: tf.Tensor, cout: number) => {
  if (fc) fc.flops += 2 * x.size * cout
}

const convC = (p: Params, name: string, x: tf.Tensor4D, fc?: FlopCounter) => {
  const w = param(p, `${name}.w`) as tf.Tensor4D
  countConv(fc, x, w.shape[0], w.shape[3])
  return conv(p, name, x)
}
const linearC = (p: Params, name: string, x: tf.Tensor, fc?: FlopCounter) => {
  countLinear(fc, x, (param(p, `${name}.w`) as tf.Tensor2D).shape[1])
  return linear(p, name, x)
}

const resBlock = (
  p: Params,
  name: string,
  x: tf.Tensor4D,
  temb: tf.Tensor2D,
  groups: number,
  fc?: FlopCounter
): tf.Tensor4D => {
  const [b] = x.shape
  let h = convC(p, `${name}.c1`, groupNormSilu(p, `${name}.n1`, x, groups), fc)
  const tproj = linearC(p, `${name}.t`, silu(temb), fc)
  h = tf.add(h, tf.reshape(tproj, [b, 1, 1, -1])) as tf.Tensor4D
  h = convC(p, `${name}.c2`, groupNormSilu(p, `${name}.n2`, h, groups), fc)
  const skip = p[`${name}.skip.w`] !== undefined ? linearC(p, `${name}.skip`, x, fc) : x
  return tf.add(h, skip) as tf.Tensor4D
}

const countAttn = (fc: FlopCounter | undefined, b: number, n: number, m: number, c: number) => {
  if (fc) fc.flops += 2 * 2 * b * n * m * c
}

/** Attention from image positions to a key/value sequence, residual. */
const imageAttn = (
  p: Params,
  name: string,
  x: tf.Tensor4D,
  kv: tf.Tensor3D | "self",
  heads: number,
  groups: number,
  bias?: tf.Tensor4D,
  fc?: FlopCounter
): tf.Tensor4D => {
  const [b, h, w, c] = x.shape
  const q = tf.reshape(groupNorm(p, `${name}.n`, x, groups), [b, h * w, c]) as tf.Tensor3D
  const keys = kv === "self" ? q : kv
  if (fc) {
    countLinear(fc, q, c)
    countLinear(fc, keys, c)
    countLinear(fc, keys, c)
    countLinear(fc, q, c)
    countAttn(fc, b, h * w, keys.shape[1], c)
  }
  const out = attention(p, name, q, keys, heads, kv === "self" ? undefined : bias)
  return tf.add(x, tf.reshape(out, [b, h, w, c])) as tf.Tensor4D
}

/**
 * Text encoder: [B, L] ids -> [B, L, textDim] contextual token features.
 *
 * @since 0.1.0
 */
export const encodeText = (
  p: Params,
  a: Architecture,
  tokens: tf.Tensor2D,
  mask: tf.Tensor2D,
  fc?: FlopCounter
): tf.Tensor3D => {
  const [b, len] = tokens.shape
  const table = param(p, "text.tok")
  const oneHot = tf.cast(tf.oneHot(tf.cast(tokens, "int32") as tf.Tensor2D, table.shape[0]), "float32")
  let h = linearFree(tf.reshape(oneHot, [b * len, -1]) as tf.Tensor2D, table as tf.Tensor2D)
  h = tf.add(tf.reshape(h, [b, len, a.textDim]), tf.slice(param(p, "text.pos"), [0, 0], [len, a.textDim]))
  const bias = maskBias(mask)
  for (let l = 0; l < a.textLayers; l++) {
    const n1 = layerNorm(p, `text.l${l}.n1`, h) as tf.Tensor3D
    if (fc) {
      for (let i = 0; i < 4; i++) countLinear(fc, n1, a.textDim)
      countAttn(fc, b, len, len, a.textDim)
    }
    h = tf.add(h, attention(p, `text.l${l}.attn`, n1, n1, a.heads, bias))
    const n2 = layerNorm(p, `text.l${l}.n2`, h)
    h = tf.add(h, linearC(p, `text.l${l}.fc2`, silu(linearC(p, `text.l${l}.fc1`, n2, fc)), fc))
  }
  return layerNorm(p, "text.out", h) as tf.Tensor3D
}

const linearFree = (x: tf.Tensor2D, w: tf.Tensor2D) => tf.matMul(x, w)

/**
 * Predicted noise for a batch. Pure: call it inside `tf.tidy` (or a gradient
 * function) and it leaves nothing behind.
 *
 * @since 0.1.0
 */
export const forward = (p: Params, a: Architecture, input: Input, fc?: FlopCounter): tf.Tensor4D => {
  const L = levels(a)
  const hasAttn = (res: number) => a.attentionResolutions.includes(res)
  const ctx = encodeText(p, a, input.tokens, input.mask, fc)
  const bias = maskBias(input.mask)
  const temb0 = timestepEmbedding(input.t, a.baseChannels)
  let temb = linearC(p, "time.fc2", silu(linearC(p, "time.fc1", temb0, fc)), fc) as tf.Tensor2D
  if (a.pooledText === true) {
    // Masked mean over the prompt's tokens.
    const m = tf.expandDims(input.mask, 2)
    const pooled = tf.div(tf.sum(tf.mul(ctx, m), 1), tf.maximum(tf.sum(m, 1), 1)) as tf.Tensor2D
    temb = tf.add(temb, linearC(p, "text.pool", pooled, fc)) as tf.Tensor2D
  }

  const patch = patchOf(a)
  let h = convC(p, "in", patch > 1 ? spaceToDepth(input.x, patch) : input.x, fc)
  const skips: Array<tf.Tensor4D> = [h]
  for (const lv of L) {
    for (let r = 0; r < a.numResBlocks; r++) {
      h = resBlock(p, `down${lv.i}.res${r}`, h, temb, a.groups, fc)
      if (hasAttn(lv.res)) h = imageAttn(p, `down${lv.i}.xattn${r}`, h, ctx, a.heads, a.groups, bias, fc)
      skips.push(h)
    }
    if (lv.i < L.length - 1) {
      h = downsample2x(h)
      skips.push(h)
    }
  }
  h = resBlock(p, "mid.res0", h, temb, a.groups, fc)
  h = imageAttn(p, "mid.sattn", h, "self", a.heads, a.groups, undefined, fc)
  h = imageAttn(p, "mid.xattn", h, ctx, a.heads, a.groups, bias, fc)
  h = resBlock(p, "mid.res1", h, temb, a.groups, fc)
  for (const lv of [...L].reverse()) {
    for (let r = 0; r <= a.numResBlocks; r++) {
      h = resBlock(p, `up${lv.i}.res${r}`, tf.concat([h, skips.pop()!], 3) as tf.Tensor4D, temb, a.groups, fc)
      if (hasAttn(lv.res)) h = imageAttn(p, `up${lv.i}.xattn${r}`, h, ctx, a.heads, a.groups, bias, fc)
    }
    if (lv.i > 0) h = upsample2x(h)
  }
  const out = convC(p, "out", groupNormSilu(p, "out.n", h, a.groups), fc)
  return patch > 1 ? depthToSpace(out, patch) : out
}

/**
 * [B, H, W, C] -> [B, H/p, W/p, p*p*C]: each p x p patch becomes one position
 * (lossless, as in "simple diffusion"), so the network's first level runs at
 * H/p. Reshape and transpose only, so gradients need nothing special.
 *
 * @since 0.2.0
 */
export const spaceToDepth = (x: tf.Tensor4D, p: number): tf.Tensor4D => {
  const [b, h, w, c] = x.shape
  const t = tf.transpose(tf.reshape(x, [b, h / p, p, w / p, p, c]), [0, 1, 3, 2, 4, 5])
  return tf.reshape(t, [b, h / p, w / p, p * p * c])
}

/**
 * Inverse of `spaceToDepth`.
 *
 * @since 0.2.0
 */
export const depthToSpace = (x: tf.Tensor4D, p: number): tf.Tensor4D => {
  const [b, h, w, cc] = x.shape
  const c = cc / (p * p)
  const t = tf.transpose(tf.reshape(x, [b, h, w, p, p, c]), [0, 1, 3, 2, 4, 5])
  return tf.reshape(t, [b, h * p, w * p, c])
}
