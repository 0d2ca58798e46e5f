/**
 * The default layer stacks of the two algorithms. Each stage is one layer;
 * to swap a stage, provide your own layer for its service instead (see
 * docs/architecture.md):
 *
 *   Sharpen.rlhf(config).pipe(
 *     Effect.provide(SharpenLayers.rlhf(config, { model, runDir, reward: myRewardLayer }))
 *   )
 *
 * @since 0.1.0
 */
import { type FileSystem, Layer, type Path } from "effect"
import * as Denoiser from "../model/Denoiser.ts"
import { Reference } from "../model/Reference.ts"
import * as ImageLevel from "../objective/ImageLevel.ts"
import { Objective } from "../objective/Objective.ts"
import { Ema } from "../optim/Ema.ts"
import { Optimizer } from "../optim/Optimizer.ts"
import { Decoder } from "../reward/Decoder.ts"
import * as Registry from "../reward/Registry.ts"
import type { Reward } from "../reward/Reward.ts"
import { Backend } from "../tensor/Backend.ts"
import { RandomSource } from "../tensor/RandomSource.ts"
import { PathSelector } from "../trajectory/PathSelector.ts"
import { TrajectoryGenerator } from "../trajectory/TrajectoryGenerator.ts"
import { TrajectoryScorer } from "../trajectory/TrajectoryScorer.ts"
import { Checkpointer } from "../optim/Checkpointer.ts"
import { GenerationPool } from "../parallel/GenerationPool.ts"
import type { GradientJobs } from "../objective/GradientJobs.ts"
import type { GenerationJobs } from "../trajectory/GenerationJobs.ts"
import { Metrics } from "../optim/Metrics.ts"
import type { SharpenConfig } from "./SharpenConfig.ts"
import * as PreferencePairs from "./PreferencePairs.ts"
import { BatchSource } from "./Sources.ts"

export interface Wiring<RE, RR> {
  /** Model directory of the base model (policy start and RLHF reference). */
  readonly model: string
  /** Checkpoints, metrics.jsonl. */
  readonly runDir: string
  /** The reward stage. */
  readonly reward: Layer.Layer<Reward, RE, RR>
  /** Tensor backend layer (default: auto / SHARPEN_BACKEND). */
  readonly backend?: Layer.Layer<Backend, unknown>
  /** Progress label for the metrics sink. */
  readonly label?: string
  /** Metrics sink (default: metrics.jsonl in runDir with a progress bar). */
  readonly metrics?: Layer.Layer<Metrics, never, FileSystem.FileSystem | Path.Path>
  /**
   * The data source (default: ShapeWorld renders for SFT, online samples of
   * ShapeWorld prompts for RLHF); the lab gives its own points.
   */
  readonly source?: Layer.Layer<BatchSource, never, RandomSource | Denoiser.Denoiser>
  /** Model space to what the reward scores (default: ShapeWorld's pixel decoder). */
  readonly decoder?: Layer.Layer<Decoder>
  /** Which paths to learn from (default: best and worst, `PathSelector.bestWorst`). */
  readonly selector?: Layer.Layer<PathSelector>
  /**
   * Threads of the iterations' generation (online samples, trajectories),
   * the main thread included (default 1: no worker threads; "auto": one per
   * core on the JS backends, 1 on the others, as the CLI's `--threads`).
   * See `GenerationPool`.
   */
  readonly threads?: number | "auto"
  /**
   * The iterations' jobs (online samples, trajectories, gradient parts,
   * reference errors) on another transport: a layer providing
   * `GenerationJobs` and `GradientJobs` for the `Denoiser`'s model, built
   * with the run's policy (the CLI's `--runners` gives `ClusterJobs.layer`,
   * jobs on effect/cluster runners). It replaces the worker threads
   * (`threads` is then unused). Every random draw stays in this process, so
   * the result is the one-thread result up to the order of float sums.
   */
  readonly jobs?: Layer.Layer<GenerationJobs | GradientJobs, unknown, Denoiser.Denoiser | Backend>
}

export const trajectoryOptions = (c: SharpenConfig) => ({
  n: c.n,
  m: c.m,
  inferenceSteps: c.inferenceSteps,
  cfg: c.cfg,
  estimator: c.estimator,
  timestep: c.timestep,
  perPrompt: c.timestepPer === "prompt",
  continuation: c.preference === "image" || c.aggregation.kind === "final"
})

/** The AdamW settings of a run (one optimiser step per iteration). */
export const optimizerConfig = (c: SharpenConfig) => ({
  beta1: c.beta1,
  beta2: c.beta2,
  eps: 1e-8,
  weightDecay: c.weightDecay,
  maxGradNorm: c.maxGradNorm,
  lr: c.lr,
  warmupSteps: c.warmupSteps,
  schedule: c.lrSchedule,
  totalSteps: c.iterations
})

/** The run's weight average (a no-op service when `ema` is 0). */
export const emaLayer = (c: SharpenConfig) => Ema.layer(c.ema)

/**
 * What every run needs besides its stages: the policy, the run's random
 * generator, the threads (or the wiring's `jobs`), the backend, metrics, the weight average and
 * checkpoints.
 *
 * @since 0.6.0
 */
