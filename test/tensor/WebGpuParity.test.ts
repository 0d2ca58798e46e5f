/**
 * The GPU path against wasm, in one process: the same weights and inputs
 * on both backends. Runs on any WebGPU adapter (CI: Mesa's lavapipe).
 */
import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import { beforeAll } from "vitest"
import * as Generate from "../../src/trajectory/Generate.ts"
import * as Lab from "../../src/lab/Lab.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import * as AdamW from "../../src/optim/AdamW.ts"
import * as Weights from "../../src/model/Weights.ts"
import { Backend } from "../../src/tensor/Backend.ts"
import * as WebGpu from "../../src/tensor/WebGpu.ts"
import * as Aggregate from "../../src/trajectory/Aggregate.ts"
import { PathSelector } from "../../src/trajectory/PathSelector.ts"
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
      // The clipping norm over all ~200 gradients (tfjs-webgpu's AddN would give 0 here).
      const norm = await Effect.runPromise(AdamW.globalNorm(r.grads))
      const out = await HostRead.promise(r.out)
      const grads: Record<string, Float32Array> = {}
      for (const [k, g] of Object.entries(r.grads)) grads[k] = await HostRead.promise(g)
      tf.dispose([...r.tensors, r.out, ...Object.values(r.grads)])
      Denoiser.dispose(r.m)
      return { out, grads, norm }
    }
    const t0 = performance.now()
    const wasm = await on("wasm", () => read(run()))
    const t1 = performance.now()
    const gpu = await on("webgpu", () => read(run()))
    console.log(`wasm ${((t1 - t0) / 1000).toFixed(1)} s, webgpu ${((performance.now() - t1) / 1000).toFixed(1)} s`)
    assert.isAbove(wasm.norm, 0)
    assert.isAtMost(Math.abs(gpu.norm - wasm.norm), 1e-5 * wasm.norm, `gradient norm ${gpu.norm} on webgpu, ${wasm.norm} on wasm`)
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

  it("work the GPU rejects fails the next host read (tfjs would return zeros)", async () => {
    await tf.setBackend("webgpu")
    // tfjs-webgpu's AddN binds all inputs at once; the device allows 8.
    const xs = Array.from({ length: 20 }, (_, i) => tf.scalar(i))
    const sum = tf.addN(xs)
    let error: unknown
    await HostRead.promise(sum).catch((e) => (error = e))
    assert.instanceOf(error, WebGpu.GpuValidationError)
    assert.match((error as Error).message, /the GPU rejected work.*storage buffers/)
    // Reported once; the rejected command buffer also held the inputs'
    // uploads, so only work on new tensors is right again.
    const ys = Array.from({ length: 20 }, (_, i) => tf.scalar(i))
    assert.deepStrictEqual(Array.from(await HostRead.promise(tf.sum(tf.stack(ys)))), [190])
    tf.dispose([...xs, ...ys, sum])
  })

  it("a DDIM-10 sample of 2 prompts from the base model: images within 2/255 of wasm's", async () => {
    const files = await Effect.runPromise(Weights.load("models/shapeworld-base").pipe(Effect.provide(NodeServices.layer)))
    const sample = () =>
      Effect.runPromise(Effect.gen(function*() {
        const model = Denoiser.fromStored(files.config, files.weights, false)
        const images = yield* Generate.generate(model, ["a red square above a blue circle", "two green triangles"], { steps: 10, cfg: 5, eta: 0, seed: 7, batchSize: 2 })
        Denoiser.dispose(model)
        return images
      }))
    const wasm = await on("wasm", sample)
    const gpu = await on("webgpu", sample)
    assert.strictEqual(gpu.length, 2)
    for (let i = 0; i < 2; i++) {
      let sum = 0
      for (let j = 0; j < wasm[i]!.length; j++) sum += Math.abs(wasm[i]![j]! - gpu[i]![j]!)
      const mad = sum / wasm[i]!.length
      console.log(`image ${i}: mean |diff| ${(mad * 255).toFixed(4)}/255`)
      assert.isAtMost(mad, 2 / 255, `image ${i}: mean absolute difference ${mad * 255}/255`)
    }
  })

  it("image-level RLHF sharpening of the lab MLP: the same paths and losses within 1e-4 over 3 iterations, memory flat after the first", async () => {
    const run = (backend: "wasm" | "webgpu") => {
      const chosen: Array<string> = []
      // The default selection (best and worst by reward), recorded.
      const selector = PathSelector.custom((scores) => {
        const pick = { best: Aggregate.argmax(scores), worst: Aggregate.argmin(scores) }
        chosen.push(`${pick.best.join(",")}|${pick.worst.join(",")}`)
        return pick
      })
      const method = Lab.methods.find((m) => m.name === "rlhf-image")!
      return Effect.runPromise(
        Lab.run(method, { modelDir: "models/lab-ring", reward: "mode", seed: 0, budget: 0, evalSamples: 256, backend: Backend.make(backend), overrides: { iterations: 3 }, selector })
          .pipe(Effect.provide(NodeServices.layer), Effect.map((r) => ({ r, chosen, gpu: WebGpu.memory() })))
      )
    }
    const wasm = await run("wasm")
    const gpu = await run("webgpu")
    assert.strictEqual(gpu.r.records.length, 3)
    assert.deepStrictEqual(gpu.chosen, wasm.chosen, "selected paths")
    const rel = wasm.r.records.map((w, i) => Math.abs(w.loss - gpu.r.records[i]!.loss) / Math.abs(w.loss))
    console.log(`loss, relative difference per iteration: ${rel.map((r) => r.toExponential(1)).join(", ")}`)
    for (let i = 0; i < 3; i++) {
      const a = wasm.r.records[i]!.loss
      const b = gpu.r.records[i]!.loss
      assert.isAtMost(Math.abs(a - b), 1e-4 * Math.abs(a), `iteration ${i}: loss ${b} on webgpu, ${a} on wasm`)
    }
    // Flat over iterations: the first is warm-up (the buffer pool fills).
    const recs = gpu.r.records
    console.log(`webgpu: live tensors ${recs.map((r) => r.liveTensors).join(", ")}; GPU bytes ${recs.map((r) => r.gpuBytes).join(", ")}; allocated ${recs.map((r) => r.gpuAllocatedBytes).join(", ")}`)
    assert.isDefined(recs[0]!.gpuBytes)
    for (const r of recs.slice(1)) {
      assert.strictEqual(r.liveTensors, recs[0]!.liveTensors, "live tensors")
      assert.strictEqual(r.gpuBytes, recs[1]!.gpuBytes, "GPU bytes of live tensors")
      assert.strictEqual(r.gpuAllocatedBytes, recs[1]!.gpuAllocatedBytes, "GPU bytes allocated")
    }
  })
})
