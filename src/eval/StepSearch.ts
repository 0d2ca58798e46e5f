/**
 * Per-step reward search during DDIM sampling, in the spirit of Free2Guide
 * (gradient-free path-integral control with a reward) and Demon (sampling
 * with rewards at each step). What is implemented, exactly:
 *
 * Sampling runs the plain sampler's DDIM grid (steps S, CFG, x0 clipped to
 * [-1, 1], initial noise `Generate.imageRng(seed, i)`; between search points
 * the sampler's own `eta`, with step noise from the image's generator as in
 * `Generate`). At K search points (step indices s_1 < ... < s_K <= S - 2;
 * by default evenly spaced, s_j = floor(j (S - 1) / K)), the step
 * x_{t} -> x_{t'} (t' the next grid timestep) branches:
 *
 * 1. eps = eps_theta(x_t, t) with CFG (the step's normal evaluation, or the
 *    one carried over from a previous search point);
 * 2. B candidates x_{t'}^(b) = mean + std * z_b: one stochastic DDIM step
 *    with eta = `searchEta` (default 1, the DDPM posterior variance) and B
 *    fresh noises z_b from `derivedRng(seed, i, STREAM.stepSearch, j, b)`;
 * 3. each candidate's Tweedie x0 estimate at t' from eps_theta(x_{t'}^(b), t')
 *    (one evaluation per candidate, clipped to [-1, 1]: exactly the x0
 *    prediction the next DDIM step will use), decoded to [0, 1], scored with
 *    the reward (one call per batch of images);
 * 4. the best candidate (ties: lowest b) becomes x_{t'}; its eps at t' is
 *    reused by the next step, so the search point costs B - 1 extra
 *    evaluations, not B.
 *
 * Cost per image, exactly: NFE = (S + K (B - 1)) * (cfg != 1 ? 2 : 1);
 * reward evaluations = K * B (0 when B = 1: nothing to choose, the reward is
 * not called, but the search steps are still stochastic: B = 1 is the
 * matched no-selection control). K = 0 reproduces `Generate.generate`.
 *
 * Relation to the papers (see docs/inference-baselines.md): Free2Guide
 * approximates path-integral control by sampling several next states from
 * the stochastic reverse kernel and choosing among them by exp(reward /
 * lambda) of their Tweedie x0 estimates, on a subset of the steps; Demon
 * perturbs every SDE step's noise with several candidates, scores each
 * candidate's PF-ODE x0 estimate and combines the noises with reward-based
 * weights (tanh or Boltzmann). This module implements the greedy choice (the
 * lambda -> 0 / zero-temperature limit of both) with a one-step Tweedie
 * estimate; neither weighted choice nor Demon's multi-step ODE estimate is
 * implemented.
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import * as Ddim from "../diffusion/Ddim.ts"
import { attempt, type DiffusionError } from "../diffusion/DiffusionError.ts"
import * as Schedule from "../diffusion/Schedule.ts"
import * as Denoiser from "../model/Denoiser.ts"
import { Reward } from "../reward/Reward.ts"
import type { RewardError } from "../reward/RewardError.ts"
import * as Generate from "../trajectory/Generate.ts"
import {
  argmax,
  cfgFactor,
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
 * Options of the step search.
 *
 * @since 0.1.0
 */
export interface StepSearchOptions {
  /** The base sampler (steps, cfg, eta between search points, seed); `batchSize` prompts per batch, and candidate rows per model call. */
  readonly sampler: Generate.SamplerOptions
  /** Candidates per search point, B >= 1. */
  readonly branches: number
  /** K evenly spaced search points (0 <= K <= steps - 1), or explicit step indices (ascending, in [0, steps - 2]). */
  readonly searchPoints: number | ReadonlyArray<number>
  /** DDIM eta of the branching steps, in (0, 1] usually; default 1. Must be > 0 when B > 1. */
  readonly searchEta?: number
  /** Index of the first prompt (for a prompt list split into parts). Default 0. */
  readonly firstIndex?: number
  /** The guided noise prediction; default `Denoiser.guidedEps(model, x, t, prompts, sampler.cfg)`. */
  readonly denoise?: GuidedDenoiser
  /** Progress in images finished. */
  readonly onProgress?: (done: number, total: number) => void
}

/**
 * One search point of one image.
 *
 * @since 0.1.0
 */
