/**
 * Per-step metrics of a training run: one JSON line per step in
 * `metrics.jsonl`, a progress bar (or plain lines off a terminal), and the
 * records in memory for plots, checkpoints and tests.
 *
 * One implementation over two record types: `Metrics` holds a sharpening
 * run's iterations (`IterationRecord`: rewards, NFE), `StepMetrics` a
 * supervised training's steps (`StepRecord`: pretraining, the clip reward).
 * The Checkpointer keeps either history in its checkpoints and restores it
 * (rewriting `metrics.jsonl`) on resume.
 *
 * @since 0.1.0
 */
import { Context, Effect, FileSystem, Layer, Path, Ref, Schema } from "effect"
import * as Progress from "../io/Progress.ts"
import * as AtomicFile from "../io/AtomicFile.ts"

export const IterationRecord = Schema.Struct({
  iteration: Schema.Int,
  loss: Schema.Number,
  rewardMean: Schema.Number,
  rewardStd: Schema.Number,
  rewardBest: Schema.Number,
  rewardWorst: Schema.Number,
  lr: Schema.Number,
  gradNorm: Schema.Number,
  wallMs: Schema.Number,
  liveTensors: Schema.Int,
  nfe: Schema.Int,
  rewardCalls: Schema.Int,
  rewardMargin: Schema.optional(Schema.Number),
  /** Model evaluations of the objective (gradient and reference rows); `nfe` counts sampling only. */
  lossNfe: Schema.optional(Schema.Int),
  /** On webgpu: bytes of live tensors on the GPU at the iteration's end, and of the buffers allocated so far (the peak). */
  gpuBytes: Schema.optional(Schema.Int),
  gpuAllocatedBytes: Schema.optional(Schema.Int)
})
export type IterationRecord = typeof IterationRecord.Type

/**
 * One step of a supervised training (pretraining, the clip reward): the
 * fields it shares with {@link IterationRecord}, and what the clip reward
 * measures besides its loss.
 *
 * @since 0.7.0
 */
export const StepRecord = Schema.Struct({
  iteration: Schema.Int,
  loss: Schema.Number,
  lr: Schema.Number,
  gradNorm: Schema.Number,
  wallMs: Schema.Number,
  liveTensors: Schema.Int,
  /** The clip reward: in-batch retrieval accuracy before the update (every 10th step). */
  accuracy: Schema.optional(Schema.Number),
  /** The clip reward: its learned logit scale after the update. */
  logitScale: Schema.optional(Schema.Number)
})
export type StepRecord = typeof StepRecord.Type

/**
 * Training NFE of records: sampling (`nfe`) plus the objective's model
 * evaluations (`lossNfe`), what a `trainingNfe` budget counts.
 *
 * @since 0.4.0
 */
export const trainingNfe = (records: ReadonlyArray<Pick<IterationRecord, "nfe" | "lossNfe">>): number =>
  records.reduce((a, r) => a + r.nfe + (r.lossNfe ?? 0), 0)

/**
 * What a metrics service does, whatever its records.
 *
 * @since 0.7.0
 */
export interface Log<A> {
  readonly log: (r: A) => Effect.Effect<void>
  readonly records: Effect.Effect<ReadonlyArray<A>>
  /** Replace the history (when resuming from a checkpoint, or starting over). */
  readonly reset: (records: ReadonlyArray<A>) => Effect.Effect<void>
  readonly end: Effect.Effect<void>
}

/** What the progress bar shows after a record: the step it counts to, and the numbers beside it. */
type Show<A> = (before: ReadonlyArray<A>, r: A) => { readonly bar: () => Progress.Progress; readonly done: number; readonly values: Readonly<Record<string, number | string>> }

