import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Layer } from "effect"
import { beforeAll } from "vitest"
import * as Denoiser from "../../src/model/Denoiser.ts"
import * as Mlp from "../../src/model/Mlp.ts"
import { Reference } from "../../src/model/Reference.ts"
import * as GroupRelative from "../../src/objective/GroupRelative.ts"
import * as ImageLevel from "../../src/objective/ImageLevel.ts"
import { Objective } from "../../src/objective/Objective.ts"
import { accumulatedGrads, lossValue } from "../../src/optim/Optimizer.ts"
import { RandomSource } from "../../src/tensor/RandomSource.ts"
import type { Selection } from "../../src/trajectory/PathSelector.ts"
import type { TrajectoryScores } from "../../src/trajectory/TrajectoryScorer.ts"
import type { Trajectories } from "../../src/trajectory/Trajectory.ts"
import { useWasm } from "../helpers.ts"

const tinyMlp: Mlp.MlpConfig = { ...Mlp.labConfig, architecture: { dim: 2, hidden: 8, blocks: 1, timeDim: 4 } }
const B = 2

const perturbed = (seed: number) => {
  const m = Denoiser.init(tinyMlp, seed)
  tf.tidy(() => {
    for (const v of Object.values(m.params)) v.assign(tf.add(v, tf.randomNormal(v.shape, 0, 0.3, "float32", seed + 7)))
  })
  return m
}

const FINALS = [[0.1, 0.2], [0.3, -0.4], [-0.5, 0.6], [0.7, 0.1], [0.2, -0.2], [-0.3, -0.6]]
const trajectories = (n: number): Trajectories => {
  const final = tf.tensor2d(FINALS.slice(0, n * B), [n * B, 2])
  return { n, batch: B, prompts: ["", ""], x0: tf.zeros([B, 2]), noise: tf.zeros([n * B, 2]), steps: [], nfe: 0, final }
}
const disposeTrajectories = (t: Trajectories) => tf.dispose([t.final!, t.x0, t.noise])
const scoresOf = (trajectory: Array<Array<number>>): TrajectoryScores => ({ perStep: [], trajectory, rewardCalls: 0 })

const layers = (model: Denoiser.Model, reference: Denoiser.Model) =>
  Layer.mergeAll(Layer.succeed(Denoiser.Denoiser, { model }), Layer.succeed(Reference, { model: reference }), RandomSource.fromSeed(3))

const prepareWith = (objective: Layer.Layer<Objective, never, Denoiser.Denoiser | Reference | RandomSource>, model: Denoiser.Model, reference: Denoiser.Model, t: Trajectories, selection: Selection, scores: TrajectoryScores) =>
  Effect.gen(function*() {
    return yield* (yield* Objective).prepare(t, selection, scores)
  }).pipe(Effect.provide(objective.pipe(Layer.provide(layers(model, reference)))))

const softplus = (z: number) => Math.log1p(Math.exp(z))

