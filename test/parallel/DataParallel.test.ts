import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import * as Denoiser from "../../src/model/Denoiser.ts"
import { defaultConfig, type UNetConfig } from "../../src/model/UNetConfig.ts"
import * as DataParallel from "../../src/parallel/DataParallel.ts"
import { Backend } from "../../src/tensor/Backend.ts"
import { Rng } from "../../src/tensor/Random.ts"
import * as Scoped from "../../src/tensor/Scoped.ts"

const tiny: UNetConfig = {
  ...defaultConfig,
  architecture: { ...defaultConfig.architecture, imageSize: 8, baseChannels: 8, channelMult: [1, 2], attentionResolutions: [4], heads: 2, groups: 4, textDim: 16, textLayers: 1 }
}

const shard = (batch: number): DataParallel.Shard => {
  const rng = Rng.fromSeed(3)
  const per = 8 * 8 * 3
  return {
    batch,
    images: Float32Array.from(rng.normals(batch * per), (v) => Math.tanh(v)),
    prompts: Array.from({ length: batch }, (_, i) => (i % 3 === 0 ? "" : "a red circle")),
    t: Array.from({ length: batch }, () => rng.int(1000)),
    noise: rng.normals(batch * per)
  }
}

const maxAbsDiff = (a: tf.Tensor, b: tf.Tensor) => tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0])

describe("DataParallel", () => {
  it("splits a batch into ordered shards of near-equal size", () => {
    const parts = DataParallel.shards(shard(5), 2)
    assert.deepStrictEqual(parts.map((p) => p.batch), [3, 2])
    assert.deepStrictEqual([...parts[0].prompts, ...parts[1].prompts], shard(5).prompts)
    assert.strictEqual(parts[1].images[0], shard(5).images[3 * 192])
    assert.strictEqual(DataParallel.shards(shard(1), 4).length, 1)
  })

  it.effect("flatten and assignFlat round-trip the parameters", () =>
    Effect.gen(function*() {
      const a = Denoiser.init(tiny, 1)
      const b = Denoiser.init(tiny, 2)
      const before = tf.memory().numTensors
      DataParallel.assignFlat(b.params, yield* DataParallel.flatten(a.params))
      assert.strictEqual(tf.memory().numTensors, before)
      for (const k of Object.keys(a.params)) assert.strictEqual(maxAbsDiff(a.params[k], b.params[k]), 0, k)
      Denoiser.dispose(a)
      Denoiser.dispose(b)
    }).pipe(Effect.provide(Backend.layerCpu)))

  it.effect("a pool with a worker thread gives the whole batch's gradients and leaks nothing", () =>
    Effect.gen(function*() {
      const backend = yield* Backend
      const model = Denoiser.init(tiny, 4)
      const whole = shard(4)
      const ref = yield* DataParallel.lossAndGrads(model, whole)
      const pool = yield* DataParallel.make(model, 2, backend.name)
      const before = tf.memory().numTensors
      const got = yield* pool.lossAndGrads(model, whole)
      assert.strictEqual(pool.workers, 2)
      assert.approximately(got.loss, ref.loss, 1e-5 * ref.loss)
      assert.strictEqual(tf.memory().numTensors, before)
      // Flat, in the model's parameter order.
      const flat = got.grads
      if (!(flat instanceof Float32Array)) return assert.fail("a pool with workers returns one flat gradient")
      let worst = 0
      let o = 0
      for (const k of Object.keys(model.params)) {
        const want = ref.grads[k].dataSync() as Float32Array
        const scale = want.reduce((a, v) => Math.max(a, Math.abs(v)), 0) + 1e-8
        for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(flat[o + i] - want[i]) / scale)
        o += want.length
      }
      assert.strictEqual(o, flat.length)
      assert.isBelow(worst, 1e-4)
      // Without worker threads the gradients stay tensors (on a native backend's device).
      const single = yield* DataParallel.make(model, 1, backend.name)
      const one = yield* single.lossAndGrads(model, whole)
      assert.isFalse(one.grads instanceof Float32Array)
      assert.strictEqual(one.loss, ref.loss)
      Scoped.disposeAll(one.grads as Record<string, tf.Tensor>)
      // One shard alone differs from the whole batch, so the comparison above can fail.
      const half = yield* DataParallel.lossAndGrads(model, DataParallel.shards(whole, 2)[0])
      assert.notStrictEqual(half.loss, ref.loss)
      Scoped.disposeAll(ref.grads)
      Scoped.disposeAll(half.grads)
      Denoiser.dispose(model)
    }).pipe(Effect.provide(Backend.layerCpu)), 120_000)
})
