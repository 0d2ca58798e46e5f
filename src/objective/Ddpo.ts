/**
 * Baseline 3 of the paper's Table 1, DDPO (Black et al. 2023, arXiv
 * 2305.13301; ddpo-pytorch `scripts/train.py`): policy-gradient fine-tuning
 * on the policy's own stochastic DDIM chains (`PolicyRollout`).
 *
 * Per iteration: rewards of the final images; advantages normalised per
 * prompt by the run's `StatTracker` (DDPO's `per_prompt_stat_tracking`,
 * checkpointed with the run) and clipped to [-advClip, advClip]; then, for
 * each inner epoch, the samples are shuffled, each sample keeps a random
 * subset of `floor(timestepFraction * (T - 1))` of its stochastic steps, and
 * the samples are split into `minibatches`, one optimiser step each, with
 * the PPO clipped surrogate
 *
 *   r = exp(log pi_theta(x_{k+1} | x_k, c) - log pi_old(x_{k+1} | x_k, c))
 *   L = mean over (sample, step) of max(-A r, -A clip(r, 1 - eps, 1 + eps)).
 *
 * The first step of an iteration is on-policy (r = 1, the plain
 * REINFORCE-style gradient -A grad log pi); later ones are off-policy by the
 * steps before them, and clipping (eps = 1e-4, ddpo-pytorch) stops a sample's
 * gradient once its ratio has moved past the range in the advantage's
 * direction.
 *
 * One deviation: ddpo-pytorch accumulates gradients over the timesteps of a
 * minibatch; the pipeline's optimiser takes one loss per step, so a
 * minibatch's (sample, timestep) pairs are one batch, whose size
 * `timestepFraction` and `minibatches` bound (docs/baselines.md).
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Layer, Schema } from "effect"
import * as Schedule from "../diffusion/Schedule.ts"
import * as Denoiser from "../model/Denoiser.ts"
import { StatTracker } from "../reward/Combinators.ts"
import type { Rng } from "../tensor/Random.ts"
import { RandomSource } from "../tensor/RandomSource.ts"
import { isRollout, type RolloutTrajectories, stepLogProb } from "../trajectory/PolicyRollout.ts"
import * as Losses from "./Losses.ts"
import { Objective } from "./Objective.ts"

export const DdpoOptions = Schema.Struct({
  /** PPO clip range of the ratio (ddpo-pytorch: 1e-4). */
  clipRange: Schema.Number.check(Schema.isGreaterThan(0)),
  /** Advantages are clipped to [-advClip, advClip] (ddpo-pytorch: 5). */
  advClip: Schema.Number.check(Schema.isGreaterThan(0)),
  /** Fraction of each sample's stochastic steps trained on (ddpo-pytorch: 1). */
  timestepFraction: Schema.Number.check(Schema.isGreaterThan(0), Schema.isLessThanOrEqualTo(1)),
  /** Optimiser steps per pass over the samples (ddpo-pytorch: samples / train batch size). */
  minibatches: Schema.Int.check(Schema.isGreaterThanOrEqualTo(1)),
  /** Passes over the samples of one rollout (ddpo-pytorch: 1). */
  innerEpochs: Schema.Int.check(Schema.isGreaterThanOrEqualTo(1)),
  /**
   * (sample, timestep) pairs per gradient part within a minibatch (0: all
   * at once). The parts' gradients are summed into the minibatch's one step
   * (as ddpo-pytorch accumulates over timesteps); only peak memory changes.
   */
  microBatch: Schema.optional(Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)))
})
export type DdpoOptions = typeof DdpoOptions.Type

/** ddpo-pytorch's defaults (config/base.py), with one minibatch. */
export const ddpoPytorch: DdpoOptions = { clipRange: 1e-4, advClip: 5, timestepFraction: 1, minibatches: 1, innerEpochs: 1 }

/**
 * The PPO clipped surrogate, mean over items of
 * max(-A r, -A clip(r, 1 - clipRange, 1 + clipRange)), r = exp(logProb - oldLogProb).
 * Differentiable in `logProb`.
 *
 * @since 0.1.0
 */
export const ppoLoss = (logProb: tf.Tensor1D, oldLogProb: tf.Tensor1D, advantages: tf.Tensor1D, clipRange: number): tf.Scalar =>
  tf.tidy(() => {
    const ratio = tf.exp(tf.sub(logProb, oldLogProb))
    const unclipped = tf.mul(tf.neg(advantages), ratio)
    const clipped = tf.mul(tf.neg(advantages), tf.clipByValue(ratio, 1 - clipRange, 1 + clipRange))
    return tf.mean(tf.maximum(unclipped, clipped)) as tf.Scalar
  })

/** Advantages clipped to [-max, max]. */
export const clipAdvantages = (advantages: ReadonlyArray<number>, max: number): Array<number> =>
  advantages.map((a) => Math.min(max, Math.max(-max, a)))

/** Stochastic steps trained on per sample: floor(fraction * steps), at least 1. */
export const trainedSteps = (steps: number, fraction: number): number => Math.max(1, Math.floor(steps * fraction))

/** One (sample row, stochastic step) pair of a minibatch. */
export interface Item {
  readonly row: number
  readonly k: number
}

