/**
 * The model directory's `config.json`: architecture, noise schedule and
 * vocabulary, decoded with Schema so a hand-edited or foreign file fails with
 * the field that is wrong.
 *
 * @since 0.1.0
 */
import { Schema } from "effect"
import { ScheduleConfig } from "../diffusion/Schedule.ts"

const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))

export const Architecture = Schema.Struct({
  imageSize: PositiveInt,
  channels: PositiveInt,
  /** Channels at the first level; level i has baseChannels * channelMult[i]. */
  baseChannels: PositiveInt,
  channelMult: Schema.Array(PositiveInt),
  numResBlocks: PositiveInt,
  /**
   * Resolutions (sides of the feature map, in positions: imageSize / patchSize
   * at the first level) with cross-attention to the text tokens.
   */
  attentionResolutions: Schema.Array(PositiveInt),
  heads: PositiveInt,
  groups: PositiveInt,
  textDim: PositiveInt,
  textLayers: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  maxTokens: PositiveInt,
  /**
   * Also add the masked mean of the text features to the timestep embedding
   * (a global conditioning path into every res block, as Imagen / SDXL do
   * besides cross-attention). Absent = false (models before 0.2).
   */
  pooledText: Schema.optionalKey(Schema.Boolean),
  /**
   * Fold each patchSize x patchSize patch of pixels into channels before the
   * first conv and unfold after the last ("simple diffusion", Hoogeboom et al.
   * 2023): the first level runs at imageSize / patchSize, which costs a
   * quarter of the convolution positions at 2. Absent = 1 (models before 0.3).
   */
  patchSize: Schema.optionalKey(PositiveInt)
})
export type Architecture = typeof Architecture.Type

export const UNetConfig = Schema.Struct({
  format: Schema.Literal("diffusion-sharpening/unet@1"),
  architecture: Architecture,
  schedule: ScheduleConfig,
  /**
   * What the network outputs: the noise, or v = alpha_t eps - sigma_t x0
   * (Salimans & Ho 2022). Every consumer sees epsilon (`Denoiser.eps`
   * converts), so samplers and sharpening objectives do not change.
   */
  prediction: Schema.Literals(["epsilon", "v_prediction"]),
  vocabulary: Schema.Array(Schema.String)
})
export type UNetConfig = typeof UNetConfig.Type

/** Word list of the ShapeWorld-32 grammar (plurals are their own words). */
export const shapeWorldVocabulary: ReadonlyArray<string> = [
  "a", "and", "two", "three", "four",
  "red", "green", "blue", "yellow", "purple", "white",
  "square", "circle", "triangle", "squares", "circles", "triangles",
  "to", "the", "left", "right", "of", "above", "below"
]

/**
 * The default ShapeWorld-32 denoiser: sized for the wasm backend on 2 cores
 * (see docs/performance.md for its measured speed).
 *
 * @since 0.1.0
 */
export const defaultConfig: UNetConfig = {
  format: "diffusion-sharpening/unet@1",
  architecture: {
    imageSize: 32,
    channels: 3,
    baseChannels: 32,
    channelMult: [1, 2, 2],
    numResBlocks: 1,
    attentionResolutions: [16, 8],
    heads: 4,
    groups: 8,
    textDim: 64,
    textLayers: 2,
    maxTokens: 12,
    pooledText: true
  },
  // Pixel space: DDPM's linear schedule leaves almost no signal at t = 999
  // (alphas_cumprod ~ 4e-5), unlike SDXL's scaled_linear (0.0047).
  schedule: { kind: "linear", trainSteps: 1000, betaStart: 0.0001, betaEnd: 0.02 },
  // v-prediction: with epsilon prediction the high-noise steps carry almost
  // no training signal about the prompt (eps ~ x_t there), and the first
  // model trained here ignored its text (docs/models.md).
  prediction: "v_prediction",
  vocabulary: shapeWorldVocabulary
}
