/**
 * The decoder stage: maps the generative model's space to images before a
 * reward sees them. Rewards only ever score images (32 x 32 x 3 in [0, 1]).
 *
 * The project's UNet works in pixel space with values in [-1, 1], so its
 * decoder is the identity up to the range change x -> (x + 1) / 2, clamped to
 * [0, 1] (predicted x0 may overshoot). A latent model would provide a layer
 * whose `decode` runs its VAE decoder here; nothing else changes.
 *
 * Non-finite model values are a `RewardInputError` naming the sample (a
 * diverged model must stop the run, not be scored as black).
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Context, Effect, Layer } from "effect"
import { IMAGE_LENGTH } from "../data/Image.ts"
import { Reward } from "./Reward.ts"
import { type RewardError, RewardInputError } from "./RewardError.ts"

/**
 * The decoder service's shape.
 *
 * @since 0.1.0
 */
export interface DecoderService {
  readonly name: string
  /** Model samples (flat HWC) to images in [0, 1]. */
  readonly decode: (samples: ReadonlyArray<Float32Array>) => Effect.Effect<ReadonlyArray<Float32Array>, RewardInputError>
  /** The same on a tensor [B, H, W, C] -> [B, 32, 32, 3], differentiable; caller owns the result. */
  readonly decodeTensor: (samples: tf.Tensor4D) => tf.Tensor4D
}

/**
 * Pixel space [-1, 1] to [0, 1]: (x + 1) / 2, clamped.
 *
 * @since 0.1.0
 */
export const signedToUnit = (sample: Float32Array): Float32Array => {
  const out = new Float32Array(sample.length)
  for (let k = 0; k < sample.length; k++) {
    const v = (sample[k] + 1) / 2
    out[k] = v < 0 ? 0 : v > 1 ? 1 : v
  }
  return out
}

const decodePixel = Effect.fn("Decoder.decode")(function*(samples: ReadonlyArray<Float32Array>) {
  const out: Array<Float32Array> = []
  for (let i = 0; i < samples.length; i++) {
    const s = samples[i]
    if (s.length !== IMAGE_LENGTH) {
      return yield* new RewardInputError({
        reward: "decoder",
        field: "samples",
        index: i,
        message: `sample ${i} has ${s.length} values, expected 32x32x3 = ${IMAGE_LENGTH}`
      })
    }
    for (let k = 0; k < s.length; k++) {
      if (!Number.isFinite(s[k])) {
        return yield* new RewardInputError({
          reward: "decoder",
          field: "samples",
          index: i,
          message: `sample ${i} has a non-finite value (the model diverged?)`
        })
      }
    }
    out.push(signedToUnit(s))
  }
  return out as ReadonlyArray<Float32Array>
})

/**
 * The decoder of a pipeline.
 *
 * @since 0.1.0
 */
export class Decoder extends Context.Service<Decoder, DecoderService>()("sharpen/reward/Decoder") {
  /** Pixel-space model in [-1, 1]: identity up to the range change. */
  static readonly pixel: DecoderService = {
    name: "pixel",
    decode: decodePixel,
    decodeTensor: (x) => tf.tidy(() => tf.clipByValue(tf.div(tf.add(x, 1), 2), 0, 1) as tf.Tensor4D)
  }

  /**
   * Points (the 2-D lab): model space times `scale`, any length, finite
   * values required. The lab trains in [-1, 1] (the samplers clip there)
   * and scores in its own units.
   */
  static readonly scaled = (scale: number): Layer.Layer<Decoder> =>
    Layer.succeed(Decoder, {
      name: `scaled-${scale}`,
      decode: Effect.fn("Decoder.decode")(function*(samples: ReadonlyArray<Float32Array>) {
        const out: Array<Float32Array> = []
        for (let i = 0; i < samples.length; i++) {
          if (!samples[i].every(Number.isFinite)) {
            return yield* new RewardInputError({ reward: "decoder", field: "samples", index: i, message: `sample ${i} has a non-finite value (the model diverged?)` })
          }
          out.push(samples[i].map((v) => v * scale))
        }
        return out as ReadonlyArray<Float32Array>
      }),
      decodeTensor: (x) => tf.tidy(() => tf.mul(x, scale) as tf.Tensor4D)
    })

  /** The pixel-space decoder (the project's UNet). */
  static readonly layer: Layer.Layer<Decoder> = Layer.succeed(Decoder, Decoder.pixel)

  /** Same as `layer` (the pixel decoder needs nothing). */
  static readonly layerTest: Layer.Layer<Decoder> = Decoder.layer
}

/**
 * Decodes model samples and scores them with the reward in context.
 *
 * @since 0.1.0
 */
export const scoreSamples = Effect.fn("Decoder.scoreSamples")(function*(
  samples: ReadonlyArray<Float32Array>,
  prompts: ReadonlyArray<string>
): Effect.fn.Return<ReadonlyArray<number>, RewardError, Decoder | Reward> {
  const decoder = yield* Decoder
  const reward = yield* Reward
  const images = yield* decoder.decode(samples)
  return yield* reward.score(images, prompts)
})
