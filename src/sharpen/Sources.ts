/**
 * Where a sharpening step's clean images and prompts come from.
 * - `ImageText` (SFT): rendered ShapeWorld-32 (image, prompt) pairs.
 * - `Prompts` + `OnlineSampler` (RLHF): prompts only; clean images are the
 *   policy's own samples (full DDIM chain with guidance, no gradient).
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Context, Effect, Layer, type Scope } from "effect"
import * as Dataset from "../data/Dataset.ts"
import { sample, type Split } from "../data/Prompt.ts"
import * as Denoiser from "../model/Denoiser.ts"
import { RandomSource } from "../tensor/RandomSource.ts"
import * as Scoped from "../tensor/Scoped.ts"
import * as GenerationJobs from "../trajectory/GenerationJobs.ts"
import type { GenerationError } from "../trajectory/GenerationJobs.ts"

export interface Batch {
  /** Clean samples in model space, [B, ...sampleShape] (ShapeWorld: [B, 32, 32, 3] in [-1, 1]). */
  readonly x0: tf.Tensor
  readonly prompts: ReadonlyArray<string>
  /** Model evaluations spent producing the batch. */
  readonly nfe: number
}

export class BatchSource extends Context.Service<BatchSource, {
  readonly name: string
  readonly next: (batchSize: number) => Effect.Effect<Batch, GenerationError, Scope.Scope>
}>()("sharpen/sharpen/BatchSource") {
  /** SFT data: renders of the generator's training split (its compositions only). */
  static readonly imageText = (split: Split = "train") =>
    Layer.effect(
      BatchSource,
      Effect.gen(function*() {
        const { rng } = yield* RandomSource
        return BatchSource.of({
          name: `shapeworld-${split}`,
          next: (batchSize) =>
            Scoped.acquireWith(() => {
              const b = Dataset.nextBatch(rng, { batchSize, split })
              return { x0: tf.tensor4d(b.images, [batchSize, 32, 32, 3]), prompts: b.prompts, nfe: 0 }
            }, (b) => b.x0.dispose())
        })
      })
    )

  /**
   * RLHF data: prompts of a split, and the policy's own samples for them
   * (DDIM `steps` with guidance `cfg`; the paper samples with DDIM 50, CFG 5).
   * With `prompts`, batches take those in order (cycling) instead of drawing
   * from the split, e.g. to measure training's stages on an eval set.
   */
  static readonly online = (options: {
    readonly split: Split
    readonly steps: number
    readonly cfg: number
    readonly prompts?: ReadonlyArray<string>
  }) =>
    Layer.effect(
      BatchSource,
      Effect.gen(function*() {
        const { rng } = yield* RandomSource
        const { model } = yield* Denoiser.Denoiser
        const pool = yield* GenerationJobs.current
        const shape = Denoiser.sampleShape(model.config)
        const fixed = options.prompts
        if (fixed !== undefined && fixed.length === 0) throw new RangeError("BatchSource.online: an empty prompt list")
        let cursor = 0
        return BatchSource.of({
          name: fixed === undefined ? `online-${options.split}` : "online-prompts",
          next: (batchSize) =>
            Effect.gen(function*() {
              // The draws here, in this order (prompts, then noise); the DDIM chains on the pool's threads.
              const prompts = fixed === undefined
                ? Array.from({ length: batchSize }, () => sample(rng, Dataset.sampleCategory(rng), options.split).text)
                : Array.from({ length: batchSize }, () => fixed[cursor++ % fixed.length])
              const xT = rng.normals(batchSize * shape.reduce((a, b) => a * b, 1))
              const x0 = yield* Scoped.acquireFrom(pool.sample(model, prompts, xT, options), (x) => x.dispose())
              return { x0, prompts, nfe: batchSize * options.steps * (options.cfg === 1 ? 1 : 2) }
            }).pipe(Effect.withSpan("BatchSource.online"))
        })
      })
    )
}
