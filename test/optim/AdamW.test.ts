import { assert, describe, it } from "@effect/vitest"
import { MathBackendCPU } from "@tensorflow/tfjs-backend-cpu"
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import { beforeAll } from "vitest"
import * as AdamW from "../../src/optim/AdamW.ts"
import { paramGrads } from "../../src/tensor/Grad.ts"
import * as HostRead from "../../src/tensor/HostRead.ts"
import { Rng } from "../../src/tensor/Random.ts"
import { useCpu, useWasm } from "../helpers.ts"

/** A backend that, like webgpu under Node, has no synchronous reads. */
class NoSyncRead extends MathBackendCPU {
  override readSync(): never {
    throw new Error("synchronous read on a device backend")
  }
  override read(dataId: object) {
    return Promise.resolve(super.readSync(dataId))
  }
}

describe("AdamW", () => {
  beforeAll(useCpu)

  it.effect("matches tfjs's Adam step for step when decay and clipping are off", () =>
    Effect.gen(function*() {
      const init = [0.5, -1.5, 2, 0.1]
      const ours = { w: tf.variable(tf.tensor1d(init)) }
      const ref = tf.variable(tf.tensor1d(init))
      const target = tf.tensor1d([1, 2, 3, 4])
      const state = AdamW.init(ours)
      const cfg = { ...AdamW.defaults, maxGradNorm: 0 }
      const refOpt = tf.train.adam(0.05, cfg.beta1, cfg.beta2, cfg.eps)
      for (let i = 0; i < 20; i++) {
        const { value, grads } = paramGrads(() => tf.sum(tf.square(tf.sub(ours.w, target))) as tf.Scalar, ours)
        yield* AdamW.step(ours, grads, state, 0.05, cfg)
        tf.dispose([value, ...Object.values(grads)])
        refOpt.minimize(() => tf.sum(tf.square(tf.sub(ref, target))) as tf.Scalar)
      }
      const a = ours.w.dataSync()
      const b = ref.dataSync()
      for (let i = 0; i < 4; i++) assert.closeTo(a[i], b[i], 1e-5)
      assert.strictEqual(state.step, 20)
    }))

  it.effect("clips the global gradient norm and applies decoupled weight decay", () =>
    Effect.gen(function*() {
      const p = { w: tf.variable(tf.tensor1d([1, 1])) }
      const s = AdamW.init(p)
      const g = { w: tf.tensor1d([300, 400]) }
      const norm = yield* AdamW.step(p, g, s, 0.1, { beta1: 0, beta2: 0, eps: 1e-12, weightDecay: 0.5, maxGradNorm: 1 })
      assert.closeTo(norm, 500, 1e-3)
      // beta1 = beta2 = 0: update = g/|g| elementwise = sign(g) = 1; decay 1 * (1 - 0.1*0.5).
      const w = p.w.dataSync()
      assert.closeTo(w[0], 0.95 - 0.1, 1e-5)
      assert.closeTo(s.m.w.dataSync()[1], 400 / 500, 1e-5) // moments see the clipped gradient
    }))

  it.effect("reports a non-finite gradient norm and changes nothing", () =>
    Effect.gen(function*() {
      const p = { w: tf.variable(tf.tensor1d([1, 2])) }
      const s = AdamW.init(p)
      const norm = yield* AdamW.step(p, { w: tf.tensor1d([NaN, 1]) }, s, 0.1, AdamW.paper)
      assert.isNaN(norm)
      assert.deepStrictEqual(Array.from(p.w.dataSync()), [1, 2])
      assert.strictEqual(s.step, 0)
      // The per-tensor form (the device backends') reads the norm first and applies nothing either.
      const perTensor = yield* AdamW.stepPerTensor(p, { w: tf.tensor1d([1, Infinity]) }, s, 0.1, AdamW.paper)
      assert.strictEqual(perTensor, Infinity)
      assert.deepStrictEqual(Array.from(p.w.dataSync()), [1, 2])
      assert.strictEqual(s.step, 0)
    }))

  // Parameters of several shapes, one without a gradient (it must not move).
  const setup = (seed: number) => {
    const rng = Rng.fromSeed(seed)
    const shapes: Record<string, Array<number>> = { a: [3, 3, 4, 5], b: [5], c: [7, 2], frozen: [4] }
    const params: Record<string, tf.Variable> = {}
    for (const [k, s] of Object.entries(shapes)) params[k] = tf.variable(tf.tensor(rng.normals(s.reduce((x, y) => x * y, 1)), s))
    const grads = (scale: number) =>
      Object.fromEntries(Object.entries(shapes).filter(([k]) => k !== "frozen").map(([k, s]) => [k, tf.tensor(rng.normals(s.reduce((x, y) => x * y, 1), scale), s)]))
    return { params, grads }
  }

  /**
   * Two copies of the same parameters, stepped side by side with the same
   * gradients: `AdamW.step` on `ours`, `AdamW.stepPerTensor` on `ref`.
   * `stepAt(scale)` returns both gradient norms.
   */
  const sideBySide = (seed: number, cfg: AdamW.AdamWConfig) => {
    const ours = setup(seed)
    const ref = setup(seed)
    const s1 = AdamW.init(ours.params)
    const s2 = AdamW.init(ref.params)
    const stepAt = (scale: number) =>
      Effect.gen(function*() {
        const g1 = ours.grads(scale)
        const g2 = ref.grads(scale)
        const n1 = yield* AdamW.step(ours.params, g1, s1, 0.01, cfg)
        const n2 = yield* AdamW.stepPerTensor(ref.params, g2, s2, 0.01, cfg)
        tf.dispose([...Object.values(g1), ...Object.values(g2)])
        return [n1, n2] as const
      })
    return { ours, ref, s1, s2, stepAt }
  }

  const close = (a: Record<string, tf.Tensor>, b: Record<string, tf.Tensor>, tol: number) => {
    for (const k of Object.keys(a)) {
      const x = a[k].dataSync()
      const y = b[k].dataSync()
      for (let i = 0; i < x.length; i++) assert.closeTo(x[i], y[i], tol * (1 + Math.abs(y[i])), `${k}[${i}]`)
    }
  }

  // Both backends: on wasm the update overwrites dataSync's copies, on cpu it must not.
  for (const [backend, use] of [["cpu", useCpu], ["wasm", useWasm]] as const) {
    it.effect(`the array update equals the per-tensor update (moments, weights, norm), with clipping and decay, on ${backend}`, () =>
      Effect.promise(use).pipe(Effect.andThen(Effect.gen(function*() {
        const { ours, ref, s1, s2, stepAt } = sideBySide(1, { beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0.1, maxGradNorm: 1 })
        for (let i = 0; i < 5; i++) {
          // Alternate clipped (norm ~ 30) and unclipped (norm ~ 0.3) steps.
          const [n1, n2] = yield* stepAt(i % 2 === 0 ? 3 : 0.03)
          assert.closeTo(n1, n2, 1e-5 * n2)
        }
        assert.strictEqual(s1.step, 5)
        close(ours.params, ref.params, 1e-5)
        close(s1.m, s2.m, 1e-5)
        close(s1.v, s2.v, 1e-5)
        assert.deepStrictEqual(Array.from(ours.params.frozen.dataSync()), Array.from(ref.params.frozen.dataSync()))
        // The reference must have moved, or the comparison proves nothing.
        assert.isAbove(Math.abs(ref.params.a.dataSync()[0] - setup(1).params.a.dataSync()[0]), 1e-3)
      })), Effect.ensuring(Effect.promise(useCpu))))
  }

  it.effect("on a backend without synchronous reads (a GPU's) the update is the per-tensor one, read asynchronously", () =>
    Effect.gen(function*() {
      if (tf.findBackend("no-sync-read") === null) {
        tf.registerBackend("no-sync-read", () => new NoSyncRead())
        for (const k of tf.getKernelsForBackend("cpu")) tf.registerKernel({ ...k, backendName: "no-sync-read" })
      }
      yield* Effect.promise(() => tf.setBackend("no-sync-read"))
      const { ours, ref, s1, s2, stepAt } = sideBySide(3, { beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0.1, maxGradNorm: 1 })
      for (let i = 0; i < 3; i++) {
        const [n1, n2] = yield* stepAt(i % 2 === 0 ? 3 : 0.03)
        assert.strictEqual(n1, n2)
      }
      assert.strictEqual(s1.step, 3)
      for (const k of Object.keys(ours.params)) {
        assert.deepStrictEqual(yield* HostRead.float32(ours.params[k]), yield* HostRead.float32(ref.params[k]), k)
      }
      tf.dispose([...Object.values(ours.params), ...Object.values(ref.params)])
      AdamW.dispose(s1)
      AdamW.dispose(s2)
    }).pipe(Effect.ensuring(Effect.promise(useCpu))))

  it.effect("stepFlat takes the gradient as one array in parameter order", () =>
    Effect.gen(function*() {
      const a = setup(2)
      const b = setup(2)
      delete (a.params as Record<string, tf.Variable>).frozen
      delete (b.params as Record<string, tf.Variable>).frozen
      const g = a.grads(1)
      b.grads(1) // keep the two generators in step
      const flat = new Float32Array(Object.keys(a.params).flatMap((k) => [...g[k].dataSync()]))
      const sa = AdamW.init(a.params)
      const sb = AdamW.init(b.params)
      const n1 = yield* AdamW.step(a.params, g, sa, 0.01, AdamW.defaults)
      const n2 = AdamW.stepFlat(b.params, flat, sb, 0.01, AdamW.defaults)
      assert.strictEqual(n1, n2)
      close(a.params, b.params, 0)
      assert.throws(() => AdamW.stepFlat(b.params, flat.subarray(1), sb, 0.01, AdamW.defaults))
    }))
})
