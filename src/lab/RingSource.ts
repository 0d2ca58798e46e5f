/**
 * The lab's image-text data: points of the ring mixture (model units) with an
 * empty prompt each, for SFT sharpening and standard fine-tuning.
 *
 * @since 0.4.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Layer } from "effect"
import { BatchSource } from "../sharpen/Sources.ts"
import { RandomSource } from "../tensor/RandomSource.ts"
import * as Scoped from "../tensor/Scoped.ts"
import * as Ring from "./Ring.ts"

export const layer = Layer.effect(
  BatchSource,
  Effect.gen(function*() {
    const { rng } = yield* RandomSource
    return BatchSource.of({
      name: "ring",
      next: (batchSize) =>
        Scoped.acquireWith(
          () => ({ x0: tf.tensor2d(Ring.sampleModel(rng, batchSize), [batchSize, 2]), prompts: new Array<string>(batchSize).fill(""), nfe: 0 }),
          (b) => b.x0.dispose()
        )
    })
  })
)
