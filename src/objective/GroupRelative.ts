/**
 * Group-relative image-level objectives (issue 23): image-level RLHF
 * sharpening learns from the best and the worst of a prompt's n final
 * images; these use all n, each through its group-normalised advantage
 *
 *   A_i = (R_i - mean_j R_j) / (std_j R_j + 1e-4)        (population std, per prompt)
 *
 * as GRPO-style methods (Flow-GRPO, DiffusionNFT) do. Two forms:
 *
 * - `pairs`: every pair (w, l) of a prompt's images with R_w > R_l in the
 *   reward-modulated Diffusion-DPO of image-level RLHF (beta / 2, Eq. 11's
 *   margin), weighted by its advantage gap A_w - A_l / sum of the prompt's
 *   gaps. With n = 2 it is image-level RLHF; with n = 3 the best-worst pair
 *   keeps half the weight and the two pairs through the middle image share
 *   the rest.
 * - `awr`: advantage-weighted regression, the denoising loss on every
 *   image weighted by softmax_i(A_i / tau) within its prompt. tau -> 0 is
 *   image-level SFT sharpening (the best image only), tau -> infinity plain
 *   self-distillation on all n. No reference: like SFT, nothing holds it.
 *
 * All n images of a prompt are noised with one eps and one t ~ U[0, T), as
 * a DPO pair is, so their errors differ by the image only.
 *
 * @since 0.7.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Layer, Schema } from "effect"
import * as Schedule from "../diffusion/Schedule.ts"
import * as Denoiser from "../model/Denoiser.ts"
import { Reference } from "../model/Reference.ts"
import { RandomSource } from "../tensor/RandomSource.ts"
import * as HostRead from "../tensor/HostRead.ts"
import * as Scoped from "../tensor/Scoped.ts"
import * as NoisedSamples from "../trajectory/NoisedSamples.ts"
import * as ImageLevel from "./ImageLevel.ts"
import * as GradientJobs from "./GradientJobs.ts"
import * as GroupLosses from "./GroupLosses.ts"
import type { WeightedPair } from "./GroupLosses.ts"
import * as Losses from "./Losses.ts"
import { Objective } from "./Objective.ts"
import * as PortablePart from "./PortablePart.ts"

/** Added to a group's std before dividing (DiffusionNFT's and Flow-GRPO's 1e-4). */
export const ADVANTAGE_EPS = 1e-4

export type { WeightedPair } from "./GroupLosses.ts"

/**
 * Group-normalised advantages: `scores[i][b]` is the reward of image i of
 * prompt b; the result has the same layout. A prompt whose n rewards are
 * equal gets 0 for every image.
 *
 * @since 0.7.0
 */
export const groupAdvantages = (scores: ReadonlyArray<ReadonlyArray<number>>): Array<Array<number>> => {
  const n = scores.length
  const b = n === 0 ? 0 : scores[0].length
  const out = scores.map(() => new Array<number>(b).fill(0))
  for (let j = 0; j < b; j++) {
    let mean = 0
    for (let i = 0; i < n; i++) mean += scores[i][j]
    mean /= n
    let v = 0
    for (let i = 0; i < n; i++) v += (scores[i][j] - mean) ** 2
    const std = Math.sqrt(v / n)
    for (let i = 0; i < n; i++) out[i][j] = (scores[i][j] - mean) / (std + ADVANTAGE_EPS)
  }
  return out
}

/**
 * Every pair of one prompt's images with a strictly higher advantage first,
 * weighted by the advantage gap over the sum of the prompt's gaps (weights
 * sum to 1; none when all advantages are equal).
 *
 * @since 0.7.0
 */
export const weightedPairs = (advantages: ReadonlyArray<number>): Array<WeightedPair> => {
  const pairs: Array<WeightedPair> = []
  let total = 0
  for (let i = 0; i < advantages.length; i++) {
    for (let j = 0; j < advantages.length; j++) {
      const gap = advantages[i] - advantages[j]
      if (gap > 0) {
        pairs.push({ w: i, l: j, weight: gap })
        total += gap
      }
    }
  }
  return pairs.map((p) => ({ ...p, weight: p.weight / total }))
}

/**
 * Advantage-weighted regression's weights of one prompt's images:
 * softmax(A / tau), summing to 1 (shifted by the maximum, so any tau is finite).
 *
 * @since 0.7.0
 */
export const awrWeights = (advantages: ReadonlyArray<number>, temperature: number): Array<number> => {
  const top = Math.max(...advantages)
  const e = advantages.map((a) => Math.exp((a - top) / temperature))
  const s = e.reduce((x, y) => x + y, 0)
  return e.map((x) => x / s)
}

export const GroupForm = Schema.Literals(["pairs", "awr"])
export type GroupForm = typeof GroupForm.Type

