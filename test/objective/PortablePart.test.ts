import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import { beforeAll } from "vitest"
import * as Schedule from "../../src/diffusion/Schedule.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import * as GroupLosses from "../../src/objective/GroupLosses.ts"
import * as GroupRelative from "../../src/objective/GroupRelative.ts"
import * as Losses from "../../src/objective/Losses.ts"
import * as PortablePart from "../../src/objective/PortablePart.ts"
import { paramGrads } from "../../src/tensor/Grad.ts"
import { Rng } from "../../src/tensor/Random.ts"
import * as Scoped from "../../src/tensor/Scoped.ts"
import * as NoisedSamples from "../../src/trajectory/NoisedSamples.ts"
import { tinyConfig, useWasm } from "../helpers.ts"

describe("PortablePart", () => {
  beforeAll(useWasm)

  it("rowsForThreads: one thread keeps the budget; several get a part each", () => {
    assert.strictEqual(PortablePart.rowsForThreads(24, 8, 2, 1), 24)
    assert.strictEqual(PortablePart.rowsForThreads(24, 8, 2, 2), 8)
    assert.strictEqual(PortablePart.rowsForThreads(0, 8, 2, 2), 8)
    assert.strictEqual(PortablePart.rowsForThreads(4, 8, 2, 2), 4)
    assert.deepStrictEqual(Losses.microBatchesByRows(8, 2, PortablePart.rowsForThreads(24, 8, 2, 2)), [[0, 1, 2, 3], [4, 5, 6, 7]])
  })

  it.effect("the portable form of a part has the closure's loss and gradients (denoising and DPO parts)", () =>
    Effect.gen(function*() {
      const model = Denoiser.init(tinyConfig, 2)
      const schedule = Schedule.make(tinyConfig.schedule)
      const rng = Rng.fromSeed(4)
      const b = 3
      const clean = tf.tensor(rng.normals(2 * b * 8 * 8 * 3).map(Math.tanh), [2 * b, 8, 8, 3])
      const noise = tf.tensor(rng.normals(2 * b * 8 * 8 * 3), [2 * b, 8, 8, 3])
      const s = NoisedSamples.make(schedule, { clean, noise, itemTimesteps: [10, 500, 990], prompts: ["a red square", "", "two blue circles"], n: 2, nfe: 0 })
      const items = [0, 2]
      const rows = [...items, ...items.map((i) => i + b)]
      const refs = { w: tf.tensor1d([0.5, 0.7]), l: tf.tensor1d([0.6, 0.4]) }
      const margin = [0.1, -0.2]
      const some = yield* PortablePart.samplesRows(s, items)
      const pairs = yield* PortablePart.samplesRows(s, rows)
      const cases: Array<[string, () => tf.Scalar, PortablePart.PortablePart]> = [
        ["denoise", () => tf.tidy(() => tf.mul(tf.mean(NoisedSamples.rowErrors(model, s, items)), 2 / 3) as tf.Scalar), { ...some, share: 2 / 3 }],
        ["dpo", () => Losses.dpoPart(NoisedSamples.rowErrors(model, s, rows), refs, margin, 2500, "inside", 2 / 3), {
          ...pairs,
          share: 2 / 3,
          dpo: { refW: Array.from(refs.w.dataSync()), refL: Array.from(refs.l.dataSync()), margin, beta: 2500, placement: "inside" }
        }],
        ["dpo with the winners' denoising loss", () => Losses.dpoPart(NoisedSamples.rowErrors(model, s, rows), refs, margin, 2500, "inside", 2 / 3, 7), {
          ...pairs,
          share: 2 / 3,
          dpo: { refW: Array.from(refs.w.dataSync()), refL: Array.from(refs.l.dataSync()), margin, beta: 2500, placement: "inside", winnerSft: 7 }
        }]
      ]
      const before = tf.memory().numTensors
      for (const [name, closure, portable] of cases) {
        const a = paramGrads(closure, model.params)
        const p = paramGrads(() => PortablePart.loss(model, portable), model.params)
        assert.strictEqual(p.value.dataSync()[0], a.value.dataSync()[0], `${name}: loss`)
        assert.deepStrictEqual(Object.keys(p.grads), Object.keys(a.grads))
        for (const k of Object.keys(a.grads)) assert.deepStrictEqual(Array.from(p.grads[k].dataSync()), Array.from(a.grads[k].dataSync()), `${name}: ${k}`)
        // Another share gives another loss: the comparison can fail.
        const other = tf.tidy(() => PortablePart.loss(model, { ...portable, share: 1 }).dataSync()[0])
        assert.notStrictEqual(other, a.value.dataSync()[0])
        Scoped.disposeAll([a.value, p.value, a.grads, p.grads])
      }
      // divided keeps the portable form, with the share divided.
      const half = PortablePart.divided(PortablePart.withPortable(cases[0][1], () => Effect.succeed(cases[0][2])), 2)
      const halfPortable = yield* half.portable!()
      assert.strictEqual(halfPortable.share, 1 / 3)
      assert.approximately(tf.tidy(() => half().dataSync()[0]), tf.tidy(() => PortablePart.loss(model, halfPortable).dataSync()[0]), 1e-7)
      assert.strictEqual(tf.memory().numTensors, before)
      NoisedSamples.dispose(s)
      tf.dispose([refs.w, refs.l])
      Denoiser.dispose(model)
    }))
  it.effect("the group and DiffusionNFT parts' portable forms have their closures' loss and gradients, exactly", () =>
    Effect.gen(function*() {
      const model = Denoiser.init(tinyConfig, 2)
      const reference = Denoiser.init(tinyConfig, 5)
      const schedule = Schedule.make(tinyConfig.schedule)
      const rng = Rng.fromSeed(6)
      const n = 3
      const b = 2
      const shape = [n * b, 8, 8, 3]
      const size = n * b * 8 * 8 * 3
      const clean = tf.tensor(rng.normals(size).map(Math.tanh), shape)
      const noise = tf.tensor(rng.normals(size), shape)
      const s = NoisedSamples.make(schedule, { clean, noise, itemTimesteps: [30, 700], prompts: ["a red square", "two blue circles"], n, nfe: 0 })
      const rows = GroupRelative.itemRows(n, b, [0, 1])
      const inputs = yield* PortablePart.samplesRows(s, rows)
      const ref = NoisedSamples.rowErrors(reference, s, rows)
      const adv = GroupRelative.groupAdvantages([[0.1, 0.9], [0.5, 0.2], [0.4, 0.4]])
      const pairs = [0, 1].map((j) => GroupRelative.weightedPairs(adv.map((a) => a[j])).map((q) => ({ ...q, margin: 0.1 * (q.w - q.l) })))
      const weights = rows.map((_, k) => (k + 1) / 10)
      const x = tf.tensor(inputs.x, shape)
      const target = tf.tensor(inputs.target, shape)
      const old = Denoiser.eps(reference, x, inputs.t, inputs.prompts)
      const oldData = old.dataSync() as Float32Array
      const r = rows.map((k) => (k % 3) / 2)
      const scale = inputs.t.map((u) => Schedule.sigma(schedule, u) / Schedule.alpha(schedule, u))
      const nftClosure = () =>
        tf.tidy(() => {
          const eps = Denoiser.eps(model, x, inputs.t, inputs.prompts)
          return tf.div(tf.add(tf.sum(GroupLosses.nftRowLosses(eps, old, target, scale, r, 0.1, 5)), tf.scalar(0)), n * b) as tf.Scalar
        })
      const cases: Array<[string, () => tf.Scalar, PortablePart.PortablePart]> = [
        ["group pairs", () => GroupLosses.pairsPart(NoisedSamples.rowErrors(model, s, rows), ref, pairs, 2.5, "inside", b), {
          ...inputs,
          share: 1,
          group: { pairs, ref: Array.from(ref.dataSync()), beta: 2.5, placement: "inside", batch: b }
        }],
        ["group awr", () => GroupLosses.awrPart(NoisedSamples.rowErrors(model, s, rows), weights, b), {
          ...inputs,
          share: 1,
          group: { weights, beta: 1, placement: "inside", batch: b }
        }],
        ["nft", nftClosure, { ...inputs, share: 1, nft: { old: oldData, scale, r, beta: 0.1, clip: 5, kl: 0, count: n * b } }]
      ]
      const before = tf.memory().numTensors
      for (const [name, closure, portable] of cases) {
        const a = paramGrads(closure, model.params)
        const p = paramGrads(() => PortablePart.loss(model, portable), model.params)
        assert.strictEqual(p.value.dataSync()[0], a.value.dataSync()[0], `${name}: loss`)
        for (const k of Object.keys(a.grads)) assert.deepStrictEqual(Array.from(p.grads[k].dataSync()), Array.from(a.grads[k].dataSync()), `${name}: ${k}`)
        // Half the share halves the loss: the comparison can fail.
        const half = tf.tidy(() => PortablePart.loss(model, { ...portable, share: 0.5 }).dataSync()[0])
        assert.approximately(half, a.value.dataSync()[0] / 2, 1e-6 * Math.abs(a.value.dataSync()[0]))
        Scoped.disposeAll([a.value, p.value, a.grads, p.grads])
      }
      assert.strictEqual(tf.memory().numTensors, before)
      NoisedSamples.dispose(s)
      tf.dispose([ref, x, target, old])
      Denoiser.dispose(model)
      Denoiser.dispose(reference)
    }))
})
