import { assert, beforeAll, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import { Ddim, DiffusionError, Estimators, Noise, Schedule } from "../../src/diffusion/index.ts"
import { Rng } from "../../src/tensor/Random.ts"
import { maxAbsDiff, noLeak, throwsTyped, useCpu } from "./helpers.ts"

const schedule = Schedule.make(Schedule.sdxl)
const A = (t: number) => Schedule.alpha(schedule, t)
const S = (t: number) => Schedule.sigma(schedule, t)

/**
 * Data x0 ~ N(mu, s0^2) independently per pixel. Then x_t ~ N(a mu, a^2 s0^2 + s^2)
 * and (eps, x_t) are jointly Gaussian with Cov(eps, x_t) = s, so the optimal
 * (MMSE) epsilon prediction is the linear regression
 *   eps*(x_t, t) = E[eps | x_t] = s (x_t - a mu) / (a^2 s0^2 + s^2)
 * (= -s * score, as the score of N(a mu, v) is -(x - a mu) / v).
 * In y = x / a and lambda = s / a the PF-ODE (DDIM's continuous limit) is
 *   dy/dlambda = eps* = lambda (y - mu) / (s0^2 + lambda^2),
 * so (y - mu) / sqrt(s0^2 + lambda^2) is conserved and the exact solution at t = 0 (lambda = 0) is
 *   x0 = mu + s0 (x_t - a mu) / sqrt(a^2 s0^2 + s^2).
 */
const mu = 0.3
const s0 = 0.5
const epsStar = (x: number, t: number) => (S(t) * (x - A(t) * mu)) / (A(t) ** 2 * s0 ** 2 + S(t) ** 2)
const exactX0 = (x: number, t: number) => mu + (s0 * (x - A(t) * mu)) / Math.sqrt(A(t) ** 2 * s0 ** 2 + S(t) ** 2)
const analytic: Ddim.Denoiser = (xt, t) =>
  tf.tidy(() => tf.mul(tf.sub(xt, A(t) * mu), S(t) / (A(t) ** 2 * s0 ** 2 + S(t) ** 2)))

/** Independent float64 DDIM (eta = 0) on a scalar, for the same grid. */
const ddimScalar = (x: number, grid: ReadonlyArray<number>) => {
  for (let j = 0; j + 1 < grid.length; j++) {
    const [t, p] = [grid[j], grid[j + 1]]
    const e = epsStar(x, t)
    const x0 = (x - S(t) * e) / A(t)
    x = A(p) * x0 + S(p) * e
  }
  return x
}

const xtValues = [-2, -0.5, 0.7, 3, 1.2, -1.1, 0.05, 2.2]
const xtOf = () => tf.tensor4d(xtValues, [2, 2, 2, 1])

beforeAll(useCpu)

describe("analytic Gaussian test problem", () => {
  it("eps* is E[eps | x_t] (Monte Carlo regression of eps on x_t)", () => {
    const rng = Rng.fromSeed(21)
    const n = 200_000
    for (const t of [100, 600, 999]) {
      const x0 = rng.normals(n, s0)
      const eps = rng.normals(n)
      let [mx, me, sxx, sxe] = [0, 0, 0, 0]
      const xs = new Float64Array(n)
      for (let i = 0; i < n; i++) {
        xs[i] = A(t) * (mu + x0[i]) + S(t) * eps[i]
        mx += xs[i] / n
        me += eps[i] / n
      }
      for (let i = 0; i < n; i++) {
        sxx += (xs[i] - mx) ** 2
        sxe += (xs[i] - mx) * (eps[i] - me)
      }
      const slope = sxe / sxx
      const intercept = me - slope * mx
      const wantSlope = S(t) / (A(t) ** 2 * s0 ** 2 + S(t) ** 2)
      assert.closeTo(slope / wantSlope, 1, 0.01, `t = ${t}`)
      assert.closeTo(intercept, -wantSlope * A(t) * mu, 0.01)
    }
  })

  it("the closed-form flow solves the PF-ODE (float64 RK4 in lambda = sigma/alpha)", () => {
    for (const t of [50, 500, 999]) {
      const lam0 = S(t) / A(t)
      const f = (y: number, l: number) => (l * (y - mu)) / (s0 ** 2 + l ** 2)
      for (const x of [-2, 0.7, 3]) {
        let y = x / A(t)
        const n = 20_000
        const h = -lam0 / n
        for (let i = 0; i < n; i++) {
          const l = lam0 + i * h
          const k1 = f(y, l)
          const k2 = f(y + (h / 2) * k1, l + h / 2)
          const k3 = f(y + (h / 2) * k2, l + h / 2)
          const k4 = f(y + h * k3, l + h)
          y += (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
        }
        assert.closeTo(y, exactX0(x, t), 1e-9)
      }
    }
  })
})

describe("Estimators", () => {
  it("tweedie = (x_t - sigma_t eps) / alpha_t, per-batch t", () => {
    const xt = xtOf()
    const eps = tf.tidy(() => tf.mul(xt, 0.3)) as tf.Tensor4D
    noLeak(() => {
      const x0 = Estimators.tweedie(schedule, xt, eps, [700, 20])
      const d = x0.dataSync()
      xtValues.forEach((x, i) => {
        const t = i < 4 ? 700 : 20
        assert.closeTo(d[i], (x - S(t) * 0.3 * x) / A(t), 1e-5)
      })
      x0.dispose()
    })
    tf.dispose([xt, eps])
  })

  it("pfOde with k = 1 equals tweedie (1 NFE)", () => {
    const xt = xtOf()
    for (const t of [0, 10, 480, 999]) {
      let calls = 0
      const counted: Ddim.Denoiser = (x, s) => (calls++, analytic(x, s))
      noLeak(() => {
        const a = Estimators.pfOde({ schedule, denoise: counted, xt, t, k: 1 })
        const eps = analytic(xt, t)
        const b = Estimators.tweedie(schedule, xt, eps, t)
        assert.strictEqual(maxAbsDiff(a, b), 0)
        tf.dispose([a, b, eps])
      })
      assert.strictEqual(calls, 1)
    }
    xt.dispose()
  })

  it("pfOde converges to the exact ODE solution as k grows (analytic Gaussian denoiser)", () => {
    const xt = xtOf()
    for (const t of [999, 500, 100]) {
      const exact = tf.tensor4d(xtValues.map((x) => exactX0(x, t)), [2, 2, 2, 1])
      const ks = [1, 2, 5, 10, 50, 100, t + 1]
      const errs = ks.map((k) => {
        let calls = 0
        return noLeak(() => {
          const x0 = Estimators.pfOde({ schedule, denoise: (x, s) => (calls++, analytic(x, s)), xt, t, k })
          assert.strictEqual(calls, k, "NFE = k")
          assert.deepStrictEqual(x0.shape, [2, 2, 2, 1])
          assert.strictEqual(x0.dtype, "float32")
          // the tfjs solver is exactly the DDIM discretisation on pfOdeGrid (independent float64 reference)
          const grid = Estimators.pfOdeGrid(1000, t, k)
          const ref = xtValues.map((x) => ddimScalar(x, grid))
          const d = x0.dataSync()
          ref.forEach((r, i) => assert.closeTo(d[i], r, 2e-4))
          const e = maxAbsDiff(x0, exact)
          x0.dispose()
          return e
        })
      })
      for (let i = 1; i < errs.length; i++) assert.isBelow(errs[i], errs[i - 1], `t = ${t}: ${errs}`)
      // first order: 10x the steps gives roughly 10x smaller error
      assert.isAbove(errs[3] / errs[5], 5)
      // the finest grid (every training timestep) is close to the exact flow
      assert.isBelow(errs[errs.length - 1], 0.01, `t = ${t}`)
      assert.isBelow(errs[errs.length - 1], errs[0] / 40)
      exact.dispose()
    }
    xt.dispose()
  })

  it("pfOdeGrid spans t .. -1 in k steps; epsAtT saves one model call", () => {
    assert.deepStrictEqual(Estimators.pfOdeGrid(1000, 999, 1), [999, -1])
    assert.deepStrictEqual(Estimators.pfOdeGrid(1000, 999, 4), [999, 749, 499, 249, -1])
    assert.deepStrictEqual(Estimators.pfOdeGrid(1000, 2, 3), [2, 1, 0, -1])
    const xt = xtOf()
    const eps = analytic(xt, 600)
    let calls = 0
    noLeak(() => {
      const a = Estimators.pfOde({ schedule, denoise: (x, s) => (calls++, analytic(x, s)), xt, t: 600, k: 4, epsAtT: eps })
      const b = Estimators.pfOde({ schedule, denoise: analytic, xt, t: 600, k: 4 })
      assert.strictEqual(calls, 3)
      assert.isBelow(maxAbsDiff(a, b), 1e-6)
      tf.dispose([a, b])
    })
    assert.isFalse(eps.isDisposed)
    tf.dispose([xt, eps])
  })

  it("typed errors: k out of range, t out of range, bad shapes; nothing leaks on failure", () => {
    const xt = xtOf()
    noLeak(() => {
      const e1 = throwsTyped(() => Estimators.pfOde({ schedule, denoise: analytic, xt, t: 10, k: 12 }), DiffusionError.InvalidArgument)
      assert.deepStrictEqual([e1.name, e1.value], ["k", 12])
      assert.include(e1.message, "t + 1 = 11")
      throwsTyped(() => Estimators.pfOde({ schedule, denoise: analytic, xt, t: 10, k: 0 }), DiffusionError.InvalidArgument)
      const e2 = throwsTyped(() => Estimators.pfOde({ schedule, denoise: analytic, xt, t: 1000, k: 1 }), DiffusionError.InvalidTimestep)
      assert.deepStrictEqual([e2.t, e2.trainSteps], [1000, 1000])
      const z = tf.zeros([1])
      throwsTyped(() => Estimators.tweedie(schedule, xt, z, 5), DiffusionError.ShapeMismatch)
      z.dispose()
      let calls = 0
      const flaky: Ddim.Denoiser = (x, s) => (++calls === 3 ? (tf.zeros([1, 1, 1, 1]) as tf.Tensor4D) : analytic(x, s))
      const e3 = throwsTyped(() => Estimators.pfOde({ schedule, denoise: flaky, xt, t: 500, k: 5 }), DiffusionError.ShapeMismatch)
      assert.include(e3.what, "denoiser output")
    })
    xt.dispose()
  })

  it.effect("pfOdeEffect surfaces typed failures", () =>
    Effect.gen(function*() {
      const xt = xtOf()
      const e = yield* Effect.flip(Estimators.pfOdeEffect({ schedule, denoise: analytic, xt, t: 5, k: 7 }))
      assert.strictEqual(e._tag, "InvalidArgument")
      const ok = yield* Estimators.pfOdeEffect({ schedule, denoise: analytic, xt, t: 5, k: 6 })
      assert.deepStrictEqual(ok.shape, [2, 2, 2, 1])
      tf.dispose([ok, xt])
    }))

  it("pfOde of a noised sample with the oracle denoiser returns x0 for every k", () => {
    const rng = Rng.fromSeed(22)
    const x0 = tf.tensor(rng.normals(2 * 3 * 3 * 2), [2, 3, 3, 2]) as tf.Tensor4D
    const eps = tf.tensor(rng.normals(2 * 3 * 3 * 2), [2, 3, 3, 2]) as tf.Tensor4D
    const xt = Noise.addNoise(schedule, x0, eps, 700)
    for (const k of [1, 3, 20]) {
      const est = Estimators.pfOde({ schedule, denoise: (x, t) => Noise.epsFromX0(schedule, x, x0, t), xt, t: 700, k })
      assert.isBelow(maxAbsDiff(est, x0), 1e-4)
      est.dispose()
    }
    tf.dispose([x0, eps, xt])
  })
})
