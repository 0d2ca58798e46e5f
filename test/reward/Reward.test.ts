import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Result } from "effect"
import { IMAGE_LENGTH } from "../../src/data/Image.ts"
import { Decoder, scoreSamples, signedToUnit } from "../../src/reward/Decoder.ts"
import * as Registry from "../../src/reward/Registry.ts"
import { constantReward, functionReward, Reward, scriptedReward } from "../../src/reward/Reward.ts"
import { RewardConfigError, RewardUnavailable } from "../../src/reward/RewardError.ts"

const img = (v: number) => new Float32Array(IMAGE_LENGTH).fill(v)
const mean = (x: Float32Array) => x.reduce((s, v) => s + v, 0) / x.length

describe("Reward service and mocks", () => {
  it.effect("Reward.constant answers its value for every image", () =>
    Effect.gen(function*() {
      const r = yield* Reward.score([img(0), img(1)], ["a", "b"])
      assert.deepStrictEqual(r, [0.7, 0.7])
      const reward = yield* Reward
      assert.deepStrictEqual(reward.metadata.range, [0.7, 0.7])
    }).pipe(Effect.provide(Reward.constant(0.7))))

  it.effect("Reward.fromFunction sees image, prompt and index", () =>
    Effect.gen(function*() {
      const r = yield* Reward.score([img(0.25), img(0.5)], ["x", "yy"])
      assert.deepStrictEqual(r, [0.25 + 1, 0.5 + 2 + 1])
    }).pipe(Effect.provide(Reward.fromFunction((image, prompt, i) => image[0] + prompt.length + i, { name: "f" }))))

  it.effect("Reward.scripted fails N times, then answers; each build has its own counter", () =>
    Effect.gen(function*() {
      const layer = Reward.scripted({ failures: 2, answer: 3 })
      const run = Reward.score([img(0)], ["p"]).pipe(Effect.provide(layer))
      const e1 = yield* Effect.flip(Reward.score([img(0)], ["p"]))
      assert.strictEqual(e1._tag, "RewardUnavailable")
      const e2 = yield* Effect.flip(Reward.score([img(0)], ["p"]))
      assert.strictEqual(e2._tag, "RewardUnavailable")
      assert.deepStrictEqual(yield* Reward.score([img(0)], ["p"]), [3])
      // A fresh build starts failing again.
      assert.strictEqual((yield* Effect.flip(run))._tag, "RewardUnavailable")
    }).pipe(Effect.provide(Reward.scripted({ failures: 2, answer: 3 }))))

  it.effect("rejects mismatched lengths, wrong image sizes and non-finite pixels (RewardInputError)", () =>
    Effect.gen(function*() {
      const r = constantReward(1)
      const e1 = yield* Effect.flip(r.score([img(0)], ["a", "b"]))
      assert.strictEqual(e1._tag, "RewardInputError")
      assert.strictEqual((e1 as { field?: string }).field, "prompts")
      const e2 = yield* Effect.flip(r.score([img(0), new Float32Array(10)], ["a", "b"]))
      assert.strictEqual(e2._tag, "RewardInputError")
      assert.strictEqual((e2 as { index?: number }).index, 1)
      const bad = img(0)
      bad[7] = NaN
      const e3 = yield* Effect.flip(r.score([img(0), bad], ["a", "b"]))
      assert.strictEqual((e3 as { index?: number }).index, 1)
      assert.deepStrictEqual(yield* r.score([], []), [])
    }))

  it.effect("never a silent zero: non-finite or missing scores are RewardProtocolError naming the index", () =>
    Effect.gen(function*() {
      const nan = functionReward((_, __, i) => (i === 2 ? NaN : 1))
      const e = yield* Effect.flip(nan.score([img(0), img(0), img(0)], ["a", "b", "c"]))
      assert.strictEqual(e._tag, "RewardProtocolError")
      assert.strictEqual((e as { field: string }).field, "rewards")
      assert.strictEqual((e as { index?: number }).index, 2)
      const short = Reward.make({ name: "short", range: [0, 1], differentiable: false, relativeCost: 1 }, () => Effect.succeed([1]))
      const e2 = yield* Effect.flip(short.score([img(0), img(0)], ["a", "b"]))
      assert.strictEqual(e2._tag, "RewardProtocolError")
      assert.match(e2.message, /expected 2 rewards, got 1/)
    }))

  it.effect("scriptedReward custom errors and call observer", () =>
    Effect.gen(function*() {
      const calls: Array<number> = []
      const r = scriptedReward({
        failures: 1,
        error: (c) => new RewardUnavailable({ reward: "s", url: "x", message: `down ${c}` }),
        onCall: (c) => calls.push(c)
      })
      const e = yield* Effect.flip(r.score([img(0)], ["p"]))
      assert.strictEqual(e.message, "down 1")
      assert.deepStrictEqual(yield* r.score([img(0)], ["p"]), [1])
      assert.deepStrictEqual(calls, [1, 2])
    }))
})

describe("Decoder", () => {
  it.effect("pixel decoder maps [-1, 1] to [0, 1] (clamped) and scores through the reward", () =>
    Effect.gen(function*() {
      const out = signedToUnit(Float32Array.from([-1, 0, 1, 3, -5]))
      assert.deepStrictEqual(Array.from(out), [0, 0.5, 1, 1, 0])
      const r = yield* scoreSamples([img(-1), img(0), img(1)], ["a", "b", "c"])
      assert.deepStrictEqual(r.map((v) => Math.round(v * 100) / 100), [0, 0.5, 1])
      const bad = img(0)
      bad[3] = Infinity
      const e = yield* Effect.flip(scoreSamples([img(0), bad], ["a", "b"]))
      assert.strictEqual(e._tag, "RewardInputError")
      assert.strictEqual((e as { index?: number }).index, 1)
    }).pipe(Effect.provide(Layer.mergeAll(Decoder.layer, Reward.fromFunction((image) => mean(image))))))
})

describe("Registry expressions", () => {
  it("parses names and weighted expressions", () => {
    assert.deepStrictEqual(Result.getOrThrow(Registry.parseExpression("compositional-dense")), [{ weight: 1, name: "compositional-dense" }])
    assert.deepStrictEqual(Result.getOrThrow(Registry.parseExpression("0.7*compositional-dense + 0.3*aesthetic")), [
      { weight: 0.7, name: "compositional-dense" },
      { weight: 0.3, name: "aesthetic" }
    ])
    assert.deepStrictEqual(Result.getOrThrow(Registry.parseExpression("clip-aesthetic-0.1*compressibility")), [
      { weight: 1, name: "clip" },
      { weight: -1, name: "aesthetic" },
      { weight: -0.1, name: "compressibility" }
    ])
    const bad = Registry.parseExpression("imagereward")
    if (Result.isSuccess(bad)) assert.fail(`expected a failure, got ${JSON.stringify(bad.success)}`)
    else {
      assert.instanceOf(bad.failure, RewardConfigError)
      assert.match(bad.failure.message, /unknown reward "imagereward"/)
    }
  })
})
