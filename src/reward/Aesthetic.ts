/**
 * `aesthetic`: an image-quality proxy for ShapeWorld-32, in [0, 1].
 *
 * There is no human taste to learn on ShapeWorld; what "looks good" is what
 * looks like a clean render: flat shapes in exact palette colours with crisp
 * edges on a pure black background, and nothing else. A diffusion model's
 * typical defects are the opposite: off-palette or muddy colours, a hazy
 * background, blurred edges, specks of noise and malformed blobs. The reward
 * is prompt-independent (it judges quality, not alignment) and is the mean of
 * three parts, each in [0, 1]:
 *
 * - palette fidelity `P`: over ink pixels (max(R, G, B) >= 100, the
 *   verifier's rule), the mean of `max(0, 1 - d / 120)` where d is the RGB
 *   distance to the nearest palette colour (120 is the verifier's
 *   unknown-ink distance). Exact colours give 1; blurred edges and colour
 *   mixes lower it.
 * - background cleanliness `B`: over the other pixels, the mean of
 *   `1 - max(R, G, B) / 100`. Pure black gives 1; haze, dim halos around
 *   blurred edges and faint noise lower it.
 * - structure `S`: the fraction of ink pixels that lie in recognised objects
 *   (components of >= 12 same-colour pixels whose shape the verifier
 *   recognises). Noise specks, unknown ink and malformed blobs lower it.
 *
 * `aesthetic = (P + B + S) / 3`. A part with no pixels to judge scores 0
 * (no ink: P = S = 0, so a blank canvas scores 1/3; no background: B = 0).
 * Every exact render scores 1. The colour and structure rules are the
 * verifier's, so the proxy agrees with what the project calls well formed.
 *
 * @since 0.1.0
 */
import { Effect, Layer } from "effect"
import { CHANNELS, SIZE, toBytes } from "../data/Image.ts"
import { INK_THRESHOLD, nearestColor, UNKNOWN_INK_DISTANCE } from "../data/Palette.ts"
import { detect } from "../data/Verifier.ts"
import { make as makeReward, Reward, type RewardMetadata, type RewardService } from "./Reward.ts"

/**
 * The three parts and their mean.
 *
 * @since 0.1.0
 */
export interface AestheticParts {
  readonly score: number
  readonly palette: number
  readonly background: number
  readonly structure: number
}

/**
 * The aesthetic proxy of one image (floats in [0, 1], quantised as the
 * verifier does).
 *
 * @since 0.1.0
 */
export const aestheticParts = (image: Float32Array | Uint8Array): AestheticParts => {
  const bytes = image instanceof Uint8Array ? image : toBytes(image, "unit")
  let ink = 0
  let fidelity = 0
  let bg = 0
  let clean = 0
  for (let p = 0; p < SIZE * SIZE; p++) {
    const r = bytes[p * CHANNELS]
    const g = bytes[p * CHANNELS + 1]
    const b = bytes[p * CHANNELS + 2]
    const m = Math.max(r, g, b)
    if (m >= INK_THRESHOLD) {
      ink++
      fidelity += Math.max(0, 1 - nearestColor(r, g, b).distance / UNKNOWN_INK_DISTANCE)
    } else {
      bg++
      clean += 1 - m / INK_THRESHOLD
    }
  }
  const recognised = ink === 0
    ? 0
    : detect(bytes).objects.filter((o) => o.shape !== "unrecognised").reduce((s, o) => s + o.pixels, 0)
  const palette = ink === 0 ? 0 : fidelity / ink
  const background = bg === 0 ? 0 : clean / bg
  const structure = ink === 0 ? 0 : recognised / ink
  return { score: (palette + background + structure) / 3, palette, background, structure }
}

/**
 * The reward's metadata.
 *
 * @since 0.1.0
 */
export const metadata: RewardMetadata = { name: "aesthetic", range: [0, 1], differentiable: false, relativeCost: 1 }

/**
 * The aesthetic reward service.
 *
 * @since 0.1.0
 */
export const make = (): RewardService =>
  makeReward(metadata, (images) => Effect.sync(() => images.map((img) => aestheticParts(img).score)))

/**
 * The aesthetic reward as a layer.
 *
 * @since 0.1.0
 */
export const layer: Layer.Layer<Reward> = Layer.sync(Reward, make)
