import { assert, beforeAll, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import { DiffusionError, Noise, Schedule } from "../../src/diffusion/index.ts"
import { Rng } from "../../src/tensor/Random.ts"
import { maxAbsDiff, noLeak, throwsTyped, useCpu } from "./helpers.ts"

const schedule = Schedule.make(Schedule.sdxl)
const rng = Rng.fromSeed(1)
const randn = (shape: Array<number>) => tf.tensor(rng.normals(shape.reduce((a, b) => a * b, 1)), shape)

beforeAll(useCpu)

describe("Noise", () => {
  it("addNoise = alpha_t x0 + sigma_t eps, scalar and per-batch t", () => {
    const x0 = randn([3, 2, 2, 1])
    const eps = randn([3, 2, 2, 1])
    const xt = Noise.addNoise(schedule, x0, eps, 400)
    const a = Math.sqrt(schedule.alphasCumprod[400])
    const s = Math.sqrt(1 - schedule.alphasCumprod[400])
    const x0d = x0.dataSync()
    const ed = eps.dataSync()
    const xd = xt.dataSync()
    for (let i = 0; i < xd.length; i++) assert.closeTo(xd[i], a * x0d[i] + s * ed[i], 1e-6)
    assert.strictEqual(xt.dtype, "float32")
    assert.deepStrictEqual(xt.shape, [3, 2, 2, 1])

    const ts = [0, 500, 999]
    const batched = Noise.addNoise(schedule, x0, eps, ts)
    ts.forEach((t, i) => {
      const one = Noise.addNoise(schedule, x0, eps, t)
      const row = tf.tidy(() => tf.slice(one, [i], [1]))
      const brow = tf.tidy(() => tf.slice(batched, [i], [1]))
      assert.isBelow(maxAbsDiff(row, brow), 1e-7)
      tf.dispose([one, row, brow])
    })
    tf.dispose([x0, eps, xt, batched])
  })

  it("conversions round-trip (eps, x0, v) for per-batch timesteps, rank 2 and 4", () => {
    for (const shape of [[4, 5], [4, 3, 3, 2]]) {
      const x0 = randn(shape)
      const eps = randn(shape)
      const t = [0, 1, 480, 999]
      noLeak(() => {
        const xt = Noise.addNoise(schedule, x0, eps, t)
        const v = Noise.vTarget(schedule, x0, eps, t)
        const e = Noise.epsilonTarget(schedule, x0, eps, t)
        const checks: Array<[tf.Tensor, tf.Tensor, number]> = [
          [Noise.x0FromEps(schedule, xt, eps, t), x0, 2e-4], // 1/alpha_999 ~ 15 amplifies float32 rounding
          [Noise.epsFromX0(schedule, xt, x0, t), eps, 5e-3], // 1/sigma_0 ~ 34
          [Noise.x0FromV(schedule, xt, v, t), x0, 1e-5],
          [Noise.epsFromV(schedule, xt, v, t), eps, 1e-5],
          [Noise.vFromEpsX0(schedule, eps, x0, t), v, 0],
          [e, eps, 0]
        ]
        for (const [got, want, tol] of checks) {
          assert.strictEqual(got.dtype, "float32")
          assert.deepStrictEqual(got.shape, shape)
          assert.isAtMost(maxAbsDiff(got, want), tol)
        }
        assert.notStrictEqual(e, eps, "epsilonTarget returns a copy owned by the caller")
        tf.dispose([xt, v, ...checks.map((c) => c[0])])
      })
      tf.dispose([x0, eps])
    }
  })

  it("v parameterisation: alpha^2 + sigma^2 = 1 identities", () => {
    const x0 = randn([2, 2, 2, 1])
    const eps = randn([2, 2, 2, 1])
    const t = 250
    const a = Schedule.alpha(schedule, t)
    const s = Schedule.sigma(schedule, t)
    const xt = Noise.addNoise(schedule, x0, eps, t)
    const v = Noise.vTarget(schedule, x0, eps, t)
    // v = alpha * eps - sigma * x0 elementwise
    const vd = v.dataSync()
    const x0d = x0.dataSync()
    const ed = eps.dataSync()
    for (let i = 0; i < vd.length; i++) assert.closeTo(vd[i], a * ed[i] - s * x0d[i], 1e-6)
    tf.dispose([x0, eps, xt, v])
  })

  it("rejects bad timesteps, shapes and dtypes with typed errors", () => {
    const x = tf.zeros([2, 2, 2, 1])
    const y = tf.zeros([2, 2, 2, 2])
    noLeak(() => {
      for (const t of [1000, -1, 2.5, Number.NaN]) {
        const e = throwsTyped(() => Noise.addNoise(schedule, x, x, t), DiffusionError.InvalidTimestep)
        assert.strictEqual(e._tag, "InvalidTimestep")
        assert.deepStrictEqual([e.t, e.trainSteps], [t, 1000])
      }
      throwsTyped(() => Noise.x0FromEps(schedule, x, x, [3, 1000]), DiffusionError.InvalidTimestep)
      const s1 = throwsTyped(() => Noise.addNoise(schedule, x, y, 3), DiffusionError.ShapeMismatch)
      assert.deepStrictEqual([s1.what, s1.expected, s1.got], ["eps", [2, 2, 2, 1], [2, 2, 2, 2]])
      const s2 = throwsTyped(() => Noise.addNoise(schedule, x, x, [1, 2, 3]), DiffusionError.ShapeMismatch)
      assert.deepStrictEqual([s2.expected, s2.got], [[2], [3]])
      assert.include(s2.message, "timesteps")
      const xi = tf.zeros([2, 2, 2, 1], "int32")
      const d = throwsTyped(() => Noise.addNoise(schedule, xi, x, 3), DiffusionError.InvalidArgument)
      assert.deepStrictEqual([d.name, d.value], ["x0", "int32"])
      xi.dispose()
    })
    tf.dispose([x, y])
  })

  it.effect("attempt turns a thrown DiffusionError into a typed failure", () =>
    Effect.gen(function*() {
      const x = tf.zeros([1, 1, 1, 1])
      const err = yield* Effect.flip(DiffusionError.attempt(() => Noise.addNoise(schedule, x, x, 1000)))
      assert.strictEqual(err._tag, "InvalidTimestep")
      const ok = yield* DiffusionError.attempt(() => Noise.addNoise(schedule, x, x, 10))
      assert.deepStrictEqual(ok.shape, [1, 1, 1, 1])
      tf.dispose([x, ok])
    }))

  it("gaussianSource is reproducible from a seed", () => {
    const a = Noise.gaussianSource(Rng.fromSeed(42))([2, 3, 3, 1])
    const b = Noise.gaussianSource(Rng.fromSeed(42))([2, 3, 3, 1])
    const c = Noise.gaussianSource(Rng.fromSeed(43))([2, 3, 3, 1])
    assert.deepStrictEqual(a.shape, [2, 3, 3, 1])
    assert.strictEqual(a.dtype, "float32")
    assert.strictEqual(maxAbsDiff(a, b), 0)
    assert.isAbove(maxAbsDiff(a, c), 0)
    tf.dispose([a, b, c])
  })
})