describe("GroupRelative", () => {
  beforeAll(useWasm)

  it("groupAdvantages: (R - mean) / (population std + 1e-4) per prompt; a tied prompt gets zeros", () => {
    // Item 0: rewards 1, 2, 3 (mean 2, population std sqrt(2/3)); item 1: all 0.
    const a = GroupRelative.groupAdvantages([[1, 0], [2, 0], [3, 0]])
    const std = Math.sqrt(2 / 3) + 1e-4
    assert.approximately(a[0][0], -1 / std, 1e-12)
    assert.strictEqual(a[1][0], 0)
    assert.approximately(a[2][0], 1 / std, 1e-12)
    assert.deepStrictEqual([a[0][1], a[1][1], a[2][1]], [0, 0, 0])
    // Scale- and shift-free: 10 R + 7 gives the same advantages (up to the 1e-4).
    const b = GroupRelative.groupAdvantages([[17, 0], [27, 0], [37, 0]])
    assert.approximately(b[2][0], a[2][0], 1e-3)
  })

  it("weightedPairs: every strictly better-worse pair, weighted by its advantage gap, weights summing to 1; none for a tie", () => {
    const pairs = GroupRelative.weightedPairs([1, 0, -1])
    assert.deepStrictEqual(pairs, [{ w: 0, l: 1, weight: 0.25 }, { w: 0, l: 2, weight: 0.5 }, { w: 1, l: 2, weight: 0.25 }])
    assert.deepStrictEqual(GroupRelative.weightedPairs([0.3, 0.3]), [])
    // Two images: the one pair, weight 1 (image-level RLHF's pair).
    assert.deepStrictEqual(GroupRelative.weightedPairs([-1, 1]), [{ w: 1, l: 0, weight: 1 }])
  })

  it("awrWeights: softmax(A / tau) within the prompt; a small tau keeps the best only", () => {
    const w = GroupRelative.awrWeights([1, 0, -1], 1)
    const z = Math.E + 1 + 1 / Math.E
    assert.approximately(w[0], Math.E / z, 1e-12)
    assert.approximately(w[2], 1 / Math.E / z, 1e-12)
    const sharp = GroupRelative.awrWeights([1, 0, -1], 1e-3)
    assert.approximately(sharp[0], 1, 1e-12)
    assert.deepStrictEqual(GroupRelative.awrWeights([2, 2], 0.5), [0.5, 0.5])
  })

  it("pairsPart: sum over pairs of weight * softplus(-(beta logits - margin)) / B", () => {
    // Two items (k = 2), n = 2: rows [image 0 of items 0, 1; image 1 of items 0, 1].
    const policy = [0.5, 0.2, 0.3, 0.9]
    const reference = [0.4, 0.4, 0.4, 0.4]
    const pairs = [[{ w: 1, l: 0, weight: 1, margin: 0.3 }], [{ w: 0, l: 1, weight: 1, margin: 0.2 }]]
    const beta = 2
    const got = tf.tidy(() => GroupRelative.pairsPart(tf.tensor1d(policy), tf.tensor1d(reference), pairs, beta, "inside", 4).dataSync()[0])
    // Item 0: w = row 2, l = row 0; item 1: w = row 1, l = row 3.
    const logit = (w: number, l: number) => (reference[w] - reference[l]) - (policy[w] - policy[l])
    const want = (softplus(-(beta * logit(2, 0) - 0.3)) + softplus(-(beta * logit(1, 3) - 0.2))) / 4
    assert.approximately(got, want, 1e-6)
  })

  it.effect("pairs with n = 2 is image-level RLHF: the same loss on the same draws", () =>
    Effect.gen(function*() {
      const model = perturbed(0)
      const reference = perturbed(1)
      const t = trajectories(2)
      const scores = scoresOf([[0.1, 0.9], [0.8, 0.4]])
      const selection = { best: [1, 0], worst: [0, 1] }
      const group = yield* prepareWith(GroupRelative.objective({ form: "pairs", beta: 40, margin: "inside" }), model, reference, t, selection, scores)
      const rlhf = yield* prepareWith(ImageLevel.rlhf({ beta: 40, margin: "inside" }), model, reference, t, selection, scores)
      const a = yield* lossValue(group.loss)
      const b = yield* lossValue(rlhf.loss)
      assert.approximately(a, b, 1e-5 * Math.max(1, b))
      assert.strictEqual(group.nfe, rlhf.nfe)
      disposeTrajectories(t)
      Denoiser.dispose(model)
      Denoiser.dispose(reference)
    }).pipe(Effect.scoped))

  it.effect("awr: the advantage-weighted denoising loss; a step lowers the best image's error relative to the worst's", () =>
    Effect.gen(function*() {
      const model = perturbed(0)
      const t = trajectories(3)
      const scores = scoresOf([[0.1, 0.9], [0.5, 0.2], [0.8, 0.4]])
      const prepared = yield* prepareWith(GroupRelative.objective({ form: "awr", beta: 0.5, margin: "inside" }), model, model, t, { best: [2, 0], worst: [0, 1] }, scores)
      assert.strictEqual(prepared.nfe, 3 * B)
      // The loss equals the weighted errors of the objective's own noised images (one eps and t per item, all images).
      const sharp = yield* prepareWith(GroupRelative.objective({ form: "awr", beta: 1e-4, margin: "inside" }), model, model, t, { best: [2, 0], worst: [0, 1] }, scores)
      const sft = yield* prepareWith(ImageLevel.sft({}), model, model, t, { best: [2, 0], worst: [0, 1] }, scores)
      // tau -> 0 keeps the best image only: image-level SFT sharpening's loss on the same draws.
      assert.approximately(yield* lossValue(sharp.loss), yield* lossValue(sft.loss), 1e-5)
      const before = yield* lossValue(prepared.loss)
      const { grads } = yield* accumulatedGrads(prepared.loss, model.params)
      tf.tidy(() => {
        for (const [k, g] of Object.entries(grads)) model.params[k].assign(tf.sub(model.params[k], tf.mul(g, 0.05)))
      })
      tf.dispose(Object.values(grads))
      assert.isTrue((yield* lossValue(prepared.loss)) < before)
      disposeTrajectories(t)
      Denoiser.dispose(model)
    }).pipe(Effect.scoped))

  it.effect("no tensor leaks: live tensors are the same after every iteration, both forms, micro-batches and K = 2", () =>
    Effect.gen(function*() {
      const model = perturbed(0)
      const reference = perturbed(1)
      const t = trajectories(3)
      const scores = scoresOf([[0.1, 0.9], [0.5, 0.2], [0.8, 0.4]])
      for (const form of ["pairs", "awr"] as const) {
        const counts: Array<number> = []
        yield* Effect.gen(function*() {
          const objective = yield* Objective
          for (let i = 0; i < 4; i++) {
            yield* Effect.scoped(Effect.gen(function*() {
              const prepared = yield* objective.prepare(t, { best: [2, 0], worst: [0, 1] }, scores)
              for (const loss of [prepared.loss, ...(prepared.updates ?? [])]) tf.dispose(Object.values((yield* accumulatedGrads(loss, model.params)).grads))
            }))
            counts.push(tf.memory().numTensors)
          }
        }).pipe(
          Effect.provide(GroupRelative.objective({ form, beta: 5, margin: "inside", stepsPerBatch: 2, microBatchRows: 3 }).pipe(Layer.provide(layers(model, reference)))),
          Effect.scoped
        )
        assert.isTrue(counts.every((c) => c === counts[0]), `${form}: live tensors ${counts.join(",")}`)
      }
      disposeTrajectories(t)
      Denoiser.dispose(model)
      Denoiser.dispose(reference)
    }))
})
