import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import { beforeAll } from "vitest"
import * as Noise from "../../src/diffusion/Noise.ts"
import * as Schedule from "../../src/diffusion/Schedule.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import * as Losses from "../../src/objective/Losses.ts"
import * as AdamW from "../../src/optim/AdamW.ts"
import { paramGrads } from "../../src/tensor/Grad.ts"
import { Rng } from "../../src/tensor/Random.ts"
import * as Trajectory from "../../src/trajectory/Trajectory.ts"
import { useWasm } from "../helpers.ts"
import { tiny32 } from "../sharpen-helpers.ts"

const options: Trajectory.TrajectoryOptions = { n: 3, m: 2, inferenceSteps: 50, cfg: 2, estimator: { kind: "tweedie" }, timestep: { kind: "uniform" } }

const setup = (seed = 0) => {
  const model = Denoiser.init(tiny32, seed)
  tf.tidy(() => {
    for (const v of Object.values(model.params)) v.assign(tf.add(v, tf.randomNormal(v.shape, 0, 0.02, "float32", seed + 5)))
  })
  const schedule = Schedule.make(tiny32.schedule)
  const x0 = tf.tidy(() => tf.clipByValue(tf.randomNormal([2, 32, 32, 3], 0, 0.5, "float32", 3), -1, 1)) as tf.Tensor4D
  const traj = Trajectory.generate(model, schedule, x0, ["a red square", "two blue circles"], Rng.fromSeed(seed), options)
  x0.dispose()
  return { model, schedule, traj }
}

describe("Trajectory.generate", () => {
  beforeAll(useWasm)

  it("records m steps of n*B rows, walks the DDIM grid, counts NFE and leaks nothing", () => {
    const start = tf.memory().numTensors
    const { model, schedule, traj } = setup()
    assert.strictEqual(traj.steps.length, 2)
    for (const s of traj.steps) {
      assert.deepStrictEqual(s.xt.shape, [6, 32, 32, 3])
      assert.deepStrictEqual(s.x0.shape, [6, 32, 32, 3])
    }
    assert.strictEqual(traj.steps[0].t - traj.steps[1].t, 20)
    assert.strictEqual(traj.nfe, 2 * 6 * 2) // m calls on n*B rows, doubled by guidance
    // Step 0 is the forward process: x_t = alpha x0 + sigma z for every sample.
    const expected = tf.tidy(() => Noise.addNoise(schedule, tf.concat([traj.x0, traj.x0, traj.x0]), traj.noise, traj.steps[0].t))
    assert.isBelow(tf.tidy(() => tf.max(tf.abs(tf.sub(expected, traj.steps[0].xt))).dataSync()[0]), 1e-5)
    expected.dispose()
    Trajectory.dispose(traj)
    Denoiser.dispose(model)
    assert.strictEqual(tf.memory().numTensors, start)
  })
})

describe("SFT loss (Eq. 9)", () => {
  beforeAll(useWasm)

  it("equals the hand-computed epsilon MSE along the selected path", () => {
    const { model, schedule, traj } = setup(1)
    const best = [2, 0]
    const loss = Losses.sftLoss(model, schedule, traj, Trajectory.rowIndex(traj, best), "consistent").dataSync()[0]
    // By hand: for each step k and item b, eps_theta(x_{t_k}) vs (x_{t_k} - alpha_k x0_b) / sigma_k.
    const a = Math.sqrt(schedule.alphasCumprod[0])
    let total = 0
    let count = 0
    for (const s of traj.steps) {
      const xt = s.xt.arraySync() as Array<number[][][]>
      const x0 = traj.x0.arraySync() as Array<number[][][]>
      const alpha = Math.sqrt(schedule.alphasCumprod[s.t])
      const sigma = Math.sqrt(1 - schedule.alphasCumprod[s.t])
      for (let b = 0; b < 2; b++) {
        const row = best[b] * 2 + b
        const input = tf.tensor4d([xt[row]])
        const pred = Denoiser.eps(model, input, s.t, [traj.prompts[b]]).arraySync()[0]
        for (let y = 0; y < 32; y++) for (let x = 0; x < 32; x++) for (let c = 0; c < 3; c++) {
          const target = (xt[row][y][x][c] - alpha * x0[b][y][x][c]) / sigma
          total += (pred[y][x][c] - target) ** 2
          count += 1
        }
        input.dispose()
      }
    }
    assert.isAbove(a, 0)
    assert.closeTo(loss, total / count, 1e-4)
    // The two targets agree at the first step only.
    const first = { ...traj, steps: traj.steps.slice(0, 1) }
    const c1 = Losses.sftLoss(model, schedule, first, Trajectory.rowIndex(traj, best), "consistent").dataSync()[0]
    const o1 = Losses.sftLoss(model, schedule, first, Trajectory.rowIndex(traj, best), "original").dataSync()[0]
    assert.closeTo(c1, o1, 1e-4)
    const o2 = Losses.sftLoss(model, schedule, traj, Trajectory.rowIndex(traj, best), "original").dataSync()[0]
    assert.notEqual(o2.toFixed(6), loss.toFixed(6))
    Trajectory.dispose(traj)
    Denoiser.dispose(model)
  })
})

