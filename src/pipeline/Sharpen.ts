/**
 * Diffusion-Sharpening as values: `Sharpen.sft(config)` and
 * `Sharpen.rlhf(config)` are Effects that need the stage services
 * (BatchSource, TrajectoryGenerator, TrajectoryScorer, PathSelector,
 * Objective, Optimizer, Metrics, Checkpointer) and nothing else; which
 * implementation each stage has is decided by the layers you provide.
 *
 * One iteration, as in the paper's Algorithms 1 and 2:
 *
 *   (x0, c)  <- BatchSource            data pairs (SFT) or online samples (RLHF)
 *   tau_1..n <- TrajectoryGenerator    n noises, a timestep t, m DDIM steps each
 *   R(tau_i) <- TrajectoryScorer       reward of every step's x0 estimate, summed (Eq. 7-8)
 *   w, l     <- PathSelector           best (and worst) trajectory per prompt
 *   L        <- Objective              Eq. 9 on tau_w (SFT) | Eq. 11 on (tau_w, tau_l) (RLHF)
 *   theta    <- Optimizer              AdamW step on grad L
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Context, Effect, Option } from "effect"
import { Objective } from "../objective/Objective.ts"
import { Optimizer } from "../optim/Optimizer.ts"
import { PathSelector } from "../trajectory/PathSelector.ts"
import { TrajectoryGenerator } from "../trajectory/TrajectoryGenerator.ts"
import { TrajectoryScorer } from "../trajectory/TrajectoryScorer.ts"
import { Checkpointer } from "./Checkpointer.ts"
import { type IterationRecord, Metrics } from "./Metrics.ts"
import type { SharpenConfig } from "./SharpenConfig.ts"
import { BatchSource } from "./Sources.ts"

/**
 * Optional stage: sample grids during training, called after every
 * `sampleEvery`-th iteration (once its update and checkpoint are done). Not
 * provided: no grids. It must not draw from the run's RNG, so that grids
 * never change what is trained.
 *
 * @since 0.1.0
 */
export class IterationSampler extends Context.Service<IterationSampler, {
  readonly sample: (iteration: number) => Effect.Effect<void>
}>()("sharpen/pipeline/IterationSampler") {}

const stats = (xs: ReadonlyArray<number>) => {
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length
  const std = Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / xs.length)
  return { mean, std }
}

/** Marks the part of an iteration that may be abandoned (see `loop`). */
export type Interruptible = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

/**
 * One sharpening iteration; all its tensors are released when it ends.
 * Everything before the first optimiser step (batch, trajectories, rewards,
 * objective) runs through `interruptible`: inside `Effect.uninterruptibleMask`
 * pass its `restore`, so that an interruption abandons the iteration before
 * it changes the model, and never during its update.
 *
 * @since 0.1.0
 */
