import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Layer } from "effect"
import { beforeAll } from "vitest"
import * as Schedule from "../../src/diffusion/Schedule.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import * as Mlp from "../../src/model/Mlp.ts"
import { Reference } from "../../src/model/Reference.ts"
import * as GroupRelative from "../../src/objective/GroupRelative.ts"
import * as Nft from "../../src/objective/Nft.ts"
import { Objective } from "../../src/objective/Objective.ts"
import { accumulatedGrads, lossValue } from "../../src/optim/Optimizer.ts"
import { Rng } from "../../src/tensor/Random.ts"
import { RandomSource } from "../../src/tensor/RandomSource.ts"
import type { Trajectories } from "../../src/trajectory/Trajectory.ts"
import { useWasm } from "../helpers.ts"

const tinyMlp: Mlp.MlpConfig = { ...Mlp.labConfig, architecture: { dim: 2, hidden: 8, blocks: 1, timeDim: 4 } }
const B = 2
const N = 3

const perturbed = (seed: number) => {
  const m = Denoiser.init(tinyMlp, seed)
  tf.tidy(() => {
    for (const v of Object.values(m.params)) v.assign(tf.add(v, tf.randomNormal(v.shape, 0, 0.3, "float32", seed + 7)))
  })
  return m
}

const trajectories = (): Trajectories => {
  const final = tf.tensor2d([[0.1, 0.2], [0.3, -0.4], [-0.5, 0.6], [0.7, 0.1], [0.2, -0.2], [-0.3, -0.6]], [N * B, 2])
  return { n: N, batch: B, prompts: ["", ""], x0: tf.zeros([B, 2]), noise: tf.zeros([N * B, 2]), steps: [], nfe: 0, final }
}
const disposeTrajectories = (t: Trajectories) => tf.dispose([t.final!, t.x0, t.noise])

/** scores[i][b]: item 0's best image is 2, item 1's is 0. */
const scores = { perStep: [], trajectory: [[0.1, 0.9], [0.5, 0.2], [0.8, 0.4]], rewardCalls: 0 }

/** The per-row loss by hand (plain numbers): (c / beta)(r L+ + (1 - r) L-), L = mean d^2 / max(mean |d|, 1e-5). */
const handRow = (eTheta: Array<number>, eOld: Array<number>, noise: Array<number>, s: number, r: number, beta: number, c: number) => {
  const d = (k: number, sign: 1 | -1) => s * (sign === 1 ? (1 - beta) * (eOld[k] - noise[k]) + beta * (eTheta[k] - noise[k]) : (1 + beta) * (eOld[k] - noise[k]) - beta * (eTheta[k] - noise[k]))
  const L = (sign: 1 | -1) => {
    const ds = eTheta.map((_, k) => d(k, sign))
    return ds.reduce((a, x) => a + x * x, 0) / ds.length / Math.max(ds.reduce((a, x) => a + Math.abs(x), 0) / ds.length, 1e-5)
  }
  return (c / beta) * (r * L(1) + (1 - r) * L(-1))
}

const prepare = (model: Denoiser.Model, reference: Denoiser.Model, t: Trajectories, o: Partial<Nft.NftOptions> = {}) =>
  Effect.gen(function*() {
    const objective = yield* Objective
    return yield* objective.prepare(t, { best: [2, 0], worst: [0, 1] }, scores)
  }).pipe(
    Effect.provide(
      Nft.objective({ ...Nft.defaults, ...o }).pipe(
        Layer.provide(Layer.mergeAll(Layer.succeed(Denoiser.Denoiser, { model }), Layer.succeed(Reference, { model: reference }), RandomSource.fromSeed(3)))
      )
    )
  )

