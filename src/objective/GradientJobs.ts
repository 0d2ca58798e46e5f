/**
 * Where the objective's portable parts run: gradients of micro-batch parts
 * and the frozen reference's errors. `inline` computes on this thread; a
 * transport layer (`parallel/`) deals them over threads.
 *
 * @since 0.5.0
 */
import { Context, Effect, Option } from "effect"
import type * as Denoiser from "../model/Denoiser.ts"
import type { GenerationError } from "../trajectory/GenerationJobs.ts"
import * as PortablePart from "./PortablePart.ts"

export interface RemoteGradients {
  readonly value: number
  readonly grads: Float32Array
  readonly present: ReadonlyArray<boolean>
}

/**
 * @since 0.5.0
 */
export interface Jobs {
  /** Shares the work is spread over (1: this thread only); it changes only in `refresh`. */
  readonly threads: number
  /** Whether this thread computes a share (absent: it does); false: every group is a job, `here` computes nothing. */
  readonly computesHere?: boolean | undefined
  /** Change the threads to those available now, before iteration `iteration` (`JobThreads.Threads.refresh`); absent: fixed. */
  readonly refresh?: ((iteration: number) => Effect.Effect<void>) | undefined
  /**
   * Gradients of loss parts: group i on worker thread i + 1, while `here`
   * (this thread's share; nothing where this thread computes none) runs. Each result is the group's summed loss and
   * gradient (flat, parameter order) and which parameters have a gradient.
   */
  readonly gradients: <A>(
    model: Denoiser.Model,
    groups: ReadonlyArray<ReadonlyArray<PortablePart.PortablePart>>,
    here: () => A
  ) => Effect.Effect<{ readonly here: A; readonly remote: ReadonlyArray<RemoteGradients> }, GenerationError>
  /**
   * Per-row errors of `model` (no gradient) on each row set: the frozen
   * reference's errors of the DPO parts.
   */
  readonly errors: (model: Denoiser.Model, inputs: ReadonlyArray<PortablePart.RowInputs>) => Effect.Effect<Array<Float32Array>, GenerationError>
}

/** Everything on this thread. */
export const inline: Jobs = {
  threads: 1,
  gradients: (_model, groups, here) =>
    groups.length > 0 ? Effect.die(new RangeError("one thread has no worker threads for gradients")) : Effect.sync(() => ({ here: here(), remote: [] })),
  errors: (model, inputs) => Effect.forEach(inputs, (p) => PortablePart.errorsOf(model, p))
}

/**
 * The gradient jobs of a run; absent, everything runs on this thread.
 *
 * @since 0.5.0
 */
export class GradientJobs extends Context.Service<GradientJobs, Jobs>()("sharpen/objective/GradientJobs") {}

/** The provided jobs, or {@link inline}. */
export const current: Effect.Effect<Jobs> = Effect.map(Effect.serviceOption(GradientJobs), Option.getOrElse(() => inline))