describe("RLHF loss (Eq. 11)", () => {
  beforeAll(useWasm)

  const dpoSetup = () => {
    const { model, schedule, traj } = setup(2)
    const reference = Denoiser.clone(model, false)
    const w = Trajectory.rowIndex(traj, [0, 1])
    const l = Trajectory.rowIndex(traj, [1, 2])
    const rows = [...w, ...l]
    const ref = tf.tidy(() => tf.split(Losses.pathErrors(reference, schedule, traj, rows, "consistent"), 2))
    const loss = (margin: Array<number>, placement: Losses.MarginPlacement) => () =>
      tf.tidy(() => {
        const [modelW, modelL] = tf.split(Losses.pathErrors(model, schedule, traj, rows, "consistent"), 2) as [tf.Tensor1D, tf.Tensor1D]
        return Losses.dpoFromTerms({ modelW, modelL, refW: ref[0] as tf.Tensor1D, refL: ref[1] as tf.Tensor1D }, margin, 5000, placement)
      })
    const errors = () => tf.tidy(() => {
      const e = Losses.pathErrors(model, schedule, traj, rows, "consistent").dataSync()
      const r = Losses.pathErrors(reference, schedule, traj, rows, "consistent").dataSync()
      return { w: (e[0] + e[1]) / 2 - (r[0] + r[1]) / 2, l: (e[2] + e[3]) / 2 - (r[2] + r[3]) / 2 }
    })
    const cleanup = () => {
      tf.dispose(ref)
      Trajectory.dispose(traj)
      Denoiser.dispose(model)
      Denoiser.dispose(reference)
    }
    return { model, loss, errors, cleanup }
  }

  it.effect("raises the winner's likelihood relative to the reference and lowers the loser's", () =>
    Effect.gen(function*() {
      const s = dpoSetup()
      const adam = AdamW.init(s.model.params)
      const before = s.errors()
      assert.closeTo(before.w, 0, 1e-7)
      for (let i = 0; i < 5; i++) {
        const { value, grads } = paramGrads(s.loss([0.3, 0.3], "inside"), s.model.params)
        yield* AdamW.step(s.model.params, grads, adam, 1e-3, AdamW.paper)
        tf.dispose([value, ...Object.values(grads)])
      }
      const after = s.errors()
      // Lower error = higher likelihood under Diffusion-DPO's approximation.
      assert.isBelow(after.w, 0)
      assert.isAbove(after.l, 0)
      AdamW.dispose(adam)
      s.cleanup()
    }))

  it("the reward margin changes the gradient inside the log-sigmoid (the paper), not outside (the reference code)", () => {
    const s = dpoSetup()
    const gradOf = (margin: Array<number>, placement: Losses.MarginPlacement) => {
      // Move off the reference first: at logits = 0 both margins still give a gradient.
      const { value, grads } = paramGrads(s.loss(margin, placement), s.model.params)
      const g = Float32Array.from(grads["out.w"].dataSync())
      tf.dispose([value, ...Object.values(grads)])
      return g
    }
    const diff = (a: Float32Array, b: Float32Array) => a.reduce((acc, v, i) => Math.max(acc, Math.abs(v - b[i])), 0)
    const scale = (a: Float32Array) => a.reduce((acc, v) => Math.max(acc, Math.abs(v)), 0)
    const p1 = gradOf([0.1, 0.1], "inside")
    const p2 = gradOf([2, 2], "inside")
    assert.isAbove(scale(p1), 0)
    assert.isAbove(diff(p1, p2), 0.1 * scale(p1))
    const r1 = gradOf([0.1, 0.1], "outside")
    const r2 = gradOf([2, 2], "outside")
    assert.strictEqual(diff(r1, r2), 0)
    s.cleanup()
  })
})
