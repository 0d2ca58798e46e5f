import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import { beforeAll } from "vitest"
import { verify } from "../../src/data/Verifier.ts"
import { toBytes } from "../../src/data/Image.ts"
import * as AdamW from "../../src/optim/AdamW.ts"
import { contrastiveLoss, lrAt, nextBatch, trainStep } from "../../src/train/TrainClip.ts"
import * as Clip from "../../src/reward/ClipModel.ts"
import { Rng } from "../../src/tensor/Random.ts"
import { useCpu } from "../helpers.ts"
import { tinyClip } from "../reward/helpers.ts"

const opts = { batchSize: 8, negatives: 3, pairedFraction: 0.25, noiseStd: 0 }

describe("TrainClip", () => {
  beforeAll(useCpu)

  it("batches: paired items, K negatives per image, exact truth mask; seeded", () => {
    const a = nextBatch(Rng.fromSeed(5), opts)
    const b = nextBatch(Rng.fromSeed(5), opts)
    assert.deepStrictEqual(a.parsed.map((p) => p.text), b.parsed.map((p) => p.text))
    assert.deepStrictEqual(Array.from(a.images), Array.from(b.images))
    assert.strictEqual(a.images.length, 8 * 32 * 32 * 3)
    assert.strictEqual(a.negatives.length, 8 * 3)
    for (let i = 0; i < 8; i++) {
      const image = toBytes(a.images.subarray(i * 3072, (i + 1) * 3072), "signed")
      for (let j = 0; j < 8; j++) {
        // Clean renders (no noise): the mask agrees with the verifier.
        assert.strictEqual(a.truth[i * 8 + j] === 1, i === j || verify(a.parsed[j], image).pass, `${i},${j}`)
      }
      for (let n = 0; n < 3; n++) assert.notStrictEqual(a.negatives[i * 3 + n], a.parsed[i].text)
    }
    // The last quarter are renders of hard negatives of the first items.
    for (let i = 6; i < 8; i++) assert.strictEqual(a.truth[(i - 6) * 8 + i], 0)
  })

  it("learning rate warms up, then decays by cosine to 10%", () => {
    const o = { lr: 1, warmupSteps: 10, steps: 110 }
    assert.approximately(lrAt(o, 0), 0.1, 1e-9)
    assert.approximately(lrAt(o, 9), 1, 1e-9)
    assert.approximately(lrAt(o, 10), 1, 1e-9)
    assert.approximately(lrAt(o, 60), 0.55, 1e-9)
    assert.approximately(lrAt(o, 110), 0.1, 1e-9)
  })

  it.effect("a few steps on one batch reduce the loss and leak no tensors", () =>
    Effect.gen(function*() {
      const m = Clip.init(tinyClip, 0)
      const adam = AdamW.init(m.params)
      const batch = nextBatch(Rng.fromSeed(2), opts)
      const initial = tf.tidy(() => contrastiveLoss(m.params, tinyClip, batch).dataSync()[0])
      assert.isTrue(Number.isFinite(initial) && initial > 0)
      const counts: Array<number> = []
      let last = initial
      for (let i = 0; i < 12; i++) {
        const r = yield* trainStep(m, adam, batch, 3e-3, AdamW.defaults)
        assert.isTrue(Number.isFinite(r.loss) && Number.isFinite(r.gradNorm))
        last = r.loss
        counts.push(tf.memory().numTensors)
      }
      assert.isBelow(last, initial - 0.3)
      assert.strictEqual(new Set(counts).size, 1, `tensor count changed: ${counts.join(", ")}`)
      Clip.dispose(m)
      AdamW.dispose(adam)
    }))
})
