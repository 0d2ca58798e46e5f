/**
 * DiffusionNFT (Zheng et al., arXiv 2509.16117; docs/method.md), on the
 * paths' final images (paths continued to t = 0): per prompt a group of n
 * images from the sampling policy, each image's reward turned into an
 * optimality weight
 *
 *   r_i = clip(A_i, -c, c) / (2c) + 1/2  in [0, 1],   A_i group-normalised (GroupRelative.groupAdvantages),
 *
 * every image noised by the forward process (its own eps and t ~ U[0, T)),
 * and two implicit policies regressed on it, built from the trained
 * prediction and the sampling ("old") policy's frozen prediction:
 *
 *   eps+ = (1 - beta) eps_old + beta eps_theta    on the image with weight r,
 *   eps- = (1 + beta) eps_old - beta eps_theta    with weight 1 - r,
 *
 * each on its x0 error normalised by its own (no-gradient) scale, the
 * paper's adaptive weighting,
 *
 *   L+/- = mean (x0(eps+/-) - x0)^2 / max(mean |x0(eps+/-) - x0|, 1e-5),
 *   loss = (c / beta) * mean_i [ r_i L+_i + (1 - r_i) L-_i ]  (+ kl * mean (eps_theta - eps_ref)^2).
 *
 * Our models predict epsilon on a DDPM schedule, so x0(eps) = (x_t - sigma eps) / alpha
 * and, since x_t = alpha x0 + sigma eps_true, x0(eps) - x0 = -(sigma / alpha)(eps - eps_true):
 * the x0 form is the eps form with every row weighted by sigma/alpha
 * (`weighting: "x0"`, the paper's); `"eps"` drops that factor (up to 157
 * at t = 999 on the DDPM-linear schedule, where flow matching's x0 = x_t - t v
 * has at most 1).
 *
 * With the sampling weights as the old policy (`oldDecay` 0) the first step
 * on a batch has eps_theta = eps_old, and its gradient is
 * sum_i clip(A_i) * grad L_i / N whatever beta: beta matters from the second
 * step on a batch (`stepsPerBatch`) or with an averaged old policy.
 *
 * @since 0.7.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Layer, Schema } from "effect"
import * as Noise from "../diffusion/Noise.ts"
import * as Schedule from "../diffusion/Schedule.ts"
import * as Denoiser from "../model/Denoiser.ts"
import { Reference } from "../model/Reference.ts"
import { RandomSource } from "../tensor/RandomSource.ts"
import * as Scoped from "../tensor/Scoped.ts"
import * as Generate from "../trajectory/Generate.ts"
import * as NoisedSamples from "../trajectory/NoisedSamples.ts"
import type { Trajectories } from "../trajectory/Trajectory.ts"
import * as HostRead from "../tensor/HostRead.ts"
import * as GradientJobs from "./GradientJobs.ts"
import * as GroupLosses from "./GroupLosses.ts"
import { groupAdvantages, itemRows } from "./GroupRelative.ts"
import * as Losses from "./Losses.ts"
import { Objective } from "./Objective.ts"
import * as PortablePart from "./PortablePart.ts"

/** Floor of the adaptive weight (the paper's code: 1e-5). */
export const WEIGHT_FLOOR = GroupLosses.WEIGHT_FLOOR

export const NftWeighting = Schema.Literals(["x0", "eps"])
export type NftWeighting = typeof NftWeighting.Type

/**
 * The forward noise of the images: each its own eps and t (the paper's
 * code), or one eps and t per prompt shared by its n images (as a DPO pair
 * is noised), so the images' losses differ by the image only.
 */
export const NftNoise = Schema.Literals(["image", "prompt"])
export type NftNoise = typeof NftNoise.Type

