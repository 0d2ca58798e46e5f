/**
 * The supervised trainings (pretraining, the clip reward, the lab's base
 * model) on the project's one loop (`Trainer.run`): a time budget,
 * checkpoints every N steps, a checkpoint on Ctrl-C, and a stop with
 * `NonFiniteLoss` (nothing applied, last checkpoint intact) when a step's
 * loss or gradient is not finite.
 *
 * `supervised` (pretraining, the clip reward) runs on the services a
 * sharpening run has: the step updates through the `Optimizer`, the
 * `Checkpointer` resumes and saves (weights, moments, RNG, the `Ema` if
 * provided, the history), `StepMetrics` writes metrics.jsonl and the
 * progress bar. `run` is the bare loop (the lab's base model: a progress
 * bar, no checkpoints).
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import * as Progress from "../io/Progress.ts"
import { Checkpointer } from "../optim/Checkpointer.ts"
import { StepMetrics, type StepRecord } from "../optim/Metrics.ts"
import { NonFiniteLoss, type StepResult } from "../optim/Optimizer.ts"
import * as Trainer from "../optim/Trainer.ts"
import { WasmHeapExhausted } from "../tensor/WasmHeap.ts"

export interface StepOutcome {
  readonly loss: number
  readonly gradNorm: number
  /** Extra numbers for the progress line. */
  readonly show?: Readonly<Record<string, number>>
}

export interface LoopOptions<E, R> {
  readonly label: string
  /** Total steps of the run. */
  readonly total: number
  /** Steps already done (when resuming). */
  readonly start: number
  /** Training wall time already spent (when resuming), ms. */
  readonly startWallMs: number
  /** Stop (with a checkpoint) after this many minutes in this session; 0 = no limit. */
  readonly maxMinutes: number
  readonly checkpointEvery: number
  /** One optimisation step, `index` 0-based (an Effect or a promise when it reads tensors or waits on worker threads). */
  readonly step: (index: number) => StepOutcome | Promise<StepOutcome> | Effect.Effect<StepOutcome, WasmHeapExhausted>
  readonly checkpoint: (steps: number, wallMs: number) => Effect.Effect<void, E, R>
}

/**
 * Run the loop; returns the steps done and the total training wall time.
 *
 * @since 0.1.0
 */
export const run = <E, R>(o: LoopOptions<E, R>): Effect.Effect<{ steps: number; wallMs: number }, E | NonFiniteLoss | WasmHeapExhausted, R> =>
  Effect.gen(function*() {
    const bar = Progress.make({ label: o.label, total: o.total, start: o.start })
    const t0 = performance.now() - o.startWallMs
    const wall = () => performance.now() - t0
    const sessionStart = performance.now()
    // Heap exhaustion is the one thing a step throws that a caller can act on (smaller batch).
    const heapOrDie = (e: unknown) => (e instanceof WasmHeapExhausted ? Effect.fail(e) : Effect.die(e))
    const steps = yield* Trainer.run({
      unit: "step",
      start: o.start,
      more: (done) =>
        done >= o.total
          ? Effect.succeed(false)
          : o.maxMinutes > 0 && performance.now() - sessionStart > o.maxMinutes * 60_000
          ? Effect.as(Effect.logInfo(`time budget of ${o.maxMinutes} min reached at step ${done}`), false)
          : Effect.succeed(true),
      step: (index, restore) =>
        restore(Effect.gen(function*() {
          const out = yield* Effect.suspend(() => {
            try {
              return Effect.succeed(o.step(index))
            } catch (e) {
              return heapOrDie(e)
            }
          })
          const r = out instanceof Promise
            ? yield* Effect.tryPromise({ try: () => out, catch: (e) => e }).pipe(Effect.catch(heapOrDie))
            : Effect.isEffect(out)
            ? yield* out.pipe(Effect.catchDefect(heapOrDie))
            : out
          if (!Number.isFinite(r.loss) || !Number.isFinite(r.gradNorm)) {
            return yield* new NonFiniteLoss({ iteration: index + 1, message: `loss ${r.loss}, gradient norm ${r.gradNorm}; nothing was applied` })
          }
          bar.tick(index + 1, r.show)
        })),
      due: (done) => done % o.checkpointEvery === 0,
      checkpoint: (done) => o.checkpoint(done, wall()),
      // Ctrl-C mid-run: keep what was learned since the last save.
      onInterrupt: Effect.sync(() => bar.end()),
      end: Effect.sync(() => bar.end())
    })
    return { steps, wallMs: wall() }
  })