/** metrics.jsonl in `file` (one line per record, appended; rewritten on reset) and a progress bar. */
const jsonlOf = <A, I>(schema: Schema.Codec<A, I>, file: string, show: Show<A>) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const context = yield* Effect.context<FileSystem.FileSystem | Path.Path>()
    const ref = yield* Ref.make<ReadonlyArray<A>>([])
    let bar: Progress.Progress | undefined
    const encode = Schema.encodeSync(schema)
    const line = (r: A) => JSON.stringify(encode(r)) + "\n"
    return {
      log: (r: A) =>
        Effect.gen(function*() {
          const before = yield* Ref.getAndUpdate(ref, (rs) => [...rs, r])
          yield* fs.writeFileString(file, line(r), { flag: "a" }).pipe(Effect.orDie)
          const s = show(before, r)
          bar ??= s.bar()
          bar.tick(s.done, s.values)
        }),
      records: Ref.get(ref),
      reset: (rs: ReadonlyArray<A>) =>
        Effect.gen(function*() {
          yield* Ref.set(ref, rs)
          yield* AtomicFile.writeText(file, rs.map(line).join("")).pipe(Effect.orDie, Effect.provide(context))
        }),
      end: Effect.sync(() => bar?.end())
    } satisfies Log<A>
  })

const memoryOf = <A>() =>
  Effect.map(Ref.make<ReadonlyArray<A>>([]), (ref): Log<A> => ({
    log: (r) => Ref.update(ref, (rs) => [...rs, r]),
    records: Ref.get(ref),
    reset: (rs) => Ref.set(ref, rs),
    end: Effect.void
  }))

const mean = (xs: ReadonlyArray<number>) => xs.reduce((a, b) => a + b, 0) / xs.length

export class Metrics extends Context.Service<Metrics, Log<IterationRecord>>()("sharpen/optim/Metrics") {
  /**
   * metrics.jsonl in `file` plus a progress bar over `total` iterations, or,
   * with a training-NFE `budget` (> 0), over the budget: a run under a budget
   * stops when it is spent, long before its iteration cap, so only the NFE
   * give a true fraction done and ETA.
   */
  static readonly jsonl = (file: string, total: number, label: string, budget = 0) =>
    Layer.effect(
      Metrics,
      Effect.map(
        jsonlOf(IterationRecord, file, (before, r) => {
          const values = { loss: r.loss, reward: r.rewardMean }
          if (budget > 0) {
            const spent = trainingNfe(before)
            return {
              bar: () => Progress.make({ label: `${label} training NFE`, total: budget, start: Math.min(spent, budget) }),
              done: Math.min(spent + trainingNfe([r]), budget),
              values: { it: String(r.iteration), ...values }
            }
          }
          return { bar: () => Progress.make({ label, total, start: r.iteration - 1 }), done: r.iteration, values }
        }),
        Metrics.of
      )
    )

  /** In memory only (tests). */
  static readonly memory = Layer.effect(Metrics, Effect.map(memoryOf<IterationRecord>(), Metrics.of))
  static readonly layerTest = Metrics.memory
}

export class StepMetrics extends Context.Service<StepMetrics, Log<StepRecord>>()("sharpen/optim/StepMetrics") {
  /**
   * metrics.jsonl in `file` plus a progress bar over `total` steps showing
   * the mean loss of the last 50 steps, the learning rate and, when
   * recorded, the mean accuracy of the last 10 measured and the logit scale.
   */
  static readonly jsonl = (file: string, total: number, label: string) =>
    Layer.effect(
      StepMetrics,
      Effect.map(
        jsonlOf(StepRecord, file, (before, r) => {
          const all = [...before.slice(-49), r]
          const accuracies = [...before, r].flatMap((x) => (x.accuracy === undefined ? [] : [x.accuracy])).slice(-10)
          return {
            bar: () => Progress.make({ label, total, start: r.iteration - 1 }),
            done: r.iteration,
            values: {
              loss: mean(all.map((x) => x.loss)),
              ...(accuracies.length > 0 ? { acc: mean(accuracies) } : {}),
              ...(r.logitScale !== undefined ? { scale: r.logitScale } : {}),
              lr: r.lr
            }
          }
        }),
        StepMetrics.of
      )
    )

  /** In memory only (tests). */
  static readonly memory = Layer.effect(StepMetrics, Effect.map(memoryOf<StepRecord>(), StepMetrics.of))
}
