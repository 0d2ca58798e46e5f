import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Layer, Schema } from "effect"
import { TestClock } from "effect/testing"
import { IMAGE_LENGTH } from "../../src/data/Image.ts"
import {
  batched,
  cached,
  clamp,
  decodeStatTrackerState,
  makeRateLimiter,
  makeStatTracker,
  mapLayer,
  normalized,
  normalizedLayer,
  remote,
  StatTracker,
  StatTrackerState,
  updateState,
  weightedSum,
  withPolicy
} from "../../src/reward/Combinators.ts"
import { constantReward, functionReward, Reward, scriptedReward } from "../../src/reward/Reward.ts"
import { RewardRejected } from "../../src/reward/RewardError.ts"

const img = (v: number) => new Float32Array(IMAGE_LENGTH).fill(v)
const policy = { timeoutMs: 1000, retries: 3, backoffMs: 1, maxBackoffMs: 5, requestsPerSecond: 0 }

/** A reward counting calls and images; score = first pixel. */
const counting = () => {
  const stats = { calls: 0, images: 0 }
  const reward = functionReward((image) => image[0], { name: "first", range: [0, 1] })
  return {
    stats,
    reward: {
      ...reward,
      score: (images: ReadonlyArray<Float32Array>, prompts: ReadonlyArray<string>) =>
        Effect.suspend(() => {
          stats.calls++
          stats.images += images.length
          return reward.score(images, prompts)
        })
    }
  }
}

describe("weightedSum and clamp", () => {
  it.effect("sums weighted terms; range, name, cost and differentiability follow the terms", () =>
    Effect.gen(function*() {
      const a = functionReward((image) => image[0], { name: "a", range: [0, 1], relativeCost: 2 })
      const b = constantReward(3, { name: "b", range: [0, 10], relativeCost: 5 })
      const s = weightedSum([{ reward: a, weight: 2 }, { reward: b, weight: -0.5 }])
      assert.deepStrictEqual(yield* s.score([img(0.25), img(1)], ["p", "q"]), [2 * 0.25 - 1.5, 2 - 1.5])
      assert.strictEqual(s.metadata.name, "2*a+-0.5*b")
      assert.deepStrictEqual(s.metadata.range, [0 - 5, 2 - 0])
      assert.strictEqual(s.metadata.relativeCost, 7)
      assert.isFalse(s.metadata.differentiable)
      assert.isUndefined(s.scoreTensor)
    }))

  it.effect("a failing term fails the sum (no silent zero)", () =>
    Effect.gen(function*() {
      const s = weightedSum([{ reward: constantReward(1), weight: 1 }, { reward: scriptedReward({ failures: 1 }), weight: 1 }])
      const e = yield* Effect.flip(s.score([img(0)], ["p"]))
      assert.strictEqual(e._tag, "RewardUnavailable")
    }))

  it.effect("clamp clips scores and the range", () =>
    Effect.gen(function*() {
      const r = clamp(functionReward((image) => image[0] * 10 - 5, { range: [-5, 5] }), -1, 2)
      assert.deepStrictEqual(yield* r.score([img(0), img(0.5), img(1)], ["a", "b", "c"]), [-1, 0, 2])
      assert.deepStrictEqual(r.metadata.range, [-1, 2])
    }))
})

