import { assert, describe, it } from "@effect/vitest"
import "@tensorflow/tfjs"
import * as tf from "@tensorflow/tfjs-core"
import { beforeAll } from "vitest"
import { conv2dSame, flipKernel, speedups } from "../../src/tensor/Conv.ts"
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

  // The JS permutation against the Reverse + Transpose kernels, on both backends where it runs.
  for (const backend of ["cpu", "wasm"] as const) {
    it(`flipKernel equals reverse + transpose on ${backend}`, async () => {
      if (backend === "wasm") await useWasm()
      for (const shape of [[3, 3, 4, 5], [5, 5, 2, 3], [1, 1, 6, 7]] as const) {
        const k = tf.randomNormal([...shape], 0, 1, "float32", 5) as tf.Tensor4D
        assert.isTrue(speedups.jsFlip)
        const ours = flipKernel(k)
        const ref = tf.transpose(tf.reverse(k, [0, 1]), [0, 1, 3, 2])
        assert.deepStrictEqual(ours.shape, ref.shape)
        assert.deepStrictEqual(Array.from(ours.dataSync()), Array.from(ref.dataSync()))
        tf.dispose([k, ours, ref])
      }
      await tf.setBackend("cpu")
    })
  }

  for (const backend of ["cpu", "wasm"] as const) {
    it(`the 1x1 filter gradient as one GEMM equals the general form on ${backend}`, async () => {
      if (backend === "wasm") await useWasm()
      const x = tf.randomNormal([1, 300, 1, 6], 0, 1, "float32", 6) as tf.Tensor4D
      const w = tf.randomNormal([1, 1, 6, 4], 0, 1, "float32", 7) as tf.Tensor4D
      const up = tf.randomNormal([1, 300, 1, 4], 0, 1, "float32", 8)
      const loss = (xx: tf.Tensor, ww: tf.Tensor) => tf.sum(tf.mul(conv2dSame(xx as tf.Tensor4D, ww as tf.Tensor4D), up))
      assert.isTrue(speedups.gemm1x1)
      const fast = tf.grads(loss)([x, w])
      speedups.gemm1x1 = false
      const general = tf.grads(loss)([x, w])
      speedups.gemm1x1 = true
      assert.isBelow(relErr(fast[1], general[1]), 1e-6)
      assert.isAbove(tf.norm(general[1]).dataSync()[0], 1)
      tf.dispose([x, w, up, ...fast, ...general])
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
