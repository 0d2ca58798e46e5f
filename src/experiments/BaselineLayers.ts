/**
 * Layer stacks of the fine-tuning baselines of the paper's Table 1, for the
 * same loop as sharpening (`Sharpen.loop`): same Metrics (metrics.jsonl with
 * nfe and rewardCalls per iteration), Checkpointer (resume), Optimizer
 * (AdamW from the run's config), RandomSource and Reward/Decoder stages; only
 * the BatchSource, TrajectoryGenerator, TrajectoryScorer and Objective
 * differ (docs/baselines.md):
 *
 *   Sharpen.loop(config).pipe(
 *     Effect.provide(BaselineLayers.ddpo(config, { model, runDir, reward })),
 *     Effect.scoped
 *   )
 *
 * | baseline | source | generator | objective | NFE / iteration | reward calls |
 * |---|---|---|---|---|---|
 * | standard | ShapeWorld renders | one noise + t per image | eps MSE | 0 | 0 |
 * | diffusionDpo | prompts | 2 reference samples per prompt, noised as a pair | Diffusion-DPO | 2B * onlineSteps * (cfg == 1 ? 1 : 2) | 2B |
 * | ddpo | prompts | n policy chains per prompt, eta 1 | PPO clipped surrogate | n * B * onlineSteps * (cfg == 1 ? 1 : 2) | n * B |
 *
 * NFE counts sampling-time model evaluations only, as for sharpening (the
 * objectives' own forward/backward passes are not included).
 *
 * @since 0.1.0
 */
import { Effect, Layer, Schema } from "effect"
import * as Denoiser from "../model/Denoiser.ts"
import { Reference } from "../model/Reference.ts"
import * as Ddpo from "../objective/Ddpo.ts"
import * as DiffusionDpo from "../objective/DiffusionDpo.ts"
import type { Objective } from "../objective/Objective.ts"
import * as StandardFinetune from "../objective/StandardFinetune.ts"
import { Optimizer } from "../optim/Optimizer.ts"
import { StatTracker, StatTrackerOptions } from "../reward/Combinators.ts"
import { Decoder } from "../reward/Decoder.ts"
import * as Registry from "../reward/Registry.ts"
import { Backend } from "../tensor/Backend.ts"
import { RandomSource } from "../tensor/RandomSource.ts"
import * as NoisedSamples from "../trajectory/NoisedSamples.ts"
import { PathSelector } from "../trajectory/PathSelector.ts"
import * as PolicyRollout from "../trajectory/PolicyRollout.ts"
import type { TrajectoryGenerator } from "../trajectory/TrajectoryGenerator.ts"
import { TrajectoryScorer } from "../trajectory/TrajectoryScorer.ts"
import { Checkpointer } from "../optim/Checkpointer.ts"
import { Metrics } from "../optim/Metrics.ts"
import * as PreferencePairs from "../sharpen/PreferencePairs.ts"
import type { SharpenConfig } from "../sharpen/SharpenConfig.ts"
import * as SharpenLayers from "../sharpen/SharpenLayers.ts"
import { emaLayer, optimizerConfig, type Wiring } from "../sharpen/SharpenLayers.ts"
import { BatchSource } from "../sharpen/Sources.ts"

/**
 * Diffusion-DPO settings (the run's other settings come from SharpenConfig:
 * batchSize prompts = pairs per step, onlineSteps and cfg of the pair
 * samples, lr and AdamW, split, seed).
 *
 * @since 0.1.0
 */
export const DiffusionDpoSettings = DiffusionDpo.DiffusionDpoOptions
export type DiffusionDpoSettings = DiffusionDpo.DiffusionDpoOptions

/** beta_dpo = 5000 with the official 1/2 (see DiffusionDpo.ts). */
export const diffusionDpoDefaults: DiffusionDpoSettings = { beta: DiffusionDpo.DEFAULT_BETA }

/**
 * DDPO settings (the run's other settings come from SharpenConfig: batchSize
 * prompts with n samples each, onlineSteps DDIM steps per chain, cfg for
 * sampling and training, lr and AdamW, split, seed).
 *
 * @since 0.1.0
 */