export interface SearchPoint {
  /** Step index in the DDIM grid (0-based). */
  readonly step: number
  readonly t: number
  /** The timestep the candidates are at. */
  readonly tPrev: number
  /** Each candidate's reward (empty when B = 1). */
  readonly rewards: ReadonlyArray<number>
  /** The candidate kept. */
  readonly chosen: number
}

/**
 * Result of the step search.
 *
 * @since 0.1.0
 */
export interface StepSearchResult extends InferenceResult {
  /** The search points used (step indices). */
  readonly searchSteps: ReadonlyArray<number>
  /** Per image, its search points in order. */
  readonly trace: ReadonlyArray<ReadonlyArray<SearchPoint>>
}

/**
 * The search points' step indices: K evenly spaced, floor(j (S - 1) / K) for
 * j = 0..K-1 (starting at step 0, all <= S - 2), or the given list checked.
 * Throws `InvalidArgument`.
 *
 * @since 0.1.0
 */
export const searchSchedule = (steps: number, searchPoints: number | ReadonlyArray<number>): ReadonlyArray<number> => {
  if (typeof searchPoints === "number") {
    check(
      Number.isInteger(searchPoints) && searchPoints >= 0 && searchPoints <= steps - 1,
      "searchPoints",
      searchPoints,
      `searchPoints must be an integer in [0, steps - 1 = ${steps - 1}]`
    )
    return Array.from({ length: searchPoints }, (_, j) => Math.floor((j * (steps - 1)) / searchPoints))
  }
  searchPoints.forEach((s, j) =>
    check(
      Number.isInteger(s) && s >= 0 && s <= steps - 2 && (j === 0 || s > searchPoints[j - 1]),
      "searchPoints",
      searchPoints,
      `search steps must be ascending integers in [0, steps - 2 = ${steps - 2}] (the last step has no noise to search)`
    )
  )
  return [...searchPoints]
}

const countPoints = (searchPoints: number | ReadonlyArray<number>) =>
  typeof searchPoints === "number" ? searchPoints : searchPoints.length

/** NFE per image: (S + K (B - 1)) * (cfg != 1 ? 2 : 1). */
export const nfePerImage = (o: {
  readonly steps: number
  readonly cfg: number
  readonly branches: number
  readonly searchPoints: number | ReadonlyArray<number>
}): number => (o.steps + countPoints(o.searchPoints) * (o.branches - 1)) * cfgFactor(o.cfg)

/** Reward evaluations per image: K * B, or 0 for B = 1. */
export const rewardEvalsPerImage = (o: { readonly branches: number; readonly searchPoints: number | ReadonlyArray<number> }): number =>
  o.branches > 1 ? countPoints(o.searchPoints) * o.branches : 0

const checkOptions = (o: StepSearchOptions): ReadonlyArray<number> => {
  checkSampler(o.sampler)
  check(Number.isInteger(o.branches) && o.branches >= 1, "branches", o.branches, "branches must be an integer >= 1")
  const eta = o.searchEta ?? 1
  check(
    Number.isFinite(eta) && eta >= 0 && (o.branches === 1 || eta > 0),
    "searchEta",
    eta,
    "searchEta must be a finite number >= 0, and > 0 when branches > 1 (else all candidates coincide)"
  )
  check(Number.isInteger(o.firstIndex ?? 0) && (o.firstIndex ?? 0) >= 0, "firstIndex", o.firstIndex, "firstIndex must be an integer >= 0")
  return searchSchedule(o.sampler.steps, o.searchPoints)
}

// ---------------------------------------------------------------------------
// Pieces (each leaves no tensor behind but its result, also when it throws or fails)
// ---------------------------------------------------------------------------

/** The denoiser on at most `maxRows` rows per call. */
const denoiseChunked = (denoise: GuidedDenoiser, x: tf.Tensor, t: number, prompts: ReadonlyArray<string>, maxRows: number): tf.Tensor => {
  if (x.shape[0] <= maxRows) return denoise(x, t, prompts)
  return tf.tidy(() => {
    const parts: Array<tf.Tensor> = []
    for (let start = 0; start < x.shape[0]; start += maxRows) {
      const size = Math.min(maxRows, x.shape[0] - start)
      const slice = tf.slice(x, start, size)
      parts.push(denoise(slice, t, prompts.slice(start, start + size)))
    }
    return tf.concat(parts, 0)
  })
}

/** Rows `rows` of `x`. */
const gatherRows = (x: tf.Tensor, rows: ReadonlyArray<number>): tf.Tensor =>
  tf.tidy(() => tf.gather(x, tf.tensor1d(rows as Array<number>, "int32")))

