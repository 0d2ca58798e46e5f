/**
 * A small CLIP-style dual encoder for ShapeWorld-32: the learned text-image
 * reward ("clip"). An image CNN and a text transformer map into one
 * embedding space; the reward is the CLIPScore of Hessel et al. (2021),
 * `w * max(cos(image, text), 0)` with w = 2.5, so it lies in [0, 2.5].
 *
 * Image encoder: per level one 3x3 conv -> GroupNorm -> SiLU (repeated
 * `imageBlocks` times), 2x average pooling between levels, then the flattened
 * final map (spatial layout kept, which relations need) -> MLP -> embedding.
 * Text encoder: one-hot word embeddings + learned positions -> pre-LN
 * transformer -> final LayerNorm -> mean over real tokens -> linear.
 * Both embeddings are L2-normalised; a learned logit scale (CLIP's inverse
 * temperature, stored as its log, clamped to at most 100) is used in training.
 *
 * A model directory holds `config.json` (a `ClipConfig`, format
 * "diffusion-sharpening/clip@1") and `model.safetensors`; loading checks
 * every tensor against the config and fails with a `ModelLoadError` naming
 * the file, tensor and shapes (the error type of src/model/Weights.ts).
 *
 * Images enter in [-1, 1] ("signed", as the diffusion model produces them);
 * `toSigned` converts [0, 1] images.
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Context, Effect, Layer, Result, Schema, SchemaIssue } from "effect"
import type { StoredTensor } from "../io/Safetensors.ts"
import {
  attention,
  conv,
  downsample2x,
  groupNorm,
  initParams,
  layerNorm,
  linear,
  maskBias,
  param,
  type Params,
  type ParamSpec,
  silu,
  spec
} from "../model/Layers.ts"
import { encode } from "../model/Tokenizer.ts"
import { shapeWorldVocabulary } from "../model/UNetConfig.ts"
import * as ModelDir from "../io/ModelDir.ts"
import { CONFIG_FILE, ModelLoadError, WEIGHTS_FILE } from "../io/ModelDir.ts"
import * as HostRead from "../tensor/HostRead.ts"
import { Rng } from "../tensor/Random.ts"
import * as Scoped from "../tensor/Scoped.ts"

export { CONFIG_FILE, ModelLoadError, WEIGHTS_FILE }

const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))

export const FORMAT = "diffusion-sharpening/clip@1"

/**
 * The model directory's `config.json`.
 *
 * @since 0.1.0
 */
export const ClipConfig = Schema.Struct({
  format: Schema.Literal(FORMAT),
  imageSize: PositiveInt,
  /** Conv channels per level; levels are at imageSize / 2^i. */
  imageChannels: Schema.Array(PositiveInt),
  /** Convs per level. */
  imageBlocks: PositiveInt,
  groups: PositiveInt,
  /** Hidden width of the image head MLP. */
  imageHidden: PositiveInt,
  embedDim: PositiveInt,
  textDim: PositiveInt,
  textLayers: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  /** Hidden width of each transformer layer's MLP. */
  textHidden: PositiveInt,
  heads: PositiveInt,
  maxTokens: PositiveInt,
  vocabulary: Schema.Array(Schema.String)
})
export type ClipConfig = typeof ClipConfig.Type

/** CLIPScore's weight w (Hessel et al. 2021): score = w * max(cos, 0). */
export const CLIPSCORE_WEIGHT = 2.5
/** CLIP's initial logit scale 1/0.07 and its clamp, as logs. */
export const INIT_LOG_SCALE = Math.log(1 / 0.07)
export const MAX_LOG_SCALE = Math.log(100)

/**
 * The released ShapeWorld-32 reward model's architecture (~0.44 M parameters).
 *
 * @since 0.1.0
 */
export const defaultConfig: ClipConfig = {
  format: FORMAT,
  imageSize: 32,
  imageChannels: [32, 32, 64, 64],
  imageBlocks: 1,
  groups: 8,
  imageHidden: 256,
  embedDim: 128,
  textDim: 64,
  textLayers: 2,
  textHidden: 128,
  heads: 4,
  maxTokens: 12,
  vocabulary: shapeWorldVocabulary
}

/** Side of the last feature map. */
const finalSide = (c: ClipConfig) => c.imageSize >> (c.imageChannels.length - 1)

/**
 * Every parameter, in initialisation order.
 *
 * @since 0.1.0
 */
