/**
 * Best-of-N noise search ("inference-time scaling", Ma et al. 2025, the
 * random-search verifier baseline): for each prompt draw N initial noises,
 * sample each fully with the normal sampler (DDIM, CFG, `Generate`'s
 * conventions: x0 clipped to [-1, 1] each step), score the N final images
 * with the reward, keep the best.
 *
 * Seeds: candidate c of image i under `seed` uses its own generator (for the
 * initial noise, and for the step noise when eta > 0). Candidate 0 is
 * `Generate.imageRng(seed, i)`, exactly the plain sampler's image, so N = 1
 * reproduces `Generate.generate`; candidates c >= 1 use
 * `derivedRng(seed, i, STREAM.bestOfN, c)`. An image's candidates therefore
 * do not depend on the batch size, on the other prompts, or on N: the
 * candidates of best-of-4 are the first 4 of best-of-8, which lets one run
 * at N report best-of-n for every n <= N (`nested`) at no extra cost.
 *
 * Cost per image: NFE = N * steps * (cfg != 1 ? 2 : 1); reward evaluations
 * = N (0 for N = 1: nothing to choose, the reward is not called). Ties go to
 * the lowest candidate index.
 *
 * See docs/inference-baselines.md.
 *
 * @since 0.1.0
 */
import type * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import * as Ddim from "../diffusion/Ddim.ts"
import { attempt, type DiffusionError } from "../diffusion/DiffusionError.ts"
import * as Schedule from "../diffusion/Schedule.ts"
import * as Denoiser from "../model/Denoiser.ts"
import { Reward } from "../reward/Reward.ts"
import type { RewardError } from "../reward/RewardError.ts"
import type { Rng } from "../tensor/Random.ts"
import * as Generate from "../trajectory/Generate.ts"
import {
  check,
  checkSampler,
  counted,
  derivedRng,
  type GuidedDenoiser,
  type InferenceMethod,
  type InferenceResult,
  modelDenoiser,
  type ScoreImages,
  STREAM
} from "./InferenceMethod.ts"

/**
 * Options of best-of-N.
 *
 * @since 0.1.0
 */
export interface BestOfNOptions {
  /** The sampler each candidate is drawn with; `batchSize` counts candidate rows per model call. */
  readonly sampler: Generate.SamplerOptions
  /** Candidates per prompt, >= 1. */
  readonly n: number
  /** Also return best-of-n for these n <= N (prefixes of the same candidates), at no extra cost. */
  readonly nested?: ReadonlyArray<number>
  /** Index of the first prompt (for a prompt list split into parts, as `Generate.generate`). Default 0. */
  readonly firstIndex?: number
  /** The guided noise prediction; default `Denoiser.guidedEps(model, x, t, prompts, sampler.cfg)`. */
  readonly denoise?: GuidedDenoiser
  /** Progress in candidate rows sampled. */
  readonly onProgress?: (done: number, total: number) => void
}

/**
 * Best-of-n for one n (N itself, or a nested n).
 *
 * @since 0.1.0
 */
export interface BestOfNSelection {
  readonly n: number
  /** The chosen image per prompt. */
  readonly images: ReadonlyArray<Float32Array>
  /** The chosen candidate index per prompt (in [0, n)). */
  readonly chosen: ReadonlyArray<number>
  /** The chosen candidates' rewards; undefined when N = 1 (not scored). */
  readonly rewards?: ReadonlyArray<number>
  readonly nfePerImage: number
  readonly rewardEvalsPerImage: number
}

/**
 * Result of best-of-N.
 *
 * @since 0.1.0
 */
export interface BestOfNResult extends InferenceResult {
  readonly n: number
  /** The chosen candidate index per prompt. */
  readonly chosen: ReadonlyArray<number>
  /** Every candidate's reward, [prompt][candidate]; undefined when N = 1. */
  readonly candidateRewards?: ReadonlyArray<ReadonlyArray<number>>
  /** Best-of-n for each n of `nested` and N, ascending, without duplicates (the last is N). */
  readonly nested: ReadonlyArray<BestOfNSelection>
}

/** NFE per image: N * steps * (cfg != 1 ? 2 : 1). */
export const nfePerImage = (o: { readonly n: number; readonly steps: number; readonly cfg: number }): number =>
  o.n * Generate.nfePerImage(o)