describe("Nft", () => {
  beforeAll(useWasm)

  it("optimality: clip(A, -c, c) / 2c + 1/2, in [0, 1]", () => {
    assert.strictEqual(Nft.optimality(0, 5), 0.5)
    assert.strictEqual(Nft.optimality(2.5, 5), 0.75)
    assert.strictEqual(Nft.optimality(-2.5, 5), 0.25)
    assert.strictEqual(Nft.optimality(10, 5), 1)
    assert.strictEqual(Nft.optimality(-10, 5), 0)
    assert.strictEqual(Nft.optimality(1, 1), 1)
  })

  it("rowLosses: the positive and negative policies with weights r and 1 - r, each normalised by its own scale, times c / beta", () => {
    const eTheta = [[0.3, -0.2], [1.1, 0.4]]
    const eOld = [[0.1, 0.1], [0.9, 0.7]]
    const noise = [[0.5, -0.5], [0.2, 0.3]]
    const scale = [2, 0.5]
    const r = [0.25, 0.9]
    for (const [beta, c] of [[1, 5], [0.1, 5], [0.5, 2]] as const) {
      const got = tf.tidy(() => Array.from(Nft.rowLosses(tf.tensor2d(eTheta), tf.tensor2d(eOld), tf.tensor2d(noise), scale, r, beta, c).dataSync()))
      const want = [0, 1].map((i) => handRow(eTheta[i], eOld[i], noise[i], scale[i], r[i], beta, c))
      for (const i of [0, 1]) assert.approximately(got[i], want[i], 1e-5 * Math.max(1, Math.abs(want[i])), `beta ${beta} c ${c} row ${i}`)
    }
    // The normalisation: scaling every error by k scales the row loss by k (squares over magnitudes).
    const at = (k: number) => tf.tidy(() => Nft.rowLosses(tf.tensor2d([[0.3 * k, -0.2 * k]]), tf.tensor2d([[0.1 * k, 0.1 * k]]), tf.zeros([1, 2]), [1], [0.7], 1, 5).dataSync()[0])
    assert.approximately(at(10), 10 * at(1), 1e-4)
  })

  it("rowLosses' gradient: at theta = old it is c (2r - 1) * 2 s d / (D w), the weight held constant; r = 0 pushes the error up (fails if the negative branch's sign flips)", () => {
    const noise = [0.5, -0.5]
    const eOld = [0.1, 0.1]
    const s = 3
    const c = 5
    for (const beta of [1, 0.1]) {
      for (const r of [0, 0.25, 1]) {
        const g = tf.tidy(() => {
          const f = (e: tf.Tensor) => tf.sum(Nft.rowLosses(e, tf.tensor2d([eOld]), tf.tensor2d([noise]), [s], [r], beta, c))
          return Array.from(tf.grad(f)(tf.tensor2d([eOld])).dataSync())
        })
        // d = s (eOld - noise) per value; w = mean |d|; D = 2 values.
        const d = eOld.map((e, k) => s * (e - noise[k]))
        const w = (Math.abs(d[0]) + Math.abs(d[1])) / 2
        const want = d.map((x) => c * (2 * r - 1) * 2 * s * x / (2 * w))
        for (const k of [0, 1]) assert.approximately(g[k], want[k], 1e-4 * Math.max(1, Math.abs(want[k])), `beta ${beta} r ${r} value ${k}`)
        // r = 0: the gradient points against the error, so a descent step moves eps_theta away from the noise.
        if (r === 0) for (const k of [0, 1]) assert.isTrue(g[k] * (eOld[k] - noise[k]) < 0)
        if (r === 1) for (const k of [0, 1]) assert.isTrue(g[k] * (eOld[k] - noise[k]) > 0)
      }
    }
  })

  it.effect("objective: the loss of every final image at its own eps and t, r from the group advantages, the old policy's prediction at the sampling weights", () =>
    Effect.gen(function*() {
      const model = perturbed(0)
      const reference = perturbed(1)
      const t = trajectories()
      const schedule = Schedule.make(tinyMlp.schedule)
      const prepared = yield* prepare(model, reference, t)
      const final = t.final!.arraySync() as Array<Array<number>>
      const adv = GroupRelative.groupAdvantages(scores.trajectory).flat()
      // The same draws by hand: the timesteps, then the noise; per image, or per prompt (row i*B + b uses draw b).
      const expectedFor = (per: "image" | "prompt") => {
        const draws = per === "image" ? N * B : B
        const rng = Rng.fromSeed(3)
        const drawnT = Array.from({ length: draws }, () => rng.int(schedule.trainSteps))
        const drawnEps = rng.normals(2 * draws)
        const ts = Array.from({ length: N * B }, (_, row) => drawnT[row % draws])
        const eps = Array.from({ length: N * B }, (_, row) => [drawnEps[2 * (row % draws)], drawnEps[2 * (row % draws) + 1]])
        const xt = tf.tensor2d(final.map((x, row) => x.map((v, k) => Schedule.alpha(schedule, ts[row]) * v + Schedule.sigma(schedule, ts[row]) * eps[row][k])))
        const pred = tf.tidy(() => Denoiser.eps(model, xt, ts, new Array(N * B).fill("")).arraySync() as Array<Array<number>>)
        xt.dispose()
        let expected = 0
        // theta = old here (the policy's weights sampled the batch).
        for (let row = 0; row < N * B; row++) expected += handRow(pred[row], pred[row], eps[row], Schedule.sigma(schedule, ts[row]) / Schedule.alpha(schedule, ts[row]), Nft.optimality(adv[row], 5), 1, 5)
        return expected / (N * B)
      }
      const got = yield* lossValue(prepared.loss)
      assert.approximately(got, expectedFor("image"), 1e-4 * Math.max(1, got))
      assert.strictEqual(prepared.nfe, 2 * N * B)
      const shared = yield* lossValue((yield* prepare(model, reference, t, { noise: "prompt" })).loss)
      assert.approximately(shared, expectedFor("prompt"), 1e-4 * Math.max(1, shared))
      assert.isTrue(Math.abs(shared - got) > 1e-4)
      // With a KL the reference's rows count too.
      const withKl = yield* prepare(model, reference, t, { kl: 0.1 })
      assert.strictEqual(withKl.nfe, 3 * N * B)
      assert.isTrue((yield* lossValue(withKl.loss)) > got)
      disposeTrajectories(t)
      Denoiser.dispose(model)
      Denoiser.dispose(reference)
    }).pipe(Effect.scoped))

  it.effect("objective: a step lowers the best image's error and raises the worst's; with the rewards reversed it does the opposite", () =>
    Effect.gen(function*() {
      // Errors of the first item's best (image 2) and worst (image 0) finals on fixed probes, before and after one SGD step.
      const change = (reversed: boolean) =>
        Effect.gen(function*() {
          const model = perturbed(0)
          const t = trajectories()
          const s = reversed ? { ...scores, trajectory: scores.trajectory.map((row) => row.map((x) => -x)) } : scores
          const prepared = yield* Effect.gen(function*() {
            return yield* (yield* Objective).prepare(t, { best: [2, 0], worst: [0, 1] }, s)
          }).pipe(Effect.provide(Nft.objective({ ...Nft.defaults, weighting: "eps" }).pipe(
            Layer.provide(Layer.mergeAll(Layer.succeed(Denoiser.Denoiser, { model }), Layer.succeed(Reference, { model }), RandomSource.fromSeed(3)))
          )))
          const probe = () =>
            tf.tidy(() => {
              const rng = Rng.fromSeed(5)
              const schedule = Schedule.make(tinyMlp.schedule)
              const rows = 64
              const ts = Array.from({ length: rows }, () => rng.int(schedule.trainSteps))
              const eps = tf.tensor2d(rng.normals(2 * rows), [rows, 2])
              const errorOf = (row: number) => {
                const x0 = tf.tile(tf.slice(t.final!, [row, 0], [1, 2]), [rows, 1])
                const a = tf.tensor2d(ts.map((u) => Schedule.alpha(schedule, u)), [rows, 1])
                const sg = tf.tensor2d(ts.map((u) => Schedule.sigma(schedule, u)), [rows, 1])
                return tf.mean(tf.square(tf.sub(Denoiser.eps(model, tf.add(tf.mul(a, x0), tf.mul(sg, eps)), ts, new Array(rows).fill("")), eps))).dataSync()[0]
              }
              // Rows 4 and 0: item 0's images 2 (reward 0.8) and 0 (reward 0.1).
              return errorOf(4) - errorOf(0)
            })
          const before = probe()
          const { grads } = yield* accumulatedGrads(prepared.loss, model.params)
          tf.tidy(() => {
            for (const [k, g] of Object.entries(grads)) model.params[k].assign(tf.sub(model.params[k], tf.mul(g, 0.02)))
          })
          tf.dispose(Object.values(grads))
          const after = probe()
          disposeTrajectories(t)
          Denoiser.dispose(model)
          return after - before
        }).pipe(Effect.scoped)
      const right = yield* change(false)
      const reversed = yield* change(true)
      assert.isTrue(right < 0, `best-minus-worst error changed by ${right}`)
      assert.isTrue(reversed > 0, `reversed rewards: ${reversed}`)
    }))

  it.effect("no tensor leaks: live tensors are the same after every iteration (prepare, K steps, release), with an averaged old policy and a KL", () =>
    Effect.gen(function*() {
      const model = perturbed(0)
      const reference = perturbed(1)
      const t = trajectories()
      const counts: Array<number> = []
      yield* Effect.gen(function*() {
        const objective = yield* Objective
        for (let i = 0; i < 4; i++) {
          yield* Effect.scoped(Effect.gen(function*() {
            const prepared = yield* objective.prepare(t, { best: [2, 0], worst: [0, 1] }, scores)
            for (const loss of [prepared.loss, ...(prepared.updates ?? [])]) {
              const { grads, value } = yield* accumulatedGrads(loss, model.params)
              tf.dispose(Object.values(grads))
              void value
            }
          }))
          counts.push(tf.memory().numTensors)
        }
      }).pipe(
        Effect.provide(Nft.objective({ ...Nft.defaults, oldDecay: 0.5, kl: 0.1, stepsPerBatch: 2, microBatchRows: 3 }).pipe(
          Layer.provide(Layer.mergeAll(Layer.succeed(Denoiser.Denoiser, { model }), Layer.succeed(Reference, { model: reference }), RandomSource.fromSeed(3)))
        )),
        Effect.scoped
      )
      assert.isTrue(counts.every((c) => c === counts[0]), `live tensors ${counts.join(",")}`)
      disposeTrajectories(t)
      Denoiser.dispose(model)
      Denoiser.dispose(reference)
    }))
})
