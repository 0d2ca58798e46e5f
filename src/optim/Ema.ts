/**
 * An exponential moving average of the policy's weights,
 *
 *   shadow <- decay * shadow + (1 - decay) * theta     after every optimiser step,
 *
 * used for evaluation and saving when a run sets `ema` > 0: the average of
 * the last ~1 / (1 - decay) steps moves less with each step's noise than
 * the weights themselves. With decay 0 the service is inactive and `model`
 * is the policy itself. Pretraining releases the average, with a warm-up
 * (`warmup: true`): after 0-based step k the decay is
 * min(decay, (1 + k) / (10 + k)), so the first steps' weights do not
 * linger in it.
 *
 * @since 0.4.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Context, Effect, Layer } from "effect"
import * as ModelDir from "../io/ModelDir.ts"
import type { StoredTensor } from "../io/Safetensors.ts"
import * as Denoiser from "../model/Denoiser.ts"
import * as Scoped from "../tensor/Scoped.ts"

export class Ema extends Context.Service<Ema, {
  readonly decay: number
  /** Fold the policy's current weights into the average (no-op when inactive). */
  readonly update: Effect.Effect<void>
  /** {@link update} after 0-based step `step`, with the warm-up of the layer's options if any. */
  readonly updateAt: (step: number) => Effect.Effect<void>
  /** The averaged model (the policy itself when inactive); weights shared, do not dispose. */
  readonly model: () => Denoiser.Model
  /** Shadow weights for checkpoints (empty when inactive), read to the host. */
  readonly state: () => Effect.Effect<Record<string, StoredTensor>>
  /** Restore from a checkpoint; the first tensor that does not fit, if any. */
  readonly restore: (s: Readonly<Record<string, StoredTensor>>) => string | undefined
}>()("sharpen/optim/Ema") {
  static readonly layer = (decay: number, options: { readonly warmup?: boolean } = {}) =>
    Layer.effect(
      Ema,
      Effect.gen(function*() {
        const { model } = yield* Denoiser.Denoiser
        if (decay <= 0) {
          return Ema.of({
            decay: 0,
            update: Effect.void,
            updateAt: () => Effect.void,
            model: () => model,
            state: () => Effect.succeed({}),
            restore: () => undefined
          })
        }
        const shadow = yield* Scoped.acquireWith(() => Denoiser.clone(model, false), Denoiser.dispose)
        const fold = (d: number) =>
          Effect.sync(() => {
            for (const [k, v] of Object.entries(shadow.params)) {
              const next = tf.tidy(() => tf.add(tf.mul(v, d), tf.mul(model.params[k], 1 - d)))
              v.assign(next)
              next.dispose()
            }
          })
        return Ema.of({
          decay,
          update: fold(decay),
          updateAt: (step) => fold(options.warmup === true ? Math.min(decay, (1 + step) / (10 + step)) : decay),
          model: () => shadow,
          state: () => ModelDir.toStored(shadow.params),
          restore: (s) => ModelDir.assign(shadow.params, s)
        })
      })
    )

  /** Inactive (tests, stacks without an average). */
  static readonly layerTest = Ema.layer(0)
}