export const NftOptions = Schema.Struct({
  /** Mixing factor of the implicit policies (paper: 1 or 0.1). */
  beta: Schema.Number.check(Schema.isGreaterThan(0)),
  /** Advantages clipped to [-c, c] before they become r (paper: 5). */
  advClip: Schema.Number.check(Schema.isGreaterThan(0)),
  /** Weight of the eps-space KL to the frozen reference (0: none, the paper's default is 1e-4). */
  kl: Schema.Number.check(Schema.isGreaterThanOrEqualTo(0)),
  /**
   * The old policy: 0, the weights that sampled the batch; d > 0, an average
   * old <- d old + (1 - d) theta folded in before each batch.
   */
  oldDecay: Schema.Number.check(Schema.isGreaterThanOrEqualTo(0), Schema.isLessThan(1)),
  weighting: NftWeighting,
  noise: Schema.optional(NftNoise),
  microBatchRows: Schema.optional(Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))),
  stepsPerBatch: Schema.optional(Schema.Int.check(Schema.isGreaterThanOrEqualTo(1)))
})
export type NftOptions = typeof NftOptions.Type

/** The paper's values where they carry over (beta 1, clip 5, no KL, old = sampling weights, x0 form). */
export const defaults: NftOptions = { beta: 1, advClip: 5, kl: 0, oldDecay: 0, weighting: "x0" }

/**
 * The optimality weight of a group-normalised advantage: clip(A, -c, c) / (2c) + 1/2.
 *
 * @since 0.7.0
 */
export const optimality = (advantage: number, clip: number): number => Math.min(1, Math.max(0, Math.max(-clip, Math.min(clip, advantage)) / (2 * clip) + 0.5))

/** Per-row NFT loss (`GroupLosses.nftRowLosses`). */
export const rowLosses = GroupLosses.nftRowLosses

/** The final images noised by the forward process, t ~ U[0, T): per image, or per prompt (`NftNoise`). */
interface NoisedRows {
  readonly xt: tf.Tensor
  readonly noise: tf.Tensor
  readonly t: ReadonlyArray<number>
}

const noisedRows = (schedule: Schedule.Schedule, t: Trajectories, rng: Parameters<typeof NoisedSamples.drawTimesteps>[0], per: NftNoise): NoisedRows => {
  const final = t.final ?? (() => {
    throw new TypeError("DiffusionNFT needs paths continued to t = 0 (continuation: true)")
  })()
  const rows = final.shape[0]
  const draws = per === "image" ? rows : t.batch
  // Timesteps first, then the noise (as ImageLevel.noisedFinals draws them).
  const drawn = NoisedSamples.drawTimesteps(rng, schedule.trainSteps, draws)
  const ts = Array.from({ length: rows }, (_, row) => drawn[row % draws])
  const noise = tf.tidy(() => {
    const one = Generate.normalTensor(rng, [draws, ...final.shape.slice(1)])
    return per === "image" ? one : tf.concat(Array.from({ length: t.n }, () => one), 0)
  })
  return { xt: Noise.addNoise(schedule, final, noise, ts), noise, t: ts }
}

/**
 * The DiffusionNFT objective. Needs the paths' final images; the selection
 * is not used (every image counts through its r).
 *
 * @since 0.7.0
 */
