import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { beforeAll } from "vitest"
import * as AdamW from "../../src/optim/AdamW.ts"
import { paramGrads } from "../../src/tensor/Grad.ts"
import { useCpu } from "../helpers.ts"

describe("AdamW", () => {
  beforeAll(useCpu)

  it("matches tfjs's Adam step for step when decay and clipping are off", () => {
    const init = [0.5, -1.5, 2, 0.1]
    const ours = { w: tf.variable(tf.tensor1d(init)) }
    const ref = tf.variable(tf.tensor1d(init))
    const target = tf.tensor1d([1, 2, 3, 4])
    const state = AdamW.init(ours)
    const cfg = { ...AdamW.defaults, maxGradNorm: 0 }
    const refOpt = tf.train.adam(0.05, cfg.beta1, cfg.beta2, cfg.eps)
    for (let i = 0; i < 20; i++) {
      const { value, grads } = paramGrads(() => tf.sum(tf.square(tf.sub(ours.w, target))) as tf.Scalar, ours)
      AdamW.step(ours, grads, state, 0.05, cfg)
      tf.dispose([value, ...Object.values(grads)])
      refOpt.minimize(() => tf.sum(tf.square(tf.sub(ref, target))) as tf.Scalar)
    }
    const a = ours.w.dataSync()
    const b = ref.dataSync()
    for (let i = 0; i < 4; i++) assert.closeTo(a[i], b[i], 1e-5)
    assert.strictEqual(state.step, 20)
  })

  it("clips the global gradient norm and applies decoupled weight decay", () => {
    const p = { w: tf.variable(tf.tensor1d([1, 1])) }
    const s = AdamW.init(p)
    const g = { w: tf.tensor1d([300, 400]) }
    const norm = AdamW.step(p, g, s, 0.1, { beta1: 0, beta2: 0, eps: 1e-12, weightDecay: 0.5, maxGradNorm: 1 })
    assert.closeTo(norm, 500, 1e-3)
    // beta1 = beta2 = 0: update = g/|g| elementwise = sign(g) = 1; decay 1 * (1 - 0.1*0.5).
    const w = p.w.dataSync()
    assert.closeTo(w[0], 0.95 - 0.1, 1e-5)
    assert.closeTo(s.m.w.dataSync()[1], 400 / 500, 1e-5) // moments see the clipped gradient
  })

  it("reports a non-finite gradient norm and changes nothing", () => {
    const p = { w: tf.variable(tf.tensor1d([1, 2])) }
    const s = AdamW.init(p)
    const norm = AdamW.step(p, { w: tf.tensor1d([NaN, 1]) }, s, 0.1, AdamW.paper)
    assert.isNaN(norm)
    assert.deepStrictEqual(Array.from(p.w.dataSync()), [1, 2])
    assert.strictEqual(s.step, 0)
  })
})
