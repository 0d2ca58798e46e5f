/**
 * Stage 2: the reward of every step's x0 estimate (Eq. 7), through the
 * pipeline's Decoder and Reward services, aggregated per trajectory (Eq. 8).
 * Reward failures surface as the reward's typed errors: never a silent zero.
 *
 * @since 0.1.0
 */
import type * as tf from "@tensorflow/tfjs-core"
import { Context, Effect, Layer } from "effect"
import type { RewardError } from "../reward/RewardError.ts"
import { scoreSamples, type Decoder } from "../reward/Decoder.ts"
import type { Reward } from "../reward/Reward.ts"
import * as HostRead from "../tensor/HostRead.ts"
import * as Aggregate from "./Aggregate.ts"
import type { Trajectories } from "./Trajectory.ts"

export interface TrajectoryScores {
  /** perStep[k][i*B + b]: reward of step k's estimate (aggregation "final": one row, the final images). */
  readonly perStep: ReadonlyArray<ReadonlyArray<number>>
  /** trajectory[i][b]: aggregated reward of path i of item b. */
  readonly trajectory: ReadonlyArray<ReadonlyArray<number>>
  /** Reward calls made (images scored). */
  readonly rewardCalls: number
}

const flatRows = (x: tf.Tensor): Effect.Effect<Array<Float32Array>> =>
  Effect.map(HostRead.float32(x), (data) => {
    const per = x.size / x.shape[0]
    return Array.from({ length: x.shape[0] }, (_, r) => data.slice(r * per, (r + 1) * per))
  })

export class TrajectoryScorer extends Context.Service<TrajectoryScorer, {
  readonly score: (t: Trajectories) => Effect.Effect<TrajectoryScores, RewardError>
}>()("sharpen/trajectory/TrajectoryScorer") {
  static readonly layer = (aggregation: Aggregate.Aggregation): Layer.Layer<TrajectoryScorer, never, Reward | Decoder> =>
    Layer.effect(
      TrajectoryScorer,
      Effect.gen(function*() {
        const context = yield* Effect.context<Reward | Decoder>()
        const score = Effect.fn("TrajectoryScorer.score")(function*(t: Trajectories) {
          const prompts = Array.from({ length: t.n * t.batch }, (_, r) => t.prompts[r % t.batch])
          const perStep: Array<ReadonlyArray<number>> = []
          // "final": the paths' final images only (perStep then has one row).
          if (aggregation.kind === "final" && t.final === undefined) {
            return yield* Effect.die(new TypeError("aggregation \"final\" needs paths continued to t = 0 (continuation)"))
          }
          const judged = aggregation.kind === "final" ? [t.final!] : t.steps.map((s) => s.x0)
          for (const x of judged) {
            perStep.push(yield* scoreSamples(yield* flatRows(x), prompts).pipe(Effect.provide(context)))
          }
          return {
            perStep,
            trajectory: Aggregate.aggregate(perStep, t.n, t.batch, aggregation),
            rewardCalls: perStep.length * prompts.length
          }
        })
        return TrajectoryScorer.of({ score })
      })
    )
}
