/**
 * Models saved during a training run at evenly spaced points of its
 * progress, for accuracy-against-training-NFE curves: snapshot k of K is
 * written once the run has done k / K of its training NFE budget (or of its
 * iterations, whichever comes first), as `<dir>/k<k>/` (a model directory
 * whose metadata holds `iteration` and `trainingNfe`). The last point is the
 * run's own final model, so k runs from 1 to K - 1.
 *
 * An `IterationSampler` (called after an iteration's update, when
 * `sampleEvery` divides it; set `sampleEvery` 1), so it never draws from the
 * run's RNG and never changes what is trained.
 *
 * @since 0.4.0
 */
import { Effect, FileSystem, Path, Schema } from "effect"
import * as Denoiser from "../model/Denoiser.ts"
import * as Weights from "../model/Weights.ts"
import { Ema } from "../optim/Ema.ts"
import { Metrics, trainingNfe } from "../optim/Metrics.ts"
import { IterationSampler } from "../sharpen/Sharpen.ts"
import type { SharpenConfig } from "../sharpen/SharpenConfig.ts"

export const Snapshot = Schema.Struct({ k: Schema.Int, iteration: Schema.Int, trainingNfe: Schema.Number })
export type Snapshot = typeof Snapshot.Type

/** How many of the K - 1 inner points a run has passed (progress in [0, 1] of budget or iterations). */
export const passed = (count: number, progress: number) => Math.min(count - 1, Math.floor(progress * count + 1e-9))

/** The run's progress: the larger of its NFE share (with a budget) and its iteration share. */
export const progress = (config: Pick<SharpenConfig, "iterations" | "trainingNfe">, iteration: number, nfe: number) =>
  Math.max(config.trainingNfe > 0 ? nfe / config.trainingNfe : 0, iteration / config.iterations)

/**
 * The sampler that writes the snapshots into `dir` (the weight average, as
 * the final model is saved). A point already on disk (a resumed run) is kept.
 *
 * @since 0.4.0
 */
export const sampler = (dir: string, count: number, config: SharpenConfig) =>
  Effect.gen(function*() {
    const metrics = yield* Metrics
    const ema = yield* Ema
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const context = yield* Effect.context<FileSystem.FileSystem | Path.Path>()
    return IterationSampler.of({
      sample: (iteration) =>
        Effect.gen(function*() {
          const nfe = trainingNfe(yield* metrics.records)
          for (let k = 1; k <= passed(count, progress(config, iteration, nfe)); k++) {
            const to = path.join(dir, `k${k}`)
            // Complete only once its weights are written (a kill may leave a config alone).
            if (yield* fs.exists(path.join(to, Weights.WEIGHTS_FILE))) continue
            yield* Denoiser.save(to, ema.model(), { iteration: String(iteration), trainingNfe: String(nfe), snapshot: `${k}/${count}` })
          }
        }).pipe(Effect.orDie, Effect.provide(context))
    })
  })

/**
 * The snapshots in `dir`, in order (reads each one's metadata).
 *
 * @since 0.4.0
 */
export const list = (dir: string, count: number) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const out: Array<Snapshot> = []
    for (let k = 1; k < count; k++) {
      const at = path.join(dir, `k${k}`)
      if (!(yield* fs.exists(path.join(at, Weights.WEIGHTS_FILE)))) continue
      const { metadata } = yield* Weights.load(at)
      out.push({ k, iteration: Number(metadata.iteration), trainingNfe: Number(metadata.trainingNfe) })
    }
    return out
  })
