/**
 * The frozen reference model of RLHF sharpening (Diffusion-DPO's p_ref): a
 * copy of the policy taken when the run starts, owned by the layer's scope.
 *
 * @since 0.1.0
 */
import { Context, Effect, Layer } from "effect"
import { Backend } from "../tensor/Backend.ts"
import * as Scoped from "../tensor/Scoped.ts"
import * as Denoiser from "./Denoiser.ts"
import * as Weights from "./Weights.ts"

export class Reference extends Context.Service<Reference, { readonly model: Denoiser.Model }>()("sharpen/model/Reference") {
  /** Freeze a copy of the current policy. */
  static readonly fromPolicy: Layer.Layer<Reference, never, Denoiser.Denoiser> = Layer.effect(
    Reference,
    Effect.gen(function*() {
      const { model } = yield* Denoiser.Denoiser
      return { model: yield* Denoiser.cloneScoped(model) }
    })
  )

  /**
   * Load the reference from a model directory: the base model, which stays
   * the reference when a run resumes from a checkpoint of the policy.
   */
  static readonly fromDir = (dir: string) =>
    Layer.effect(
      Reference,
      Effect.gen(function*() {
        yield* Backend
        const files = yield* Weights.load(dir)
        return { model: yield* Scoped.acquireWith(() => Denoiser.fromStored(files.config, files.weights, false), Denoiser.dispose) }
      })
    )
}
