/**
 * Checkpoints of a training run: the trained weights, the optimiser's
 * moments and step, the run's RNG state, the weight average (if the run
 * keeps one), the reward normaliser's state (if the pipeline has one), the
 * step and the metrics so far. Written atomically as a whole
 * (src/io/CheckpointDir.ts); restoring them makes a resumed run continue
 * exactly as an uninterrupted one. The last `keep` checkpoints stay on disk:
 * a resume whose latest one was damaged after its write (truncated file, bad
 * state.json, LATEST naming nothing) falls back to the newest good one, says
 * so, and renames the damaged one `<dir>.damaged`.
 *
 * Sharpening (`Checkpointer.layer`, its `Metrics`) and the supervised
 * trainings (`Checkpointer.steps`, their `StepMetrics`: pretraining, the
 * clip reward) write the same files:
 *
 *   policy.safetensors     the weights the Optimizer updates
 *   optimizer.safetensors  AdamW's moments (`m.<name>`, `v.<name>`)
 *   ema.safetensors        the weight average, when the run keeps one
 *   state.json             format, iteration, rng, optimizerStep, statTracker?, records, run?
 *
 * `run` is what defines a supervised run (its options); a checkpoint whose
 * `run` the layer's `check` refuses stops the resume at once (it is of
 * another run, not damaged). A supervised run directory written before
 * this layout (params.safetensors, adam.safetensors, state.json with `step`,
 * `adamStep` and `losses`) still resumes: its history has the losses
 * alone, see {@link legacyRecords}.
 *
 * @since 0.1.0
 */
import { Context, Effect, FileSystem, Layer, Option, Path, Schema } from "effect"
import * as CheckpointDir from "../io/CheckpointDir.ts"
import * as ModelDir from "../io/ModelDir.ts"
import * as Safetensors from "../io/Safetensors.ts"
import { StatTracker, StatTrackerState } from "../reward/Combinators.ts"
import { RngState } from "../tensor/Random.ts"
import { RandomSource } from "../tensor/RandomSource.ts"
import { Ema } from "./Ema.ts"
import { IterationRecord, type Log, Metrics, StepMetrics, StepRecord } from "./Metrics.ts"
import { learningRate, Optimizer, type OptimizerConfig } from "./Optimizer.ts"

const FORMAT = "diffusion-sharpening/checkpoint@1"

const stateOf = <A, I>(record: Schema.Codec<A, I>) =>
  Schema.Struct({
    format: Schema.Literal(FORMAT),
    iteration: Schema.Int,
    rng: RngState,
    optimizerStep: Schema.Int,
    statTracker: Schema.optional(StatTrackerState),
    records: Schema.Array(record),
    run: Schema.optional(Schema.Unknown)
  })

/** state.json of a supervised training before it shared this layout. */
const LegacyState = Schema.Struct({
  step: Schema.Int,
  rng: RngState,
  adamStep: Schema.Int,
  wallMs: Schema.Number,
  losses: Schema.Array(Schema.Number),
  accuracies: Schema.optional(Schema.Array(Schema.Number)),
  options: Schema.Unknown
})
type LegacyState = typeof LegacyState.Type

/**
 * The history of an old supervised checkpoint as step records: its losses,
 * the learning rate of each step, its wall time spread evenly, and the
 * accuracies it measured (every 10th step from the first). The gradient
 * norms and live tensors were not kept (0).
 *
 * @since 0.7.0
 */
export const legacyRecords = (st: LegacyState, lr: (step: number) => number): ReadonlyArray<StepRecord> =>
  st.losses.map((loss, i) => {
    const accuracy = i % 10 === 0 ? st.accuracies?.[i / 10] : undefined
    return {
      iteration: i + 1,
      loss,
      lr: lr(i),
      gradNorm: 0,
      wallMs: st.wallMs / Math.max(1, st.losses.length),
      liveTensors: 0,
      ...(accuracy === undefined ? {} : { accuracy })
    }
  })

