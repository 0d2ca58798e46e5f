/**
 * Stage 4: the training objective of a step, as a loss closure for the
 * optimiser. `Objective.sft` is Eq. 9 along the best path;
 * `Objective.rlhf` is the reward-modulated Diffusion-DPO of Eq. 11 between
 * the best and worst paths against the frozen reference.
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Context, Effect, Layer, Schema, type Scope } from "effect"
import * as Schedule from "../diffusion/Schedule.ts"
import * as Denoiser from "../model/Denoiser.ts"
import { Reference } from "../model/Reference.ts"
import type { GenerationError } from "../trajectory/GenerationJobs.ts"
import * as Scoped from "../tensor/Scoped.ts"
import type { Selection } from "../trajectory/PathSelector.ts"
import { rowIndex, type Trajectories } from "../trajectory/Trajectory.ts"
import type { TrajectoryScores } from "../trajectory/TrajectoryScorer.ts"
import * as Losses from "./Losses.ts"
import type { Loss } from "./Losses.ts"

export interface Prepared {
  /**
   * The loss as a function of the policy's parameters (for the gradient),
   * whole or as micro-batch parts whose gradients the optimiser sums.
   */
  readonly loss: Loss
  /** Numbers worth logging (e.g. mean reward margin). */
  readonly stats: Readonly<Record<string, number>>
  /**
   * Further optimiser steps on the same iteration's data, taken in order
   * after `loss`; each closure sees the parameters the previous step left
   * (DDPO's minibatches and inner epochs). Absent: one step per iteration.
   */
  readonly updates?: ReadonlyArray<Loss>
  /**
   * Model evaluations the objective spends (policy rows with gradient and
   * reference rows), logged as `lossNfe` beside the sampling NFE.
   */
  readonly nfe?: number
}

/**
 * UNet rows per gradient micro-batch (0: the whole batch at once). Parts
 * hold whole prompts (never fewer than one), because Eq. 11 averages a
 * prompt's m steps inside the log-sigmoid. Only peak memory changes, not
 * the update: the parts' gradients are summed.
 */
const MicroBatchRows = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))

export const SftOptions = Schema.Struct({ target: Losses.EpsTarget, microBatchRows: Schema.optional(MicroBatchRows) })
export type SftOptions = typeof SftOptions.Type

export const RlhfOptions = Schema.Struct({
  /** DPO temperature; Diffusion-DPO uses 5000 for SD 1.5 (with its T*omega/2 folded in). */
  beta: Schema.Number.check(Schema.isGreaterThan(0)),
  margin: Losses.MarginPlacement,
  target: Losses.EpsTarget,
  /** Reference error over all m steps, or only the first (the reference code). */
  referenceSteps: Schema.Literals(["all", "first"]),
  microBatchRows: Schema.optional(MicroBatchRows)
})
export type RlhfOptions = typeof RlhfOptions.Type

export class Objective extends Context.Service<Objective, {
  readonly name: string
  /** Fails only when a pool's thread computing part of it fails (the reference's errors on several threads). */
  readonly prepare: (t: Trajectories, selection: Selection, scores: TrajectoryScores) => Effect.Effect<Prepared, GenerationError, Scope.Scope>
}>()("sharpen/objective/Objective") {
  static readonly sft = (o: SftOptions) =>
    Layer.effect(
      Objective,
      Effect.gen(function*() {
        const { model } = yield* Denoiser.Denoiser
        const schedule = Schedule.make(model.config.schedule)
        return Objective.of({
          name: "sft",
          prepare: (t, selection) => {
            const best = rowIndex(t, selection.best)
            // Each part is its items' share of the batch mean (Eq. 9).
            return Effect.succeed({
              loss: Losses.microBatchesByRows(t.batch, t.steps.length, o.microBatchRows ?? Losses.defaultMicroBatchRows()).map((items) => () =>
                tf.tidy(() => tf.mul(Losses.sftLoss(model, schedule, t, items.map((b) => best[b]), o.target), items.length / t.batch) as tf.Scalar)
              ),
              stats: {},
              nfe: t.steps.length * t.batch
            })
          }
        })
      })
    )

  static readonly rlhf = (o: RlhfOptions) =>
    Layer.effect(
      Objective,
      Effect.gen(function*() {
        const { model } = yield* Denoiser.Denoiser
        const reference = (yield* Reference).model
        const schedule = Schedule.make(model.config.schedule)
        return Objective.of({
          name: "rlhf",
          prepare: (t, selection, scores) =>
            Effect.gen(function*() {
              const b = t.batch
              const best = rowIndex(t, selection.best)
              const worst = rowIndex(t, selection.worst)
              const margin = Array.from({ length: b }, (_, i) => scores.trajectory[selection.best[i]][i] - scores.trajectory[selection.worst[i]][i])
              const refSteps = o.referenceSteps === "all" ? t.steps.length : 1
              // Winner and loser rows of some items, run as one batch.
              const rowsOf = (items: ReadonlyArray<number>) => [...items.map((i) => best[i]), ...items.map((i) => worst[i])]
              const parts = Losses.microBatchesByRows(b, 2 * t.steps.length, o.microBatchRows ?? Losses.defaultMicroBatchRows())
              const refs = yield* Effect.forEach(parts, (items) =>
                Scoped.acquire(() => tf.tidy(() => Losses.splitPair(Losses.pathErrors(reference, schedule, t, rowsOf(items), o.target, refSteps)))))
              return {
                // Each part is its items' share of the batch mean of Eq. 11.
                loss: parts.map((items, p) => () =>
                  tf.tidy(() =>
                    Losses.dpoPart(Losses.pathErrors(model, schedule, t, rowsOf(items), o.target), refs[p], items.map((i) => margin[i]), o.beta, o.margin, items.length / b)
                  )
                ),
                stats: { rewardMargin: margin.reduce((a, x) => a + x, 0) / b },
                nfe: 2 * b * (t.steps.length + refSteps)
              }
            })
        })
      })
    )
}