export const paramSpecs = (c: ClipConfig): Array<ParamSpec> => {
  const out: Array<ParamSpec> = []
  let cin = 3
  c.imageChannels.forEach((ch, i) => {
    for (let k = 0; k < c.imageBlocks; k++) {
      out.push(...spec.conv(`img.l${i}.c${k}`, 3, cin, ch), ...spec.norm(`img.l${i}.n${k}`, ch))
      cin = ch
    }
  })
  const side = finalSide(c)
  out.push(
    ...spec.linear("img.fc1", side * side * cin, c.imageHidden),
    ...spec.linear("img.proj", c.imageHidden, c.embedDim)
  )
  const d = c.textDim
  out.push(...spec.embedding("text.tok", c.vocabulary.length + 2, d), ...spec.embedding("text.pos", c.maxTokens, d))
  for (let l = 0; l < c.textLayers; l++) {
    out.push(
      ...spec.norm(`text.l${l}.n1`, d),
      ...spec.linear(`text.l${l}.attn.q`, d, d, false, false),
      ...spec.linear(`text.l${l}.attn.k`, d, d, false, false),
      ...spec.linear(`text.l${l}.attn.v`, d, d, false, false),
      ...spec.linear(`text.l${l}.attn.o`, d, d),
      ...spec.norm(`text.l${l}.n2`, d),
      ...spec.linear(`text.l${l}.fc1`, d, c.textHidden),
      ...spec.linear(`text.l${l}.fc2`, c.textHidden, d)
    )
  }
  out.push(...spec.norm("text.out", d), ...spec.linear("text.proj", d, c.embedDim))
  // Stored as log(scale); initialised to log(1/0.07) by `init`.
  out.push({ name: "logit_scale", shape: [], init: "zeros", std: 0 })
  return out
}

/** Number of parameters of a config. */
export const parameterCount = (c: ClipConfig): number =>
  paramSpecs(c).reduce((a, s) => a + s.shape.reduce((x, y) => x * y, 1), 0)

const normalize = (x: tf.Tensor2D): tf.Tensor2D =>
  tf.div(x, tf.sqrt(tf.add(tf.sum(tf.square(x), 1, true), 1e-12))) as tf.Tensor2D

/**
 * [0, 1] images to the model's [-1, 1] input range (2x - 1).
 *
 * @since 0.1.0
 */
export const toSigned = <T extends tf.Tensor>(unitImages: T): T => tf.sub(tf.mul(unitImages, 2), 1) as T

/**
 * Image embeddings: images [B, S, S, 3] in [-1, 1] -> L2-normalised [B, D].
 * Pure (call inside `tf.tidy` or a gradient function).
 *
 * @since 0.1.0
 */
export const embedImages = (p: Params, c: ClipConfig, images: tf.Tensor4D): tf.Tensor2D => {
  const [b, h, w, ch] = images.shape
  if (h !== c.imageSize || w !== c.imageSize || ch !== 3) {
    throw new RangeError(`expected images [B, ${c.imageSize}, ${c.imageSize}, 3], got [${images.shape.join(", ")}]`)
  }
  let x = images
  c.imageChannels.forEach((_, i) => {
    if (i > 0) x = downsample2x(x)
    for (let k = 0; k < c.imageBlocks; k++) {
      x = silu(groupNorm(p, `img.l${i}.n${k}`, conv(p, `img.l${i}.c${k}`, x), c.groups)) as tf.Tensor4D
    }
  })
  const flat = tf.reshape(x, [b, -1])
  const hidden = silu(linear(p, "img.fc1", flat))
  return normalize(linear(p, "img.proj", hidden) as tf.Tensor2D)
}

/**
 * Text embeddings from token ids and mask ([B, L], see Tokenizer) ->
 * L2-normalised [B, D]. Pure.
 *
 * @since 0.1.0
 */
export const embedTokens = (p: Params, c: ClipConfig, tokens: tf.Tensor2D, mask: tf.Tensor2D): tf.Tensor2D => {
  const [b, len] = tokens.shape
  const d = c.textDim
  const table = param(p, "text.tok") as tf.Tensor2D
  // One-hot matMul, not gather: wasm has no gradient kernel for gather.
  const oneHot = tf.cast(tf.oneHot(tf.cast(tokens, "int32") as tf.Tensor2D, table.shape[0]), "float32")
  let h: tf.Tensor = tf.reshape(tf.matMul(tf.reshape(oneHot, [b * len, -1]) as tf.Tensor2D, table), [b, len, d])
  h = tf.add(h, tf.slice(param(p, "text.pos"), [0, 0], [len, d]))
  const bias = maskBias(mask)
  for (let l = 0; l < c.textLayers; l++) {
    const n1 = layerNorm(p, `text.l${l}.n1`, h) as tf.Tensor3D
    h = tf.add(h, attention(p, `text.l${l}.attn`, n1, n1, c.heads, bias))
    const n2 = layerNorm(p, `text.l${l}.n2`, h)
    h = tf.add(h, linear(p, `text.l${l}.fc2`, silu(linear(p, `text.l${l}.fc1`, n2))))
  }
  h = layerNorm(p, "text.out", h)
  const m = tf.reshape(mask, [b, len, 1])
  const pooled = tf.div(tf.sum(tf.mul(h, m), 1), tf.maximum(tf.sum(m, 1), 1)) as tf.Tensor2D
  return normalize(linear(p, "text.proj", pooled) as tf.Tensor2D)
}

