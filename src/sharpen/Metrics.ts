/**
 * Per-iteration metrics of a sharpening run: one JSON line per iteration in
 * `metrics.jsonl`, a progress bar (or plain lines off a terminal), and the
 * records in memory for plots and tests.
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
 * Training NFE of records: sampling (`nfe`) plus the objective's model
 * evaluations (`lossNfe`), what a `trainingNfe` budget counts.
 *
 * @since 0.4.0
 */
export const trainingNfe = (records: ReadonlyArray<Pick<IterationRecord, "nfe" | "lossNfe">>): number =>
  records.reduce((a, r) => a + r.nfe + (r.lossNfe ?? 0), 0)

export class Metrics extends Context.Service<Metrics, {
  readonly log: (r: IterationRecord) => Effect.Effect<void>
  readonly records: Effect.Effect<ReadonlyArray<IterationRecord>>
  /** Replace the history (when resuming from a checkpoint). */
  readonly reset: (records: ReadonlyArray<IterationRecord>) => Effect.Effect<void>
  readonly end: Effect.Effect<void>
}>()("sharpen/sharpen/Metrics") {
  /**
   * metrics.jsonl in `file` plus a progress bar over `total` iterations, or,
   * with a training-NFE `budget` (> 0), over the budget: a run under a budget
   * stops when it is spent, long before its iteration cap, so only the NFE
   * give a true fraction done and ETA.
   */
  static readonly jsonl = (file: string, total: number, label: string, budget = 0) =>
    Layer.effect(
      Metrics,
      Effect.gen(function*() {
        const fs = yield* FileSystem.FileSystem
        const context = yield* Effect.context<FileSystem.FileSystem | Path.Path>()
        const ref = yield* Ref.make<ReadonlyArray<IterationRecord>>([])
        let bar: Progress.Progress | undefined
        const line = (r: IterationRecord) => JSON.stringify(Schema.encodeSync(IterationRecord)(r)) + "\n"
        return Metrics.of({
          log: (r) =>
            Effect.gen(function*() {
              const before = yield* Ref.getAndUpdate(ref, (rs) => [...rs, r])
              yield* fs.writeFileString(file, line(r), { flag: "a" }).pipe(Effect.orDie)
              const show = { loss: r.loss, reward: r.rewardMean }
              if (budget > 0) {
                const spent = trainingNfe(before)
                bar ??= Progress.make({ label: `${label} training NFE`, total: budget, start: Math.min(spent, budget) })
                bar.tick(Math.min(spent + trainingNfe([r]), budget), { it: String(r.iteration), ...show })
              } else {
                bar ??= Progress.make({ label, total, start: r.iteration - 1 })
                bar.tick(r.iteration, show)
              }
            }),
          records: Ref.get(ref),
          reset: (rs) =>
            Effect.gen(function*() {
              yield* Ref.set(ref, rs)
              yield* AtomicFile.writeText(file, rs.map(line).join("")).pipe(Effect.orDie, Effect.provide(context))
            }),
          end: Effect.sync(() => bar?.end())
        })
      })
    )

  /** In memory only (tests). */
  static readonly memory = Layer.effect(
    Metrics,
    Effect.map(Ref.make<ReadonlyArray<IterationRecord>>([]), (ref) =>
      Metrics.of({
        log: (r) => Ref.update(ref, (rs) => [...rs, r]),
        records: Ref.get(ref),
        reset: (rs) => Ref.set(ref, rs),
        end: Effect.void
      }))
  )
  static readonly layerTest = Metrics.memory
}
