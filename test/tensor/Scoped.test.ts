import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Exit, Fiber } from "effect"
import { beforeAll } from "vitest"
import * as Dataset from "../../src/data/Dataset.ts"
import * as Schedule from "../../src/diffusion/Schedule.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import * as AdamW from "../../src/optim/AdamW.ts"
import { trainStep, updateEma } from "../../src/train/Pretrain.ts"
import { Rng } from "../../src/tensor/Random.ts"
import * as Scoped from "../../src/tensor/Scoped.ts"
import { tinyConfig, useCpu } from "../helpers.ts"

describe("Scoped tensors", () => {
  beforeAll(useCpu)

  it.effect("disposes on scope close, on failure and on interruption", () =>
    Effect.gen(function*() {
      const start = tf.memory().numTensors
      yield* Effect.scoped(Scoped.acquire(() => ({ a: tf.ones([2]), b: [tf.zeros([3])] })))
      assert.strictEqual(tf.memory().numTensors, start)

      const failed = yield* Effect.exit(Effect.scoped(Effect.flatMap(Scoped.acquire(() => tf.ones([4])), () => Effect.fail("boom"))))
      assert.isTrue(Exit.isFailure(failed))
      assert.strictEqual(tf.memory().numTensors, start)

      const fiber = yield* Effect.forkChild(Effect.scoped(Effect.flatMap(Scoped.acquire(() => tf.ones([5])), () => Effect.never)))
      yield* Effect.yieldNow
      assert.strictEqual(tf.memory().numTensors, start + 1)
      yield* Fiber.interrupt(fiber)
      assert.strictEqual(tf.memory().numTensors, start)
    }))

  it.effect("a few training iterations return the tensor count to its start", () =>
    Effect.gen(function*() {
      const start = tf.memory().numTensors
      const schedule = Schedule.make(tinyConfig.schedule)
      const counts: Array<number> = []
      yield* Effect.scoped(Effect.gen(function*() {
        const model = yield* Scoped.acquireWith(() => Denoiser.init(tinyConfig, 0), Denoiser.dispose)
        const ema = yield* Scoped.acquireWith(() => Denoiser.clone(model), Denoiser.dispose)
        const adam = yield* Scoped.acquireWith(() => AdamW.init(model.params), AdamW.dispose)
        const rng = Rng.fromSeed(1)
        for (let i = 0; i < 3; i++) {
          const batch = Dataset.nextBatch(rng, { batchSize: 2, split: "train" })
          // The tiny model works on 8x8 crops of the renders.
          const crop = { ...batch, images: cropImages(batch.images, 2, 8) }
          yield* trainStep(model, schedule, adam, crop, rng, 1e-3, AdamW.defaults)
          updateEma(ema.params, model.params, 0.9)
          counts.push(tf.memory().numTensors)
        }
      }))
      assert.strictEqual(counts[0], counts[1])
      assert.strictEqual(counts[1], counts[2])
      assert.strictEqual(tf.memory().numTensors, start)
    }))
})

const cropImages = (images: Float32Array, batch: number, size: number) => {
  const out = new Float32Array(batch * size * size * 3)
  for (let b = 0; b < batch; b++) {
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        for (let c = 0; c < 3; c++) out[((b * size + y) * size + x) * 3 + c] = images[((b * 32 + y + 12) * 32 + x + 12) * 3 + c]
      }
    }
  }
  return out
}
