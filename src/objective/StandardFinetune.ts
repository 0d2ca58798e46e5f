/**
 * Baseline 1 of the paper's Table 1, standard fine-tuning: the ordinary
 * denoising loss on the same image-text data as SFT sharpening (ShapeWorld
 * renders of the generator's training split),
 *
 *   L = E_{x0, c, t ~ U[0, T), eps ~ N(0, I)} || eps - eps_theta(sqrt(a_t) x0 + sqrt(1 - a_t) eps, t, c) ||^2,
 *
 * one random timestep per image, the noise as the target, the conditional
 * prediction (no guidance), no reward and no trajectory.
 *
 * It is what SFT sharpening reduces to with n = 1, m = 1 and the "original"
 * target, except that sharpening draws one t per batch on the DDIM-50 grid
 * and spends a guided model evaluation and a reward call per image on its
 * (then pointless) x0 estimate; the stack here (`BaselineLayers.standard`)
 * draws t per image over all T training timesteps and spends neither.
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Layer } from "effect"
import * as Denoiser from "../model/Denoiser.ts"
import { isNoisedSamples, type NoisedSamples, rowErrors } from "../trajectory/NoisedSamples.ts"
import { Objective } from "./Objective.ts"

/**
 * The standard denoising loss on every row: mean over rows and pixels of
 * (eps_theta(x_t, t, c) - eps)^2.
 *
 * @since 0.1.0
 */
export const standardLoss = (model: Denoiser.Model, s: NoisedSamples): tf.Scalar =>
  tf.tidy(() => tf.mean(rowErrors(model, s, Array.from({ length: s.n * s.batch }, (_, r) => r))) as tf.Scalar)

/**
 * The objective stage of standard fine-tuning. Needs single-timestep samples
 * (`NoisedSamples.generatorLayer`); any other trajectories are a defect.
 *
 * @since 0.1.0
 */
export const objective: Layer.Layer<Objective, never, Denoiser.Denoiser> = Layer.effect(
  Objective,
  Effect.gen(function*() {
    const { model } = yield* Denoiser.Denoiser
    return Objective.of({
      name: "standard-finetune",
      prepare: (t) =>
        isNoisedSamples(t)
          ? Effect.succeed({ loss: () => standardLoss(model, t), stats: {}, nfe: t.n * t.batch })
          : Effect.die(new TypeError("standard fine-tuning needs single-timestep samples (NoisedSamples.generatorLayer)"))
    })
  })
)
