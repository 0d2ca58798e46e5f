import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import { afterAll, beforeAll } from "vitest"
import { parseOrThrow } from "../../src/data/Prompt.ts"
import * as BestOfN from "../../src/eval/BestOfN.ts"
import * as Generate from "../../src/trajectory/Generate.ts"
import * as InferenceMethod from "../../src/eval/InferenceMethod.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import { Reward } from "../../src/reward/Reward.ts"
import { useWasm } from "../helpers.ts"
import { tiny32 } from "../sharpen-helpers.ts"

/** Mean pixel value: a reward that prefers brighter images. */
const brightness = (image: Float32Array) => image.reduce((s, v) => s + v, 0) / image.length
const bright = Reward.fromFunction(brightness, { name: "brightness", range: [0, 1] })

const prompts = ["a red square", "two blue circles", "a green triangle"]
const sampler: Generate.SamplerOptions = { steps: 3, cfg: 2, eta: 0, seed: 5, batchSize: 4 }

/** A tiny 32x32 model with perturbed weights (so every layer, and the prompt, matters). */
const tinyModel = (seed: number) => {
  const m = Denoiser.init(tiny32, seed, false)
  tf.tidy(() => {
    for (const v of Object.values(m.params)) v.assign(tf.add(v, tf.randomNormal(v.shape, 0, 0.05, "float32", seed + 1)))
  })
  return m
}

const same = (a: Float32Array, b: Float32Array) => a.length === b.length && a.every((v, k) => v === b[k])

