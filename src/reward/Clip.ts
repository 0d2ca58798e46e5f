/**
 * `clip`: the learned ShapeWorld text-image score (src/reward/ClipModel.ts,
 * trained by `pipelines/train-clip.ts` into `models/shapeworld-clip/`).
 *
 * The reward is the model's CLIPScore, `2.5 * max(cos(image, text), 0)`, in
 * [0, 2.5]. It is differentiable in the pixels: `scoreTensor` gives the same
 * score as a tensor function of images [B, 32, 32, 3] in [0, 1].
 *
 * The model directory is loaded once when the layer is built (a missing or
 * broken directory is a `ModelLoadError` naming the file) and its variables
 * are freed when the layer's scope closes. Prompts must use the model's
 * vocabulary and length; others are a `RewardInputError` naming the index.
 * Scoring runs on the tensor backend in context (`Backend`); without one, the
 * layer initialises the default (`SHARPEN_BACKEND`, else auto).
 *
 * @since 0.1.0
 */
import { Context, Effect, type FileSystem, Layer, Option, type Path, Schema, type Scope } from "effect"
import { IMAGE_LENGTH } from "../data/Image.ts"
import { encode } from "../model/Tokenizer.ts"
import { Backend, type BackendUnavailable } from "../tensor/Backend.ts"
import * as ClipModel from "./ClipModel.ts"
import { make as makeReward, Reward, type RewardService } from "./Reward.ts"
import { decodeOptions, type RewardConfigError, RewardInputError } from "./RewardError.ts"

/** Where `pipelines/train-clip.ts` writes the released model. */
export const DEFAULT_MODEL_DIR = "models/shapeworld-clip"

/**
 * Options of the `clip` reward.
 *
 * @since 0.1.0
 */
export const ClipRewardOptions = Schema.Struct({
  /** Model directory (config.json + model.safetensors) ["models/shapeworld-clip"]. */
  modelDir: Schema.String.pipe(Schema.withDecodingDefaultKey(Effect.succeed(DEFAULT_MODEL_DIR))),
  /** Images per forward pass [256]. */
  batchSize: Schema.Int.check(Schema.isGreaterThan(0)).pipe(Schema.withDecodingDefaultKey(Effect.succeed(256)))
})
export type ClipRewardOptions = typeof ClipRewardOptions.Type
export type ClipRewardInput = typeof ClipRewardOptions.Encoded

/**
 * The reward's metadata (the model costs a few verifier calls per image on
 * the cpu backend).
 *
 * @since 0.1.0
 */
export const metadata = { name: "clip", range: [0, ClipModel.CLIPSCORE_WEIGHT] as const, differentiable: true, relativeCost: 5 }

/**
 * The reward service of a loaded model (the caller owns the model).
 *
 * @since 0.1.0
 */
export const fromModel = (model: ClipModel.Model, batchSize = 256): RewardService => {
  const c = model.config
  const checked = new Set<string>()
  const checkPrompts = (prompts: ReadonlyArray<string>): RewardInputError | undefined => {
    for (let i = 0; i < prompts.length; i++) {
      if (checked.has(prompts[i])) continue
      try {
        encode(c.vocabulary, c.maxTokens, [prompts[i]])
      } catch (e) {
        return new RewardInputError({
          reward: metadata.name,
          field: "prompts",
          index: i,
          message: `prompt ${i} cannot be read by the clip model: ${(e as { message?: string }).message ?? String(e)}`
        })
      }
      checked.add(prompts[i])
    }
    return undefined
  }
  return makeReward(
    { ...metadata, range: [...metadata.range] },
    (images, prompts) =>
      Effect.suspend(() => {
        const bad = checkPrompts(prompts)
        if (bad !== undefined) return Effect.fail(bad)
        const flat = new Float32Array(images.length * IMAGE_LENGTH)
        images.forEach((img, i) => flat.set(img, i * IMAGE_LENGTH))
        return Effect.map(ClipModel.scoreArray(model, flat, prompts, "unit", batchSize), (s) => Array.from(s))
      }),
    { scoreTensor: (images, prompts) => ClipModel.score(model, images, prompts, "unit") }
  )
}

/**
 * Loads the model directory (variables freed with the scope) and builds the
 * reward service.
 *
 * @since 0.1.0
 */
export const make = Effect.fn("Clip.make")(function*(
  input: ClipRewardInput = {}
): Effect.fn.Return<
  RewardService,
  ClipModel.ModelLoadError | RewardConfigError | BackendUnavailable,
  Scope.Scope | FileSystem.FileSystem | Path.Path
> {
  const o = yield* decodeOptions(ClipRewardOptions, input, "clip")
  if (Option.isNone(yield* Effect.serviceOption(Backend))) yield* Layer.build(Backend.layer)
  const context = yield* Layer.build(ClipModel.Clip.fromDir(o.modelDir))
  const { model } = Context.get(context, ClipModel.Clip)
  return fromModel(model, o.batchSize)
})

/**
 * The `clip` reward as a layer.
 *
 * @since 0.1.0
 */
export const layer = (
  input: ClipRewardInput = {}
): Layer.Layer<Reward, ClipModel.ModelLoadError | RewardConfigError | BackendUnavailable, FileSystem.FileSystem | Path.Path> =>
  Layer.effect(Reward, make(input))
