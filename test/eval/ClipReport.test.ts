import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import { beforeAll } from "vitest"
import { fromBytes } from "../../src/data/Image.ts"
import { parseOrThrow } from "../../src/data/Prompt.ts"
import { render } from "../../src/data/Render.ts"
import { agreement, agreementWithVerifier, degrade } from "../../src/eval/ClipReport.ts"
import * as Clip from "../../src/reward/ClipModel.ts"
import { Rng } from "../../src/tensor/Random.ts"
import { useCpu } from "../helpers.ts"
import { tinyClip } from "../reward/helpers.ts"

describe("ClipReport", () => {
  beforeAll(useCpu)

  it("agreement: AUC, best-threshold accuracy and correlation", () => {
    const perfect = agreement([0.1, 0.2, 0.8, 0.9], [false, false, true, true])
    assert.strictEqual(perfect.auc, 1)
    assert.strictEqual(perfect.accuracy, 1)
    assert.strictEqual(perfect.threshold, 0.8)
    assert.isAbove(perfect.correlation, 0.9)
    assert.strictEqual(perfect.passRate, 0.5)
    const reversed = agreement([0.9, 0.8, 0.2, 0.1], [false, false, true, true])
    assert.strictEqual(reversed.auc, 0)
    assert.isBelow(reversed.correlation, -0.9)
    const ties = agreement([1, 1, 1, 1], [false, true, false, true])
    assert.strictEqual(ties.auc, 0.5)
    assert.strictEqual(ties.accuracy, 0.5)
    // One pass below one fail out of 3 x 3 pairs.
    assert.approximately(agreement([1, 2, 3, 4, 5, 6], [false, true, false, false, true, true]).auc, 7 / 9, 1e-12)
    assert.isNaN(agreement([1, 2], [true, true]).auc)
  })

  it.effect("agreementWithVerifier scores images against prompts", () =>
    Effect.gen(function*() {
      const m = Clip.init(tinyClip, 0)
      const rng = Rng.fromSeed(1)
      const prompts = ["a red square", "a blue circle", "two green triangles", "a white square and a red circle"]
      const images = new Float32Array(4 * 3072)
      prompts.forEach((p, i) => fromBytes(render(parseOrThrow(p), rng), "unit", images, i * 3072))
      const before = tf.memory().numTensors
      const r = yield* agreementWithVerifier(m, images, prompts, [true, false, true, false], "unit")
      assert.strictEqual(tf.memory().numTensors, before)
      assert.strictEqual(r.n, 4)
      assert.strictEqual(r.scores.length, 4)
      for (const s of r.scores) assert.isTrue(s >= 0 && s <= 2.5)
      Clip.dispose(m)
    }))

  it("degradations keep the image size and range", () => {
    const flat = new Float32Array(3072).fill(0.5)
    assert.deepStrictEqual(Array.from(degrade.blur(flat, 2)).map((v) => Math.round(v * 1e6) / 1e6), Array.from(flat))
    const noisy = degrade.noise(flat, 0.5, Rng.fromSeed(0))
    assert.strictEqual(noisy.length, 3072)
    for (const v of noisy) assert.isTrue(v >= 0 && v <= 1)
    assert.strictEqual(degrade.dim(flat, 0.5)[7], 0.25)
  })
})
