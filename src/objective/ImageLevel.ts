/**
 * Image-level sharpening objectives (docs/method.md). The paper's objectives
 * regress every path on the one clean image the paths were noised from, so
 * their preference is between noise draws of one image. Here each path is
 * continued to t = 0 (`TrajectoryOptions.continuation`) and the objectives
 * compare the paths' own final images:
 *
 * - `rlhf`: reward-modulated Diffusion-DPO (Eq. 11's margin) between the best
 *   and the worst path's final images y_w, y_l, both noised with one fresh
 *   eps at one t ~ U[0, T) as Diffusion-DPO does, against the frozen reference:
 *
 *     L = -log sigmoid( -beta/2 * [(e_w - e_w^ref) - (e_l - e_l^ref)] - margin(R_w - R_l) )
 *
 *   with e = ||eps - eps_theta(x_t, t, c)||^2 per sample (mean over values).
 *   beta/2 as Diffusion-DPO's official code, so one beta means the same in both.
 * - `sft`: the denoising loss on the best path's final image (a fresh eps and
 *   t per item): self-distillation toward the best of n, which with paths
 *   started from pure noise is RAFT (best-of-N fine-tuning).
 *
 * @since 0.4.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Layer, Schema } from "effect"
import * as Schedule from "../diffusion/Schedule.ts"
import * as Generate from "../trajectory/Generate.ts"
import * as Denoiser from "../model/Denoiser.ts"
import { Reference } from "../model/Reference.ts"
import * as HostRead from "../tensor/HostRead.ts"
import type { Rng } from "../tensor/Random.ts"
import { RandomSource } from "../tensor/RandomSource.ts"
import * as Scoped from "../tensor/Scoped.ts"
import * as NoisedSamples from "../trajectory/NoisedSamples.ts"
import type { Selection } from "../trajectory/PathSelector.ts"
import { rowIndex, type Trajectories } from "../trajectory/Trajectory.ts"
import * as Losses from "./Losses.ts"
import { Objective } from "./Objective.ts"
import * as GradientJobs from "./GradientJobs.ts"
import * as PortablePart from "./PortablePart.ts"

const MicroBatchRows = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))
/**
 * Optimiser steps per generated batch, each on the same selected images
 * with a fresh eps and t (1: one step). Generation costs some 50x a
 * gradient step on the UNet, so reusing the pairs buys updates almost free;
 * the objective stays valid off-policy (DPO against a frozen reference).
 */
const StepsPerBatch = Schema.Int.check(Schema.isGreaterThanOrEqualTo(1))

export const ImageRlhfOptions = Schema.Struct({
  /** DPO temperature, scaled by 1/2 as Diffusion-DPO's code. */
  beta: Schema.Number.check(Schema.isGreaterThan(0)),
  margin: Losses.MarginPlacement,
  microBatchRows: Schema.optional(MicroBatchRows),
  stepsPerBatch: Schema.optional(StepsPerBatch),
  /**
   * Lowest timestep of the DPO noise (default 0: t ~ U[0, T) as
   * Diffusion-DPO). Below the branching range the pair differs only in fine
   * detail, and pushing the loser's error up there adds noise to every image.
   */
  minLossTimestep: Schema.optional(Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))),
  /** Weight of the winners' denoising loss added to the DPO loss (0: pure DPO). */
  winnerSft: Schema.optional(Schema.Number.check(Schema.isGreaterThanOrEqualTo(0)))
})
export type ImageRlhfOptions = typeof ImageRlhfOptions.Type

export const ImageSftOptions = Schema.Struct({
  microBatchRows: Schema.optional(MicroBatchRows),
  stepsPerBatch: Schema.optional(StepsPerBatch)
})
export type ImageSftOptions = typeof ImageSftOptions.Type

const finals = (t: Trajectories): tf.Tensor =>
  t.final ?? (() => {
    throw new TypeError("image-level objectives need paths continued to t = 0 (continuation: true)")
  })()