export class Checkpointer extends Context.Service<Checkpointer, {
  readonly save: (iteration: number) => Effect.Effect<string, CheckpointDir.CheckpointError>
  /**
   * Restore the latest good checkpoint if any; the iteration to continue
   * from (0 if none: the metrics history is then emptied too). A checkpoint
   * of another run (the layer's `check`) fails with `ModelLoadError`.
   */
  readonly resume: Effect.Effect<number, CheckpointDir.CheckpointError | ModelDir.ModelLoadError>
  /** Remember the RNG (and tracker) state at an iteration boundary. */
  readonly mark: Effect.Effect<void>
  /**
   * Return the RNG (and tracker) to the last mark: an iteration abandoned
   * before its update leaves no trace in the next checkpoint.
   */
  readonly rollback: Effect.Effect<void>
}>()("sharpen/optim/Checkpointer") {
  /** A sharpening run's checkpoints in `runDir` (its `Metrics` history). */
  static readonly layer = (runDir: string, keep = 2) =>
    Layer.effect(Checkpointer, Effect.flatMap(Effect.service(Metrics), (metrics) => make({ runDir, keep, record: IterationRecord, metrics })))

  /**
   * A supervised training's checkpoints in `runDir` (its `StepMetrics`
   * history). `run` is saved with each; on resume, `check` of the saved
   * one returns why it is of another run, if it is. `legacy` (the
   * optimiser's schedule) lets an old supervised checkpoint resume.
   */
  static readonly steps = (runDir: string, o: {
    readonly keep?: number
    readonly run?: unknown
    readonly check?: (saved: unknown) => string | undefined
    readonly legacy?: Pick<OptimizerConfig, "lr" | "warmupSteps" | "schedule" | "totalSteps" | "minLr">
  } = {}) =>
    Layer.effect(
      Checkpointer,
      Effect.flatMap(Effect.service(StepMetrics), (metrics) =>
        make({
          runDir,
          keep: o.keep ?? 1,
          record: StepRecord,
          metrics,
          run: o.run,
          check: o.check,
          legacy: o.legacy === undefined ? undefined : (st) => legacyRecords(st, (i) => learningRate(o.legacy!, i))
        }))
    )
}

