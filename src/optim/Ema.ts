/**
 * An exponential moving average of the policy's weights,
 *
 *   shadow <- decay * shadow + (1 - decay) * theta     after every optimiser step,
 *
 * used for evaluation and saving when a run sets `ema` > 0: the average of
 * the last ~1 / (1 - decay) steps moves less with each step's noise than
 * the weights themselves. With decay 0 the service is inactive and `model`
 * is the policy itself.
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
  /** The averaged model (the policy itself when inactive); weights shared, do not dispose. */
  readonly model: () => Denoiser.Model
  /** Shadow weights for checkpoints (empty when inactive), read to the host. */
  readonly state: () => Effect.Effect<Record<string, StoredTensor>>
  /** Restore from a checkpoint; the first tensor that does not fit, if any. */
  readonly restore: (s: Readonly<Record<string, StoredTensor>>) => string | undefined
}>()("sharpen/optim/Ema") {
  static readonly layer = (decay: number) =>
    Layer.effect(
      Ema,
      Effect.gen(function*() {
        const { model } = yield* Denoiser.Denoiser
        if (decay <= 0) {
          return Ema.of({ decay: 0, update: Effect.void, model: () => model, state: () => Effect.succeed({}), restore: () => undefined })
        }
        const shadow = yield* Scoped.acquireWith(() => Denoiser.clone(model, false), Denoiser.dispose)
        return Ema.of({
          decay,
          update: Effect.sync(() => {
            for (const [k, v] of Object.entries(shadow.params)) {
              const next = tf.tidy(() => tf.add(tf.mul(v, decay), tf.mul(model.params[k], 1 - decay)))
              v.assign(next)
              next.dispose()
            }
          }),
          model: () => shadow,
          state: () => ModelDir.toStored(shadow.params),
          restore: (s) => ModelDir.assign(shadow.params, s)
        })
      })
    )

  /** Inactive (tests, stacks without an average). */
  static readonly layerTest = Ema.layer(0)
}
