/**
 * Every fine-tuning algorithm of the project by name, as its layer stack for
 * `Sharpen.loop`: the one switch the 2-D lab (src/lab/Lab.ts) and the
 * ShapeWorld comparison (src/experiments/Compare.ts) share, so both train a
 * method the same way.
 *
 * @since 0.4.0
 */
import { Layer, Schema } from "effect"
import type * as Denoiser from "../model/Denoiser.ts"
import { Reference } from "../model/Reference.ts"
import * as GroupRelative from "../objective/GroupRelative.ts"
import * as Nft from "../objective/Nft.ts"
import type { Objective } from "../objective/Objective.ts"
import { Optimizer } from "../optim/Optimizer.ts"
import { Backend } from "../tensor/Backend.ts"
import type { RandomSource } from "../tensor/RandomSource.ts"
import { PathSelector } from "../trajectory/PathSelector.ts"
import { TrajectoryGenerator } from "../trajectory/TrajectoryGenerator.ts"
import * as BaselineLayers from "./BaselineLayers.ts"
import { objectiveDefaults, type ObjectiveSettings } from "./MethodSettings.ts"
import type { SharpenConfig } from "../sharpen/SharpenConfig.ts"
import * as SharpenLayers from "../sharpen/SharpenLayers.ts"
import type { BatchSource } from "../sharpen/Sources.ts"

/**
 * `nft` (DiffusionNFT) and `group` (the group-relative image-level
 * objective) learn from all n final images of a prompt; their own settings
 * are `ObjectiveSettings` (MethodSettings.ts).
 */
export const ALGORITHMS = ["rlhf", "sft", "standard", "diffusion-dpo", "ddpo", "raft", "nft", "group"] as const
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
  data?: Layer.Layer<BatchSource, never, RandomSource | Denoiser.Denoiser>,
  objective: ObjectiveSettings = objectiveDefaults
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
    case "nft":
      return imageGroup(c, w, Nft.objective({
        beta: objective.nftBeta,
        advClip: objective.nftAdvClip,
        kl: objective.nftKl,
        oldDecay: objective.nftOldDecay,
        weighting: objective.nftWeighting,
        noise: objective.nftNoise,
        microBatchRows: c.microBatchRows,
        stepsPerBatch: c.stepsPerBatch ?? 1
      }))
    case "group":
      return imageGroup(c, w, GroupRelative.objective({
        form: objective.groupForm,
        beta: objective.groupBeta,
        margin: c.margin,
        microBatchRows: c.microBatchRows,
        stepsPerBatch: c.stepsPerBatch ?? 1
      }))
  }
}

/**
 * The stack of image-level RLHF sharpening (`SharpenLayers.rlhf`: online
 * samples or prompts, n paths each continued to t = 0 and scored by their
 * final images, the frozen base model as reference) with another objective
 * over all n images, assembled as `SharpenLayers.rlhf` is, so a row differs
 * from image-level RLHF by its objective only.
 */
const imageGroup = <RE, RR>(
  c: SharpenConfig,
  w: SharpenLayers.Wiring<RE, RR>,
  objective: Layer.Layer<Objective, never, Denoiser.Denoiser | Reference | RandomSource>
) =>
  SharpenLayers.assemble(
    c,
    w,
    Layer.mergeAll(
      // These objectives need every path's final image, whatever the preference setting.
      TrajectoryGenerator.layer({ ...SharpenLayers.trajectoryOptions(c), continuation: true }),
      SharpenLayers.scorer(c, w),
      w.selector ?? PathSelector.bestWorst,
      // The reference is the base model directory, also when resuming.
      objective.pipe(Layer.provide(Reference.fromDir(w.model).pipe(Layer.provide(w.backend ?? Backend.layer)))),
      w.source ?? SharpenLayers.rlhfSource(c),
      Optimizer.adamW(SharpenLayers.optimizerConfig(c))
    )
  )