/**
 * The selected paths' final images as single-timestep samples: `paths` is a
 * list of path choices per item (one list per role: winners, losers), every
 * role noised with the same eps and t per item. Pure; the caller owns it.
 *
 * @since 0.4.0
 */
export const noisedFinals = (
  schedule: Schedule.Schedule,
  t: Trajectories,
  paths: ReadonlyArray<ReadonlyArray<number>>,
  rng: Rng,
  minTimestep = 0
): NoisedSamples.NoisedSamples => {
  const b = t.batch
  const final = finals(t)
  const rows = paths.flatMap((p) => rowIndex(t, p))
  const clean = tf.tidy(() => tf.gather(final, tf.tensor1d(rows, "int32")))
  // t ~ U[min, T): one draw per item either way, so min = 0 draws as before.
  const itemTimesteps = NoisedSamples.drawTimesteps(rng, schedule.trainSteps - minTimestep, b).map((u) => u + minTimestep)
  const noise = tf.tidy(() => {
    const one = Generate.normalTensor(rng, [b, ...final.shape.slice(1)])
    return tf.concat(paths.map(() => one), 0)
  })
  return NoisedSamples.make(schedule, { clean, noise, itemTimesteps, prompts: t.prompts, n: paths.length, nfe: 0 })
}

const margins = (selection: Selection, scores: { readonly trajectory: ReadonlyArray<ReadonlyArray<number>> }, b: number) =>
  Array.from({ length: b }, (_, i) => scores.trajectory[selection.best[i]][i] - scores.trajectory[selection.worst[i]][i])

/**
 * Image-level RLHF sharpening: DPO between the best and worst paths' final images.
 *
 * @since 0.4.0
 */