/** The x0 prediction a DDIM step from (x, t) would use (clipped to [-1, 1]), as [0, 1] images. */
const x0Images = (schedule: Schedule.Schedule, x: tf.Tensor, eps: tf.Tensor, t: number): Effect.Effect<Array<Float32Array>, DiffusionError> =>
  Effect.acquireUseRelease(
    attempt(() => tf.tidy(() => Ddim.step({ schedule, eps, t, tPrev: -1, xt: x, eta: 0, clipSample: 1 }).x0Pred)),
    Generate.toUnitImages,
    (x0) => Effect.sync(() => x0.dispose())
  )

// ---------------------------------------------------------------------------
// The search
// ---------------------------------------------------------------------------

interface Plan {
  readonly schedule: Schedule.Schedule
  readonly grid: ReadonlyArray<number>
  readonly points: ReadonlyArray<number>
  readonly eta: number
  readonly searchEta: number
  readonly branches: number
  readonly seed: number
  readonly maxRows: number
  readonly shape: (b: number) => Array<number>
}

const searchBatch = <E>(
  plan: Plan,
  prompts: ReadonlyArray<string>,
  firstIndex: number,
  denoise: GuidedDenoiser,
  score: ScoreImages<E>,
  stats: { rewardEvals: number; rewardCalls: number }
): Effect.Effect<{ images: Array<Float32Array>; trace: Array<Array<SearchPoint>> }, E | DiffusionError> =>
  Effect.suspend(() => {
    // Tensors held across Effect boundaries (reward calls): released on any exit.
    const live: { x?: tf.Tensor; eps?: tf.Tensor; cand?: tf.Tensor; candEps?: tf.Tensor } = {}
    const release = Effect.sync(() => {
      for (const v of Object.values(live)) v?.dispose()
    })
    const { branches: B, grid, schedule } = plan
    const b = prompts.length
    const rngs = prompts.map((_, i) => Generate.imageRng(plan.seed, firstIndex + i))
    const candPrompts = prompts.flatMap((p) => new Array<string>(B).fill(p))
    const trace: Array<Array<SearchPoint>> = prompts.map(() => [])
    return Effect.gen(function*() {
      live.x = Generate.batchNoise(rngs, plan.shape(b)) as tf.Tensor
      for (let i = 0; i < grid.length; i++) {
        const t = grid[i]
        const tPrev = i + 1 < grid.length ? grid[i + 1] : -1
        if (live.eps === undefined) {
          const x = live.x!
          live.eps = yield* attempt(() => denoise(x, t, prompts))
        }
        const x = live.x!
        const eps = live.eps
        const j = plan.points.indexOf(i)
        if (j < 0) {
          // A plain DDIM step, as Ddim.sample (noise from the images' generators when eta > 0).
          const next = yield* attempt(() => {
            const z = plan.eta > 0 ? Generate.batchNoise(rngs, x.shape) as tf.Tensor : undefined
            try {
              const r = Ddim.step({ schedule, eps, t, tPrev, xt: x, eta: plan.eta, noise: z, clipSample: 1 })
              r.x0Pred.dispose()
              r.mean.dispose()
              return r.prevSample
            } finally {
              z?.dispose()
            }
          })
          x.dispose()
          eps.dispose()
          live.eps = undefined
          live.x = next
          continue
        }
        // A search point: B stochastic candidates per image (rows image-major).
        const noiseRngs = prompts.flatMap((_, k) =>
          Array.from({ length: B }, (_, c) => derivedRng(plan.seed, firstIndex + k, STREAM.stepSearch, j, c))
        )
        live.cand = yield* attempt(() =>
          tf.tidy(() => {
            const rows = tf.tensor1d(prompts.flatMap((_, k) => new Array<number>(B).fill(k)), "int32")
            const xs = tf.gather(x, rows)
            const z = Generate.batchNoise(noiseRngs, xs.shape)
            return Ddim.step({ schedule, eps: tf.gather(eps, rows), t, tPrev, xt: xs, eta: plan.searchEta, noise: z as tf.Tensor, clipSample: 1 }).prevSample
          })
        )
        x.dispose()
        eps.dispose()
        live.x = undefined
        live.eps = undefined
        const cand = live.cand
        live.candEps = yield* attempt(() => denoiseChunked(denoise, cand, tPrev, candPrompts, plan.maxRows))
        const candEps = live.candEps
        let chosen = prompts.map(() => 0)
        let rewards: ReadonlyArray<number> = []
        if (B > 1) {
          const images = yield* x0Images(schedule, cand, candEps, tPrev)
          rewards = yield* score(images, candPrompts)
          stats.rewardCalls++
          stats.rewardEvals += images.length
          chosen = prompts.map((_, k) => argmax(rewards.slice(k * B, (k + 1) * B)))
        }
        const rows = chosen.map((c, k) => k * B + c)
        live.x = gatherRows(cand, rows)
        live.eps = gatherRows(candEps, rows)
        cand.dispose()
        candEps.dispose()
        live.cand = undefined
        live.candEps = undefined
        chosen.forEach((c, k) =>
          trace[k].push({ step: i, t, tPrev, rewards: rewards.slice(k * B, (k + 1) * B), chosen: c })
        )
      }
      const final = live.x!
      return { images: yield* Generate.toUnitImages(final), trace }
    }).pipe(Effect.ensuring(release))
  })

