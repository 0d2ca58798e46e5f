/**
 * Checkpoints of a sharpening run: the policy's weights, the optimiser's
 * moments and step, the run's RNG state, the reward normaliser's state (if
 * the pipeline has one), the iteration and the metrics so far. Written
 * atomically as a whole (src/io/CheckpointDir.ts); restoring them makes a
 * resumed run continue exactly as an uninterrupted one.
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
  /** Restore the latest checkpoint if any; the iteration to continue from (0 if none). */
  readonly resume: Effect.Effect<number, CheckpointDir.CheckpointError>
}>()("sharpen/pipeline/Checkpointer") {
  static readonly layer = (runDir: string) =>
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
          const opt = optimizer.state()
          const state = {
            format: "diffusion-sharpening/checkpoint@1" as const,
            iteration,
            rng: rng.state(),
            optimizerStep: opt.step,
            statTracker: Option.isSome(tracker) ? yield* tracker.value.state : undefined,
            records: yield* metrics.records
          }
          return yield* CheckpointDir.save(runDir, iteration, {
            "policy.safetensors": Safetensors.encode(Denoiser.toStored(model)),
            "optimizer.safetensors": Safetensors.encode(opt.moments),
            "state.json": new TextEncoder().encode(JSON.stringify(Schema.encodeSync(State)(state))),
            ...(Option.isSome(ema) ? { "ema.safetensors": Safetensors.encode(ema.value.state()) } : {})
          }).pipe(Effect.mapError((e) => (e instanceof CheckpointDir.CheckpointError ? e : fail(String(e)))), Effect.provide(context))
        })

        const resume = Effect.gen(function*() {
          const latest = yield* CheckpointDir.latest(runDir).pipe(Effect.mapError((e) => (e instanceof CheckpointDir.CheckpointError ? e : fail(String(e)))))
          if (Option.isNone(latest)) return 0
          const ck = latest.value
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
          yield* Effect.logInfo(`resumed from ${ck.dir} at iteration ${st.iteration}`)
          return st.iteration
        }).pipe(Effect.provide(context))

        return Checkpointer.of({ save, resume })
      })
    )
}