export interface SupervisedOptions<E, R> {
  /** Total steps of the run. */
  readonly total: number
  /** Continue from the latest checkpoint (else start over: step 0, metrics.jsonl emptied). */
  readonly resume: boolean
  /** Stop (with a checkpoint) after this many minutes in this session; 0 = no limit. */
  readonly maxMinutes: number
  readonly checkpointEvery: number
  /**
   * One optimisation step, `index` 0-based, through the `Optimizer`; what it
   * measures besides goes into its metrics line.
   */
  readonly step: (index: number) => Effect.Effect<StepResult & Pick<StepRecord, "accuracy" | "logitScale">, E | WasmHeapExhausted | NonFiniteLoss, R>
}

/**
 * Run a supervised training on the services; returns the steps done and the
 * history (a resumed run's included).
 *
 * @since 0.7.0
 */
export const supervised = <E, R>(o: SupervisedOptions<E, R>) =>
  Effect.gen(function*() {
    const metrics = yield* StepMetrics
    const checkpointer = yield* Checkpointer
    const start = o.resume ? yield* checkpointer.resume : yield* Effect.as(metrics.reset([]), 0)
    if (o.resume && start === 0) yield* Effect.logInfo("no checkpoint to resume; starting fresh")
    yield* checkpointer.mark
    const sessionStart = performance.now()
    const heapOrDie = (e: unknown) => (e instanceof WasmHeapExhausted ? Effect.fail(e) : Effect.die(e))
    const steps = yield* Trainer.run({
      unit: "step",
      start,
      more: (done) =>
        done >= o.total
          ? Effect.succeed(false)
          : o.maxMinutes > 0 && performance.now() - sessionStart > o.maxMinutes * 60_000
          ? Effect.as(Effect.logInfo(`time budget of ${o.maxMinutes} min reached at step ${done}`), false)
          : Effect.succeed(true),
      // The step may be abandoned until its update is done; its metrics line and a due checkpoint complete with it.
      step: (index, restore) =>
        Effect.gen(function*() {
          const started = performance.now()
          const r = yield* restore(Effect.suspend(() => o.step(index)).pipe(Effect.catchDefect(heapOrDie)))
          if (!Number.isFinite(r.loss) || !Number.isFinite(r.gradNorm)) {
            return yield* new NonFiniteLoss({ iteration: index + 1, message: `loss ${r.loss}, gradient norm ${r.gradNorm}; nothing was applied` })
          }
          yield* metrics.log({
            iteration: index + 1,
            loss: r.loss,
            lr: r.lr,
            gradNorm: r.gradNorm,
            wallMs: performance.now() - started,
            liveTensors: tf.memory().numTensors,
            ...(r.accuracy === undefined ? {} : { accuracy: r.accuracy }),
            ...(r.logitScale === undefined ? {} : { logitScale: r.logitScale })
          })
        }),
      due: (done) => done % o.checkpointEvery === 0,
      checkpoint: checkpointer.save,
      afterStep: checkpointer.mark,
      // Ctrl-C mid-run: an abandoned step's draws are not saved; what was learned before it is.
      onInterrupt: Effect.andThen(metrics.end, checkpointer.rollback),
      end: metrics.end
    })
    return { steps, records: yield* metrics.records }
  })
