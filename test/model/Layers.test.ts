import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { beforeAll } from "vitest"
import { linear } from "../../src/model/Layers.ts"
import { useCpu } from "../helpers.ts"

describe("linear", () => {
  beforeAll(useCpu)

  it("run as a 1x1 convolution on many rows, equals the matrix product, gradients included", () => {
    const x = tf.randomNormal([2, 16, 16, 12], 0, 1, "float32", 1) // 512 rows: the convolution path
    const w = tf.randomNormal([12, 5], 0, 1, "float32", 2)
    const b = tf.randomNormal([5], 0, 1, "float32", 3)
    const up = tf.randomNormal([2, 16, 16, 5], 0, 1, "float32", 4)
    const ours = (xx: tf.Tensor, ww: tf.Tensor) => tf.sum(tf.mul(linear({ "l.w": ww, "l.b": b }, "l", xx), up))
    const ref = (xx: tf.Tensor, ww: tf.Tensor) => tf.sum(tf.mul(tf.add(tf.reshape(tf.matMul(tf.reshape(xx, [-1, 12]) as tf.Tensor2D, ww as tf.Tensor2D), [2, 16, 16, 5]), b), up))
    const rel = (a: tf.Tensor, c: tf.Tensor) => tf.tidy(() => tf.norm(tf.sub(a, c)).dataSync()[0] / tf.norm(c).dataSync()[0])
    assert.isBelow(rel(ours(x, w), ref(x, w)), 1e-6)
    const [gx, gw] = tf.grads(ours)([x, w])
    const [rx, rw] = tf.grads(ref)([x, w])
    assert.isBelow(rel(gx, rx), 1e-5)
    assert.isBelow(rel(gw, rw), 1e-5)
    assert.deepStrictEqual(linear({ "l.w": w, "l.b": b }, "l", x).shape, [2, 16, 16, 5])
  })
})