/**
 * Text embeddings of prompts -> L2-normalised [B, D]. Throws `TokenizeError`
 * for words outside the vocabulary. Pure.
 *
 * @since 0.1.0
 */
export const embedTexts = (p: Params, c: ClipConfig, prompts: ReadonlyArray<string>): tf.Tensor2D => {
  // Pad only to the longest prompt: the encoder is exact under trailing
  // padding (masked attention, masked mean), so this only saves time.
  const longest = prompts.reduce((a, q) => Math.max(a, q.trim() === "" ? 1 : q.trim().split(/\s+/).length), 1)
  const tok = encode(c.vocabulary, Math.min(longest, c.maxTokens), prompts)
  return embedTokens(
    p,
    c,
    tf.tensor2d(tok.ids, [tok.batch, tok.maxLen], "int32"),
    tf.tensor2d(tok.mask, [tok.batch, tok.maxLen], "float32")
  )
}

/**
 * The learned logit scale exp(logit_scale), clamped to [0, 100] (scalar).
 *
 * @since 0.1.0
 */
export const logitScale = (p: Params): tf.Scalar => tf.exp(tf.minimum(param(p, "logit_scale"), MAX_LOG_SCALE)) as tf.Scalar

/**
 * CLIPScore of paired embeddings: w * max(<a_i, b_i>, 0) per row, [B].
 *
 * @since 0.1.0
 */
export const clipScore = (imageEmb: tf.Tensor2D, textEmb: tf.Tensor2D): tf.Tensor1D =>
  tf.mul(tf.relu(tf.sum(tf.mul(imageEmb, textEmb), 1)), CLIPSCORE_WEIGHT) as tf.Tensor1D

/**
 * Cosine similarity of each image with its prompt, [B] in [-1, 1]. Pure.
 *
 * @since 0.1.0
 */
export const cosine = (p: Params, c: ClipConfig, images: tf.Tensor4D, prompts: ReadonlyArray<string>): tf.Tensor1D => {
  if (images.shape[0] !== prompts.length) {
    throw new RangeError(`${images.shape[0]} images but ${prompts.length} prompts`)
  }
  return tf.sum(tf.mul(embedImages(p, c, images), embedTexts(p, c, prompts)), 1) as tf.Tensor1D
}

// ---------------------------------------------------------------- model values

/**
 * A reward model in memory: config plus parameters (variables, trainable or
 * frozen).
 *
 * @since 0.1.0
 */
export interface Model {
  readonly config: ClipConfig
  readonly params: Readonly<Record<string, tf.Variable>>
}

/**
 * A freshly initialised model (seeded).
 *
 * @since 0.1.0
 */
export const init = (config: ClipConfig, seed: number, trainable = true): Model => {
  const tensors = initParams(paramSpecs(config), Rng.fromSeed(seed))
  tensors["logit_scale"].dispose()
  tensors["logit_scale"] = tf.scalar(INIT_LOG_SCALE)
  return { config, params: ModelDir.variables(tensors, trainable) }
}

export const fromStored = (config: ClipConfig, weights: Readonly<Record<string, StoredTensor>>, trainable = false): Model => ({
  config,
  params: ModelDir.fromStored(paramSpecs(config), weights, trainable)
})

export const toStored = (m: Model): Effect.Effect<Record<string, StoredTensor>> => ModelDir.toStored(m.params)

export const dispose = (m: Model): void => ModelDir.disposeParams(m.params)

/**
 * CLIPScore of each image with its prompt, [B] in [0, 2.5]. Images are
 * [B, S, S, 3] in [-1, 1] (`range: "signed"`, default) or [0, 1]
 * (`range: "unit"`). Differentiable in the images; leaves no temporaries.
 *
 * @since 0.1.0
 */
export const score = (
  m: Model,
  images: tf.Tensor4D,
  prompts: ReadonlyArray<string>,
  range: "signed" | "unit" = "signed"
): tf.Tensor1D =>
  tf.tidy(() => {
    const x = range === "unit" ? toSigned(images) : images
    return tf.mul(tf.relu(cosine(m.params, m.config, x, prompts)), CLIPSCORE_WEIGHT) as tf.Tensor1D
  })