export const iteration = Effect.fn("Sharpen.iteration")(function*(config: SharpenConfig, index: number, interruptible: Interruptible = (e) => e) {
  const started = performance.now()
  const source = yield* BatchSource
  const generator = yield* TrajectoryGenerator
  const scorer = yield* TrajectoryScorer
  const selector = yield* PathSelector
  const objective = yield* Objective
  const optimizer = yield* Optimizer
  return yield* Effect.scoped(Effect.gen(function*() {
    const { batch, trajectories, scores, selection, prepared } = yield* interruptible(Effect.gen(function*() {
      const batch = yield* source.next(config.batchSize)
      const trajectories = yield* generator.generate(batch.x0, batch.prompts)
      const scores = yield* scorer.score(trajectories)
      const selection = selector.select(scores.trajectory)
      const prepared = yield* objective.prepare(trajectories, selection, scores)
      return { batch, trajectories, scores, selection, prepared }
    }))
    const steps = [yield* optimizer.step(prepared.loss, index)]
    for (const loss of prepared.updates ?? []) steps.push(yield* optimizer.step(loss, index))
    // Several steps (Prepared.updates): their mean loss and gradient norm, the last lr.
    const update = steps.length === 1 ? steps[0] : {
      loss: stats(steps.map((s) => s.loss)).mean,
      gradNorm: stats(steps.map((s) => s.gradNorm)).mean,
      lr: steps[steps.length - 1].lr
    }
    const all = scores.trajectory.flat()
    const { mean, std } = stats(all)
    const best = selection.best.map((i, b) => scores.trajectory[i][b])
    const worst = selection.worst.map((i, b) => scores.trajectory[i][b])
    return {
      iteration: index,
      loss: update.loss,
      rewardMean: mean,
      rewardStd: std,
      rewardBest: stats(best).mean,
      rewardWorst: stats(worst).mean,
      lr: update.lr,
      gradNorm: update.gradNorm,
      wallMs: 0,
      liveTensors: 0,
      nfe: batch.nfe + trajectories.nfe,
      rewardCalls: scores.rewardCalls,
      ...(prepared.stats.rewardMargin !== undefined ? { rewardMargin: prepared.stats.rewardMargin } : {})
    } satisfies IterationRecord
  })).pipe(Effect.map((r) => ({ ...r, wallMs: performance.now() - started, liveTensors: tf.memory().numTensors })))
})

/**
 * The training loop shared by both algorithms: resume if a checkpoint
 * exists, run the remaining iterations, checkpoint every
 * `checkpointEvery` and at the end. An interruption (Ctrl-C, SIGTERM)
 * reaches the iteration's sampling and reward calls (a hung reward server
 * must not hold the run), abandons that iteration, and writes a checkpoint
 * of the iterations done; only an iteration's update (optimiser steps, its
 * metrics line, its checkpoint) is never cut in half. Returns the number of
 * iterations done.
 *
 * @since 0.1.0
 */
export const loop = Effect.fn("Sharpen.loop")(function*(config: SharpenConfig) {
  const metrics = yield* Metrics
  const checkpointer = yield* Checkpointer
  const sampler = yield* Effect.serviceOption(IterationSampler)
  let done = yield* checkpointer.resume
  let saved = done
  yield* checkpointer.mark
  const body = Effect.gen(function*() {
    while (done < config.iterations) {
      // Interruptible until the update starts; from there on (optimiser
      // steps, metrics line, checkpoint) it completes.
      yield* Effect.uninterruptibleMask((restore) =>
        Effect.gen(function*() {
          yield* metrics.log(yield* iteration(config, done + 1, restore))
          done += 1
          if (done % config.checkpointEvery === 0 || done === config.iterations) {
            yield* checkpointer.save(done)
            saved = done
          }
          yield* checkpointer.mark
        })
      )
      if (Option.isSome(sampler) && config.sampleEvery > 0 && done % config.sampleEvery === 0 && done < config.iterations) {
        yield* sampler.value.sample(done)
      }
    }
  })
  yield* body.pipe(
    Effect.onInterrupt(() =>
      Effect.gen(function*() {
        yield* metrics.end
        // An abandoned iteration may have drawn random numbers: not saved.
        yield* checkpointer.rollback
        if (done > saved) {
          yield* checkpointer.save(done).pipe(Effect.ignore)
          yield* Effect.logInfo(`interrupted: checkpoint written at iteration ${done}`)
        }
      })
    )
  )
  yield* metrics.end
  return done
})

/**
 * SFT-Diffusion-Sharpening (Algorithm 1): provide `BatchSource.imageText`
 * and `Objective.sft` (see `SharpenLayers.sft`).
 *
 * @since 0.1.0
 */
export const sft = (config: SharpenConfig) => loop(config)

/**
 * RLHF-Diffusion-Sharpening (Algorithm 2): provide `BatchSource.online`,
 * `Reference` and `Objective.rlhf` (see `SharpenLayers.rlhf`).
 *
 * @since 0.1.0
 */
export const rlhf = (config: SharpenConfig) => loop(config)
