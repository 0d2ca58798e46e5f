import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Layer } from "effect"
import { beforeAll } from "vitest"
import * as Schedule from "../../src/diffusion/Schedule.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import * as Losses from "../../src/objective/Losses.ts"
import * as StandardFinetune from "../../src/objective/StandardFinetune.ts"
import { Rng } from "../../src/tensor/Random.ts"
import { RandomSource } from "../../src/tensor/RandomSource.ts"
import * as NoisedSamples from "../../src/trajectory/NoisedSamples.ts"
import * as Trajectory from "../../src/trajectory/Trajectory.ts"
import { TrajectoryGenerator } from "../../src/trajectory/TrajectoryGenerator.ts"
import { useWasm } from "../helpers.ts"
import { tiny32 } from "../sharpen-helpers.ts"

const prompts = ["a red square", "two blue circles"]

const perturbed = (seed: number) => {
  const model = Denoiser.init(tiny32, seed)
  tf.tidy(() => {
    for (const v of Object.values(model.params)) v.assign(tf.add(v, tf.randomNormal(v.shape, 0, 0.02, "float32", seed + 5)))
  })
  return model
}

const images = (seed: number) => tf.tidy(() => tf.clipByValue(tf.randomNormal([2, 32, 32, 3], 0, 0.5, "float32", seed), -1, 1)) as tf.Tensor4D

describe("Standard fine-tuning loss", () => {
  beforeAll(useWasm)

  it("equals the hand-computed epsilon MSE at each image's own timestep", () => {
    const model = perturbed(0)
    const schedule = Schedule.make(tiny32.schedule)
    const x0 = images(1)
    const noise = tf.tidy(() => tf.randomNormal([2, 32, 32, 3], 0, 1, "float32", 2)) as tf.Tensor4D
    const ts = [37, 811]
    const s = NoisedSamples.make(schedule, { clean: x0.clone(), noise: noise.clone(), itemTimesteps: ts, prompts, n: 1, nfe: 0 })
    const loss = tf.tidy(() => StandardFinetune.standardLoss(model, s).dataSync()[0])
    // By hand: x_t = sqrt(a) x0 + sqrt(1 - a) eps, then (eps_theta(x_t, t, c) - eps)^2 over every value.
    const xs = x0.arraySync() as Array<number[][][]>
    const es = noise.arraySync() as Array<number[][][]>
    let total = 0
    let count = 0
    for (let b = 0; b < 2; b++) {
      const a = schedule.alphasCumprod[ts[b]]
      const xt = xs[b].map((row, y) => row.map((px, x) => px.map((v, c) => Math.sqrt(a) * v + Math.sqrt(1 - a) * es[b][y][x][c])))
      const input = tf.tensor4d([xt])
      const pred = Denoiser.eps(model, input, ts[b], [prompts[b]])
      const p = pred.arraySync()[0]
      for (let y = 0; y < 32; y++) for (let x = 0; x < 32; x++) for (let c = 0; c < 3; c++) {
        total += (p[y][x][c] - es[b][y][x][c]) ** 2
        count += 1
      }
      tf.dispose([input, pred])
    }
    assert.closeTo(loss, total / count, 1e-4)
    // The noise is the target: another noise gives another loss.
    const other = NoisedSamples.make(schedule, { clean: x0.clone(), noise: tf.neg(noise) as tf.Tensor4D, itemTimesteps: ts, prompts, n: 1, nfe: 0 })
    assert.notEqual(tf.tidy(() => StandardFinetune.standardLoss(model, other).dataSync()[0]).toFixed(5), loss.toFixed(5))
    NoisedSamples.dispose(s)
    NoisedSamples.dispose(other)
    tf.dispose([x0, noise])
    Denoiser.dispose(model)
  })

  it("is SFT sharpening's Eq. 9 with n = 1, m = 1 and the original target, at the same t and noise", () => {
    const model = perturbed(1)
    const schedule = Schedule.make(tiny32.schedule)
    const x0 = images(3)
    const traj = Trajectory.generate(model, schedule, x0, prompts, Rng.fromSeed(5), {
      n: 1,
      m: 1,
      inferenceSteps: 50,
      cfg: 2,
      estimator: { kind: "tweedie" },
      timestep: { kind: "uniform" }
    })
    const t = traj.steps[0].t
    const s = NoisedSamples.make(schedule, { clean: x0.clone(), noise: traj.noise.clone(), itemTimesteps: [t, t], prompts, n: 1, nfe: 0 })
    const sft = tf.tidy(() => Losses.sftLoss(model, schedule, traj, [0, 1], "original").dataSync()[0])
    const standard = tf.tidy(() => StandardFinetune.standardLoss(model, s).dataSync()[0])
    assert.closeTo(standard, sft, 1e-6)
    // ...which spent a guided evaluation per image that standard fine-tuning does not.
    assert.strictEqual(traj.nfe, 4)
    Trajectory.dispose(traj)
    NoisedSamples.dispose(s)
    x0.dispose()
    Denoiser.dispose(model)
  })
})

describe("NoisedSamples.generatorLayer", () => {
  beforeAll(useWasm)

  it.effect("draws one noise and one uniform timestep per image from the run's generator, NFE 0, no leak", () =>
    Effect.gen(function*() {
      const model = perturbed(2)
      const x0 = images(4)
      const start = tf.memory().numTensors
      const draw = (seed: number) =>
        Effect.gen(function*() {
          const generator = yield* TrajectoryGenerator
          return yield* Effect.scoped(Effect.map(generator.generate(x0, prompts), (t) => {
            const s = t as NoisedSamples.NoisedSamples
            return {
              kind: s.kind,
              n: s.n,
              nfe: s.nfe,
              timesteps: s.timesteps,
              noise: Array.from(s.noise.dataSync().slice(0, 4)),
              sameImages: tf.tidy(() => tf.max(tf.abs(tf.sub(s.clean, x0))).dataSync()[0])
            }
          }))
        }).pipe(Effect.provide(NoisedSamples.generatorLayer.pipe(Layer.provide(Layer.merge(
          Layer.succeed(Denoiser.Denoiser, Denoiser.Denoiser.of({ model })),
          RandomSource.fromSeed(seed)
        )))))
      const a = yield* draw(7)
      const b = yield* draw(7)
      const c = yield* draw(8)
      assert.strictEqual(tf.memory().numTensors, start)
      assert.strictEqual(a.kind, "noised")
      assert.strictEqual(a.n, 1)
      assert.strictEqual(a.nfe, 0)
      assert.strictEqual(a.sameImages, 0)
      assert.strictEqual(a.timesteps.length, 2)
      for (const t of a.timesteps) assert.isTrue(Number.isInteger(t) && t >= 0 && t < 1000)
      assert.deepStrictEqual(a, b)
      assert.notDeepEqual(a.noise, c.noise)
      x0.dispose()
      Denoiser.dispose(model)
    }))
})
