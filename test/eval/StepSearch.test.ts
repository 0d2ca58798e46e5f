import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import { afterAll, beforeAll } from "vitest"
import * as Generate from "../../src/trajectory/Generate.ts"
import * as InferenceMethod from "../../src/eval/InferenceMethod.ts"
import * as StepSearch from "../../src/eval/StepSearch.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import { Reward } from "../../src/reward/Reward.ts"
import { RewardUnavailable } from "../../src/reward/RewardError.ts"
import { useWasm } from "../helpers.ts"
import { tiny32 } from "../sharpen-helpers.ts"

/** Mean pixel value: a reward that prefers brighter images. */
const brightness = (image: Float32Array) => image.reduce((s, v) => s + v, 0) / image.length
const bright = Reward.fromFunction(brightness, { name: "brightness", range: [0, 1] })

const prompts = ["a red square", "two blue circles", "a green triangle", "a white circle"]
const sampler: Generate.SamplerOptions = { steps: 4, cfg: 2, eta: 0, seed: 11, batchSize: 8 }

const tinyModel = (seed: number) => {
  const m = Denoiser.init(tiny32, seed, false)
  tf.tidy(() => {
    for (const v of Object.values(m.params)) v.assign(tf.add(v, tf.randomNormal(v.shape, 0, 0.05, "float32", seed + 1)))
  })
  return m
}

const same = (a: Float32Array, b: Float32Array) => a.length === b.length && a.every((v, k) => v === b[k])
const mean = (xs: ReadonlyArray<number>) => xs.reduce((a, b) => a + b, 0) / xs.length

