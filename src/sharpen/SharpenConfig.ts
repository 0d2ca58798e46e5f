/**
 * Configuration of a sharpening run, decoded with Schema from a JSON file
 * and/or flags; every field has the paper's default where the paper gives
 * one, and an error names the field and its allowed range.
 *
 * @since 0.1.0
 */
import { Result, Schema, SchemaIssue } from "effect"
import * as Losses from "../objective/Losses.ts"
import * as Aggregate from "../trajectory/Aggregate.ts"
import { Estimator, TimestepChoice } from "../trajectory/Trajectory.ts"

const int = (min: number, max: number) => Schema.Int.check(Schema.isGreaterThanOrEqualTo(min), Schema.isLessThanOrEqualTo(max))
const num = (min: number, max: number) => Schema.Finite.check(Schema.isGreaterThanOrEqualTo(min), Schema.isLessThanOrEqualTo(max))

export const SharpenConfig = Schema.Struct({
  /** Optimisation steps (one batch each). */
  iterations: int(1, 1_000_000),
  /** Prompts per step (paper: 8). */
  batchSize: int(1, 1024),
  /**
   * UNet rows per gradient micro-batch of the SFT and RLHF objectives (0: the
   * whole batch in one part). A prompt costs m rows in SFT and 2m in RLHF
   * (best and worst path); parts hold as many whole prompts as fit, at least
   * one. The parts' gradients are summed, so only peak memory changes: 48
   * rows in one part can exhaust the wasm heap. Unset: the backend's
   * default (`Losses.defaultMicroBatchRows`).
   */
  microBatchRows: Schema.optional(int(0, 4096)),
  /** Trajectories per prompt (paper: n = 3). */
  n: int(2, 64),
  /** Denoising steps per trajectory (paper: m = 3). */
  m: int(1, 64),
  /** Sampler grid (paper: DDIM 50). */
  inferenceSteps: int(1, 1000),
  /** Classifier-free guidance (paper: 5). */
  cfg: num(0, 50),
  estimator: Estimator,
  aggregation: Aggregate.Aggregation,
  timestep: TimestepChoice,
  /** Learning rate (paper: 5e-6 for SDXL; see docs for this model's). */
  lr: num(0, 1),
  /** AdamW (paper: betas (0, 0.99), no weight decay). */
  beta1: num(0, 0.999999),
  beta2: num(0, 0.999999),
  weightDecay: num(0, 1),
  maxGradNorm: num(0, 1e6),
  warmupSteps: int(0, 1_000_000),
  lrSchedule: Schema.Literals(["constant", "cosine"]),
  /** RLHF: DPO temperature, margin placement, reference steps. */
  dpoBeta: num(1e-9, 1e9),
  margin: Losses.MarginPlacement,
  referenceSteps: Schema.Literals(["all", "first"]),
  /** Epsilon target along a path (see docs/architecture.md). */
  target: Losses.EpsTarget,
  /** RLHF: DDIM steps of the online samples (paper: 50). */
  onlineSteps: int(1, 1000),
  /** Which prompts/images train: the generator's training split, or all. */
  split: Schema.Literals(["train", "full"]),
  seed: Schema.Int,
  checkpointEvery: int(1, 1_000_000),
  /** Sample grid every this many iterations (0: only before and after). */
  sampleEvery: int(0, 1_000_000),
  /** Prompts per eval set for the before/after report (0: whole set). */
  evalPrompts: int(0, 100_000),
  /** DDIM steps of the before/after evaluation (paper: 50). */
  evalSteps: int(1, 1000),
  /**
   * What a preference compares (docs/method.md):
   * - "paper": the published objectives; every path is regressed on the one
   *   clean image the paths were noised from (a preference between noise
   *   draws of one image);
   * - "image": every path continued to t = 0, the objective on the paths'
   *   own final images (DPO between best and worst for RLHF, the denoising
   *   loss on the best for SFT).
   */
  preference: Schema.Literals(["paper", "image"]),
  /** Draw the start timestep once per batch (the paper's code) or per prompt. */
  timestepPer: Schema.Literals(["batch", "prompt"]),
  /**
   * RLHF: where the paths start: the policy's online sample noised to t
   * (the paper) or pure noise (then no online sample is drawn; use a
   * timestep range at the top of the grid).
   */
  start: Schema.Literals(["online-sample", "noise"]),
  /** Batches whose gradients are summed into one optimiser step (effective batch = batchSize x accumulate). */
  accumulate: int(1, 1024),
  /**
   * Image-level objectives: optimiser steps per generated batch, each on the
   * same selected images with a fresh eps and t (docs/method.md).
   */
  stepsPerBatch: int(1, 1024),
  /**
   * Image-level RLHF: weight of the winners' denoising loss added to the
   * DPO loss (0: pure DPO; docs/method.md).
   */
  winnerSft: num(0, 1e9),
  /** Image-level RLHF: lowest timestep of the DPO noise (0: U[0, T) as Diffusion-DPO). */
  minLossTimestep: int(0, 999),
  /** EMA decay of the weights used for evaluation and saving (0: off). */
  ema: num(0, 0.999999),
  /**
   * Stop once the run's training NFE (sampling `nfe` plus the objective's
   * `lossNfe`) reaches this, even before `iterations` (0: no budget).
   * Methods differ in NFE per iteration; a budget compares them fairly.
   */
  trainingNfe: int(0, Number.MAX_SAFE_INTEGER),
  /** Checkpoints kept on disk: a damaged latest one falls back to the one before. */
  keepCheckpoints: int(1, 1000)
})
export type SharpenConfig = typeof SharpenConfig.Type