const make = <A, I>(o: {
  readonly runDir: string
  readonly keep: number
  readonly record: Schema.Codec<A, I>
  readonly metrics: Log<A>
  readonly run?: unknown
  readonly check?: (saved: unknown) => string | undefined
  readonly legacy?: (st: LegacyState) => ReadonlyArray<A>
}) =>
  Effect.gen(function*() {
    const { runDir, keep, metrics } = o
    const optimizer = yield* Optimizer
    const { rng } = yield* RandomSource
    const tracker = yield* Effect.serviceOption(StatTracker)
    // The weight average, when the run keeps one (ema > 0).
    const ema = Option.filter(yield* Effect.serviceOption(Ema), (e) => e.decay > 0)
    const context = yield* Effect.context<FileSystem.FileSystem | Path.Path>()
    const State = stateOf(o.record)
    const encodeState = Schema.encodeSync(State)
    const fail = (message: string) => new CheckpointDir.CheckpointError({ path: runDir, message })
    const misfit = (file: string, bad: string) => new CheckpointDir.CheckpointError({ path: file, message: `tensor "${bad}" missing or of the wrong size` })

    const save = Effect.fn("Checkpointer.save")(function*(iteration: number) {
      const opt = yield* optimizer.state()
      const policy = yield* ModelDir.toStored(optimizer.params)
      const average = Option.isSome(ema) ? yield* ema.value.state() : undefined
      const state = {
        format: FORMAT,
        iteration,
        rng: rng.state(),
        optimizerStep: opt.step,
        statTracker: Option.isSome(tracker) ? yield* tracker.value.state : undefined,
        records: yield* metrics.records,
        run: o.run
      } as const
      return yield* CheckpointDir.save(runDir, iteration, {
        "policy.safetensors": Safetensors.encode(policy),
        "optimizer.safetensors": Safetensors.encode(opt.moments),
        "state.json": new TextEncoder().encode(JSON.stringify(encodeState(state))),
        ...(average !== undefined ? { "ema.safetensors": Safetensors.encode(average) } : {})
      }, keep).pipe(Effect.mapError((e) => (e instanceof CheckpointDir.CheckpointError ? e : fail(String(e)))), Effect.provide(context))
    })

    const refused = (ck: CheckpointDir.Reader, saved: unknown) => {
      const why = o.check?.(saved)
      return why === undefined ? Effect.void : Effect.fail(new ModelDir.ModelLoadError({ file: ck.dir, message: why }))
    }

    const restoreEma = (ck: CheckpointDir.Reader) =>
      Effect.gen(function*() {
        if (Option.isNone(ema)) return
        const bad = ema.value.restore(yield* ck.readTensors("ema.safetensors"))
        if (bad !== undefined) return yield* misfit(`${ck.dir}/ema.safetensors`, bad)
      })

    const restore = Effect.fn("Checkpointer.restore")(function*(ck: CheckpointDir.Reader) {
      if (o.legacy !== undefined) {
        const old = yield* Effect.option(ck.readState(LegacyState))
        if (Option.isSome(old)) return yield* restoreLegacy(ck, old.value, o.legacy)
      }
      const st = yield* ck.readState(State)
      yield* refused(ck, st.run)
      yield* ck.restore("policy.safetensors", optimizer.params)
      const bad = optimizer.restore({ step: st.optimizerStep, moments: yield* ck.readTensors("optimizer.safetensors") })
      if (bad !== undefined) return yield* misfit(`${ck.dir}/optimizer.safetensors`, bad)
      yield* restoreEma(ck)
      rng.setState(st.rng)
      if (Option.isSome(tracker) && st.statTracker !== undefined) yield* tracker.value.restore(st.statTracker)
      yield* metrics.reset(st.records)
      return st.iteration
    })

    // The supervised layout before this one (params, adam, ema files; losses in state.json).
    const restoreLegacy = (ck: CheckpointDir.Reader, st: LegacyState, records: (st: LegacyState) => ReadonlyArray<A>) =>
      Effect.gen(function*() {
        yield* refused(ck, st.options)
        yield* ck.restore("params.safetensors", optimizer.params)
        const bad = optimizer.restore({ step: st.adamStep, moments: yield* ck.readTensors("adam.safetensors") })
        if (bad !== undefined) return yield* misfit(`${ck.dir}/adam.safetensors`, bad)
        yield* restoreEma(ck)
        rng.setState(st.rng)
        yield* metrics.reset(records(st))
        return st.step
      })

    const resume = Effect.gen(function*() {
      const restored = yield* CheckpointDir.resume(runDir, restore)
      if (Option.isNone(restored)) {
        // A run killed before its first checkpoint may have left metrics lines.
        yield* metrics.reset([])
        return 0
      }
      yield* Effect.logInfo(`resumed from ${restored.value.dir} at iteration ${restored.value.value}`)
      return restored.value.value
    }).pipe(Effect.provide(context))

    let marked: { rng: RngState; tracker: StatTrackerState | undefined } | undefined
    const mark = Effect.gen(function*() {
      marked = { rng: rng.state(), tracker: Option.isSome(tracker) ? yield* tracker.value.state : undefined }
    })
    const rollback = Effect.gen(function*() {
      if (marked === undefined) return
      rng.setState(marked.rng)
      if (Option.isSome(tracker) && marked.tracker !== undefined) yield* tracker.value.restore(marked.tracker)
    })

    return Checkpointer.of({ save, resume, mark, rollback })
  })