/** Reward evaluations per image: N, or 0 for N = 1. */
export const rewardEvalsPerImage = (n: number): number => (n > 1 ? n : 0)

/**
 * The generator of candidate `candidate` of image `index`: candidate 0 is the
 * plain sampler's `Generate.imageRng(seed, index)`.
 *
 * @since 0.1.0
 */
export const candidateRng = (seed: number, index: number, candidate: number): Rng =>
  candidate === 0 ? Generate.imageRng(seed, index) : derivedRng(seed, index, STREAM.bestOfN, candidate)

/**
 * Samples one batch of rows (one prompt and one generator each) with DDIM,
 * exactly as `Generate.generate` samples one batch. Returns [0, 1] HWC
 * images. No tensor survives the call, also when it fails.
 *
 * @since 0.1.0
 */
export const sampleRows = (
  model: Denoiser.Model,
  prompts: ReadonlyArray<string>,
  rngs: ReadonlyArray<Rng>,
  sampler: Generate.SamplerOptions,
  denoise: GuidedDenoiser = modelDenoiser(model, sampler.cfg)
): Effect.Effect<Array<Float32Array>, DiffusionError> =>
  Effect.acquireUseRelease(
    attempt(() => {
      const xT = Generate.batchNoise(rngs, [prompts.length, ...Denoiser.sampleShape(model.config)]) as tf.Tensor
      try {
        return Ddim.sample({
          schedule: Schedule.make(model.config.schedule),
          denoise: (x, t) => denoise(x, t, prompts),
          xT,
          inferenceSteps: sampler.steps,
          eta: sampler.eta,
          noise: (s) => Generate.batchNoise(rngs, s),
          clipSample: 1
        })
      } finally {
        xT.dispose()
      }
    }),
    Generate.toUnitImages,
    (x0) => Effect.sync(() => x0.dispose())
  )

/**
 * All N candidates of every prompt, [prompt][candidate] ([0, 1] HWC), without
 * scoring (memory: N images per prompt). Fails with a `DiffusionError` on
 * bad options.
 *
 * @since 0.1.0
 */
export const generateCandidates = (
  model: Denoiser.Model,
  prompts: ReadonlyArray<string>,
  options: Pick<BestOfNOptions, "sampler" | "n" | "firstIndex" | "denoise">
): Effect.Effect<Array<Array<Float32Array>>, DiffusionError> =>
  Effect.gen(function*() {
    yield* attempt(() => checkOptions(options))
    const { n, sampler } = options
    const rows = candidateRows(prompts, n)
    const out: Array<Array<Float32Array>> = prompts.map(() => [])
    for (let start = 0; start < rows.length; start += sampler.batchSize) {
      const chunk = rows.slice(start, start + sampler.batchSize)
      const images = yield* sampleChunk(model, chunk, options)
      chunk.forEach((r, k) => (out[r.index][r.candidate] = images[k]))
    }
    return out
  })

interface Row {
  readonly prompt: string
  readonly index: number
  readonly candidate: number
}

/** (prompt, candidate) rows, prompt-major, candidates ascending. */
const candidateRows = (prompts: ReadonlyArray<string>, n: number): Array<Row> =>
  prompts.flatMap((prompt, index) => Array.from({ length: n }, (_, candidate) => ({ prompt, index, candidate })))

const sampleChunk = (
  model: Denoiser.Model,
  chunk: ReadonlyArray<Row>,
  options: Pick<BestOfNOptions, "sampler" | "firstIndex" | "denoise">
) =>
  sampleRows(
    model,
    chunk.map((r) => r.prompt),
    chunk.map((r) => candidateRng(options.sampler.seed, (options.firstIndex ?? 0) + r.index, r.candidate)),
    options.sampler,
    options.denoise
  )

const checkOptions = (o: Pick<BestOfNOptions, "sampler" | "n" | "nested" | "firstIndex">) => {
  checkSampler(o.sampler)
  check(Number.isInteger(o.n) && o.n >= 1, "n", o.n, "n (candidates per prompt) must be an integer >= 1")
  for (const m of o.nested ?? []) {
    check(Number.isInteger(m) && m >= 1 && m <= o.n, "nested", m, `nested sizes must be integers in [1, n = ${o.n}]`)
  }
  check(Number.isInteger(o.firstIndex ?? 0) && (o.firstIndex ?? 0) >= 0, "firstIndex", o.firstIndex, "firstIndex must be an integer >= 0")
}