/**
 * Defaults: the paper's (Sec. 4.1, App. A.3) where it gives them, except
 * where the lab measured a better setting (docs/method.md): image-level
 * preferences judged on the paths' final images, the start timestep drawn
 * per prompt from [200, 980], and AdamW beta1 0.9 (with the paper's 0 every
 * step moves each weight by about lr whatever the gradient). The published
 * algorithm is `paperVariant` (pipelines/configs/paper.json).
 */
export const defaults: SharpenConfig = {
  iterations: 12,
  batchSize: 8,
  n: 3,
  m: 3,
  inferenceSteps: 50,
  cfg: 5,
  estimator: { kind: "tweedie" },
  aggregation: { kind: "final" },
  timestep: { kind: "range", min: 200, max: 980 },
  lr: 2e-5,
  beta1: 0.9,
  beta2: 0.99,
  weightDecay: 0,
  maxGradNorm: 1,
  warmupSteps: 0,
  lrSchedule: "constant",
  dpoBeta: 5000,
  margin: "paper",
  referenceSteps: "all",
  target: "consistent",
  onlineSteps: 50,
  split: "train",
  seed: 0,
  checkpointEvery: 5,
  sampleEvery: 10,
  evalPrompts: 24,
  evalSteps: 50,
  preference: "image",
  timestepPer: "prompt",
  start: "online-sample",
  accumulate: 1,
  stepsPerBatch: 1,
  winnerSft: 0,
  minLossTimestep: 0,
  ema: 0,
  trainingNfe: 0,
  keepCheckpoints: 2
}

/**
 * What `pipelines/rlhf.ts` runs unless told otherwise: `defaults` with the
 * settings measured best for image-level RLHF sharpening of the ShapeWorld
 * UNet (four optimiser steps per generated batch, DPO beta 500, lr 5e-5,
 * training paths on a DDIM-20 grid), and a run sized to about 10 minutes on
 * two cores: 26 iterations, 48 + 48 eval prompts on the training grid, no
 * grid mid-run. The measurements behind each value are in docs/results.md
 * ("ShapeWorld sharpening that learns", "The default run a new user sees").
 * Not applied with --paper, which runs the published algorithm as published.
 */
export const rlhfDefaults: Partial<SharpenConfig> = {
  iterations: 26,
  sampleEvery: 0,
  lr: 5e-5,
  dpoBeta: 500,
  stepsPerBatch: 4,
  inferenceSteps: 20,
  onlineSteps: 20,
  evalSteps: 20,
  evalPrompts: 48
}

/**
 * The settings that make a run the published algorithm (Algorithms 1-2 as
 * the paper and its code have them), over the defaults.
 *
 * @since 0.4.0
 */
export const paperVariant: Partial<SharpenConfig> = {
  preference: "paper",
  aggregation: { kind: "sum" },
  timestep: { kind: "uniform" },
  timestepPer: "batch",
  beta1: 0
}

/**
 * A configuration value is missing or out of range.
 *
 * @since 0.1.0
 */
export class ConfigError extends Schema.TaggedError<ConfigError>()("ConfigError", {
  file: Schema.optional(Schema.String),
  field: Schema.optional(Schema.String),
  message: Schema.String
}) {}

/** Merge layers of partial settings over the defaults and validate. */
export const decode = (layers: ReadonlyArray<Record<string, unknown>>, file?: string): Result.Result<SharpenConfig, ConfigError> => {
  const merged: Record<string, unknown> = { ...defaults }
  for (const l of layers) for (const [k, v] of Object.entries(l)) if (v !== undefined) merged[k] = v
  const unknown = Object.keys(merged).find((k) => !(k in SharpenConfig.fields))
  if (unknown !== undefined) return Result.fail(new ConfigError({ file, field: unknown, message: `unknown setting "${unknown}"` }))
  const r = Schema.decodeUnknownResult(SharpenConfig)(merged)
  if (Result.isSuccess(r)) return Result.succeed(r.success)
  const text = SchemaIssue.makeFormatterDefault()(r.failure.issue)
  const field = /\["?([A-Za-z0-9]+)"?\]/.exec(text)?.[1]
  return Result.fail(new ConfigError({ file, field, message: text.split("\n").join(" ") }))
}

/**
 * A pipeline's settings from the given layers (config file, then flags):
 * `--paper` puts `paperVariant` under them; otherwise RLHF puts
 * `rlhfDefaults` under them, unless a layer asks for the published
 * preference, which then runs as published.
 *
 * @since 0.5.0
 */
export const resolve = (
  algorithm: "sft" | "rlhf",
  layers: ReadonlyArray<Record<string, unknown>>,
  o: { readonly paper?: boolean; readonly file?: string } = {}
): Result.Result<SharpenConfig, ConfigError> => {
  const paper = o.paper === true || layers.some((l) => l.preference === "paper")
  const under = o.paper === true ? [paperVariant] : algorithm === "rlhf" && !paper ? [rlhfDefaults] : []
  return decode([...under, ...layers], o.file)
}
