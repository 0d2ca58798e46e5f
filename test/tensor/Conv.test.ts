import { assert, describe, it } from "@effect/vitest"
import "@tensorflow/tfjs"
import * as tf from "@tensorflow/tfjs-core"
import { beforeAll } from "vitest"
import { conv2dSame, conv2dSameBias } from "../../src/tensor/Conv.ts"
import { useWasm } from "../helpers.ts"

const relErr = (a: tf.Tensor, b: tf.Tensor) =>
  tf.tidy(() => tf.norm(tf.sub(a, b)).dataSync()[0] / Math.max(tf.norm(b).dataSync()[0], 1e-12))

describe("conv2dSame", () => {
  beforeAll(async () => {
    await tf.setBackend("cpu")
  })

  for (const [k, cin, cout, b] of [[3, 3, 5, 2], [3, 8, 4, 3], [1, 6, 7, 2], [5, 2, 3, 1]] as const) {
    it(`matches tfjs's own gradients on cpu (k=${k}, ${cin}->${cout}, batch ${b})`, () => {
      const x = tf.randomNormal([b, 9, 7, cin], 0, 1, "float32", 1) as tf.Tensor4D
      const w = tf.randomNormal([k, k, cin, cout], 0, 1, "float32", 2) as tf.Tensor4D
      const up = tf.randomNormal([b, 9, 7, cout], 0, 1, "float32", 3)
      const loss = (conv: (x: tf.Tensor4D, w: tf.Tensor4D) => tf.Tensor4D) => (xx: tf.Tensor, ww: tf.Tensor) =>
        tf.sum(tf.mul(conv(xx as tf.Tensor4D, ww as tf.Tensor4D), up))
      const [dxOurs, dwOurs] = tf.grads(loss(conv2dSame))([x, w])
      const [dxRef, dwRef] = tf.grads(loss((a, c) => tf.conv2d(a, c, 1, "same")))([x, w])
      assert.isBelow(relErr(conv2dSame(x, w), tf.conv2d(x, w, 1, "same")), 1e-6)
      assert.isBelow(relErr(dxOurs, dxRef), 1e-5)
      assert.isBelow(relErr(dwOurs, dwRef), 1e-5)
      tf.dispose([x, w, up, dxOurs, dwOurs, dxRef, dwRef])
    })
  }

  // The fused form runs FusedConv2D, so test it on wasm (where it is used) as well as cpu.
  for (const backend of ["cpu", "wasm"] as const) {
    it(`conv2dSameBias equals conv2dSame + bias on ${backend}, gradients of input, kernel and bias included`, async () => {
      if (backend === "wasm") await useWasm()
      const x = tf.randomNormal([2, 8, 8, 6], 0, 1, "float32", 1) as tf.Tensor4D
      const w = tf.randomNormal([3, 3, 6, 5], 0, 1, "float32", 2) as tf.Tensor4D
      const b = tf.randomNormal([5], 0, 1, "float32", 3) as tf.Tensor1D
      const up = tf.randomNormal([2, 8, 8, 5], 0, 1, "float32", 4)
      const fused = (xx: tf.Tensor, ww: tf.Tensor, bb: tf.Tensor) => tf.sum(tf.mul(conv2dSameBias(xx as tf.Tensor4D, ww as tf.Tensor4D, bb as tf.Tensor1D), up))
      const plain = (xx: tf.Tensor, ww: tf.Tensor, bb: tf.Tensor) => tf.sum(tf.mul(tf.add(conv2dSame(xx as tf.Tensor4D, ww as tf.Tensor4D), bb), up))
      assert.isBelow(relErr(conv2dSameBias(x, w, b), tf.add(conv2dSame(x, w), b)), 1e-6)
      const ours = tf.grads(fused)([x, w, b])
      const ref = tf.grads(plain)([x, w, b])
      ours.forEach((g, i) => assert.isBelow(relErr(g, ref[i]), 1e-5, `gradient ${i}`))
      // The bias gradient is not trivially zero (the comparison could fail).
      assert.isAbove(tf.norm(ref[2]).dataSync()[0], 1)
      tf.dispose([x, w, b, up, ...ours, ...ref])
      await tf.setBackend("cpu")
    })
  }

  it("rejects even kernels", () => {
    const x = tf.zeros([1, 4, 4, 1]) as tf.Tensor4D
    const w = tf.zeros([2, 2, 1, 1]) as tf.Tensor4D
    assert.throws(() => conv2dSame(x, w), /odd square kernel/)
    tf.dispose([x, w])
  })
})