export const runLayers = <RE, RR>(c: SharpenConfig, w: Wiring<RE, RR>) => {
  const backend = w.backend ?? Backend.layer
  const jobs: Layer.Layer<GenerationJobs | GradientJobs, unknown, Denoiser.Denoiser | Backend> = w.jobs ?? GenerationPool.layer(w.threads ?? 1)
  const base = jobs.pipe(
    Layer.provideMerge(Layer.mergeAll(Denoiser.Denoiser.fromDir(w.model, true), RandomSource.fromSeed(c.seed))),
    Layer.provideMerge(backend)
  )
  const metrics = w.metrics ?? Metrics.jsonl(`${w.runDir}/metrics.jsonl`, c.iterations, w.label ?? "sharpen", c.trainingNfe ?? 0)
  return { base, metrics, ema: emaLayer(c), checkpointer: Checkpointer.layer(w.runDir, c.keepCheckpoints) }
}

/**
 * A run from its stages: `stages` gets the policy, the generator, the
 * threads and the backend, and the run's layers (metrics, EMA, checkpoints)
 * are added around it.
 *
 * @since 0.6.0
 */
export const assemble = <RE, RR, SE, SR>(c: SharpenConfig, w: Wiring<RE, RR>, stages: Layer.Layer<Stages, SE, SR>) => {
  const run = runLayers(c, w)
  return run.checkpointer.pipe(
    Layer.provideMerge(Layer.mergeAll(stages, run.ema, run.metrics)),
    Layer.provideMerge(run.base)
  )
}

/** The services of one iteration's stages (docs/architecture.md). */
export type Stages = BatchSource | TrajectoryGenerator | TrajectoryScorer | PathSelector | Objective | Optimizer

/** The reward of each path: the wiring's reward (plus the config's guard, if any) on the decoded samples. */
export const scorer = <RE, RR>(c: SharpenConfig, w: Wiring<RE, RR>) =>
  TrajectoryScorer.layer(c.aggregation).pipe(Layer.provide(Layer.merge(Registry.withGuard(c.guard)(w.reward), w.decoder ?? Decoder.layer)))

/** SFT: the denoising loss on the best path's final image (image-level), or Eq. 9 along the best path (paper). */
export const sftObjective = (c: SharpenConfig) =>
  c.preference === "image"
    ? ImageLevel.sft({ microBatchRows: c.microBatchRows, stepsPerBatch: c.stepsPerBatch ?? 1 })
    : Objective.sft({ target: c.target, microBatchRows: c.microBatchRows })

/**
 * RLHF: Diffusion-DPO between the best and worst paths' final images
 * (image-level), or Eq. 11 between noise draws of one image (paper), against
 * the frozen base model.
 */
export const rlhfObjective = <RE, RR>(c: SharpenConfig, w: Wiring<RE, RR>) =>
  (c.preference === "image"
    ? ImageLevel.rlhf({ beta: c.dpoBeta, margin: c.margin, microBatchRows: c.microBatchRows, stepsPerBatch: c.stepsPerBatch ?? 1, winnerSft: c.winnerSft ?? 0, minLossTimestep: c.minLossTimestep ?? 0 })
    : Objective.rlhf({ beta: c.dpoBeta, margin: c.margin, target: c.target, referenceSteps: c.referenceSteps, microBatchRows: c.microBatchRows })).pipe(
      // The reference is always the base model directory, also when resuming.
      Layer.provide(Reference.fromDir(w.model).pipe(Layer.provide(w.backend ?? Backend.layer)))
    )

/** RLHF's prompts and start images: online samples of the policy, or prompts alone when paths start from noise. */
export const rlhfSource = (c: SharpenConfig) =>
  c.start === "noise"
    ? PreferencePairs.promptSource(c.split)
    : BatchSource.online({ split: c.split, steps: c.onlineSteps, cfg: c.cfg })

/**
 * SFT-Diffusion-Sharpening with every stage at its default
 * (`pipelines/sft.ts` spells the same assembly out).
 *
 * @since 0.1.0
 */
export const sft = <RE, RR>(c: SharpenConfig, w: Wiring<RE, RR>) =>
  assemble(
    c,
    w,
    Layer.mergeAll(
      TrajectoryGenerator.layer(trajectoryOptions(c)),
      scorer(c, w),
      w.selector ?? PathSelector.bestWorst,
      sftObjective(c),
      w.source ?? BatchSource.imageText(c.split),
      Optimizer.adamW(optimizerConfig(c))
    )
  )

/**
 * RLHF-Diffusion-Sharpening with every stage at its default
 * (`pipelines/rlhf.ts` spells the same assembly out).
 *
 * @since 0.1.0
 */
export const rlhf = <RE, RR>(c: SharpenConfig, w: Wiring<RE, RR>) =>
  assemble(
    c,
    w,
    Layer.mergeAll(
      TrajectoryGenerator.layer(trajectoryOptions(c)),
      scorer(c, w),
      w.selector ?? PathSelector.bestWorst,
      rlhfObjective(c, w),
      w.source ?? rlhfSource(c),
      Optimizer.adamW(optimizerConfig(c))
    )
  )