export const objective = (o: NftOptions): Layer.Layer<Objective, never, Denoiser.Denoiser | Reference | RandomSource> =>
  Layer.effect(
    Objective,
    Effect.gen(function*() {
      const { model } = yield* Denoiser.Denoiser
      const reference = (yield* Reference).model
      const { rng } = yield* RandomSource
      const schedule = Schedule.make(model.config.schedule)
      // With a pool of several threads the parts are split so each thread gets some
      // (its threads read per batch: they may change between iterations).
      const pool = yield* GradientJobs.current
      // oldDecay 0: the policy itself, read before any step of the batch (its weights sampled the batch).
      const old = o.oldDecay > 0 ? yield* Denoiser.cloneScoped(model) : model
      const fold = Effect.sync(() => {
        if (old === model) return
        for (const [k, v] of Object.entries(old.params)) {
          const next = tf.tidy(() => tf.add(tf.mul(v, o.oldDecay), tf.mul(model.params[k], 1 - o.oldDecay)))
          v.assign(next)
          next.dispose()
        }
      })
      const xScale = (u: number) => (o.weighting === "x0" ? Schedule.sigma(schedule, u) / Schedule.alpha(schedule, u) : 1)
      return Objective.of({
        name: "nft",
        prepare: (t, _selection, scores) =>
          Effect.gen(function*() {
            const b = t.batch
            const n = t.n
            const adv = groupAdvantages(scores.trajectory)
            const r = adv.flat().map((a) => optimality(a, o.advClip))
            yield* fold
            const prompts = Array.from({ length: n * b }, (_, row) => t.prompts[row % b])
            // Every step's noise, and the old policy's (and reference's) predictions on it, before any step.
            const steps = yield* Effect.forEach(Array.from({ length: o.stepsPerBatch ?? 1 }), () =>
              Scoped.acquireWith(() => {
                const s = noisedRows(schedule, t, rng, o.noise ?? "image")
                return {
                  ...s,
                  old: Denoiser.eps(old, s.xt, s.t, prompts),
                  ref: o.kl > 0 ? Denoiser.eps(reference, s.xt, s.t, prompts) : undefined
                }
              }, (s) => tf.dispose([s.xt, s.noise, s.old, ...(s.ref === undefined ? [] : [s.ref])])))
            const parts = Losses.microBatchesByRows(b, n, PortablePart.rowsForThreads(o.microBatchRows ?? Losses.defaultMicroBatchRows(), b, n, pool.threads))
            const losses = steps.map((s) =>
              parts.map((items) => {
                const rows = itemRows(n, b, items)
                const take = (x: tf.Tensor) => HostRead.consumeFloat32(() => tf.gather(x, tf.tensor1d(rows, "int32")))
                // The same rows and kernels on any thread (PortablePart.loss).
                const portable = () =>
                  Effect.map(
                    Effect.all([take(s.xt), take(s.noise), take(s.old), s.ref === undefined ? Effect.succeed(undefined) : take(s.ref)], { concurrency: "unbounded" }),
                    ([x, target, oldEps, refEps]): PortablePart.PortablePart => {
                      const ts = rows.map((row) => s.t[row])
                      return {
                        x,
                        target,
                        t: ts,
                        prompts: rows.map((row) => prompts[row]),
                        share: 1,
                        nft: {
                          old: oldEps,
                          ...(refEps === undefined ? {} : { ref: refEps }),
                          scale: ts.map(xScale),
                          r: rows.map((row) => r[row]),
                          beta: o.beta,
                          clip: o.advClip,
                          kl: o.kl,
                          count: n * b
                        }
                      }
                    }
                  )
                return PortablePart.withPortable(() =>
                  tf.tidy(() => {
                    const take = (x: tf.Tensor) => tf.gather(x, tf.tensor1d(rows, "int32"))
                    const ts = rows.map((row) => s.t[row])
                    const eps = Denoiser.eps(model, take(s.xt), ts, rows.map((row) => prompts[row]))
                    const policy = tf.sum(rowLosses(eps, take(s.old), take(s.noise), ts.map(xScale), rows.map((row) => r[row]), o.beta, o.advClip))
                    const kl = s.ref === undefined ? tf.scalar(0) : tf.mul(tf.sum(tf.mean(tf.reshape(tf.squaredDifference(eps, take(s.ref)), [rows.length, -1]), 1)), o.kl)
                    // The part's share of the mean over all n*B images.
                    return tf.div(tf.add(policy, kl), n * b) as tf.Scalar
                  }), portable)
              })
            )
            return {
              loss: losses[0],
              ...(losses.length > 1 ? { updates: losses.slice(1) } : {}),
              stats: {},
              // Per step: the trained and the old policy on all n*B images, and the reference with a KL.
              nfe: (o.kl > 0 ? 3 : 2) * n * b * losses.length
            }
          })
      })
    })
  )
