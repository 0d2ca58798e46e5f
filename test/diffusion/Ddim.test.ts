import { assert, beforeAll, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import "@tensorflow/tfjs-core/dist/register_all_gradients.js"
import { Effect } from "effect"
import { Ddim, DiffusionError, Noise, Schedule } from "../../src/diffusion/index.ts"
import { Rng } from "../../src/tensor/Random.ts"
import { maxAbsDiff, noLeak, throwsTyped, useCpu } from "./helpers.ts"

const schedule = Schedule.make(Schedule.sdxl)
const abar = (t: number) => (t < 0 ? 1 : schedule.alphasCumprod[t])
const shape: [number, number, number, number] = [2, 4, 4, 3]
const randn = (rng: Rng, s: [number, number, number, number] = shape) => tf.tensor4d(rng.normals(s.reduce((a, b) => a * b, 1)), s)

/** The eps consistent with a known x0: eps = (x_t - alpha_t x0) / sigma_t. */
const oracle = (x0: tf.Tensor4D): Ddim.Denoiser => (xt, t) => Noise.epsFromX0(schedule, xt, x0, t)

/** A smooth non-trivial denoiser for determinism tests. */
const toyDenoiser: Ddim.Denoiser = (xt, t) => tf.tidy(() => tf.mul(tf.tanh(xt), 0.5 + t / 2000))

beforeAll(useCpu)

describe("Ddim.timesteps", () => {
  it("leading spacing with steps_offset 0, descending", () => {
    const ts = Ddim.timesteps(1000, 50)
    assert.strictEqual(ts.length, 50)
    assert.deepStrictEqual([ts[0], ts[1], ts[48], ts[49]], [980, 960, 20, 0])
    assert.deepStrictEqual(Ddim.timesteps(1000, 3), [666, 333, 0])
    assert.deepStrictEqual(Ddim.timesteps(10, 3), [6, 3, 0])
    assert.deepStrictEqual(Ddim.timesteps(1000, 1), [0])
    assert.deepStrictEqual(Ddim.timesteps(1000, 1000).slice(0, 2), [999, 998])
    assert.deepStrictEqual(Ddim.timesteps(1000, 50, 1).slice(0, 2), [981, 961])
    assert.strictEqual(Ddim.prevTimestep(980, 1000, 50), 960)
    assert.strictEqual(Ddim.prevTimestep(0, 1000, 50), -1)
    assert.strictEqual(Ddim.prevTimestep(15, 1000, 50), -1)
    assert.deepStrictEqual(Ddim.trajectory(1000, 50, 500), [500, 480, 460, 440, 420, 400, 380, 360, 340, 320, 300, 280, 260, 240, 220, 200, 180, 160, 140, 120, 100, 80, 60, 40, 20, 0])
  })

  it("rejects inferenceSteps outside [1, trainSteps] and bad offsets", () => {
    const e = throwsTyped(() => Ddim.timesteps(1000, 1001), DiffusionError.InvalidArgument)
    assert.deepStrictEqual([e.name, e.value], ["inferenceSteps", 1001])
    assert.include(e.message, "trainSteps = 1000")
    throwsTyped(() => Ddim.timesteps(1000, 0), DiffusionError.InvalidArgument)
    throwsTyped(() => Ddim.timesteps(1000, 2.5), DiffusionError.InvalidArgument)
    const o = throwsTyped(() => Ddim.timesteps(1000, 50, 20), DiffusionError.InvalidArgument)
    assert.strictEqual(o.name, "stepsOffset")
    throwsTyped(() => Ddim.prevTimestep(1000, 1000, 50), DiffusionError.InvalidTimestep)
  })
})

describe("Ddim.step", () => {
  it("std formula, mean, prevSample = mean + std * noise", () => {
    const rng = Rng.fromSeed(3)
    const xt = randn(rng)
    const eps = randn(rng)
    const noise = randn(rng)
    const [t, tPrev, eta] = [500, 480, 0.6]
    noLeak(() => {
      const r = Ddim.step({ schedule, eps, t, tPrev, xt, eta, noise })
      const at = abar(t)
      const ap = abar(tPrev)
      const std = eta * Math.sqrt((1 - ap) / (1 - at)) * Math.sqrt(1 - at / ap)
      assert.closeTo(r.std as number, std, 1e-15)
      const x = xt.dataSync()
      const e = eps.dataSync()
      const z = noise.dataSync()
      const [x0d, md, pd] = [r.x0Pred.dataSync(), r.mean.dataSync(), r.prevSample.dataSync()]
      for (let i = 0; i < x.length; i++) {
        const x0 = (x[i] - Math.sqrt(1 - at) * e[i]) / Math.sqrt(at)
        const m = Math.sqrt(ap) * x0 + Math.sqrt(1 - ap - std * std) * e[i]
        assert.closeTo(x0d[i], x0, 1e-5)
        assert.closeTo(md[i], m, 1e-5)
        assert.closeTo(pd[i], m + std * z[i], 1e-5)
      }
      for (const k of ["prevSample", "x0Pred", "mean"] as const) {
        assert.strictEqual(r[k].dtype, "float32")
        assert.deepStrictEqual(r[k].shape, shape)
      }
      tf.dispose([r.prevSample, r.x0Pred, r.mean])
    })
    // eta = 1 is the DDPM posterior variance; the last step (tPrev = -1) is deterministic and lands on x0Pred.
    const r1 = Ddim.step({ schedule, eps, t, tPrev, xt, eta: 1, noise })
    assert.closeTo((r1.std as number) ** 2, ((1 - abar(tPrev)) / (1 - abar(t))) * (1 - abar(t) / abar(tPrev)), 1e-15)
    const rl = Ddim.step({ schedule, eps, t: 20, tPrev: -1, xt, eta: 1 })
    assert.strictEqual(rl.std, 0)
    assert.strictEqual(maxAbsDiff(rl.prevSample, rl.x0Pred), 0)
    tf.dispose([r1.prevSample, r1.x0Pred, r1.mean, rl.prevSample, rl.x0Pred, rl.mean, xt, eps, noise])
  })

  it("per-batch t/tPrev equals per-item steps", () => {
    const rng = Rng.fromSeed(4)
    const xt = randn(rng)
    const eps = randn(rng)
    const noise = randn(rng)
    const r = Ddim.step({ schedule, eps, t: [700, 40], tPrev: [650, -1], xt, eta: 0.8, noise })
    assert.isArray(r.std)
    const stds = r.std as ReadonlyArray<number>
    ;[[700, 650], [40, -1]].forEach(([t, tPrev], i) => {
      const one = Ddim.step({ schedule, eps, t, tPrev, xt, eta: 0.8, noise })
      assert.closeTo(stds[i], one.std as number, 1e-15)
      const a = tf.tidy(() => tf.slice(one.prevSample, [i], [1]))
      const b = tf.tidy(() => tf.slice(r.prevSample, [i], [1]))
      assert.isBelow(maxAbsDiff(a, b), 1e-6)
      tf.dispose([a, b, one.prevSample, one.x0Pred, one.mean])
    })
    tf.dispose([r.prevSample, r.x0Pred, r.mean, xt, eps, noise])
  })

  it("clipSample clips x0Pred to the range and re-derives eps", () => {
    const xt = tf.fill(shape, 3) as tf.Tensor4D
    const eps = tf.zeros(shape) as tf.Tensor4D
    const r = Ddim.step({ schedule, eps, t: 100, tPrev: 50, xt, clipSample: 1 })
    assert.closeTo(tf.max(r.x0Pred).dataSync()[0], 1, 1e-7)
    // with x0 = 1 and eps' = (xt - sqrt(a_t)) / sqrt(1 - a_t) the mean is consistent with xt
    const at = abar(100)
    const ap = abar(50)
    const epsC = (3 - Math.sqrt(at)) / Math.sqrt(1 - at)
    assert.closeTo(r.mean.dataSync()[0], Math.sqrt(ap) + Math.sqrt(1 - ap) * epsC, 1e-4)
    const u = Ddim.step({ schedule, eps, t: 100, tPrev: 50, xt })
    assert.isAbove(tf.max(u.x0Pred).dataSync()[0], 3)
    tf.dispose([xt, eps, r.prevSample, r.x0Pred, r.mean, u.prevSample, u.x0Pred, u.mean])
  })

  it("typed errors: t range, tPrev >= t, eta < 0, missing noise, shapes", () => {
    const x = tf.zeros(shape) as tf.Tensor4D
    const y = tf.zeros([2, 4, 4, 1]) as tf.Tensor4D
    noLeak(() => {
      const e1 = throwsTyped(() => Ddim.step({ schedule, eps: x, t: 1000, tPrev: 980, xt: x }), DiffusionError.InvalidTimestep)
      assert.deepStrictEqual([e1.t, e1.trainSteps], [1000, 1000])
      throwsTyped(() => Ddim.step({ schedule, eps: x, t: 10, tPrev: -2, xt: x }), DiffusionError.InvalidTimestep)
      const e2 = throwsTyped(() => Ddim.step({ schedule, eps: x, t: 10, tPrev: 10, xt: x }), DiffusionError.InvalidArgument)
      assert.strictEqual(e2.name, "tPrev")
      const e3 = throwsTyped(() => Ddim.step({ schedule, eps: x, t: 10, tPrev: 5, xt: x, eta: -0.1 }), DiffusionError.InvalidArgument)
      assert.deepStrictEqual([e3.name, e3.value], ["eta", -0.1])
      const e4 = throwsTyped(() => Ddim.step({ schedule, eps: x, t: 10, tPrev: 5, xt: x, eta: 0.5 }), DiffusionError.InvalidArgument)
      assert.strictEqual(e4.name, "noise")
      const e5 = throwsTyped(() => Ddim.step({ schedule, eps: y, t: 10, tPrev: 5, xt: x }), DiffusionError.ShapeMismatch)
      assert.deepStrictEqual([e5.what, e5.expected, e5.got], ["eps", shape, [2, 4, 4, 1]])
      throwsTyped(() => Ddim.step({ schedule, eps: x, t: 10, tPrev: 5, xt: x, eta: 1, noise: y }), DiffusionError.ShapeMismatch)
      throwsTyped(() => Ddim.step({ schedule, eps: x, t: [10, 20, 30], tPrev: 5, xt: x }), DiffusionError.ShapeMismatch)
      const e6 = throwsTyped(() => Ddim.step({ schedule, eps: x, t: 500, tPrev: 400, xt: x, eta: 50, noise: x }), DiffusionError.InvalidArgument)
      assert.strictEqual(e6.name, "eta")
    })
    tf.dispose([x, y])
  })
})

describe("Ddim.logProb", () => {
  it("matches a hand computation (sum and DDPO's mean over pixels)", () => {
    const sample = tf.tensor4d([0.1, -0.2, 0.5, 1.0], [2, 1, 1, 2])
    const mean = tf.tensor4d([0.0, 0.1, 0.3, 0.4], [2, 1, 1, 2])
    const s = 0.3
    const c = -Math.log(s) - 0.5 * Math.log(2 * Math.PI)
    const lp = (x: number, m: number) => -((x - m) ** 2) / (2 * s * s) + c
    const want = [lp(0.1, 0) + lp(-0.2, 0.1), lp(0.5, 0.3) + lp(1.0, 0.4)]
    noLeak(() => {
      const got = Ddim.logProb(sample, mean, s)
      assert.deepStrictEqual(got.shape, [2])
      const d = got.dataSync()
      assert.closeTo(d[0], want[0], 1e-5)
      assert.closeTo(d[1], want[1], 1e-5)
      const avgT = Ddim.logProb(sample, mean, s, "mean")
      const avg = avgT.dataSync()
      assert.closeTo(avg[0], want[0] / 2, 1e-5)
      // per-batch std
      const s2 = [0.3, 0.7]
      const pbT = Ddim.logProb(sample, mean, s2)
      const pb = pbT.dataSync()
      const lp2 = (x: number, m: number) => -((x - m) ** 2) / (2 * 0.49) - Math.log(0.7) - 0.5 * Math.log(2 * Math.PI)
      assert.closeTo(pb[0], want[0], 1e-5)
      assert.closeTo(pb[1], lp2(0.5, 0.3) + lp2(1.0, 0.4), 1e-5)
      tf.dispose([got, avgT, pbT])
    })
    tf.dispose([sample, mean])
  })

  it("is the log density of the step's own transition and is differentiable in mean", () => {
    const rng = Rng.fromSeed(5)
    const xt = randn(rng)
    const eps = randn(rng)
    const noise = randn(rng)
    const r = Ddim.step({ schedule, eps, t: 300, tPrev: 280, xt, eta: 1, noise })
    const lp = Ddim.logProb(r.prevSample, r.mean, r.std)
    const std = r.std as number
    const D = 4 * 4 * 3
    const z = noise.dataSync()
    for (let b = 0; b < 2; b++) {
      let want = 0
      for (let i = 0; i < D; i++) want += -0.5 * z[b * D + i] ** 2 - Math.log(std) - 0.5 * Math.log(2 * Math.PI)
      assert.closeTo(lp.dataSync()[b], want, 1e-2)
    }
    const g = tf.grad((m: tf.Tensor) => tf.sum(Ddim.logProb(r.prevSample, m, std)))(r.mean)
    // d/dm = (x - m) / std^2 = noise / std
    assert.isBelow(maxAbsDiff(g, tf.tidy(() => tf.div(noise, std))), 1e-2)
    tf.dispose([xt, eps, noise, r.prevSample, r.x0Pred, r.mean, lp, g])
  })

  it("rejects std = 0 (deterministic step) and mismatched shapes", () => {
    const x = tf.zeros([2, 2, 2, 1])
    const y = tf.zeros([2, 2, 2, 2])
    noLeak(() => {
      const e = throwsTyped(() => Ddim.logProb(x, x, 0), DiffusionError.InvalidArgument)
      assert.deepStrictEqual([e.name, e.value], ["std", 0])
      throwsTyped(() => Ddim.logProb(x, x, [0.1, 0]), DiffusionError.InvalidArgument)
      throwsTyped(() => Ddim.logProb(x, x, [0.1, 0.2, 0.3]), DiffusionError.ShapeMismatch)
      throwsTyped(() => Ddim.logProb(x, y, 0.1), DiffusionError.ShapeMismatch)
    })
    tf.dispose([x, y])
  })
})

describe("Ddim.sample", () => {
  it("with the true noise (oracle eps from known x0) recovers x0 for several step counts and eta", () => {
    const rng = Rng.fromSeed(11)
    const x0 = tf.tidy(() => tf.tanh(randn(rng)))
    const eps0 = randn(rng)
    for (const inferenceSteps of [1, 2, 7, 50, 1000]) {
      for (const eta of [0, 1]) {
        const t0 = Ddim.timesteps(1000, inferenceSteps)[0]
        const xT = Noise.addNoise(schedule, x0, eps0, t0)
        const noise = Noise.gaussianSource(Rng.fromSeed(inferenceSteps))
        const err = noLeak(() => {
          const o = Ddim.sample({ schedule, denoise: oracle(x0), xT, inferenceSteps, eta, noise })
          assert.strictEqual(o.dtype, "float32")
          assert.deepStrictEqual(o.shape, shape)
          const e = maxAbsDiff(o, x0)
          o.dispose()
          return e
        })
        assert.isBelow(err, 1e-4, `steps ${inferenceSteps} eta ${eta}`)
        xT.dispose()
      }
    }
    tf.dispose([x0, eps0])
  })

  it("eta = 0 is deterministic; eta > 0 is reproducible from the seeded noise source", () => {
    const xT = randn(Rng.fromSeed(12))
    const run = (eta: number, seed: number) => {
      const before = tf.memory().numTensors
      const o = Ddim.sample({ schedule, denoise: toyDenoiser, xT, inferenceSteps: 20, eta, noise: Noise.gaussianSource(Rng.fromSeed(seed)) })
      const d = o.dataSync().slice()
      o.dispose()
      assert.strictEqual(tf.memory().numTensors, before, "sampler leaked tensors")
      return d
    }
    assert.deepStrictEqual(run(0, 1), run(0, 2))
    assert.deepStrictEqual(run(0.7, 9), run(0.7, 9))
    assert.notDeepEqual(run(0.7, 9), run(0.7, 10))
    assert.notDeepEqual(run(0.7, 9), run(0, 9))
    xT.dispose()
  })

  it("onStep sees the grid and the step tensors; nothing leaks even if a callback or the denoiser throws", () => {
    const xT = randn(Rng.fromSeed(13))
    const seen: Array<[number, number, number]> = []
    const before = tf.memory().numTensors
    const o = Ddim.sample({
      schedule,
      denoise: toyDenoiser,
      xT,
      inferenceSteps: 4,
      onStep: (s) => seen.push([s.index, s.t, s.tPrev])
    })
    o.dispose()
    assert.strictEqual(tf.memory().numTensors, before)
    assert.deepStrictEqual(seen, [[0, 750, 500], [1, 500, 250], [2, 250, 0], [3, 0, -1]])
    assert.throws(() =>
      Ddim.sample({ schedule, denoise: toyDenoiser, xT, inferenceSteps: 4, onStep: (s) => { if (s.index === 2) throw new Error("boom") } })
    )
    assert.strictEqual(tf.memory().numTensors, before)
    let calls = 0
    assert.throws(() =>
      Ddim.sample({ schedule, denoise: (x, t) => { if (++calls === 3) throw new Error("model failed"); return toyDenoiser(x, t) }, xT, inferenceSteps: 4 })
    )
    assert.strictEqual(tf.memory().numTensors, before)
    const bad = throwsTyped(
      () => Ddim.sample({ schedule, denoise: () => tf.zeros([1, 1, 1, 1]) as tf.Tensor4D, xT, inferenceSteps: 4 }),
      DiffusionError.ShapeMismatch
    )
    assert.include(bad.what, "denoiser output")
    assert.strictEqual(tf.memory().numTensors, before)
    // mid-trajectory start
    const traj: Array<number> = []
    Ddim.sample({ schedule, denoise: toyDenoiser, xT, inferenceSteps: 50, startTimestep: 90, onStep: (s) => traj.push(s.t) }).dispose()
    assert.deepStrictEqual(traj, [90, 70, 50, 30, 10])
    xT.dispose()
  })

  it.effect("sampleEffect: typed errors for inferenceSteps > trainSteps, eta < 0, missing noise", () =>
    Effect.gen(function*() {
      const xT = randn(Rng.fromSeed(14))
      const base = { schedule, denoise: toyDenoiser, xT }
      const e1 = yield* Effect.flip(Ddim.sampleEffect({ ...base, inferenceSteps: 1001 }))
      assert.strictEqual(e1._tag, "InvalidArgument")
      if (e1._tag === "InvalidArgument") assert.deepStrictEqual([e1.name, e1.value], ["inferenceSteps", 1001])
      const e2 = yield* Effect.flip(Ddim.sampleEffect({ ...base, inferenceSteps: 10, eta: -1 }))
      assert.strictEqual(e2._tag, "InvalidArgument")
      if (e2._tag === "InvalidArgument") assert.strictEqual(e2.name, "eta")
      const e3 = yield* Effect.flip(Ddim.sampleEffect({ ...base, inferenceSteps: 10, eta: 0.5 }))
      if (e3._tag === "InvalidArgument") assert.strictEqual(e3.name, "noise")
      else assert.fail("expected InvalidArgument")
      const ok = yield* Ddim.sampleEffect({ ...base, inferenceSteps: 3 })
      assert.deepStrictEqual(ok.shape, shape)
      tf.dispose([ok, xT])
    }))
})

describe("Ddim guidance", () => {
  it("cfg = eps_u + scale (eps_c - eps_u); guided (one doubled batch) equals guidedSeparate", () => {
    const rng = Rng.fromSeed(15)
    const xt = randn(rng)
    const c = tf.tensor4d([1, 2], [1, 1, 1, 2])
    const u = tf.tensor4d([0.5, -1], [1, 1, 1, 2])
    const g = Ddim.cfg(c, u, 5)
    assert.deepStrictEqual(Array.from(g.dataSync()), [0.5 + 5 * 0.5, -1 + 5 * 3])
    const cond: Ddim.Denoiser = (x, t) => tf.tidy(() => tf.mul(tf.sin(x), 1 + t / 1000))
    const uncond: Ddim.Denoiser = (x) => tf.tidy(() => tf.mul(x, 0.1))
    let calls = 0
    let batch = 0
    const pair: Ddim.PairedDenoiser = (x2, t) => {
      calls++
      batch = x2.shape[0]
      return tf.tidy(() => {
        const [a, b] = tf.split<tf.Tensor4D>(x2, 2, 0)
        return tf.concat([uncond(a, t), cond(b, t)], 0)
      })
    }
    noLeak(() => {
      const e1 = Ddim.guided(pair, 7.5)(xt, 400)
      const e2 = Ddim.guidedSeparate(cond, uncond, 7.5)(xt, 400)
      const e3 = Ddim.guided(pair, 1)(xt, 400)
      const e4 = cond(xt, 400)
      assert.isBelow(maxAbsDiff(e1, e2), 1e-5)
      assert.isBelow(maxAbsDiff(e3, e4), 1e-6)
      tf.dispose([e1, e2, e3, e4])
    })
    assert.strictEqual(calls, 2)
    assert.strictEqual(batch, 4)
    const before = tf.memory().numTensors
    const o = Ddim.sample({ schedule, denoise: Ddim.guided(pair, 5), xT: xt, inferenceSteps: 5 })
    o.dispose()
    assert.strictEqual(tf.memory().numTensors, before)
    throwsTyped(() => Ddim.guided(pair, Number.NaN), DiffusionError.InvalidArgument)
    throwsTyped(() => Ddim.guided(() => tf.zeros([1, 1, 1, 1]) as tf.Tensor4D, 2)(xt, 10), DiffusionError.ShapeMismatch)
    assert.strictEqual(tf.memory().numTensors, before)
    tf.dispose([xt, c, u, g])
  })
})