describe("StepSearch", () => {
  let model: Denoiser.Model
  beforeAll(async () => {
    await useWasm()
    model = tinyModel(7)
  })
  afterAll(() => Denoiser.dispose(model))

  it("searchSchedule: K evenly spaced points from step 0, never the last step; explicit lists checked", () => {
    assert.deepStrictEqual(StepSearch.searchSchedule(50, 5), [0, 9, 19, 29, 39])
    assert.deepStrictEqual(StepSearch.searchSchedule(4, 3), [0, 1, 2])
    assert.deepStrictEqual(StepSearch.searchSchedule(10, 0), [])
    assert.deepStrictEqual(StepSearch.searchSchedule(10, [2, 8]), [2, 8])
    assert.throws(() => StepSearch.searchSchedule(4, 4))
    assert.throws(() => StepSearch.searchSchedule(10, [9]))
    assert.throws(() => StepSearch.searchSchedule(10, [3, 3]))
    assert.strictEqual(StepSearch.nfePerImage({ steps: 50, cfg: 5, branches: 4, searchPoints: 5 }), (50 + 5 * 3) * 2)
    assert.strictEqual(StepSearch.nfePerImage({ steps: 50, cfg: 1, branches: 4, searchPoints: [1, 2] }), 50 + 2 * 3)
    assert.strictEqual(StepSearch.rewardEvalsPerImage({ branches: 4, searchPoints: 5 }), 20)
    assert.strictEqual(StepSearch.rewardEvalsPerImage({ branches: 1, searchPoints: 5 }), 0)
  })

  it.effect("K = 0 reproduces the plain sampler exactly (eta 0 and eta > 0) and never calls the reward", () =>
    Effect.gen(function*() {
      for (const eta of [0, 0.6]) {
        const o = { ...sampler, eta, batchSize: 3 }
        const plain = yield* Generate.generate(model, prompts, o)
        const r = yield* StepSearch.stepSearch(model, prompts, { sampler: o, branches: 4, searchPoints: 0 })
        prompts.forEach((_, i) => assert.isTrue(same(r.images[i], plain[i]), `eta ${eta}, image ${i}`))
        assert.strictEqual(r.rewardCalls, 0)
        assert.strictEqual(r.nfePerImage, Generate.nfePerImage(o))
      }
    }).pipe(Effect.provide(Reward.scripted({ failures: 1000 }))))

  it.effect("keeps the best candidate at every search point; at the last point the final image is that candidate's x0", () =>
    Effect.gen(function*() {
      const before = tf.memory().numTensors
      const B = 3
      const r = yield* StepSearch.stepSearch(model, prompts, { sampler, branches: B, searchPoints: [0, 2] })
      assert.strictEqual(tf.memory().numTensors, before)
      assert.deepStrictEqual(r.searchSteps, [0, 2])
      let nonZero = 0
      r.trace.forEach((points, i) => {
        assert.deepStrictEqual(points.map((p) => p.step), [0, 2])
        for (const p of points) {
          assert.strictEqual(p.rewards.length, B)
          assert.strictEqual(p.chosen, InferenceMethod.argmax(p.rewards))
          for (const v of p.rewards) assert.isAtLeast(p.rewards[p.chosen], v)
          if (p.chosen !== 0) nonZero++
        }
        // Step 2 of 4 branches onto the last grid timestep, whose DDIM step
        // returns its clipped x0 prediction: the scored estimate of the kept candidate.
        const last = points[1]
        // (The candidates there differ little, ~1e-4 in reward, but the match is exact.)
        assert.strictEqual(last.tPrev, 0)
        assert.strictEqual(brightness(r.images[i]), last.rewards[last.chosen], `image ${i}`)
        assert.strictEqual(brightness(r.images[i]), Math.max(...last.rewards))
      })
      assert.isAbove(nonZero, 0, "the search is not trivially candidate 0")
    }).pipe(Effect.provide(bright)))

  it.effect("improves the mean reward over the plain sampler and over the same stochastic steps without selection", () =>
    Effect.gen(function*() {
      // 10 steps, a search at each of the first 9 (the stochastic steps alone
      // lower the brightness of this random model a little: the control).
      const o = { sampler: { ...sampler, steps: 10 }, searchPoints: 9, searchEta: 0.5 }
      const plain = (yield* Generate.generate(model, prompts, o.sampler)).map(brightness)
      const control = yield* StepSearch.stepSearch(model, prompts, { ...o, branches: 1 })
      const searched = yield* StepSearch.stepSearch(model, prompts, { ...o, branches: 4 })
      const c = control.images.map(brightness)
      const s = searched.images.map(brightness)
      assert.isAbove(mean(s), mean(plain))
      assert.isAbove(mean(s), mean(c))
      assert.strictEqual(control.rewardCalls, 0)
      assert.deepStrictEqual(control.trace[0].map((p) => p.chosen), new Array(9).fill(0))
    }).pipe(Effect.provide(bright)))

  it.effect("counts NFE and reward calls exactly as the formulas say", () =>
    Effect.gen(function*() {
      for (const [cfg, B, K, batchSize] of [[2, 3, 2, 8], [1, 2, 3, 3]] as const) {
        const o = { ...sampler, cfg, batchSize }
        let rows = 0
        const denoise: InferenceMethod.GuidedDenoiser = (x, t, p) => {
          rows += x.shape[0]
          return Denoiser.guidedEps(model, x, t, p, cfg)
        }
        const r = yield* StepSearch.stepSearch(model, prompts, { sampler: o, branches: B, searchPoints: K, denoise })
        const f = cfg === 1 ? 1 : 2
        const perImage = (o.steps + K * (B - 1)) * f
        assert.strictEqual(r.nfePerImage, perImage)
        assert.strictEqual((rows * f) / prompts.length, perImage)
        assert.strictEqual(r.nfe, rows * f)
        assert.strictEqual(r.rewardEvals, K * B * prompts.length)
        assert.strictEqual(r.rewardEvalsPerImage, K * B)
        assert.strictEqual(r.rewardCalls, K * Math.ceil(prompts.length / batchSize))
        assert.strictEqual(StepSearch.method({ sampler: o, branches: B, searchPoints: K }).nfePerImage, perImage)
      }
    }).pipe(Effect.provide(bright)))

  it.effect("a failing reward surfaces as its typed error, leaking no tensor (first call, and mid-trajectory)", () =>
    Effect.gen(function*() {
      const before = tf.memory().numTensors
      const first = yield* Effect.flip(
        StepSearch.stepSearch(model, prompts, { sampler, branches: 2, searchPoints: 2 }).pipe(Effect.provide(Reward.scripted({ failures: 1 })))
      )
      assert.strictEqual(first._tag, "RewardUnavailable")
      assert.strictEqual(tf.memory().numTensors, before)
      let calls = 0
      const failsSecond = Reward.layer(
        { name: "flaky", range: [0, 1], differentiable: false, relativeCost: 0 },
        (images) =>
          ++calls === 2
            ? Effect.fail(new RewardUnavailable({ reward: "flaky", url: "test:", message: "second call" }))
            : Effect.succeed(images.map(brightness))
      )
      const second = yield* Effect.flip(
        StepSearch.stepSearch(model, prompts, { sampler, branches: 2, searchPoints: 3 }).pipe(Effect.provide(failsSecond))
      )
      assert.strictEqual(second._tag, "RewardUnavailable")
      assert.strictEqual(second.message, "second call")
      assert.strictEqual(calls, 2)
      assert.strictEqual(tf.memory().numTensors, before)
    }))

  it.effect("bad options fail with InvalidArgument", () =>
    Effect.gen(function*() {
      for (const bad of [{ branches: 0, searchPoints: 1 }, { branches: 2, searchPoints: 4 }, { branches: 2, searchPoints: 1, searchEta: 0 }]) {
        const e = yield* Effect.flip(StepSearch.stepSearch(model, prompts, { sampler, ...bad }))
        assert.strictEqual(e._tag, "InvalidArgument")
      }
    }).pipe(Effect.provide(bright)))
})