describe("BestOfN", () => {
  let model: Denoiser.Model
  beforeAll(async () => {
    await useWasm()
    model = tinyModel(3)
  })
  afterAll(() => Denoiser.dispose(model))

  it.effect("keeps the argmax candidate: its reward >= every candidate's, its image is that candidate's", () =>
    Effect.gen(function*() {
      const before = tf.memory().numTensors
      const n = 4
      const r = yield* BestOfN.bestOfN(model, prompts, { sampler, n })
      assert.strictEqual(tf.memory().numTensors, before)
      // The candidates, sampled independently (other batch composition) and scored by the test.
      const candidates = yield* BestOfN.generateCandidates(model, prompts, { sampler: { ...sampler, batchSize: 3 }, n })
      assert.strictEqual(r.images.length, prompts.length)
      prompts.forEach((_, i) => {
        const scores = candidates[i].map(brightness)
        assert.isFalse(same(candidates[i][0], candidates[i][1]), "candidates differ")
        assert.strictEqual(r.chosen[i], InferenceMethod.argmax(scores), `prompt ${i}`)
        assert.isTrue(same(r.images[i], candidates[i][r.chosen[i]]), `image ${i} is its chosen candidate`)
        for (let c = 0; c < n; c++) {
          assert.isAtLeast(r.rewards![i], scores[c])
          assert.approximately(r.candidateRewards![i][c], scores[c], 1e-6)
        }
        assert.strictEqual(r.rewards![i], Math.max(...r.candidateRewards![i]))
      })
      // Not trivially candidate 0 everywhere.
      assert.isTrue(r.chosen.some((c) => c !== 0), `chosen ${r.chosen}`)
    }).pipe(Effect.provide(bright)))

  it.effect("N = 1 reproduces the plain sampler exactly (eta 0 and eta > 0) and never calls the reward", () =>
    Effect.gen(function*() {
      for (const eta of [0, 0.7]) {
        const o = { ...sampler, eta }
        const plain = yield* Generate.generate(model, prompts, o)
        const r = yield* BestOfN.bestOfN(model, prompts, { sampler: o, n: 1 })
        prompts.forEach((_, i) => assert.isTrue(same(r.images[i], plain[i]), `eta ${eta}, image ${i}`))
        assert.deepStrictEqual(r.chosen, [0, 0, 0])
        assert.strictEqual(r.rewardCalls, 0)
        assert.strictEqual(r.rewardEvals, 0)
        assert.isUndefined(r.rewards)
        // ... and candidate 0 of a larger N is the plain image too.
        const c = yield* BestOfN.generateCandidates(model, prompts, { sampler: o, n: 2 })
        prompts.forEach((_, i) => assert.isTrue(same(c[i][0], plain[i])))
      }
    }).pipe(Effect.provide(Reward.scripted({ failures: 1000 }))))

  it.effect("counts NFE and reward calls as the formulas say", () =>
    Effect.gen(function*() {
      for (const [cfg, n] of [[2, 3], [1, 2]] as const) {
        const o = { ...sampler, cfg, steps: 2 }
        let rows = 0
        let calls = 0
        const denoise: InferenceMethod.GuidedDenoiser = (x, t, p) => {
          rows += x.shape[0]
          calls++
          return Denoiser.guidedEps(model, x, t, p, cfg)
        }
        const r = yield* BestOfN.bestOfN(model, prompts, { sampler: o, n, denoise })
        const perImage = n * o.steps * (cfg === 1 ? 1 : 2)
        assert.strictEqual(BestOfN.nfePerImage({ ...o, n }), perImage)
        assert.strictEqual(r.nfePerImage, perImage)
        assert.strictEqual((rows * (cfg === 1 ? 1 : 2)) / prompts.length, perImage)
        assert.strictEqual(r.nfe, rows * (cfg === 1 ? 1 : 2))
        // batches of 4 candidate rows, one model call per step per batch
        const batches = Math.ceil((n * prompts.length) / o.batchSize)
        assert.strictEqual(calls, batches * o.steps)
        assert.strictEqual(r.rewardCalls, batches)
        assert.strictEqual(r.rewardEvals, n * prompts.length)
        assert.strictEqual(r.rewardEvalsPerImage, n)
        assert.strictEqual(BestOfN.method({ sampler: o, n }).nfePerImage, perImage)
      }
    }).pipe(Effect.provide(bright)))

  it.effect("nested: best-of-n from one run at N equals a separate best-of-n run", () =>
    Effect.gen(function*() {
      const big = yield* BestOfN.bestOfN(model, prompts, { sampler, n: 4, nested: [2, 1] })
      assert.deepStrictEqual(big.nested.map((s) => s.n), [1, 2, 4])
      assert.deepStrictEqual(big.nested.map((s) => s.nfePerImage), [1, 2, 4].map((n) => BestOfN.nfePerImage({ ...sampler, n })))
      const two = yield* BestOfN.bestOfN(model, prompts, { sampler: { ...sampler, batchSize: 2 }, n: 2 })
      const nested2 = big.nested[1]
      assert.deepStrictEqual(nested2.chosen, two.chosen)
      prompts.forEach((_, i) => {
        assert.isTrue(same(nested2.images[i], two.images[i]), `image ${i}`)
        assert.isAtMost(nested2.rewards![i], big.rewards![i])
        assert.strictEqual(big.nested[0].chosen[i], 0)
      })
      assert.deepStrictEqual(big.nested[2].chosen, big.chosen)
    }).pipe(Effect.provide(bright)))

  it.effect("a failing reward surfaces as its typed error, leaking no tensor", () =>
    Effect.gen(function*() {
      const before = tf.memory().numTensors
      const e = yield* Effect.flip(BestOfN.bestOfN(model, prompts, { sampler, n: 2 }))
      assert.strictEqual(e._tag, "RewardUnavailable")
      assert.strictEqual(tf.memory().numTensors, before)
    }).pipe(Effect.provide(Reward.scripted({ failures: 1 }))))

  it.effect("bad options fail with InvalidArgument", () =>
    Effect.gen(function*() {
      const e = yield* Effect.flip(BestOfN.bestOfN(model, prompts, { sampler, n: 0 }))
      assert.strictEqual(e._tag, "InvalidArgument")
      const f = yield* Effect.flip(BestOfN.bestOfN(model, prompts, { sampler, n: 2, nested: [3] }))
      assert.strictEqual(f._tag, "InvalidArgument")
    }).pipe(Effect.provide(bright)))

  it.effect("InferenceMethod.evaluate: report from generated images with the method's NFE; best-of-N beats the base reward", () =>
    Effect.gen(function*() {
      const set = { name: "tiny", prompts: prompts.map((p) => parseOrThrow(p)) }
      const base = yield* InferenceMethod.evaluate(InferenceMethod.base(sampler), model, set)
      const best = yield* InferenceMethod.evaluate(BestOfN.method({ sampler, n: 4 }), model, set)
      assert.strictEqual(base.report.nfePerImage, Generate.nfePerImage(sampler))
      assert.strictEqual(best.report.nfePerImage, 4 * Generate.nfePerImage(sampler))
      assert.strictEqual(base.report.rows.at(-1)!.category, "overall")
      assert.strictEqual(base.report.rows.at(-1)!.n, prompts.length)
      assert.deepStrictEqual(base.rewards, base.images.map(brightness))
      // candidate 0 is the base image, so best-of-4 is at least as bright, strictly on some prompt
      best.rewards.forEach((r, i) => assert.isAtLeast(r, base.rewards[i]))
      assert.isAbove(best.meanReward, base.meanReward)
      const rows = InferenceMethod.plotRows([base, best])
      assert.deepStrictEqual(rows.map((r) => r.nfe), [6, 24])
      assert.deepStrictEqual(rows.map((r) => r.family), ["base", "best-of-N"])
    }).pipe(Effect.provide(bright)))
})