export const rlhf = (o: ImageRlhfOptions): Layer.Layer<Objective, never, Denoiser.Denoiser | Reference | RandomSource> =>
  Layer.effect(
    Objective,
    Effect.gen(function*() {
      const { model } = yield* Denoiser.Denoiser
      const reference = (yield* Reference).model
      const { rng } = yield* RandomSource
      const schedule = Schedule.make(model.config.schedule)
      const pool = yield* GradientJobs.current
      return Objective.of({
        name: "rlhf-image",
        prepare: (t, selection, scores) =>
          Effect.gen(function*() {
            const b = t.batch
            // With several threads the parts are split so each gets some (PortablePart); read per
            // batch, since a transport's threads may change between iterations.
            const threads = pool.threads
            const margin = margins(selection, scores, b)
            // Winner rows are 0..B-1 of the pair samples, losers B..2B-1.
            const rowsOf = (items: ReadonlyArray<number>) => [...items, ...items.map((i) => i + b)]
            const parts = Losses.microBatchesByRows(b, 2, PortablePart.rowsForThreads(o.microBatchRows ?? Losses.defaultMicroBatchRows(), b, 2, threads))
            // Every step's eps and t are drawn now, so the RNG order never
            // depends on when the optimiser runs the closures.
            const samples = yield* Effect.forEach(Array.from({ length: o.stepsPerBatch ?? 1 }), () =>
              Scoped.acquireWith(() => noisedFinals(schedule, t, [selection.best, selection.worst], rng, o.minLossTimestep ?? 0), NoisedSamples.dispose))
            // The frozen reference's errors of every step's parts: on one thread
            // here as before; with a pool, dealt over its threads (the same rows
            // and kernels, so the same numbers).
            // Each part's rows as plain arrays, gathered at most once: the
            // reference's errors on a pool and the parts' portable forms read them.
            const rowData = samples.map((s) =>
              parts.map((items) => {
                let data: PortablePart.RowInputs | undefined
                return () =>
                  Effect.suspend(() =>
                    data !== undefined ? Effect.succeed(data) : Effect.map(PortablePart.samplesRows(s, rowsOf(items)), (d) => (data = d))
                  )
              })
            )
            const refs: ReadonlyArray<ReadonlyArray<{ readonly w: tf.Tensor1D; readonly l: tf.Tensor1D }>> = threads > 1
              ? yield* Effect.flatMap(
                Effect.flatMap(Effect.forEach(rowData.flat(), (data) => data()), (inputs) => pool.errors(reference, inputs)),
                (errors) =>
                  Effect.forEach(samples, (_, k) =>
                    Effect.forEach(parts, (_, p) => Scoped.acquire(() => tf.tidy(() => Losses.splitPair(tf.tensor1d(errors[k * parts.length + p]))))))
              )
              : yield* Effect.forEach(samples, (s) =>
                Effect.forEach(parts, (items) => Scoped.acquire(() => tf.tidy(() => Losses.splitPair(NoisedSamples.rowErrors(reference, s, rowsOf(items)))))))
            const steps = samples.map((s, k) =>
              parts.map((items, p) =>
                PortablePart.withPortable(
                  () =>
                    tf.tidy(() =>
                      Losses.dpoPart(NoisedSamples.rowErrors(model, s, rowsOf(items)), refs[k][p], items.map((i) => margin[i]), o.beta / 2, o.margin, items.length / b, o.winnerSft ?? 0)
                    ),
                  () =>
                    Effect.map(
                      Effect.all([rowData[k][p](), HostRead.values(refs[k][p].w), HostRead.values(refs[k][p].l)], { concurrency: "unbounded" }),
                      ([rows, refW, refL]) => ({
                        ...rows,
                        share: items.length / b,
                        dpo: {
                          refW: Array.from(refW),
                          refL: Array.from(refL),
                          margin: items.map((i) => margin[i]),
                          beta: o.beta / 2,
                          placement: o.margin,
                          winnerSft: o.winnerSft ?? 0
                        }
                      })
                    )
                )
              )
            )
            return {
              loss: steps[0],
              ...(steps.length > 1 ? { updates: steps.slice(1) } : {}),
              stats: { rewardMargin: margin.reduce((a, x) => a + x, 0) / b },
              // Per step, policy and reference each see the 2B pair rows.
              nfe: 4 * b * steps.length
            }
          })
      })
    })
  )

/**
 * Image-level SFT sharpening (and RAFT): denoising loss on the best path's final image.
 *
 * @since 0.4.0
 */
export const sft = (o: ImageSftOptions): Layer.Layer<Objective, never, Denoiser.Denoiser | RandomSource> =>
  Layer.effect(
    Objective,
    Effect.gen(function*() {
      const { model } = yield* Denoiser.Denoiser
      const { rng } = yield* RandomSource
      const schedule = Schedule.make(model.config.schedule)
      const pool = yield* GradientJobs.current
      return Objective.of({
        name: "sft-image",
        prepare: (t, selection) =>
          Effect.gen(function*() {
            const b = t.batch
            const threads = pool.threads
            const steps = yield* Effect.forEach(Array.from({ length: o.stepsPerBatch ?? 1 }), () =>
              Effect.map(
                Scoped.acquireWith(() => noisedFinals(schedule, t, [selection.best], rng), NoisedSamples.dispose),
                (s) =>
                  Losses.microBatchesByRows(b, 1, PortablePart.rowsForThreads(o.microBatchRows ?? Losses.defaultMicroBatchRows(), b, 1, threads)).map((items) =>
                    PortablePart.withPortable(
                      () => tf.tidy(() => tf.mul(tf.mean(NoisedSamples.rowErrors(model, s, items)), items.length / b) as tf.Scalar),
                      () => Effect.map(PortablePart.samplesRows(s, items), (rows) => ({ ...rows, share: items.length / b }))
                    )
                  )
              ))
            return {
              loss: steps[0],
              ...(steps.length > 1 ? { updates: steps.slice(1) } : {}),
              stats: {},
              nfe: b * steps.length
            }
          })
      })
    })
  )
