/**
 * Stage 1 of a sharpening step: n trajectories of m denoising steps per item
 * (see Trajectory.ts). The trajectories' tensors belong to the caller's scope.
 *
 * @since 0.1.0
 */
import type * as tf from "@tensorflow/tfjs-core"
import { Context, Effect, Layer, type Scope } from "effect"
import * as Schedule from "../diffusion/Schedule.ts"
import * as Denoiser from "../model/Denoiser.ts"
import * as GenerationJobs from "./GenerationJobs.ts"
import type { GenerationError } from "./GenerationJobs.ts"
import { RandomSource } from "../tensor/RandomSource.ts"
import * as Scoped from "../tensor/Scoped.ts"
import * as Trajectory from "./Trajectory.ts"

export class TrajectoryGenerator extends Context.Service<TrajectoryGenerator, {
  readonly options: Trajectory.TrajectoryOptions
  /** Trajectories from clean images x0 [B,H,W,C] with one prompt per item. */
  readonly generate: (x0: tf.Tensor, prompts: ReadonlyArray<string>) => Effect.Effect<Trajectory.Trajectories, GenerationError, Scope.Scope>
}>()("sharpen/trajectory/TrajectoryGenerator") {
  /**
   * DDIM trajectories from the policy, drawing noise from the run's
   * generator; computed by the `GenerationJobs` provided (threads), else here.
   */
  static readonly layer = (options: Trajectory.TrajectoryOptions) =>
    Layer.effect(
      TrajectoryGenerator,
      Effect.gen(function*() {
        const { model } = yield* Denoiser.Denoiser
        const { rng } = yield* RandomSource
        const pool = yield* GenerationJobs.current
        const schedule = Schedule.make(model.config.schedule)
        return TrajectoryGenerator.of({
          options,
          generate: (x0, prompts) =>
            Effect.gen(function*() {
              if (prompts.length !== x0.shape[0]) return yield* Effect.die(new RangeError(`${prompts.length} prompts for a batch of ${x0.shape[0]}`))
              // The draws here (the one-thread order); the paths on the pool's threads.
              const draws = yield* Effect.sync(() => Trajectory.draw(rng, schedule.trainSteps, x0.shape[0], x0.shape.slice(1), options))
              return yield* Scoped.acquireFrom(pool.trajectories(model, x0, prompts, draws, options), Trajectory.dispose)
            }).pipe(Effect.withSpan("TrajectoryGenerator.generate"))
        })
      })
    )
}