/**
 * The step search with any scoring function (the `Reward` service's
 * `score`, or a test's). Prompts are processed in batches of
 * `sampler.batchSize`; at a search point their B candidates are scored with
 * one call. A scoring failure stops the search and is returned as is; no
 * tensor outlives the call (success, failure or interruption).
 *
 * @since 0.1.0
 */
export const stepSearchWith = <E>(
  model: Denoiser.Model,
  prompts: ReadonlyArray<string>,
  options: StepSearchOptions,
  score: ScoreImages<E>
): Effect.Effect<StepSearchResult, E | DiffusionError> =>
  Effect.gen(function*() {
    const points = yield* attempt(() => checkOptions(options))
    const { sampler } = options
    const schedule = Schedule.make(model.config.schedule)
    const grid = yield* attempt(() => Ddim.timesteps(schedule.trainSteps, sampler.steps))
    const plan: Plan = {
      schedule,
      grid,
      points,
      eta: sampler.eta,
      searchEta: options.searchEta ?? 1,
      branches: options.branches,
      seed: sampler.seed,
      maxRows: sampler.batchSize,
      shape: (b) => [b, ...Denoiser.sampleShape(model.config)]
    }
    const counter = counted(options.denoise ?? modelDenoiser(model, sampler.cfg), sampler.cfg)
    const stats = { rewardEvals: 0, rewardCalls: 0 }
    const images: Array<Float32Array> = []
    const trace: Array<Array<SearchPoint>> = []
    for (let start = 0; start < prompts.length; start += sampler.batchSize) {
      const batch = prompts.slice(start, start + sampler.batchSize)
      const r = yield* searchBatch(plan, batch, (options.firstIndex ?? 0) + start, counter.denoise, score, stats)
      images.push(...r.images)
      trace.push(...r.trace)
      options.onProgress?.(images.length, prompts.length)
    }
    return {
      images,
      nfePerImage: nfePerImage({ ...sampler, branches: options.branches, searchPoints: points }),
      nfe: counter.nfe(),
      rewardEvalsPerImage: rewardEvalsPerImage({ branches: options.branches, searchPoints: points }),
      rewardEvals: stats.rewardEvals,
      rewardCalls: stats.rewardCalls,
      searchSteps: points,
      trace
    }
  }).pipe(Effect.withSpan("StepSearch.stepSearch", { attributes: { branches: options.branches, prompts: prompts.length } }))

/**
 * The step search scored with the `Reward` in context. Fails with the
 * reward's `RewardError` (never swallowed) or a `DiffusionError` for bad
 * options.
 *
 * @since 0.1.0
 */
export const stepSearch = (
  model: Denoiser.Model,
  prompts: ReadonlyArray<string>,
  options: StepSearchOptions
): Effect.Effect<StepSearchResult, RewardError | DiffusionError, Reward> =>
  Reward.use((reward) => stepSearchWith(model, prompts, options, reward.score))

/**
 * The step search as an {@link InferenceMethod} (name `step-search K x B`,
 * family "step search").
 *
 * @since 0.1.0
 */
export const method = (options: StepSearchOptions): InferenceMethod<RewardError | DiffusionError, Reward> => ({
  name: `step-search ${countPoints(options.searchPoints)}x${options.branches}`,
  family: "step search",
  nfePerImage: nfePerImage({ ...options.sampler, branches: options.branches, searchPoints: options.searchPoints }),
  rewardEvalsPerImage: rewardEvalsPerImage(options),
  generate: (model, prompts) => stepSearch(model, prompts, options)
})