describe("per-prompt normalisation (DDPO stat tracker)", () => {
  it("matches DDPO's PerPromptStatTracker: batch stats below minCount, buffer stats after", () => {
    const s0 = { bufferSize: 3, minCount: 2, buffers: {} }
    // "a" has 1 reward (< minCount 2): batch mean/std over all 3 rewards; "b" has 2: its own buffer.
    const r1 = updateState(s0, ["a", "b", "b"], [1, 2, 4])
    const batchMean = 7 / 3
    const batchStd = Math.sqrt(((1 - batchMean) ** 2 + (2 - batchMean) ** 2 + (4 - batchMean) ** 2) / 3)
    assert.approximately(r1.advantages[0], (1 - batchMean) / (batchStd + 1e-6), 1e-9)
    assert.approximately(r1.advantages[1], (2 - 3) / (1 + 1e-6), 1e-9)
    assert.approximately(r1.advantages[2], (4 - 3) / (1 + 1e-6), 1e-9)
    // The buffer keeps the last bufferSize rewards.
    const r2 = updateState(r1.state, ["b", "b"], [6, 8])
    assert.deepStrictEqual(r2.state.buffers["b"], [4, 6, 8])
    assert.approximately(r2.advantages[0], (6 - 6) / (Math.sqrt(8 / 3) + 1e-6), 1e-9)
    assert.deepStrictEqual(r2.state.buffers["a"], [1])
  })

  it.effect("the normalised reward updates the tracker; its state round-trips through JSON for checkpoints", () =>
    Effect.gen(function*() {
      const tracker = yield* StatTracker
      const reward = normalized(functionReward((image) => image[0]), tracker)
      const adv = yield* reward.score([img(0), img(1), img(0.5), img(0.5)], ["p", "p", "q", "q"])
      assert.approximately(adv[0], -adv[1], 1e-9)
      assert.strictEqual(adv[2], 0)
      assert.strictEqual(reward.metadata.name, "function:normalized")
      const state = yield* tracker.state
      const json = JSON.parse(JSON.stringify(Schema.encodeSync(StatTrackerState)(state)))
      const restored = decodeStatTrackerState(json)
      assert.deepStrictEqual(restored, state)
      // A resumed tracker answers exactly as the original one.
      const resumed = yield* makeStatTracker(restored as StatTrackerState)
      const next = [img(0.2)]
      assert.deepStrictEqual(yield* resumed.update(["p"], [0.2]), yield* tracker.update(["p"], [0.2]))
      assert.strictEqual(next.length, 1)
      assert.isString(decodeStatTrackerState({ bufferSize: 0, minCount: 1, buffers: {} }))
    }).pipe(Effect.provide(StatTracker.layer({ bufferSize: 4, minCount: 2 }))))

  it.effect("normalizedLayer wraps a layer's reward with the tracker in context", () =>
    Effect.gen(function*() {
      const r = yield* Reward.score([img(0), img(1)], ["p", "p"])
      assert.approximately(r[0], -1, 1e-5)
      assert.approximately(r[1], 1, 1e-5)
      const stats = yield* StatTracker.use((t) => t.stats)
      assert.deepStrictEqual(stats["p"], { mean: 0.5, std: 0.5, count: 2 })
    }).pipe(
      Effect.provide(
        normalizedLayer(Reward.fromFunction((image) => image[0])).pipe(Layer.provideMerge(StatTracker.layer({ bufferSize: 8, minCount: 2 })))
      )
    ))
})

describe("caching and batching", () => {
  it.effect("cached scores each (image, prompt) once, deduplicating within a batch", () =>
    Effect.gen(function*() {
      const { reward, stats } = counting()
      const c = yield* cached(reward)
      const a = img(0.25)
      const b = img(0.75)
      assert.deepStrictEqual(yield* c.score([a, b, a], ["p", "p", "p"]), [0.25, 0.75, 0.25])
      assert.deepStrictEqual(stats, { calls: 1, images: 2 })
      // Equal pixels in a new array hit the cache; another prompt does not.
      assert.deepStrictEqual(yield* c.score([img(0.25), a], ["p", "q"]), [0.25, 0.25])
      assert.deepStrictEqual(stats, { calls: 2, images: 3 })
      assert.deepStrictEqual(yield* c.score([b, a], ["p", "q"]), [0.75, 0.25])
      assert.deepStrictEqual(stats, { calls: 2, images: 3 })
    }))

  it.effect("cached evicts least recently used entries and never caches failures", () =>
    Effect.gen(function*() {
      const { reward, stats } = counting()
      const c = yield* cached(reward, { maxEntries: 2 })
      yield* c.score([img(0.1), img(0.2)], ["p", "p"])
      yield* c.score([img(0.1)], ["p"]) // refresh 0.1
      yield* c.score([img(0.3)], ["p"]) // evicts 0.2
      assert.strictEqual(stats.images, 3)
      yield* c.score([img(0.1)], ["p"])
      assert.strictEqual(stats.images, 3)
      yield* c.score([img(0.2)], ["p"])
      assert.strictEqual(stats.images, 4)
      const flaky = yield* cached(scriptedReward({ failures: 1, answer: 5 }))
      assert.strictEqual((yield* Effect.flip(flaky.score([img(0)], ["p"])))._tag, "RewardUnavailable")
      assert.deepStrictEqual(yield* flaky.score([img(0)], ["p"]), [5])
    }))

  it.effect("batched splits into chunks and keeps order", () =>
    Effect.gen(function*() {
      const { reward, stats } = counting()
      const b = batched(reward, { batchSize: 2, concurrency: 2 })
      const images = [0, 0.2, 0.4, 0.6, 1].map(img)
      assert.deepStrictEqual(yield* b.score(images, images.map(() => "p")), [0, 0.2, 0.4, 0.6, 1].map((v) => Math.fround(v)))
      assert.deepStrictEqual(stats, { calls: 3, images: 5 })
    }))

  it.effect("mapLayer applies a combinator to a layer's reward", () =>
    Effect.gen(function*() {
      assert.deepStrictEqual(yield* Reward.score([img(0)], ["p"]), [1])
    }).pipe(Effect.provide(mapLayer(Reward.constant(3), (r) => clamp(r, 0, 1)))))
})

