/**
 * Every fine-tuning algorithm of the project by name, as its layer stack for
 * `Sharpen.loop`: the one switch the 2-D lab (src/lab/Lab.ts) and the
 * ShapeWorld comparison (src/experiments/Compare.ts) share, so both train a
 * method the same way.
 *
 * @since 0.4.0
 */
import { type Layer, Schema } from "effect"
import type * as Denoiser from "../model/Denoiser.ts"
import type { RandomSource } from "../tensor/RandomSource.ts"
import * as BaselineLayers from "./BaselineLayers.ts"
import type { SharpenConfig } from "../sharpen/SharpenConfig.ts"
import * as SharpenLayers from "../sharpen/SharpenLayers.ts"
import type { BatchSource } from "../sharpen/Sources.ts"

export const ALGORITHMS = ["rlhf", "sft", "standard", "diffusion-dpo", "ddpo", "raft"] as const
export const Algorithm = Schema.Literals(ALGORITHMS)
export type Algorithm = typeof Algorithm.Type

/**
 * The stack of `algorithm` with config `c`. `data` replaces the image-text
 * source of the methods that train on data (SFT sharpening, standard
 * fine-tuning; default ShapeWorld renders); the online methods keep theirs.
 *
 * @since 0.4.0
 */
export const layers = <RE, RR>(
  algorithm: Algorithm,
  c: SharpenConfig,
  w: SharpenLayers.Wiring<RE, RR>,
  data?: Layer.Layer<BatchSource, never, RandomSource | Denoiser.Denoiser>
) => {
  const withData = data === undefined ? w : { ...w, source: data }
  switch (algorithm) {
    case "rlhf":
      return SharpenLayers.rlhf(c, w)
    case "sft":
      return SharpenLayers.sft(c, withData)
    case "standard":
      return BaselineLayers.standard(c, withData)
    case "diffusion-dpo":
      // The run's dpoBeta (same beta / 2 convention; default equal to the baseline's), so a setting reaches it.
      return BaselineLayers.diffusionDpo(c, w, { beta: c.dpoBeta })
    case "ddpo":
      return BaselineLayers.ddpo(c, w)
    case "raft":
      return BaselineLayers.raft(c, w)
  }
}
