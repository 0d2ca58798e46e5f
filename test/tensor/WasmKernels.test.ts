import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import * as Denoiser from "../../src/model/Denoiser.ts"
import * as DataParallel from "../../src/parallel/DataParallel.ts"
import { initialise } from "../../src/tensor/Backend.ts"
import * as Scoped from "../../src/tensor/Scoped.ts"
import * as WasmKernels from "../../src/tensor/WasmKernels.ts"
import { Rng } from "../../src/tensor/Random.ts"
import { tinyConfig } from "../helpers.ts"

describe("WasmKernels", () => {
  const onWasm = Effect.promise(() => initialise("wasm")).pipe(Effect.map((r) => assert.strictEqual((r as { name: string }).name, "wasm")))

  it.effect("Identity shares the data on wasm, and a clone outlives its original", () =>
    Effect.gen(function*() {
      yield* onWasm
      const x = tf.tensor1d([1, 2, 3])
      const y = tf.clone(x)
      assert.strictEqual(y.dataId, x.dataId) // no copy
      x.dispose()
      assert.deepStrictEqual(Array.from(y.dataSync()), [1, 2, 3])
      y.dispose()
      // Switched off, wasm's own Identity copies.
      WasmKernels.speedups.shareIdentity = false
      const a = tf.tensor1d([4])
      const b = tf.clone(a)
      WasmKernels.speedups.shareIdentity = true
      assert.notStrictEqual(b.dataId, a.dataId)
      tf.dispose([a, b])
    }))

  it.effect("a UNet's loss and gradients are the same with shared or copied saved tensors, and nothing leaks", () =>
    Effect.gen(function*() {
      yield* onWasm
      const model = Denoiser.init(tinyConfig, 3)
      const a = tinyConfig.architecture
      const rng = Rng.fromSeed(5)
      const n = 2 * a.imageSize * a.imageSize * a.channels
      const shard: DataParallel.Shard = { batch: 2, images: rng.normals(n), prompts: ["a red square", ""], t: [10, 700], noise: rng.normals(n) }
      const before = tf.memory()
      const shared = yield* DataParallel.shardGrads(model, shard)
      WasmKernels.speedups.shareIdentity = false
      const copied = yield* DataParallel.shardGrads(model, shard)
      WasmKernels.speedups.shareIdentity = true
      assert.strictEqual(shared.loss, copied.loss)
      assert.deepStrictEqual(shared.grads, copied.grads)
      assert.isAbove(shared.grads.reduce((s, g) => s + Math.abs(g), 0), 0)
      assert.strictEqual(tf.memory().numTensors, before.numTensors)
      assert.strictEqual(tf.memory().numBytes, before.numBytes)
      Scoped.disposeAll(model.params)
    }))
})
