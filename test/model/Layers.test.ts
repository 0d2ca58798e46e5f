import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { beforeAll } from "vitest"
import { groupNorm, groupNormPlain, groupNormSilu, linear, silu, speedups } from "../../src/model/Layers.ts"
import { useCpu, useWasm } from "../helpers.ts"

describe("linear", () => {
  beforeAll(useCpu)

  // 512 image positions, and 96 text-token rows (batch 8 x 12 tokens): both above speedups.denseConvRows.
  for (const shape of [[2, 16, 16, 12], [8, 12, 12]]) {
    it(`run as a 1x1 convolution on ${shape.slice(0, -1).reduce((a, b) => a * b, 1)} rows, equals the matrix product, gradients included`, () => {
      const rows = shape.slice(0, -1).reduce((a, b) => a * b, 1)
      assert.isAtLeast(rows, speedups.denseConvRows)
      const out = [...shape.slice(0, -1), 5]
      const x = tf.randomNormal(shape, 0, 1, "float32", 1)
      const w = tf.randomNormal([12, 5], 0, 1, "float32", 2)
      const b = tf.randomNormal([5], 0, 1, "float32", 3)
      const up = tf.randomNormal(out, 0, 1, "float32", 4)
      const ours = (xx: tf.Tensor, ww: tf.Tensor) => tf.sum(tf.mul(linear({ "l.w": ww, "l.b": b }, "l", xx), up))
      const ref = (xx: tf.Tensor, ww: tf.Tensor) => tf.sum(tf.mul(tf.add(tf.reshape(tf.matMul(tf.reshape(xx, [-1, 12]) as tf.Tensor2D, ww as tf.Tensor2D), out), b), up))
      const rel = (a: tf.Tensor, c: tf.Tensor) => tf.tidy(() => tf.norm(tf.sub(a, c)).dataSync()[0] / tf.norm(c).dataSync()[0])
      assert.isBelow(rel(ours(x, w), ref(x, w)), 1e-6)
      const [gx, gw] = tf.grads(ours)([x, w])
      const [rx, rw] = tf.grads(ref)([x, w])
      assert.isBelow(rel(gx, rx), 1e-5)
      assert.isBelow(rel(gw, rw), 1e-5)
      assert.deepStrictEqual(linear({ "l.w": w, "l.b": b }, "l", x).shape, out)
    })
  }
})

describe("groupNorm", () => {
  beforeAll(useCpu)

  const rel = (a: tf.Tensor, c: tf.Tensor) => tf.tidy(() => tf.norm(tf.sub(a, c)).dataSync()[0] / tf.norm(c).dataSync()[0])

  // The fused form (one op, closed-form gradient) against tfjs's own
  // differentiation of the plain ops, on both backends it runs on.
  for (const [backend, use] of [["cpu", useCpu], ["wasm", useWasm]] as const) {
    for (const withSilu of [false, true]) {
      it(`${withSilu ? "groupNormSilu" : "groupNorm"} equals the plain ops on ${backend}, gradients of input, scale and shift included`, async () => {
        await use()
        const x = tf.add(tf.mul(tf.randomNormal([2, 4, 4, 12], 0, 1, "float32", 1), 3), 1) as tf.Tensor4D
        const g = tf.randomNormal([12], 1, 0.5, "float32", 2)
        const b = tf.randomNormal([12], 0, 0.5, "float32", 3)
        const up = tf.randomNormal([2, 4, 4, 12], 0, 1, "float32", 4)
        const fused = (xx: tf.Tensor, gg: tf.Tensor, bb: tf.Tensor) =>
          tf.sum(tf.mul((withSilu ? groupNormSilu : groupNorm)({ "n.g": gg, "n.b": bb }, "n", xx as tf.Tensor4D, 3), up))
        const plain = (xx: tf.Tensor, gg: tf.Tensor, bb: tf.Tensor) => {
          const y = groupNormPlain({ "n.g": gg, "n.b": bb }, "n", xx as tf.Tensor4D, 3)
          return tf.sum(tf.mul(withSilu ? silu(y) : y, up))
        }
        assert.isTrue(speedups.groupNorm)
        assert.isBelow(rel(fused(x, g, b), plain(x, g, b)), 1e-5)
        const ours = tf.grads(fused)([x, g, b])
        const ref = tf.grads(plain)([x, g, b])
        ours.forEach((d, i) => assert.isBelow(rel(d, ref[i]), 1e-4, `gradient ${i}`))
        // The switch runs the plain form.
        speedups.groupNorm = false
        const off = tf.grads(fused)([x, g, b])
        speedups.groupNorm = true
        off.forEach((d, i) => assert.isBelow(rel(d, ref[i]), 1e-6, `switched off, gradient ${i}`))
        await useCpu()
      })
    }
  }
})