/**
 * The optimiser steps of one rollout, in order: per inner epoch, shuffle the
 * rows, give each row a random subset of its steps, split the rows into
 * `minibatches` contiguous parts (sizes differing by at most 1).
 *
 * @since 0.1.0
 */
export const plan = (rng: Rng, rows: number, steps: number, o: DdpoOptions): Array<Array<Item>> => {
  if (o.minibatches > rows) throw new RangeError(`${o.minibatches} minibatches for ${rows} samples`)
  const keep = trainedSteps(steps, o.timestepFraction)
  const out: Array<Array<Item>> = []
  const all = (n: number) => Array.from({ length: n }, (_, i) => i)
  for (let e = 0; e < o.innerEpochs; e++) {
    const order = rng.shuffle(all(rows))
    const times = order.map(() => rng.shuffle(all(steps)).slice(0, keep))
    for (let m = 0; m < o.minibatches; m++) {
      const from = Math.floor((m * rows) / o.minibatches)
      const to = Math.floor(((m + 1) * rows) / o.minibatches)
      out.push(order.slice(from, to).flatMap((row, j) => times[from + j].map((k) => ({ row, k }))))
    }
  }
  return out
}

/**
 * The current policy's log pi of each item's recorded step ([items.length]),
 * differentiable; items are evaluated as one batch (two with guidance).
 *
 * @since 0.1.0
 */
export const logProbs = (
  model: Denoiser.Model,
  schedule: Schedule.Schedule,
  t: RolloutTrajectories,
  items: ReadonlyArray<Item>
): tf.Tensor1D =>
  tf.tidy(() => {
    const { latents, options, timesteps } = t.rollout
    // Gather the (data) states step by step, then put them in the items'
    // order (reordering the inputs, not the differentiable outputs).
    const ks = [...new Set(items.map((i) => i.k))]
    const grouped = ks.flatMap((k) => items.flatMap((item, j) => (item.k === k ? [j] : [])))
    const gather = (offset: number) =>
      tf.concat(ks.map((k) => tf.gather(latents[k + offset], tf.tensor1d(items.filter((i) => i.k === k).map((i) => i.row), "int32"))), 0)
    const position = new Array<number>(items.length)
    grouped.forEach((j, p) => (position[j] = p))
    const reorder = (x: tf.Tensor) => tf.gather(x, tf.tensor1d(position, "int32")) as tf.Tensor
    return stepLogProb(
      model,
      schedule,
      options,
      reorder(gather(0)),
      items.map((i) => timesteps[i.k]),
      items.map((i) => (i.k + 1 < timesteps.length ? timesteps[i.k + 1] : -1)),
      items.map((i) => t.prompts[i.row % t.batch]),
      reorder(gather(1))
    )
  })

/** The sampling policy's log pi of each item (recorded by the rollout). */
export const oldLogProbs = (t: RolloutTrajectories, items: ReadonlyArray<Item>): Array<number> =>
  items.map((i) => t.rollout.logProbs[i.k][i.row])

/**
 * The objective stage. Needs `PolicyRollout` trajectories, the run's
 * `StatTracker` and `RandomSource`.
 *
 * @since 0.1.0
 */
export const objective = (o: DdpoOptions): Layer.Layer<Objective, never, Denoiser.Denoiser | StatTracker | RandomSource> =>
  Layer.effect(
    Objective,
    Effect.gen(function*() {
      const { model } = yield* Denoiser.Denoiser
      const tracker = yield* StatTracker
      const { rng } = yield* RandomSource
      const schedule = Schedule.make(model.config.schedule)
      return Objective.of({
        name: "ddpo",
        prepare: (t, _selection, scores) =>
          Effect.gen(function*() {
            if (!isRollout(t)) return yield* Effect.die(new TypeError("DDPO needs policy rollouts (PolicyRollout.generatorLayer)"))
            const rows = t.n * t.batch
            const prompts = Array.from({ length: rows }, (_, r) => t.prompts[r % t.batch])
            const rewards = Array.from({ length: rows }, (_, r) => scores.trajectory[Math.floor(r / t.batch)][r % t.batch])
            const advantages = clipAdvantages(yield* tracker.update(prompts, rewards), o.advClip)
            // One optimiser step per minibatch; its loss in parts, each part
            // its pairs' share of the minibatch mean.
            const planned = plan(rng, rows, t.rollout.logProbs.length, o)
            const steps = planned.map((items) =>
              Losses.microBatches(items.length, o.microBatch ?? 0).map((idx) => idx.map((i) => items[i])).map((part) => () =>
                tf.tidy(() =>
                  tf.mul(
                    ppoLoss(
                      logProbs(model, schedule, t, part),
                      tf.tensor1d(oldLogProbs(t, part)),
                      tf.tensor1d(part.map((i) => advantages[i.row])),
                      o.clipRange
                    ),
                    part.length / items.length
                  ) as tf.Scalar
                )
              )
            )
            return {
              loss: steps[0],
              updates: steps.slice(1),
              stats: { advantageAbsMean: advantages.reduce((a, x) => a + Math.abs(x), 0) / rows },
              // One guided policy evaluation per (sample, step) pair trained.
              nfe: planned.reduce((a, items) => a + items.length, 0) * (t.rollout.options.cfg === 1 ? 1 : 2)
            }
          })
      })
    })
  )
