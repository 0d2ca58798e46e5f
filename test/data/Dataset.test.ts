import { assert, describe, it } from "@effect/vitest"
import { Effect, Stream } from "effect"
import { batches, DatasetOptionsError, nextBatch, sampleCategory } from "../../src/data/Dataset.ts"
import { IMAGE_LENGTH, toBytes } from "../../src/data/Image.ts"
import { isHeldOut, parseOrThrow } from "../../src/data/Prompt.ts"
import { verify } from "../../src/data/Verifier.ts"
import { Rng } from "../../src/tensor/Random.ts"

describe("Dataset", () => {
  it("renders batches of [-1, 1] images with their prompts", () => {
    const b = nextBatch(Rng.fromSeed(1), { batchSize: 16, split: "train" })
    assert.strictEqual(b.batchSize, 16)
    assert.strictEqual(b.images.length, 16 * IMAGE_LENGTH)
    assert.strictEqual(b.prompts.length, 16)
    let min = Infinity
    let max = -Infinity
    for (const v of b.images) (min = Math.min(min, v)), (max = Math.max(max, v))
    assert.strictEqual(min, -1)
    assert.isAtMost(max, 1)
    for (let i = 0; i < 16; i++) {
      // Each image is a verified render of its prompt.
      const img = toBytes(b.images.subarray(i * IMAGE_LENGTH, (i + 1) * IMAGE_LENGTH), "signed")
      assert.isTrue(verify(parseOrThrow(b.prompts[i]), img).pass, b.prompts[i])
      assert.strictEqual(b.parsed[i].text, b.prompts[i])
    }
  })

  it("is deterministic per seed", () => {
    const opts = { batchSize: 8, split: "full" as const, nullPromptFraction: 0.3 }
    const a = nextBatch(Rng.fromSeed(4), opts)
    const b = nextBatch(Rng.fromSeed(4), opts)
    assert.deepStrictEqual(a.prompts, b.prompts)
    assert.deepStrictEqual(a.images, b.images)
    assert.notDeepEqual(nextBatch(Rng.fromSeed(5), opts).prompts, a.prompts)
  })

  it("train split never shows a held-out composition; weights and null prompts are honoured", () => {
    const rng = Rng.fromSeed(2)
    let nulls = 0
    let total = 0
    const categories = new Map<string, number>()
    for (let k = 0; k < 30; k++) {
      const b = nextBatch(rng, {
        batchSize: 64,
        split: "train",
        categoryWeights: { complex: 3, color: 1 },
        nullPromptFraction: 0.2
      })
      b.parsed.forEach((p, i) => {
        assert.isFalse(isHeldOut(p), p.text)
        categories.set(p.category, (categories.get(p.category) ?? 0) + 1)
        if (b.prompts[i] === "") nulls++
        else assert.strictEqual(b.prompts[i], p.text)
        total++
      })
    }
    assert.deepStrictEqual([...categories.keys()].sort(), ["color", "complex"])
    assert.closeTo(categories.get("complex")! / total, 0.75, 0.04)
    assert.closeTo(nulls / total, 0.2, 0.03)
  })

  it("the null fraction does not change the images drawn", () => {
    const a = nextBatch(Rng.fromSeed(6), { batchSize: 8, split: "train", nullPromptFraction: 0 })
    const b = nextBatch(Rng.fromSeed(6), { batchSize: 8, split: "train", nullPromptFraction: 1 })
    assert.deepStrictEqual(a.images, b.images)
    assert.deepStrictEqual(b.prompts, Array(8).fill(""))
  })

  it("rejects bad options", () => {
    const rng = Rng.fromSeed(1)
    assert.throws(() => nextBatch(rng, { batchSize: 0, split: "train" }), DatasetOptionsError)
    assert.throws(() => nextBatch(rng, { batchSize: 2, split: "train", nullPromptFraction: 1.5 }), DatasetOptionsError)
    assert.throws(() => nextBatch(rng, { batchSize: 2, split: "train", categoryWeights: {} }), DatasetOptionsError)
    assert.throws(() => nextBatch(rng, { batchSize: 2, split: "train", categoryWeights: { color: -1, binding: 2 } }), DatasetOptionsError)
    assert.strictEqual(sampleCategory(rng, { spatial: 1 }), "spatial")
  })

  it.effect("streams the same batches as repeated nextBatch", () =>
    Effect.gen(function*() {
      const opts = { batchSize: 4, split: "train" as const, nullPromptFraction: 0.1 }
      const streamed = yield* Stream.runCollect(batches(Rng.fromSeed(9), opts).pipe(Stream.take(3)))
      const rng = Rng.fromSeed(9)
      const direct = [nextBatch(rng, opts), nextBatch(rng, opts), nextBatch(rng, opts)]
      assert.strictEqual(streamed.length, 3)
      assert.deepStrictEqual(streamed.map((b) => b.prompts), direct.map((b) => b.prompts))
      assert.deepStrictEqual(streamed[2].images, direct[2].images)
      const err = yield* Effect.flip(Stream.runCollect(batches(Rng.fromSeed(9), { batchSize: -1, split: "train" })))
      assert.strictEqual(err._tag, "DatasetOptionsError")
    }))
})
