/**
 * Checkpoints of a sharpening run: the policy's weights, the optimiser's
 * moments and step, the run's RNG state, the reward normaliser's state (if
 * the pipeline has one), the iteration and the metrics so far. Written
 * atomically as a whole (src/io/CheckpointDir.ts); restoring them makes a
 * resumed run continue exactly as an uninterrupted one. The last `keep`
 * checkpoints stay on disk: a resume whose latest one was damaged after its
 * write (truncated file, bad state.json, LATEST naming nothing) falls back to
 * the newest good one, says so, and renames the damaged one `<dir>.damaged`.
 *
 * @since 0.1.0
 */
import { Context, Effect, FileSystem, Layer, Option, Path, Schema } from "effect"
import * as CheckpointDir from "../io/CheckpointDir.ts"
import * as Safetensors from "../io/Safetensors.ts"
import * as Denoiser from "../model/Denoiser.ts"
import { Ema } from "../optim/Ema.ts"
import { Optimizer } from "../optim/Optimizer.ts"
import { StatTracker, StatTrackerState } from "../reward/Combinators.ts"
import { RngState } from "../tensor/Random.ts"
import { RandomSource } from "../tensor/RandomSource.ts"
import { IterationRecord, Metrics } from "./Metrics.ts"

const State = Schema.Struct({
  format: Schema.Literal("diffusion-sharpening/checkpoint@1"),
  iteration: Schema.Int,
  rng: RngState,
  optimizerStep: Schema.Int,
  statTracker: Schema.optional(StatTrackerState),
  records: Schema.Array(IterationRecord)
})

export class Checkpointer extends Context.Service<Checkpointer, {
  readonly save: (iteration: number) => Effect.Effect<string, CheckpointDir.CheckpointError>
  /**
   * Restore the latest good checkpoint if any; the iteration to continue
   * from (0 if none: the metrics history is then emptied too).
   */
  readonly resume: Effect.Effect<number, CheckpointDir.CheckpointError>
  /** Remember the RNG (and tracker) state at an iteration boundary. */
  readonly mark: Effect.Effect<void>
  /**
   * Return the RNG (and tracker) to the last mark: an iteration abandoned
   * before its update leaves no trace in the next checkpoint.
   */
  readonly rollback: Effect.Effect<void>
}>()("sharpen/sharpen/Checkpointer") {
  static readonly layer = (runDir: string, keep = 2) =>
    Layer.effect(
      Checkpointer,
      Effect.gen(function*() {
        const { model } = yield* Denoiser.Denoiser
        const optimizer = yield* Optimizer
        const { rng } = yield* RandomSource
        const metrics = yield* Metrics
        const tracker = yield* Effect.serviceOption(StatTracker)
        // The weight average, when the run keeps one (ema > 0).
        const ema = Option.filter(yield* Effect.serviceOption(Ema), (e) => e.decay > 0)
        const context = yield* Effect.context<FileSystem.FileSystem | Path.Path>()
        const fail = (message: string) => new CheckpointDir.CheckpointError({ path: runDir, message })

        const save = Effect.fn("Checkpointer.save")(function*(iteration: number) {
          const opt = yield* optimizer.state()
          const policy = yield* Denoiser.toStored(model)
          const average = Option.isSome(ema) ? yield* ema.value.state() : undefined
          const state = {
            format: "diffusion-sharpening/checkpoint@1" as const,
            iteration,
            rng: rng.state(),
            optimizerStep: opt.step,
            statTracker: Option.isSome(tracker) ? yield* tracker.value.state : undefined,
            records: yield* metrics.records
          }
          return yield* CheckpointDir.save(runDir, iteration, {
            "policy.safetensors": Safetensors.encode(policy),
            "optimizer.safetensors": Safetensors.encode(opt.moments),
            "state.json": new TextEncoder().encode(JSON.stringify(Schema.encodeSync(State)(state))),
            ...(average !== undefined ? { "ema.safetensors": Safetensors.encode(average) } : {})
          }, keep).pipe(Effect.mapError((e) => (e instanceof CheckpointDir.CheckpointError ? e : fail(String(e)))), Effect.provide(context))
        })

        const restore = Effect.fn("Checkpointer.restore")(function*(ck: CheckpointDir.Reader) {
          const st = yield* ck.readState(State)
          yield* ck.restore("policy.safetensors", model.params)
          const bad = optimizer.restore({ step: st.optimizerStep, moments: yield* ck.readTensors("optimizer.safetensors") })
          if (bad !== undefined) {
            return yield* new CheckpointDir.CheckpointError({ path: `${ck.dir}/optimizer.safetensors`, message: `tensor "${bad}" missing or of the wrong size` })
          }
          if (Option.isSome(ema)) {
            const badEma = ema.value.restore(yield* ck.readTensors("ema.safetensors"))
            if (badEma !== undefined) {
              return yield* new CheckpointDir.CheckpointError({ path: `${ck.dir}/ema.safetensors`, message: `tensor "${badEma}" missing or of the wrong size` })
            }
          }
          rng.setState(st.rng)
          if (Option.isSome(tracker) && st.statTracker !== undefined) yield* tracker.value.restore(st.statTracker)
          yield* metrics.reset(st.records)
          return st.iteration
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
    )
}
