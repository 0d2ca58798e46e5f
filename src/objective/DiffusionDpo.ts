/**
 * Baseline 2 of the paper's Table 1, Diffusion-DPO (Wallace et al. 2023,
 * arXiv 2311.12908, Eq. 14 and the official `train.py`): for a pair
 * (x_w, x_l) of images of one prompt, ranked by the reward, noise both at
 * the same t ~ U[0, T) with the same eps and minimise
 *
 *   L = -log sigmoid( -beta/2 * [ (||eps - eps_theta(x_w,t)||^2 - ||eps - eps_ref(x_w,t)||^2)
 *                               - (||eps - eps_theta(x_l,t)||^2 - ||eps - eps_ref(x_l,t)||^2) ] )
 *
 * with per-image mean squared errors, the conditional prediction and a
 * frozen reference (the base model). The 1/2 is the official code's
 * `scale_term = -0.5 * beta_dpo` (the paper's T * omega(lambda_t) folded
 * into beta); beta = 5000 is its value for SD 1.5 and SDXL (launchers
 * `--beta_dpo 5000`; the paper reports 2000-5000 working). Errors here are
 * per-pixel means in [-1, 1] pixel space, the same order as SD's per-latent
 * means, so the value carries over (docs/baselines.md).
 *
 * Unlike the paper's Eq. 11 (RLHF sharpening) there is no reward margin and
 * only one timestep of a freshly noised pair, not a denoising path. A pair
 * with tied rewards has winner = loser (`PathSelector.bestWorst`) and
 * contributes no gradient.
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Layer, Schema } from "effect"
import * as Denoiser from "../model/Denoiser.ts"
import { Reference } from "../model/Reference.ts"
import * as Scoped from "../tensor/Scoped.ts"
import { isNoisedSamples, rowErrors } from "../trajectory/NoisedSamples.ts"
import { rowIndex } from "../trajectory/Trajectory.ts"
import * as Losses from "./Losses.ts"
import { Objective } from "./Objective.ts"

/** Diffusion-DPO's beta_dpo for SD 1.5 and SDXL (official launchers). */
export const DEFAULT_BETA = 5000

export const DiffusionDpoOptions = Schema.Struct({
  /** beta_dpo; the loss scales the logits by beta / 2 as the official code. */
  beta: Schema.Number.check(Schema.isGreaterThan(0))
})
export type DiffusionDpoOptions = typeof DiffusionDpoOptions.Type

/**
 * The Diffusion-DPO loss from per-pair errors ([B] each):
 * mean_b -log sigmoid(-beta/2 * ((modelW - refW) - (modelL - refL))).
 * `Losses.dpoFromTerms` with no margin and beta / 2.
 *
 * @since 0.1.0
 */
export const loss = (terms: Losses.DpoTerms, beta: number): tf.Scalar =>
  Losses.dpoFromTerms(terms, new Array<number>(terms.modelW.shape[0]).fill(0), beta / 2, "inside")

/**
 * The objective stage: winner and loser rows from the selector (best and
 * worst of each item's n = 2 samples), reference errors computed once
 * outside the gradient, the policy's inside it.
 *
 * @since 0.1.0
 */
export const objective = (o: DiffusionDpoOptions): Layer.Layer<Objective, never, Denoiser.Denoiser | Reference> =>
  Layer.effect(
    Objective,
    Effect.gen(function*() {
      const { model } = yield* Denoiser.Denoiser
      const reference = (yield* Reference).model
      return Objective.of({
        name: "diffusion-dpo",
        prepare: (t, selection, scores) =>
          Effect.gen(function*() {
            if (!isNoisedSamples(t)) {
              return yield* Effect.die(new TypeError("Diffusion-DPO needs noised preference pairs (PreferencePairs.generatorLayer)"))
            }
            const b = t.batch
            const rows = [...rowIndex(t, selection.best), ...rowIndex(t, selection.worst)]
            const ref = yield* Scoped.acquire(() => tf.tidy(() => Losses.splitPair(rowErrors(reference, t, rows))))
            const margin = Array.from({ length: b }, (_, i) => scores.trajectory[selection.best[i]][i] - scores.trajectory[selection.worst[i]][i])
            return {
              loss: () =>
                tf.tidy(() => {
                  const policy = Losses.splitPair(rowErrors(model, t, rows))
                  return loss({ modelW: policy.w, modelL: policy.l, refW: ref.w, refL: ref.l }, o.beta)
                }),
              stats: { rewardMargin: margin.reduce((a, x) => a + x, 0) / b },
              nfe: 4 * b
            }
          })
      })
    })
  )
