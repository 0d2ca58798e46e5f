/**
 * Preference pairs for the Diffusion-DPO baseline, drawn on the fly: for
 * each prompt two samples of the frozen reference (the base model; DDIM
 * `steps` with guidance `cfg`, different starting noise), both noised with
 * one eps at one t ~ U[0, T) as Diffusion-DPO does (its train.py repeats the
 * first half's noise and timesteps). The reward ranks them downstream
 * (TrajectoryScorer on the clean samples, PathSelector.bestWorst).
 *
 * Sampling from the reference, not the policy, makes the pairs an offline
 * preference dataset of the base model, as Pick-a-Pic is for SD: the
 * policy never sees its own samples.
 *
 * Also: `promptSource`, a BatchSource of prompts only (its `x0` is a zero
 * placeholder), for generators that make their own images (this one, DDPO's
 * rollouts).
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Layer } from "effect"
import * as Dataset from "../data/Dataset.ts"
import { sample, type Split } from "../data/Prompt.ts"
import * as Ddim from "../diffusion/Ddim.ts"
import * as Schedule from "../diffusion/Schedule.ts"
import * as Generate from "../trajectory/Generate.ts"
import * as Denoiser from "../model/Denoiser.ts"
import { Reference } from "../model/Reference.ts"
import type { Rng } from "../tensor/Random.ts"
import { RandomSource } from "../tensor/RandomSource.ts"
import * as Scoped from "../tensor/Scoped.ts"
import * as NoisedSamples from "../trajectory/NoisedSamples.ts"
import type { Trajectories } from "../trajectory/Trajectory.ts"
import { TrajectoryGenerator } from "../trajectory/TrajectoryGenerator.ts"
import { BatchSource } from "./Sources.ts"

export interface PairOptions {
  /** DDIM steps of each sample (the repo's online samples: 50). */
  readonly steps: number
  /** Guidance of the samples (paper: 5). */
  readonly cfg: number
}

/** Model evaluations of one pair batch: 2B images, `steps` calls each, guidance doubles. */
export const pairNfe = (batch: number, o: PairOptions): number => 2 * batch * o.steps * (o.cfg === 1 ? 1 : 2)

/**
 * Two reference samples per prompt, noised as a Diffusion-DPO pair (pure;
 * the caller owns the result).
 *
 * @since 0.1.0
 */
export const drawPairs = (
  reference: Denoiser.Model,
  schedule: Schedule.Schedule,
  prompts: ReadonlyArray<string>,
  rng: Rng,
  o: PairOptions
): NoisedSamples.NoisedSamples => {
  const b = prompts.length
  const shape = Denoiser.sampleShape(reference.config)
  const rowPrompts = [...prompts, ...prompts]
  const xT = Generate.normalTensor(rng, [2 * b, ...shape])
  let clean: tf.Tensor
  try {
    clean = Ddim.sample({
      schedule,
      denoise: (x, t) => Denoiser.guidedEps(reference, x, t, rowPrompts, o.cfg),
      xT,
      inferenceSteps: o.steps,
      clipSample: 1
    })
  } finally {
    xT.dispose()
  }
  const itemTimesteps = NoisedSamples.drawTimesteps(rng, schedule.trainSteps, b)
  const noise = tf.tidy(() => {
    const half = Generate.normalTensor(rng, [b, ...shape])
    return tf.concat([half, half], 0) as tf.Tensor
  })
  return NoisedSamples.make(schedule, { clean, noise, itemTimesteps, prompts, n: 2, nfe: pairNfe(b, o) })
}

/**
 * The pair generator stage (ignores the batch's images; uses its prompts).
 *
 * @since 0.1.0
 */
export const generatorLayer = (o: PairOptions): Layer.Layer<TrajectoryGenerator, never, Reference | RandomSource> =>
  Layer.effect(
    TrajectoryGenerator,
    Effect.gen(function*() {
      const reference = (yield* Reference).model
      const { rng } = yield* RandomSource
      const schedule = Schedule.make(reference.config.schedule)
      return TrajectoryGenerator.of({
        options: { n: 2, m: 1, inferenceSteps: o.steps, cfg: o.cfg, estimator: { kind: "tweedie" }, timestep: { kind: "uniform" } },
        generate: (_x0, prompts) =>
          Scoped.acquireWith(
            (): Trajectories => drawPairs(reference, schedule, prompts, rng, o),
            (t) => NoisedSamples.dispose(t as NoisedSamples.NoisedSamples)
          ).pipe(Effect.withSpan("PreferencePairs.generate"))
      })
    })
  )

/**
 * Prompts of a split (drawn as `BatchSource.online` draws them) with a zero
 * image placeholder and no model evaluation.
 *
 * @since 0.1.0
 */
export const promptSource = (split: Split): Layer.Layer<BatchSource, never, RandomSource | Denoiser.Denoiser> =>
  Layer.effect(
    BatchSource,
    Effect.gen(function*() {
      const { rng } = yield* RandomSource
      const shape = Denoiser.sampleShape((yield* Denoiser.Denoiser).model.config)
      return BatchSource.of({
        name: `prompts-${split}`,
        next: (batchSize) =>
          Scoped.acquireWith(() => {
            const prompts = Array.from({ length: batchSize }, () => sample(rng, Dataset.sampleCategory(rng), split).text)
            return { x0: tf.zeros([batchSize, ...shape]), prompts, nfe: 0 }
          }, (b) => b.x0.dispose())
      })
    })
  )