export const GroupOptions = Schema.Struct({
  form: GroupForm,
  /** pairs: the DPO temperature (scaled by 1/2 as Diffusion-DPO's code); awr: the softmax temperature tau. */
  beta: Schema.Number.check(Schema.isGreaterThan(0)),
  margin: Losses.MarginPlacement,
  microBatchRows: Schema.optional(Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))),
  stepsPerBatch: Schema.optional(Schema.Int.check(Schema.isGreaterThanOrEqualTo(1)))
})
export type GroupOptions = typeof GroupOptions.Type

/**
 * The rows (i*B + b) of every image of `items`, image-major: the part's
 * errors reshape to [n, items].
 */
export const itemRows = (n: number, batch: number, items: ReadonlyArray<number>): Array<number> =>
  Array.from({ length: n }, (_, i) => items.map((b) => i * batch + b)).flat()

/** One part of the pairs form (`GroupLosses.pairsPart`). */
export const pairsPart = GroupLosses.pairsPart

/** One part of the awr form (`GroupLosses.awrPart`). */
export const awrPart = GroupLosses.awrPart

/**
 * The group-relative objective on the paths' final images (paths continued
 * to t = 0). The selection is not used: every image counts.
 *
 * @since 0.7.0
 */
export const objective = (o: GroupOptions): Layer.Layer<Objective, never, Denoiser.Denoiser | Reference | RandomSource> =>
  Layer.effect(
    Objective,
    Effect.gen(function*() {
      const { model } = yield* Denoiser.Denoiser
      const reference = (yield* Reference).model
      const { rng } = yield* RandomSource
      const schedule = Schedule.make(model.config.schedule)
      // With a pool of several threads the parts are split so each thread gets some
      // (its threads read per batch: they may change between iterations).
      const pool = yield* GradientJobs.current
      return Objective.of({
        name: `group-${o.form}`,
        prepare: (t, _selection, scores) =>
          Effect.gen(function*() {
            const b = t.batch
            const n = t.n
            const adv = groupAdvantages(scores.trajectory)
            const column = (j: number) => adv.map((row) => row[j])
            const rowsPerItem = (o.form === "pairs" ? 2 : 1) * n
            const parts = Losses.microBatchesByRows(b, rowsPerItem, PortablePart.rowsForThreads(o.microBatchRows ?? Losses.defaultMicroBatchRows(), b, rowsPerItem, pool.threads))
            // All n images of an item share one eps and t (image i is "role" i of noisedFinals).
            const everyImage = Array.from({ length: n }, (_, i) => new Array<number>(b).fill(i))
            const samples = yield* Effect.forEach(Array.from({ length: o.stepsPerBatch ?? 1 }), () =>
              Scoped.acquireWith(() => ImageLevel.noisedFinals(schedule, t, everyImage, rng), NoisedSamples.dispose))
            const steps = o.form === "pairs"
              ? yield* Effect.forEach(samples, (s) =>
                Effect.map(
                  // The frozen reference's errors of every part, outside the gradient.
                  Effect.forEach(parts, (items) => Scoped.acquire(() => NoisedSamples.rowErrors(reference, s, itemRows(n, b, items)))),
                  (refs) =>
                    parts.map((items, p) => {
                      const pairs = items.map((j) =>
                        weightedPairs(column(j)).map((q) => ({ ...q, margin: scores.trajectory[q.w][j] - scores.trajectory[q.l][j] }))
                      )
                      return PortablePart.withPortable(
                        () => tf.tidy(() => pairsPart(NoisedSamples.rowErrors(model, s, itemRows(n, b, items)), refs[p], pairs, o.beta / 2, o.margin, b)),
                        () =>
                          Effect.map(
                            Effect.all([PortablePart.samplesRows(s, itemRows(n, b, items)), HostRead.values(refs[p])], { concurrency: "unbounded" }),
                            ([rows, ref]) => ({ ...rows, share: 1, group: { pairs, ref: Array.from(ref), beta: o.beta / 2, placement: o.margin, batch: b } })
                          )
                      )
                    })
                ))
              : samples.map((s) =>
                parts.map((items) => {
                  const per = items.map((j) => awrWeights(column(j), o.beta))
                  // Image-major, as the rows.
                  const weights = Array.from({ length: n }, (_, i) => per.map((w) => w[i])).flat()
                  return PortablePart.withPortable(
                    () => tf.tidy(() => awrPart(NoisedSamples.rowErrors(model, s, itemRows(n, b, items)), weights, b)),
                    () =>
                      Effect.map(PortablePart.samplesRows(s, itemRows(n, b, items)), (rows) => ({
                        ...rows,
                        share: 1,
                        group: { weights, beta: o.beta, placement: o.margin, batch: b }
                      }))
                  )
                })
              )
            return {
              loss: steps[0],
              ...(steps.length > 1 ? { updates: steps.slice(1) } : {}),
              stats: {},
              // Per step: the policy on all n*B images, and for pairs the reference too.
              nfe: (o.form === "pairs" ? 2 : 1) * n * b * steps.length
            }
          })
      })
    })
  )
