/**
 * Jobs computed in steps (`Steps.run`, what runners and worker threads
 * serve): the same bits as the one-shot computation, no tensor left behind,
 * and an interruption that lands between steps, freeing what the
 * computation held.
 */
import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Fiber } from "effect"
import { beforeAll } from "vitest"
import * as Schedule from "../../src/diffusion/Schedule.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import * as JobHandlers from "../../src/parallel/JobHandlers.ts"
import { Rng } from "../../src/tensor/Random.ts"
import * as Steps from "../../src/tensor/Steps.ts"
import * as Generate from "../../src/trajectory/Generate.ts"
import * as Trajectory from "../../src/trajectory/Trajectory.ts"
import * as TrajectoryShards from "../../src/trajectory/TrajectoryShards.ts"
import { useWasm } from "../helpers.ts"
import { continuedPaths, perturbedTiny32 } from "../sharpen-helpers.ts"

const prompts = ["a red square", "two blue circles"]
const options = continuedPaths

const model = perturbedTiny32

const same = (a: Float32Array, b: Float32Array) => a.length === b.length && a.every((v, i) => Object.is(v, b[i]))

describe("jobs in steps (Steps.run)", () => {
  beforeAll(useWasm)

  it.effect("online samples and trajectories: the one-shot computation's bits, no tensor left", () =>
    Effect.gen(function*() {
      const m = model()
      const shape = [prompts.length, ...Denoiser.sampleShape(m.config)]
      const xT = Rng.fromSeed(3).normals(shape.reduce((a, b) => a * b, 1))
      const before = tf.memory().numTensors
      const once = tf.tidy(() => Generate.fromNoise(m, prompts, tf.tensor(xT, shape, "float32"), { steps: 6, cfg: 2 }))
      const onceData = once.dataSync() as Float32Array
      once.dispose()
      const stepped = yield* JobHandlers.sample(m, { prompts, xT, steps: 6, cfg: 2 })
      assert.isTrue(same(onceData, stepped))

      const schedule = Schedule.make(m.config.schedule)
      const x0 = tf.tensor(stepped, shape, "float32")
      const draws = Trajectory.draw(Rng.fromSeed(5), schedule.trainSteps, prompts.length, shape.slice(1), options)
      const t = Trajectory.fromDraws(m, schedule, x0, prompts, draws, options)
      const a = yield* TrajectoryShards.toData(t)
      Trajectory.dispose(t)
      x0.dispose()
      const b = yield* JobHandlers.trajectories(m, { x0: stepped, prompts, draws, options })
      assert.isTrue(same(a.final!, b.final!))
      assert.isTrue(a.steps.every((s, k) => same(s.xt, b.steps[k].xt) && same(s.eps, b.steps[k].eps) && same(s.x0, b.steps[k].x0)))
      assert.strictEqual(tf.memory().numTensors, before)
      Denoiser.dispose(m)
    }))

  it.live("interrupted between steps: it stops before the end and frees its tensors", () =>
    Effect.gen(function*() {
      const m = model()
      const shape = [prompts.length, ...Denoiser.sampleShape(m.config)]
      const xT = Rng.fromSeed(3).normals(shape.reduce((a, b) => a * b, 1))
      const before = tf.memory().numTensors
      let done = 0
      // 400 DDIM steps: far longer than the 50 ms before the interrupt.
      const fiber = yield* Effect.forkChild(
        JobHandlers.sample(m, { prompts, xT, steps: 400, cfg: 2 }).pipe(Effect.tap(() => Effect.sync(() => done++))),
        { startImmediately: true }
      )
      yield* Effect.sleep("50 millis")
      const started = Date.now()
      yield* Fiber.interrupt(fiber)
      assert.strictEqual(done, 0)
      assert.isBelow(Date.now() - started, 2_000)
      assert.strictEqual(tf.memory().numTensors, before)
      // A steps computation abandoned half-way frees what it holds.
      const x = tf.tensor(xT, shape, "float32")
      const steps = Generate.fromNoiseSteps(m, prompts, x, { steps: 5, cfg: 2 })
      steps.next()
      steps.next()
      assert.throws(() => steps.throw(new Steps.Abandoned()))
      x.dispose()
      assert.strictEqual(tf.memory().numTensors, before)
      Denoiser.dispose(m)
    }))
})