export const DdpoSettings = Schema.Struct({
  ...Ddpo.DdpoOptions.fields,
  /** DDIM stochasticity of the chains (ddpo-pytorch: 1). */
  eta: Schema.Number.check(Schema.isGreaterThan(0), Schema.isLessThanOrEqualTo(1)),
  /** Per-prompt statistics (ddpo-pytorch: buffer 16, min count 16). */
  tracker: StatTrackerOptions
})
export type DdpoSettings = typeof DdpoSettings.Type

/**
 * ddpo-pytorch's values (clip range 1e-4, advantages clipped to 5, eta 1,
 * tracker 16/16, one inner epoch) except two sized for this testbed: two
 * minibatches (so half the steps are off-policy and the clipping acts, as in
 * ddpo-pytorch whenever samples per epoch exceed the train batch) and 20% of
 * the stochastic steps per sample (a minibatch is then samples/2 x 9 steps
 * x 2 for guidance = 216 UNet rows at B = 8, n = 3, 50 steps), differentiated
 * in parts of 12 (sample, step) pairs: one 216-row graph runs the wasm heap
 * out ("table index is out of bounds").
 *
 * @since 0.1.0
 */
export const ddpoDefaults: DdpoSettings = {
  ...Ddpo.ddpoPytorch,
  timestepFraction: 0.2,
  minibatches: 2,
  // 12 pairs = 24 UNet rows with guidance, like RLHF's micro-batch of 4.
  microBatch: 12,
  eta: 1,
  tracker: { bufferSize: 16, minCount: 16 }
}

/**
 * A scorer that calls no reward (standard fine-tuning uses none): scores 0,
 * rewardCalls 0; the metrics' reward fields are then 0.
 *
 * @since 0.1.0
 */
export const unscored: Layer.Layer<TrajectoryScorer> = Layer.succeed(
  TrajectoryScorer,
  TrajectoryScorer.of({
    score: (t) => Effect.succeed({ perStep: [], trajectory: Array.from({ length: t.n }, () => new Array<number>(t.batch).fill(0)), rewardCalls: 0 })
  })
)

/**
 * These baselines score finished samples (one "step" per row), so the
 * image-level "final" aggregation is their plain reward.
 */
const sampleAggregation = (c: SharpenConfig) => (c.aggregation.kind === "final" ? { kind: "sum" as const } : c.aggregation)

/** The run's frozen reference: the base model directory (also when resuming). */
const referenceLayer = (model: string) => Reference.fromDir(model)

/**
 * A baseline's stack: the shared stages (policy, RNG, optimiser, metrics,
 * checkpointer, selector) around its own source, generator, scorer and
 * objective. `extra` services (reference, stat tracker) join the base so
 * every stage, and the checkpointer, sees the same instance.
 */
const stack = <GE, GR, SCE, SCR, OE, OR, SE, SR, XO, XE, XR>(
  c: SharpenConfig,
  w: Omit<Wiring<unknown, unknown>, "reward">,
  label: string,
  parts: {
    readonly generator: Layer.Layer<TrajectoryGenerator, GE, GR>
    readonly scorer: Layer.Layer<TrajectoryScorer, SCE, SCR>
    readonly objective: Layer.Layer<Objective, OE, OR>
    readonly source: Layer.Layer<BatchSource, SE, SR>
    readonly extra: Layer.Layer<XO, XE, XR>
    /** Optimiser steps per iteration (for the lr schedule's length). */
    readonly stepsPerIteration: number
  }
) => {
  const backend = w.backend ?? Backend.layer
  const base = Layer.mergeAll(Denoiser.Denoiser.fromDir(w.model, true), RandomSource.fromSeed(c.seed), parts.extra).pipe(Layer.provideMerge(backend))
  const metrics = w.metrics ?? Metrics.jsonl(`${w.runDir}/metrics.jsonl`, c.iterations, w.label ?? label, c.trainingNfe ?? 0)
  const stages = Layer.mergeAll(
    parts.generator,
    parts.scorer,
    PathSelector.bestWorst,
    parts.objective,
    parts.source,
    Optimizer.adamW({ ...optimizerConfig(c), totalSteps: c.iterations * parts.stepsPerIteration }),
    emaLayer(c),
    metrics
  )
  return Checkpointer.layer(w.runDir, c.keepCheckpoints).pipe(Layer.provideMerge(stages), Layer.provideMerge(base))
}

/** No extra services. */
const none = Layer.empty as Layer.Layer<never>

/**
 * Standard fine-tuning: ShapeWorld renders of `config.split` (SFT
 * sharpening's data), eps MSE at one random t per image. Calls no reward
 * (a `reward` in the wiring is ignored); NFE 0.
 *
 * @since 0.1.0
 */
