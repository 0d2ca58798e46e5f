/**
 * Where the generation of an iteration runs: the online samples and the n
 * paths with their continuation. Stages ask this service; `inline` computes
 * everything on this thread, and a transport layer (`parallel/`) spreads the
 * batch over threads. Every random draw stays with the caller, so a
 * transport only computes.
 *
 * @since 0.5.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Context, Effect, Option, Schema } from "effect"
import * as Schedule from "../diffusion/Schedule.ts"
import * as Denoiser from "../model/Denoiser.ts"
import type * as WasmHeap from "../tensor/WasmHeap.ts"
import * as Generate from "./Generate.ts"
import * as Trajectory from "./Trajectory.ts"

/**
 * A worker thread failed (an error in its job) or died (exited, crashed):
 * the iteration stops with this instead of waiting for it.
 *
 * @since 0.5.0
 */
export class GenerationWorkerFailed extends Schema.TaggedError<GenerationWorkerFailed>()("GenerationWorkerFailed", {
  /** 1-based worker thread (the main thread is 0). */
  thread: Schema.Int,
  message: Schema.String
}) {}

export type GenerationError = GenerationWorkerFailed | WasmHeap.WasmHeapExhausted

export interface SampleOptions {
  readonly steps: number
  readonly cfg: number
}

/**
 * Generation with a model. The tensors returned belong to the caller.
 *
 * @since 0.5.0
 */
export interface Jobs {
  /** Threads the work is spread over (1: this thread only). */
  readonly threads: number
  /** Online samples: DDIM (eta 0) from the noise xT ([B, ...sampleShape], row-major), model space. */
  readonly sample: (model: Denoiser.Model, prompts: ReadonlyArray<string>, xT: Float32Array, o: SampleOptions) => Effect.Effect<tf.Tensor, GenerationError>
  /** `Trajectory.fromDraws` of the whole batch. */
  readonly trajectories: (
    model: Denoiser.Model,
    x0: tf.Tensor,
    prompts: ReadonlyArray<string>,
    draws: Trajectory.Draws,
    o: Trajectory.TrajectoryOptions
  ) => Effect.Effect<Trajectory.Trajectories, GenerationError>
}

/** Online samples from noise on this thread. */
export const sampleHere = (model: Denoiser.Model, prompts: ReadonlyArray<string>, xT: Float32Array, o: SampleOptions): tf.Tensor => {
  const x = tf.tensor(xT, [prompts.length, ...Denoiser.sampleShape(model.config)], "float32")
  const x0 = Generate.fromNoise(model, prompts, x, o)
  x.dispose()
  return x0
}

/** Everything on this thread, exactly as before threads existed. */
export const inline: Jobs = {
  threads: 1,
  sample: (model, prompts, xT, o) => Effect.sync(() => sampleHere(model, prompts, xT, o)),
  trajectories: (model, x0, prompts, draws, o) =>
    Effect.sync(() => Trajectory.fromDraws(model, Schedule.make(model.config.schedule), x0, prompts, draws, o))
}

/**
 * The generation jobs of a run; absent, everything runs on this thread
 * ({@link current}).
 *
 * @since 0.5.0
 */
export class GenerationJobs extends Context.Service<GenerationJobs, Jobs>()("sharpen/trajectory/GenerationJobs") {}

/** The provided jobs, or {@link inline}. */
export const current: Effect.Effect<Jobs> = Effect.map(Effect.serviceOption(GenerationJobs), Option.getOrElse(() => inline))
