/**
 * Inference-time methods (a plain sampler, best-of-N noise search, per-step
 * reward search) behind one small interface, so that a comparison can put
 * them on one reward-vs-NFE plot (paper Fig. 5) and through the usual
 * evaluation report (`Evaluate.judge`).
 *
 * An {@link InferenceMethod} knows its cost per image before it runs
 * (`nfePerImage`, `rewardEvalsPerImage`), and its `generate` returns one
 * [0, 1] HWC image per prompt together with the cost it actually incurred
 * (`nfe`, `rewardEvals`, `rewardCalls`, counted while generating).
 *
 * NFE convention (as `Generate.nfePerImage`): one network evaluation per
 * image row per denoiser call, two with classifier-free guidance (cfg != 1:
 * the conditional and the null prompt run as a doubled batch).
 *
 * See docs/inference-baselines.md.
 *
 * @since 0.1.0
 */
import type * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import { attempt, type DiffusionError, InvalidArgument } from "../diffusion/DiffusionError.ts"
import * as Denoiser from "../model/Denoiser.ts"
import type * as ClipModel from "../reward/ClipModel.ts"
import { Reward } from "../reward/Reward.ts"
import type { RewardError } from "../reward/RewardError.ts"
import { Rng } from "../tensor/Random.ts"
import * as Evaluate from "./Evaluate.ts"
import * as Generate from "../trajectory/Generate.ts"

// ---------------------------------------------------------------------------
// Results and methods
// ---------------------------------------------------------------------------

/**
 * What a method returns for a list of prompts.
 *
 * @since 0.1.0
 */
export interface InferenceResult {
  /** One [0, 1] HWC image per prompt, in prompt order. */
  readonly images: ReadonlyArray<Float32Array>
  /** Network evaluations per image, from the method's formula. */
  readonly nfePerImage: number
  /** Network evaluations actually made, summed over all images (counted; = nfePerImage * images.length). */
  readonly nfe: number
  /** Reward evaluations (images scored) per image, from the method's formula. */
  readonly rewardEvalsPerImage: number
  /** Images actually scored while generating, summed over all images (counted). */
  readonly rewardEvals: number
  /** Calls to the reward service while generating (batches; counted). */
  readonly rewardCalls: number
  /**
   * The search reward of each returned image, when the method already knows
   * it (best-of-N with N > 1); undefined otherwise.
   */
  readonly rewards?: ReadonlyArray<number>
}

/**
 * An inference-time method: a name, its cost per image, and a generator.
 *
 * @since 0.1.0
 */
export interface InferenceMethod<E = never, R = never> {
  /** E.g. "best-of-8". */
  readonly name: string
  /** The curve it belongs to on a reward-vs-NFE plot, e.g. "best-of-N". */
  readonly family: string
  readonly nfePerImage: number
  readonly rewardEvalsPerImage: number
  readonly generate: (model: Denoiser.Model, prompts: ReadonlyArray<string>) => Effect.Effect<InferenceResult, E, R>
}

/** 2 with classifier-free guidance (doubled batch), else 1. */
export const cfgFactor = (cfg: number): 1 | 2 => (cfg === 1 ? 1 : 2)

/**
 * A guided noise prediction for a batch: eps for `x` [B,H,W,C] at timestep
 * `t`, one prompt per row. Returns a new tensor (the caller disposes it).
 *
 * @since 0.1.0
 */
export type GuidedDenoiser = (x: tf.Tensor, t: number, prompts: ReadonlyArray<string>) => tf.Tensor

/** The model's classifier-free guided eps (`Denoiser.guidedEps`). */
export const modelDenoiser = (model: Denoiser.Model, cfg: number): GuidedDenoiser => (x, t, prompts) =>
  Denoiser.guidedEps(model, x, t, prompts, cfg)

/**
 * Wraps a denoiser to count network evaluations: rows * cfgFactor(cfg) per
 * call.
 *
 * @since 0.1.0
 */
export const counted = (denoise: GuidedDenoiser, cfg: number): { readonly denoise: GuidedDenoiser; readonly nfe: () => number } => {
  let nfe = 0
  return {
    denoise: (x, t, prompts) => {
      const eps = denoise(x, t, prompts)
      nfe += x.shape[0] * cfgFactor(cfg)
      return eps
    },
    nfe: () => nfe
  }
}

/**
 * A reward for the searches: scores [0, 1] images against prompts. The
 * `Reward` service's `score` is one; tests may pass any function.
 *
 * @since 0.1.0
 */
