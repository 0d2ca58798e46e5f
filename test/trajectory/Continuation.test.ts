import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Layer } from "effect"
import { beforeAll } from "vitest"
import * as Ddim from "../../src/diffusion/Ddim.ts"
import * as Schedule from "../../src/diffusion/Schedule.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import * as Mlp from "../../src/model/Mlp.ts"
import { Decoder } from "../../src/reward/Decoder.ts"
import { Reward } from "../../src/reward/Reward.ts"
import { Rng } from "../../src/tensor/Random.ts"
import * as Trajectory from "../../src/trajectory/Trajectory.ts"
import { TrajectoryScorer } from "../../src/trajectory/TrajectoryScorer.ts"
import { useWasm } from "../helpers.ts"

const config: Mlp.MlpConfig = { ...Mlp.labConfig, architecture: { dim: 2, hidden: 16, blocks: 1, timeDim: 8 } }

const model = () => {
  const m = Denoiser.init(config, 0)
  tf.tidy(() => {
    for (const v of Object.values(m.params)) v.assign(tf.add(v, tf.randomNormal(v.shape, 0, 0.2, "float32", 3)))
  })
  return m
}

const options: Trajectory.TrajectoryOptions = {
  n: 3,
  m: 2,
  inferenceSteps: 10,
  cfg: 1,
  estimator: { kind: "tweedie" },
  timestep: { kind: "range", min: 200, max: 900 },
  perPrompt: true,
  continuation: true
}

describe("Trajectory continuation", () => {
  beforeAll(useWasm)

  it("per-prompt start timesteps: one per item, shared by its n paths", () => {
    const m = model()
    const schedule = Schedule.make(config.schedule)
    const x0 = tf.tensor2d([[0.1, 0.2], [0.3, -0.4], [-0.5, 0.1], [0.6, 0.6]])
    const t = Trajectory.generate(m, schedule, x0, ["", "", "", ""], Rng.fromSeed(5), options)
    const ts = t.steps[0].ts!
    assert.strictEqual(ts.length, 12)
    for (let r = 0; r < 12; r++) assert.strictEqual(ts[r], ts[r % 4])
    assert.isTrue(new Set(ts).size > 1, "the seed should draw different start timesteps")
    for (const s of ts) assert.isTrue(s >= 200 && s <= 900 && s % 100 === 0)
    // The second recorded step is one grid step below the first, row by row.
    t.steps[1].ts!.forEach((s, r) => assert.strictEqual(s, ts[r] - 100))
    Trajectory.dispose(t)
    x0.dispose()
    Denoiser.dispose(m)
  })

  it("every path ends where DDIM from its recorded start state ends; NFE counts each row's steps", () => {
    const m = model()
    const schedule = Schedule.make(config.schedule)
    const x0 = tf.tensor2d([[0.1, 0.2], [0.3, -0.4], [-0.5, 0.1], [0.6, 0.6]])
    const before = tf.memory().numTensors
    const t = Trajectory.generate(m, schedule, x0, ["", "", "", ""], Rng.fromSeed(5), options)
    const ts = t.steps[0].ts!
    const final = t.final!.arraySync() as Array<Array<number>>
    for (let r = 0; r < 12; r++) {
      const start = tf.slice(t.steps[0].xt, r, 1)
      const expected = Ddim.sample({ schedule, denoise: (x, s) => Denoiser.eps(m, x, s, [""]), xT: start, inferenceSteps: 10, startTimestep: ts[r], clipSample: 1 })
      const e = expected.arraySync() as Array<Array<number>>
      assert.isTrue(Math.abs(e[0][0] - final[r][0]) < 1e-5 && Math.abs(e[0][1] - final[r][1]) < 1e-5, `row ${r}: ${e[0]} vs ${final[r]}`)
      tf.dispose([start, expected])
    }
    // Rows from t0 take t0 / 100 + 1 model calls (grid t0, t0 - 100, ..., 0).
    assert.strictEqual(t.nfe, ts.reduce((a, s) => a + s / 100 + 1, 0))
    Trajectory.dispose(t)
    assert.strictEqual(tf.memory().numTensors, before)
    x0.dispose()
    Denoiser.dispose(m)
  })

  it("without continuation nothing changes: one start timestep per batch, no final images", () => {
    const m = model()
    const schedule = Schedule.make(config.schedule)
    const x0 = tf.tensor2d([[0.1, 0.2], [0.3, -0.4]])
    const t = Trajectory.generate(m, schedule, x0, ["", ""], Rng.fromSeed(5), { ...options, perPrompt: false, continuation: false })
    assert.isUndefined(t.final)
    assert.isUndefined(t.steps[0].ts)
    assert.strictEqual(t.nfe, 2 * 6)
    Trajectory.dispose(t)
    x0.dispose()
    Denoiser.dispose(m)
  })

  it.effect("aggregation \"final\" scores the final images only", () =>
    Effect.gen(function*() {
      const m = model()
      const schedule = Schedule.make(config.schedule)
      const x0 = tf.tensor2d([[0.1, 0.2], [0.3, -0.4]])
      const t = Trajectory.generate(m, schedule, x0, ["", ""], Rng.fromSeed(5), options)
      const reward = Reward.make({ name: "x", range: [-Infinity, Infinity], differentiable: false, relativeCost: 0 }, (pts) => Effect.succeed(pts.map((p) => p[0])), { sampleLength: 2 })
      const scores = yield* Effect.gen(function*() {
        return yield* (yield* TrajectoryScorer).score(t)
      }).pipe(Effect.provide(TrajectoryScorer.layer({ kind: "final" }).pipe(Layer.provide(Layer.merge(Reward.layerOf(reward), Decoder.scaled(1))))))
      const final = t.final!.arraySync() as Array<Array<number>>
      assert.strictEqual(scores.rewardCalls, 6)
      for (let i = 0; i < 3; i++) for (let b = 0; b < 2; b++) assert.isTrue(Math.abs(scores.trajectory[i][b] - final[i * 2 + b][0]) < 1e-6)
      Trajectory.dispose(t)
      x0.dispose()
      Denoiser.dispose(m)
    }))
})