/**
 * `score` on a flat buffer of `prompts.length` images (row-major
 * B x S x S x 3), as numbers; batched to bound memory.
 *
 * @since 0.1.0
 */
export const scoreArray = (
  m: Model,
  images: Float32Array,
  prompts: ReadonlyArray<string>,
  range: "signed" | "unit" = "signed",
  batchSize = 256
): Effect.Effect<Float32Array> =>
  Effect.gen(function*() {
    const s = m.config.imageSize
    const per = s * s * 3
    if (images.length !== prompts.length * per) {
      return yield* Effect.die(new RangeError(`${images.length} values for ${prompts.length} images of ${s}x${s}x3`))
    }
    const out = new Float32Array(prompts.length)
    for (let i = 0; i < prompts.length; i += batchSize) {
      const n = Math.min(batchSize, prompts.length - i)
      out.set(
        yield* HostRead.consumeFloat32(() => score(m, tf.tensor4d(images.subarray(i * per, (i + n) * per), [n, s, s, 3]), prompts.slice(i, i + n), range)),
        i
      )
    }
    return out
  })

// ---------------------------------------------------------------- model directories

/**
 * Decode and validate a config.json text (`file` labels errors).
 *
 * @since 0.1.0
 */
export const decodeConfig = (text: string, file: string): Result.Result<ClipConfig, ModelLoadError> => {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (e) {
    return Result.fail(new ModelLoadError({ file, message: `not valid JSON: ${(e as Error).message}` }))
  }
  const format = (json as { format?: unknown } | null)?.format
  if (typeof format === "string" && format !== FORMAT) {
    return Result.fail(new ModelLoadError({ file, message: `format "${format}" is not a clip reward model (expected "${FORMAT}")` }))
  }
  const r = Schema.decodeUnknownResult(ClipConfig)(json)
  if (r._tag === "Failure") {
    return Result.fail(new ModelLoadError({ file, message: SchemaIssue.makeFormatterDefault()(r.failure.issue) }))
  }
  const levels = r.success.imageChannels.length
  if (levels === 0) return Result.fail(new ModelLoadError({ file, message: "imageChannels is empty: the image encoder needs at least one level" }))
  if (r.success.imageSize % (1 << (levels - 1)) !== 0) {
    return Result.fail(new ModelLoadError({ file, message: `imageSize ${r.success.imageSize} is not divisible by 2^${levels - 1} (${levels} levels)` }))
  }
  return Result.succeed(r.success)
}

/**
 * Check weights against the shapes the config implies (missing, misshapen
 * or extra tensors), naming the tensor and both shapes.
 *
 * @since 0.1.0
 */
export const checkWeights = (
  config: ClipConfig,
  weights: Readonly<Record<string, StoredTensor>>,
  file: string
): ModelLoadError | undefined => ModelDir.checkWeights(paramSpecs(config), weights, file)

/**
 * Reads and checks a model directory (config, weights, safetensors metadata).
 *
 * @since 0.1.0
 */
export const loadFiles = (dir: string) => ModelDir.load(dir, decodeConfig, paramSpecs).pipe(Effect.withSpan("ClipModel.loadFiles"))

/**
 * Loads a model directory into frozen variables (dispose with `dispose`, or
 * use `Clip.fromDir` to tie them to a scope).
 *
 * @since 0.1.0
 */
export const load = Effect.fn("ClipModel.load")(function*(dir: string, trainable = false) {
  const files = yield* loadFiles(dir)
  return fromStored(files.config, files.weights, trainable)
})

/**
 * Writes a model directory atomically (weights first, then config).
 *
 * @since 0.1.0
 */
export const save = (dir: string, m: Model, metadata: Readonly<Record<string, string>> = {}) =>
  Effect.flatMap(toStored(m), (weights) => ModelDir.save(dir, Schema.encodeSync(ClipConfig)(m.config), weights, metadata))

/**
 * The reward model of a run, frozen, owned by the layer's scope.
 *
 * @since 0.1.0
 */
export class Clip extends Context.Service<Clip, {
  readonly model: Model
}>()("sharpen/reward/Clip") {
  /** Load a model directory; variables are disposed when the layer closes. */
  static readonly fromDir = (dir: string) =>
    Layer.effect(
      Clip,
      Effect.gen(function*() {
        const files = yield* loadFiles(dir)
        const model = yield* Scoped.acquireWith(() => fromStored(files.config, files.weights, false), dispose)
        return Clip.of({ model })
      })
    )
}
