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
import { RandomSource } from "../tensor/RandomSource.ts"
import * as Scoped from "../tensor/Scoped.ts"
import * as Trajectory from "./Trajectory.ts"

export class TrajectoryGenerator extends Context.Service<TrajectoryGenerator, {
  readonly options: Trajectory.TrajectoryOptions
  /** Trajectories from clean images x0 [B,H,W,C] with one prompt per item. */
  readonly generate: (x0: tf.Tensor, prompts: ReadonlyArray<string>) => Effect.Effect<Trajectory.Trajectories, never, Scope.Scope>
}>()("sharpen/trajectory/TrajectoryGenerator") {
  /** DDIM trajectories from the policy, drawing noise from the run's generator. */
  static readonly layer = (options: Trajectory.TrajectoryOptions) =>
    Layer.effect(
      TrajectoryGenerator,
      Effect.gen(function*() {
        const { model } = yield* Denoiser.Denoiser
        const { rng } = yield* RandomSource
        const schedule = Schedule.make(model.config.schedule)
        return TrajectoryGenerator.of({
          options,
          generate: (x0, prompts) =>
            Scoped.acquireWith(() => Trajectory.generate(model, schedule, x0, prompts, rng, options), Trajectory.dispose).pipe(
              Effect.withSpan("TrajectoryGenerator.generate")
            )
        })
      })
    )
}