/**
 * Best-of-N with any scoring function (the `Reward` service's `score`, or a
 * test's). Candidates are sampled in batches of `sampler.batchSize` rows and
 * each batch is scored with one call; only the current best image per
 * prompt (and per nested n) is kept. A scoring failure stops the search and
 * is returned as is; no tensor outlives the call.
 *
 * @since 0.1.0
 */
export const bestOfNWith = <E>(
  model: Denoiser.Model,
  prompts: ReadonlyArray<string>,
  options: BestOfNOptions,
  score: ScoreImages<E>
): Effect.Effect<BestOfNResult, E | DiffusionError> =>
  Effect.gen(function*() {
    yield* attempt(() => checkOptions(options))
    const { n, sampler } = options
    const sizes = [...new Set([...(options.nested ?? []), n])].sort((a, b) => a - b)
    const counter = counted(options.denoise ?? modelDenoiser(model, sampler.cfg), sampler.cfg)
    const rows = candidateRows(prompts, n)
    const candidateRewards = prompts.map(() => new Array<number>(n).fill(Number.NaN))
    // best[s][i]: the chosen candidate of prompt i among the first sizes[s]
    const best = sizes.map(() => prompts.map((): { candidate: number; reward: number; image: Float32Array } => ({ candidate: -1, reward: Number.NaN, image: new Float32Array(0) })))
    let rewardEvals = 0
    let rewardCalls = 0
    for (let start = 0; start < rows.length; start += sampler.batchSize) {
      const chunk = rows.slice(start, start + sampler.batchSize)
      const images = yield* sampleChunk(model, chunk, { ...options, denoise: counter.denoise })
      let scores: ReadonlyArray<number> = chunk.map(() => Number.NaN)
      if (n > 1) {
        scores = yield* score(images, chunk.map((r) => r.prompt))
        rewardCalls++
        rewardEvals += images.length
      }
      chunk.forEach((r, k) => {
        candidateRewards[r.index][r.candidate] = scores[k]
        sizes.forEach((size, s) => {
          const b = best[s][r.index]
          if (r.candidate < size && (b.candidate < 0 || scores[k] > b.reward)) {
            best[s][r.index] = { candidate: r.candidate, reward: scores[k], image: images[k] }
          }
        })
      })
      options.onProgress?.(start + chunk.length, rows.length)
    }
    const nested = sizes.map((size, s): BestOfNSelection => ({
      n: size,
      images: best[s].map((b) => b.image),
      chosen: best[s].map((b) => b.candidate),
      ...(n > 1 ? { rewards: best[s].map((b) => b.reward) } : {}),
      nfePerImage: nfePerImage({ ...sampler, n: size }),
      rewardEvalsPerImage: rewardEvalsPerImage(size)
    }))
    const top = nested[nested.length - 1]
    return {
      images: top.images,
      nfePerImage: top.nfePerImage,
      nfe: counter.nfe(),
      rewardEvalsPerImage: top.rewardEvalsPerImage,
      rewardEvals,
      rewardCalls,
      ...(n > 1 ? { rewards: top.rewards, candidateRewards } : {}),
      n,
      chosen: top.chosen,
      nested
    }
  }).pipe(Effect.withSpan("BestOfN.bestOfN", { attributes: { n: options.n, prompts: prompts.length } }))

/**
 * Best-of-N scored with the `Reward` in context. Fails with the reward's
 * `RewardError` (never swallowed) or a `DiffusionError` for bad options.
 *
 * @since 0.1.0
 */
export const bestOfN = (
  model: Denoiser.Model,
  prompts: ReadonlyArray<string>,
  options: BestOfNOptions
): Effect.Effect<BestOfNResult, RewardError | DiffusionError, Reward> =>
  Reward.use((reward) => bestOfNWith(model, prompts, options, reward.score))

/**
 * Best-of-N as an {@link InferenceMethod} (name `best-of-N`, family
 * "best-of-N").
 *
 * @since 0.1.0
 */
export const method = (options: Omit<BestOfNOptions, "nested">): InferenceMethod<RewardError | DiffusionError, Reward> => ({
  name: `best-of-${options.n}`,
  family: "best-of-N",
  nfePerImage: nfePerImage({ ...options.sampler, n: options.n }),
  rewardEvalsPerImage: rewardEvalsPerImage(options.n),
  generate: (model, prompts) => bestOfN(model, prompts, options)
})