export type ScoreImages<E> = (images: ReadonlyArray<Float32Array>, prompts: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<number>, E>

// ---------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------

const fmix32 = (h: number): number => {
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

/** Noise streams of the methods (so that their generators never coincide). */
export const STREAM = { bestOfN: 1, stepSearch: 2 } as const

/**
 * A generator seeded by a hash of integers, e.g. (seed, image index, stream,
 * candidate): independent of batching and of the other prompts.
 *
 * @since 0.1.0
 */
export const derivedRng = (...parts: ReadonlyArray<number>): Rng =>
  Rng.fromSeed(parts.reduce((h, p) => fmix32((Math.imul(h ^ (p | 0), 0x01000193) + 0x9e3779b9) >>> 0), 0x811c9dc5))

// ---------------------------------------------------------------------------
// Helpers shared by the methods
// ---------------------------------------------------------------------------

/** Index of the first maximum (ties go to the lowest index). */
export const argmax = (xs: ReadonlyArray<number>): number => {
  let best = 0
  for (let i = 1; i < xs.length; i++) if (xs[i] > xs[best]) best = i
  return best
}

/** Throws `InvalidArgument` unless `ok`. */
export const check = (ok: boolean, name: string, value: unknown, message: string): void => {
  if (!ok) throw new InvalidArgument({ name, value, message })
}

/** Checks sampler options (as the `SamplerOptions` schema), throwing `InvalidArgument`. */
export const checkSampler = (o: Generate.SamplerOptions): void => {
  check(Number.isInteger(o.steps) && o.steps > 0 && o.steps <= 1000, "steps", o.steps, "steps must be an integer in [1, 1000]")
  check(Number.isFinite(o.cfg) && o.cfg >= 0, "cfg", o.cfg, "cfg must be a finite number >= 0")
  check(Number.isFinite(o.eta) && o.eta >= 0, "eta", o.eta, "eta must be a finite number >= 0")
  check(Number.isInteger(o.seed), "seed", o.seed, "seed must be an integer")
  check(Number.isInteger(o.batchSize) && o.batchSize > 0, "batchSize", o.batchSize, "batchSize must be a positive integer")
}

// ---------------------------------------------------------------------------
// The plain sampler
// ---------------------------------------------------------------------------

/**
 * The plain sampler (`Generate.generate`: DDIM, CFG, one noise per image
 * seeded by (seed, index)) as a method. No reward calls.
 * NFE per image = steps * (cfg != 1 ? 2 : 1).
 *
 * @since 0.1.0
 */
export const base = (sampler: Generate.SamplerOptions, name = `DDIM ${sampler.steps}`): InferenceMethod<DiffusionError> => {
  const nfePerImage = Generate.nfePerImage(sampler)
  return {
    name,
    family: "base",
    nfePerImage,
    rewardEvalsPerImage: 0,
    generate: (model, prompts) =>
      attempt(() => checkSampler(sampler)).pipe(
        Effect.andThen(Generate.generate(model, prompts, sampler)),
        Effect.map((images): InferenceResult => ({ images, nfePerImage, nfe: nfePerImage * images.length, rewardEvalsPerImage: 0, rewardEvals: 0, rewardCalls: 0 })),
        Effect.withSpan("InferenceMethod.base")
      )
  }
}

// ---------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------

/**
 * One method evaluated on one prompt set.
 *
 * @since 0.1.0
 */
export interface MethodReport {
  readonly method: string
  readonly family: string
  readonly nfePerImage: number
  readonly rewardEvalsPerImage: number
  /** Final images scored once more with the `Reward` in context (not part of the method's cost). */
  readonly rewards: ReadonlyArray<number>
  readonly meanReward: number
  /** Verifier accuracy per category, clip score (if a clip model is given), NFE per image. */
  readonly report: Evaluate.SetReport
  readonly images: ReadonlyArray<Float32Array>
}

/**
 * Runs a method on a prompt set, judges its images (`Evaluate.judge` with
 * the method's NFE per image) and scores them with the `Reward` in context
 * (one extra call per batch of images, outside the method's budget).
 *
 * @since 0.1.0
 */
export const evaluate = <E, R>(
  method: InferenceMethod<E, R>,
  model: Denoiser.Model,
  set: Evaluate.PromptSet,
  options: { readonly clip?: ClipModel.Model } = {}
): Effect.Effect<MethodReport, E | RewardError, R | Reward> =>
  Effect.gen(function*() {
    const texts = set.prompts.map((p) => p.text)
    const result = yield* method.generate(model, texts)
    const rewards = yield* Reward.score(result.images, texts)
    const report = yield* Evaluate.judge(set.name, set.prompts, result.images, method.nfePerImage, options.clip)
    return {
      method: method.name,
      family: method.family,
      nfePerImage: method.nfePerImage,
      rewardEvalsPerImage: method.rewardEvalsPerImage,
      rewards,
      meanReward: rewards.length === 0 ? 0 : rewards.reduce((a, b) => a + b, 0) / rewards.length,
      report,
      images: result.images
    }
  }).pipe(Effect.withSpan("InferenceMethod.evaluate", { attributes: { method: method.name } }))

/**
 * Rows for `Plot.lineSvg` (reward vs NFE, one line per family; paper Fig. 5):
 * `{ family, method, nfe, reward, accuracy }`.
 *
 * @since 0.1.0
 */
export const plotRows = (reports: ReadonlyArray<MethodReport>): Array<Record<string, number | string>> =>
  reports.map((r) => ({
    family: r.family,
    method: r.method,
    nfe: r.nfePerImage,
    reward: r.meanReward,
    accuracy: r.report.rows.find((row) => row.category === "overall")?.accuracy ?? 0
  }))