describe("timeout, retry, rate limit", () => {
  it.live("remote retries retryable failures with backoff, then answers", () =>
    Effect.gen(function*() {
      const calls: Array<number> = []
      const r = yield* remote(scriptedReward({ failures: 2, answer: 7, onCall: (c) => calls.push(c) }), policy)
      assert.deepStrictEqual(yield* r.score([img(0)], ["p"]), [7])
      assert.deepStrictEqual(calls, [1, 2, 3])
    }))

  it.live("remote gives up after `retries` and propagates the last error; non-retryable errors fail at once", () =>
    Effect.gen(function*() {
      const calls: Array<number> = []
      const r = yield* remote(scriptedReward({ failures: 10, onCall: (c) => calls.push(c) }), { ...policy, retries: 2 })
      assert.strictEqual((yield* Effect.flip(r.score([img(0)], ["p"])))._tag, "RewardUnavailable")
      assert.strictEqual(calls.length, 3)
      const rejected: Array<number> = []
      const r400 = yield* remote(
        scriptedReward({
          failures: 10,
          error: () => new RewardRejected({ reward: "s", url: "u", status: 400, body: "bad", message: "bad request" }),
          onCall: (c) => rejected.push(c)
        }),
        policy
      )
      assert.strictEqual((yield* Effect.flip(r400.score([img(0)], ["p"])))._tag, "RewardRejected")
      assert.strictEqual(rejected.length, 1)
    }))

  it.effect("a slow attempt becomes RewardTimeout", () =>
    Effect.gen(function*() {
      const slow = Effect.sleep("10 seconds").pipe(Effect.as([1]))
      const fiber = yield* Effect.forkChild(
        withPolicy(slow, { ...policy, timeoutMs: 100, retries: 0 }, { reward: "slow", url: "http://x" })
      )
      yield* TestClock.adjust("200 millis")
      const exit = yield* Fiber.await(fiber)
      assert.isTrue(Exit.isFailure(exit))
      const e = yield* Effect.flip(Fiber.join(fiber))
      assert.strictEqual(e._tag, "RewardTimeout")
      assert.strictEqual((e as { url?: string }).url, "http://x")
    }))

  it.effect("the rate limiter spaces request starts evenly", () =>
    Effect.gen(function*() {
      const limiter = yield* makeRateLimiter(10) // one start per 100 ms
      const starts: Array<number> = []
      const fiber = yield* Effect.forkChild(
        Effect.forEach([0, 1, 2, 3], () =>
          limiter.take.pipe(Effect.andThen(Effect.clockWith((c) => Effect.sync(() => starts.push(c.currentTimeMillisUnsafe()))))), {
          concurrency: "unbounded"
        })
      )
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(fiber)
      starts.sort((a, b) => a - b)
      assert.deepStrictEqual(starts.map((t) => t - starts[0]), [0, 100, 200, 300])
    }))
})
