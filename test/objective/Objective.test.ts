import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Layer } from "effect"
import { beforeAll } from "vitest"
import * as Schedule from "../../src/diffusion/Schedule.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import { Reference } from "../../src/model/Reference.ts"
import { Objective } from "../../src/objective/Objective.ts"
import { accumulatedGrads, lossValue } from "../../src/optim/Optimizer.ts"
import { Rng } from "../../src/tensor/Random.ts"
import * as Trajectory from "../../src/trajectory/Trajectory.ts"
import { useWasm } from "../helpers.ts"
import { tiny32 } from "../sharpen-helpers.ts"

const options: Trajectory.TrajectoryOptions = { n: 3, m: 2, inferenceSteps: 50, cfg: 2, estimator: { kind: "tweedie" }, timestep: { kind: "uniform" } }
const prompts = ["a red square", "two blue circles", "a green triangle above a white circle"]

/** Loss value and summed gradient of an objective's prepared loss at a micro-batch row budget. */
const gradientAt = (objective: "sft" | "rlhf", microBatchRows: number) =>
  Effect.gen(function*() {
    const model = Denoiser.init(tiny32, 0)
    tf.tidy(() => {
      for (const v of Object.values(model.params)) v.assign(tf.add(v, tf.randomNormal(v.shape, 0, 0.02, "float32", 5)))
    })
    // A reference that differs from the policy, so the DPO logits are not zero.
    const reference = Denoiser.clone(model, false)
    tf.tidy(() => {
      for (const v of Object.values(reference.params)) v.assign(tf.add(v, tf.randomNormal(v.shape, 0, 0.01, "float32", 6)))
    })
    const x0 = tf.tidy(() => tf.clipByValue(tf.randomNormal([3, 32, 32, 3], 0, 0.5, "float32", 3), -1, 1)) as tf.Tensor4D
    const traj = Trajectory.generate(model, Schedule.make(tiny32.schedule), x0, prompts, Rng.fromSeed(1), options)
    x0.dispose()
    const layer = objective === "sft"
      ? Objective.sft({ target: "consistent", microBatchRows })
      : Objective.rlhf({ beta: 5000, margin: "inside", target: "consistent", referenceSteps: "all", microBatchRows })
    const scores = { perStep: [], trajectory: [[1, 5, 2], [3, 0, 2], [2, 4, 9]], rewardCalls: 9 }
    const out = yield* Effect.scoped(Effect.gen(function*() {
      const o = yield* Objective
      const prepared = yield* o.prepare(traj, { best: [1, 2, 0], worst: [2, 1, 1] }, scores)
      const parts = typeof prepared.loss === "function" ? 1 : prepared.loss.length
      const value = yield* lossValue(prepared.loss)
      const { grads } = yield* accumulatedGrads(prepared.loss, model.params)
      const flat = tf.tidy(() => tf.concat(Object.keys(grads).sort().map((k) => tf.reshape(grads[k], [-1]))).dataSync() as Float32Array)
      tf.dispose(Object.values(grads))
      return { parts, value, flat }
    })).pipe(Effect.provide(layer.pipe(Layer.provide(Layer.mergeAll(
      Layer.succeed(Denoiser.Denoiser, Denoiser.Denoiser.of({ model })),
      Layer.succeed(Reference, Reference.of({ model: reference }))
    )))))
    Trajectory.dispose(traj)
    Denoiser.dispose(model)
    Denoiser.dispose(reference)
    return out
  })

const maxRelDiff = (a: Float32Array, b: Float32Array) => {
  let diff = 0
  let norm = 0
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]))
    norm = Math.max(norm, Math.abs(a[i]))
  }
  return diff / norm
}

describe("Objective micro-batches", () => {
  beforeAll(useWasm)

  for (const objective of ["sft", "rlhf"] as const) {
    it.effect(`${objective}: the parts' summed loss and gradient equal the whole batch's, with no leak`, () =>
      Effect.gen(function*() {
        const start = tf.memory().numTensors
        // m = 2: a prompt is 2 UNet rows in SFT, 4 in RLHF (best and worst path).
        const rowsPerPrompt = objective === "sft" ? 2 : 4
        const whole = yield* gradientAt(objective, 0)
        const halves = yield* gradientAt(objective, 2 * rowsPerPrompt + 1)
        // A budget below one prompt still takes whole prompts, one per part.
        const singles = yield* gradientAt(objective, 1)
        assert.deepStrictEqual([whole.parts, halves.parts, singles.parts], [1, 2, 3])
        assert.isAbove(Math.abs(whole.value), 1e-6)
        for (const r of [halves, singles]) {
          assert.closeTo(r.value, whole.value, 1e-5 * Math.max(1, Math.abs(whole.value)))
          assert.strictEqual(r.flat.length, whole.flat.length)
          assert.isBelow(maxRelDiff(whole.flat, r.flat), 1e-3)
        }
        assert.strictEqual(tf.memory().numTensors, start)
      }))
  }
})
