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
 *   theta    <- Optimizer              AdamW step on grad L (summed over `accumulate` batches)
 *   theta'   <- Ema                    the weight average used for evaluation and saving
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Context, Effect, Option } from "effect"
import * as Stats from "../math/Stats.ts"
import * as GradientJobs from "../objective/GradientJobs.ts"
import { Objective } from "../objective/Objective.ts"
import * as PortablePart from "../objective/PortablePart.ts"
import { Ema } from "../optim/Ema.ts"
import { type Loss, Optimizer } from "../optim/Optimizer.ts"
import * as Trainer from "../optim/Trainer.ts"
import { PathSelector } from "../trajectory/PathSelector.ts"
import { TrajectoryGenerator } from "../trajectory/TrajectoryGenerator.ts"
import { TrajectoryScorer } from "../trajectory/TrajectoryScorer.ts"
import { Checkpointer } from "../optim/Checkpointer.ts"
import { type IterationRecord, Metrics, trainingNfe } from "../optim/Metrics.ts"
import * as WebGpu from "../tensor/WebGpu.ts"
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
}>()("sharpen/sharpen/IterationSampler") {}

/** Marks the part of an iteration that may be abandoned (see `loop`). */
export type Interruptible = Trainer.Interruptible

/**
 * One sharpening iteration; all its tensors are released when it ends.
 * Everything before the first optimiser step (batches, trajectories,
 * rewards, objective) runs through `interruptible`: inside
 * `Effect.uninterruptibleMask` pass its `restore`, so that an interruption
 * abandons the iteration before it changes the model, and never during its
 * update.
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
  const ema = yield* Effect.serviceOption(Ema)
  // Absent from older configs built by hand: one batch per step.
  const rounds = config.accumulate ?? 1
  return yield* Effect.scoped(Effect.gen(function*() {
    // `accumulate` batches, each its share of one update (their gradients are summed).
    const losses: Array<PortablePart.Part> = []
    const all: Array<number> = []
    const best: Array<number> = []
    const worst: Array<number> = []
    const margins: Array<number> = []
    let nfe = 0
    let lossNfe = 0
    let rewardCalls = 0
    let updates: ReadonlyArray<Loss> = []
    // Interruptible (see `loop`): nothing of the model has changed yet.
    yield* interruptible(Effect.gen(function*() {
      for (let r = 0; r < rounds; r++) {
        const batch = yield* source.next(config.batchSize)
        const trajectories = yield* generator.generate(batch.x0, batch.prompts)
        const scores = yield* scorer.score(trajectories)
        const selection = selector.select(scores.trajectory)
        const prepared = yield* objective.prepare(trajectories, selection, scores)
        if (rounds > 1 && (prepared.updates?.length ?? 0) > 0) {
          return yield* Effect.die(new RangeError(`${objective.name} takes several steps per batch; accumulate must be 1`))
        }
        for (const part of typeof prepared.loss === "function" ? [prepared.loss] : prepared.loss) {
          losses.push(rounds === 1 ? part : PortablePart.divided(part, rounds))
        }
        updates = prepared.updates ?? []
        all.push(...scores.trajectory.flat())
        best.push(...selection.best.map((i, b) => scores.trajectory[i][b]))
        worst.push(...selection.worst.map((i, b) => scores.trajectory[i][b]))
        if (prepared.stats.rewardMargin !== undefined) margins.push(prepared.stats.rewardMargin)
        nfe += batch.nfe + trajectories.nfe
        lossNfe += prepared.nfe ?? 0
        rewardCalls += scores.rewardCalls
      }
    }))
    const steps = [yield* optimizer.step(losses.length === 1 ? losses[0] : losses, index)]
    for (const loss of updates) steps.push(yield* optimizer.step(loss, index))
    if (Option.isSome(ema)) yield* ema.value.update
    // Several steps (Prepared.updates): their mean loss and gradient norm, the last lr.
    const update = steps.length === 1 ? steps[0] : {
      loss: Stats.mean(steps.map((s) => s.loss)),
      gradNorm: Stats.mean(steps.map((s) => s.gradNorm)),
      lr: steps[steps.length - 1].lr
    }
    // NaN for an iteration without batches, as before (0/0).
    const { mean, std } = Stats.meanStd(all, NaN)
    return {
      iteration: index,
      loss: update.loss,
      rewardMean: mean,
      rewardStd: std,
      rewardBest: Stats.mean(best, NaN),
      rewardWorst: Stats.mean(worst, NaN),
      lr: update.lr,
      gradNorm: update.gradNorm,
      wallMs: 0,
      liveTensors: 0,
      nfe,
      rewardCalls,
      ...(margins.length > 0 ? { rewardMargin: Stats.mean(margins) } : {}),
      ...(lossNfe > 0 ? { lossNfe } : {})
    } satisfies IterationRecord
  })).pipe(Effect.map((r) => {
    const gpu = WebGpu.memory()
    return {
      ...r,
      wallMs: performance.now() - started,
      liveTensors: tf.memory().numTensors,
      ...(gpu === undefined ? {} : { gpuBytes: gpu.inUse, gpuAllocatedBytes: gpu.allocated })
    }
  }))
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
  const jobs = yield* GradientJobs.current
  const start = yield* checkpointer.resume
  yield* checkpointer.mark
  const budget = config.trainingNfe ?? 0
  let spent = trainingNfe(yield* metrics.records)
  return yield* Trainer.run({
    unit: "iteration",
    start,
    more: (done) => Effect.succeed(done < config.iterations && (budget === 0 || spent < budget)),
    // Interruptible until the update starts; from there on (optimiser steps,
    // metrics line, checkpoint) it completes.
    step: (index, restore) =>
      Effect.gen(function*() {
        // A transport whose threads can change (runners joining or leaving) changes them
        // here, before the iteration's first job: all its calls see one split.
        if (jobs.refresh !== undefined) yield* restore(jobs.refresh(index + 1))
        const record = yield* iteration(config, index + 1, restore)
        yield* metrics.log(record)
        spent += record.nfe + (record.lossNfe ?? 0)
      }),
    due: (done) => done % config.checkpointEvery === 0 || done === config.iterations || (budget > 0 && spent >= budget),
    checkpoint: checkpointer.save,
    afterStep: checkpointer.mark,
    between: (done) =>
      Option.isSome(sampler) && config.sampleEvery > 0 && done % config.sampleEvery === 0 && done < config.iterations ? sampler.value.sample(done) : Effect.void,
    // An abandoned iteration may have drawn random numbers: not saved.
    onInterrupt: Effect.andThen(metrics.end, checkpointer.rollback),
    end: metrics.end
  })
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