export const standard = (c: SharpenConfig, w: Omit<Wiring<unknown, unknown>, "reward">) =>
  stack(c, w, "standard-ft", {
    generator: NoisedSamples.generatorLayer,
    scorer: unscored,
    objective: StandardFinetune.objective,
    source: w.source ?? BatchSource.imageText(c.split),
    extra: none,
    stepsPerIteration: 1
  })

/**
 * Diffusion-DPO: per prompt two reference samples ranked by the reward,
 * the Diffusion-DPO loss against the frozen base model.
 *
 * @since 0.1.0
 */
export const diffusionDpo = <RE, RR>(c: SharpenConfig, w: Wiring<RE, RR>, settings: Partial<DiffusionDpoSettings> = {}) => {
  const s = Schema.decodeUnknownSync(DiffusionDpoSettings)({ ...diffusionDpoDefaults, ...settings })
  return stack(c, w, "diffusion-dpo", {
    generator: PreferencePairs.generatorLayer({ steps: c.onlineSteps, cfg: c.cfg }),
    scorer: TrajectoryScorer.layer(sampleAggregation(c)).pipe(Layer.provide(Layer.merge(Registry.withGuard(c.guard)(w.reward), w.decoder ?? Decoder.layer))),
    objective: DiffusionDpo.objective(s),
    source: PreferencePairs.promptSource(c.split),
    extra: referenceLayer(w.model),
    stepsPerIteration: 1
  })
}

/**
 * DDPO: n policy chains per prompt (DDIM onlineSteps, eta, guidance cfg),
 * per-prompt advantages, PPO clipped surrogate. The stat tracker's state is
 * saved in checkpoints.
 *
 * @since 0.1.0
 */
export const ddpo = <RE, RR>(c: SharpenConfig, w: Wiring<RE, RR>, settings: Partial<DdpoSettings> = {}) => {
  const s = Schema.decodeUnknownSync(DdpoSettings)({ ...ddpoDefaults, ...settings })
  return stack(c, w, "ddpo", {
    generator: PolicyRollout.generatorLayer({ n: c.n, steps: c.onlineSteps, cfg: c.cfg, eta: s.eta, clipSample: 1 }),
    scorer: TrajectoryScorer.layer(sampleAggregation(c)).pipe(Layer.provide(Layer.merge(Registry.withGuard(c.guard)(w.reward), w.decoder ?? Decoder.layer))),
    objective: Ddpo.objective(s),
    source: PreferencePairs.promptSource(c.split),
    extra: StatTracker.layer(s.tracker),
    stepsPerIteration: s.innerEpochs * s.minibatches
  })
}

/**
 * RAFT (best-of-N fine-tuning; Dong et al. 2023): per prompt N = `n` fresh
 * samples of the policy (paths from pure noise at the top of the grid, run
 * to t = 0), the best by the reward of its final image kept, and the
 * denoising loss on it. What a user would try first, and strong.
 *
 * @since 0.4.0
 */
export const raft = <RE, RR>(c: SharpenConfig, w: Wiring<RE, RR>) => {
  return SharpenLayers.sft(
    { ...c, preference: "image", m: 1, aggregation: { kind: "final" }, timestep: { kind: "top" }, timestepPer: "batch" },
    { ...w, source: w.source ?? PreferencePairs.promptSource(c.split), label: w.label ?? "raft" }
  )
}

/**
 * Model evaluations and reward calls of one iteration of each baseline
 * (what metrics.jsonl records), for planning runs.
 *
 * @since 0.1.0
 */
export const costPerIteration = (
  baseline: "standard" | "diffusion-dpo" | "ddpo",
  c: Pick<SharpenConfig, "batchSize" | "n" | "onlineSteps" | "cfg">
): { readonly nfe: number; readonly rewardCalls: number } => {
  const guidance = c.cfg === 1 ? 1 : 2
  switch (baseline) {
    case "standard":
      return { nfe: 0, rewardCalls: 0 }
    case "diffusion-dpo":
      return { nfe: 2 * c.batchSize * c.onlineSteps * guidance, rewardCalls: 2 * c.batchSize }
    case "ddpo":
      return { nfe: c.n * c.batchSize * c.onlineSteps * guidance, rewardCalls: c.n * c.batchSize }
  }
}
