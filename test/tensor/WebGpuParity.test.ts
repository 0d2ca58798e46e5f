/**
 * The GPU path against wasm, in one process: the same weights and inputs
 * on both backends. Runs on any WebGPU adapter (CI: Mesa's lavapipe).
 */
import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { beforeAll } from "vitest"
import * as Denoiser from "../../src/model/Denoiser.ts"
import { forward } from "../../src/model/UNet.ts"
import { defaultConfig } from "../../src/model/UNetConfig.ts"
import { paramGrads } from "../../src/tensor/Grad.ts"
import * as HostRead from "../../src/tensor/HostRead.ts"
import { on, relativeError, skipGpu, useBoth } from "../gpu-helpers.ts"

const TOL = 1e-4

/** Host copies of a model's weights, so each backend builds its own. */
const hostWeights = async (m: Denoiser.Model) =>
  Object.fromEntries(await Promise.all(Object.entries(m.params).map(async ([k, v]) => [k, { shape: v.shape, data: await HostRead.promise(v) }] as const)))

describe.skipIf(skipGpu)("webgpu against wasm", () => {
  beforeAll(async () => {
    const adapter = await useBoth()
    console.log(`webgpu adapter: ${adapter.description} (${adapter.vendor}, ${adapter.architecture})`)
  })

  it("UNet forward and every parameter gradient agree within 1e-4 of their scale", async () => {
    // The default UNet, all weights perturbed (the zero-initialised output
    // conv would otherwise block every gradient below it).
    const weights = await on("wasm", async () => {
      const m = Denoiser.init(defaultConfig, 11)
      tf.tidy(() => {
        for (const v of Object.values(m.params)) v.assign(tf.add(v, tf.randomNormal(v.shape, 0, 0.05, "float32", 3)))
      })
      const w = await hostWeights(m)
      Denoiser.dispose(m)
      return w
    })
    const a = defaultConfig.architecture
    const xs = new Float32Array(2 * a.imageSize * a.imageSize * a.channels).map((_, i) => Math.sin(i * 0.37))
    const run = () => {
      const m = Denoiser.fromStored(defaultConfig, weights)
      const x = tf.tensor4d(xs, [2, a.imageSize, a.imageSize, a.channels])
      const input = () => Denoiser.encodeInputs(defaultConfig, x, [30, 700], ["a red square above a blue circle", "two green triangles"])
      const out = tf.tidy(() => forward(m.params, a, input()))
      // A loss that weighs every output element differently, so no gradient cancels.
      const wts = tf.tensor4d(xs.map((v) => v * 0.5 + 1), x.shape)
      const { value, grads } = paramGrads(() => tf.tidy(() => tf.sum(tf.mul(forward(m.params, a, input()), wts))) as tf.Scalar, m.params)
      return { m, tensors: [x, wts, value], out, grads }
    }
    const read = async (r: ReturnType<typeof run>) => {
      const out = await HostRead.promise(r.out)
      const grads: Record<string, Float32Array> = {}
      for (const [k, g] of Object.entries(r.grads)) grads[k] = await HostRead.promise(g)
      tf.dispose([...r.tensors, r.out, ...Object.values(r.grads)])
      Denoiser.dispose(r.m)
      return { out, grads }
    }
    const t0 = performance.now()
    const wasm = await on("wasm", () => read(run()))
    const t1 = performance.now()
    const gpu = await on("webgpu", () => read(run()))
    console.log(`wasm ${((t1 - t0) / 1000).toFixed(1)} s, webgpu ${((performance.now() - t1) / 1000).toFixed(1)} s`)
    const e = relativeError(wasm.out, gpu.out)
    assert.isAbove(e.range, 0)
    assert.isAtMost(e.maxAbs, TOL * e.range, `forward: max |diff| ${e.maxAbs} against range ${e.range}`)
    assert.deepStrictEqual(Object.keys(gpu.grads).sort(), Object.keys(wasm.grads).sort())
    assert.strictEqual(Object.keys(wasm.grads).length, Object.keys(weights).length)
    const worst = Object.keys(wasm.grads).map((k) => ({ k, ...relativeError(wasm.grads[k]!, gpu.grads[k]!) }))
      .map((r) => ({ ...r, ratio: r.maxAbs / r.range })).sort((p, q) => q.ratio - p.ratio)
    console.log(`forward: ${(e.maxAbs / e.range).toExponential(2)} of its scale; gradients: worst ${worst.slice(0, 3).map((r) => `${r.k} ${r.ratio.toExponential(2)}`).join(", ")}`)
    for (const r of worst) assert.isAtMost(r.maxAbs, TOL * r.range, `gradient of ${r.k}: max |diff| ${r.maxAbs} against range ${r.range}`)
  })
})
