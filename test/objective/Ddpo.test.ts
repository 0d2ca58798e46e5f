import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Exit, Layer } from "effect"
import { beforeAll } from "vitest"
import * as Schedule from "../../src/diffusion/Schedule.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import * as Ddpo from "../../src/objective/Ddpo.ts"
import { Objective } from "../../src/objective/Objective.ts"
import * as AdamW from "../../src/optim/AdamW.ts"
import { StatTracker } from "../../src/reward/Combinators.ts"
import { paramGrads } from "../../src/tensor/Grad.ts"
import { Rng } from "../../src/tensor/Random.ts"
import { RandomSource } from "../../src/tensor/RandomSource.ts"
import * as NoisedSamples from "../../src/trajectory/NoisedSamples.ts"
import * as PolicyRollout from "../../src/trajectory/PolicyRollout.ts"
import { accumulatedGrads, lossValue } from "../../src/optim/Optimizer.ts"
import { useWasm } from "../helpers.ts"
import { tiny32 } from "../sharpen-helpers.ts"

const options: PolicyRollout.RolloutOptions = { n: 2, steps: 3, cfg: 2, eta: 1, clipSample: 1 }
const prompts = ["a red square", "two blue circles"]

const perturbed = (seed: number) => {
  const model = Denoiser.init(tiny32, seed)
  tf.tidy(() => {
    for (const v of Object.values(model.params)) v.assign(tf.add(v, tf.randomNormal(v.shape, 0, 0.02, "float32", seed + 5)))
  })
  return model
}

const setup = (seed = 0) =>
  Effect.gen(function*() {
    const model = perturbed(seed)
    const schedule = Schedule.make(tiny32.schedule)
    const traj = yield* PolicyRollout.rollout(model, schedule, prompts, Rng.fromSeed(seed), options)
    return { model, schedule, traj }
  })

/** Every (row, stochastic step) of a rollout. */
const allItems = (t: PolicyRollout.RolloutTrajectories): Array<Ddpo.Item> =>
  t.rollout.logProbs.flatMap((_, k) => Array.from({ length: t.n * t.batch }, (_, row) => ({ row, k })))

const ratios = (model: Denoiser.Model, schedule: Schedule.Schedule, t: PolicyRollout.RolloutTrajectories, items: ReadonlyArray<Ddpo.Item>) => {
  const lp = Ddpo.logProbs(model, schedule, t, items)
  const now = Array.from(lp.dataSync())
  lp.dispose()
  const old = Ddpo.oldLogProbs(t, items)
  return now.map((v, i) => Math.exp(v - old[i]))
}

describe("PolicyRollout", () => {
  beforeAll(useWasm)

  it.effect("records T + 1 states and T - 1 log-probs per row, counts NFE, and leaks nothing", () =>
    Effect.gen(function*() {
      const start = tf.memory().numTensors
      const { model, traj } = yield* setup()
      assert.strictEqual(traj.rollout.latents.length, 4)
      assert.strictEqual(traj.rollout.logProbs.length, 2) // the last step (to clean data) is deterministic
      for (const lp of traj.rollout.logProbs) {
        assert.strictEqual(lp.length, 4)
        for (const v of lp) assert.isTrue(Number.isFinite(v))
      }
      assert.deepStrictEqual(traj.rollout.timesteps, [666, 333, 0])
      assert.strictEqual(traj.nfe, 4 * 3 * 2)
      // The scored image is the final state, clipped; eta = 1 makes the chains differ.
      assert.deepStrictEqual(traj.steps[0].x0.shape, [4, 32, 32, 3])
      assert.isBelow(tf.tidy(() => tf.max(tf.abs(tf.sub(traj.steps[0].x0, tf.clipByValue(traj.rollout.latents[3], -1, 1)))).dataSync()[0]), 1e-7)
      PolicyRollout.dispose(traj)
      Denoiser.dispose(model)
      assert.strictEqual(tf.memory().numTensors, start)
    }))
})

describe("DDPO loss", () => {
  beforeAll(useWasm)

  it.effect("the importance ratio is 1 on the first step (on-policy) and leaves the clip range after an update", () =>
    Effect.gen(function*() {
      const { model, schedule, traj } = yield* setup(1)
      const items = allItems(traj)
      const before = ratios(model, schedule, traj, items)
      for (const r of before) assert.closeTo(r, 1, 1e-6)
      // One AdamW step on the surrogate with mixed advantages.
      const adam = AdamW.init(model.params)
      const adv = items.map((i) => (i.row % 2 === 0 ? 1 : -1))
      const { value, grads } = paramGrads(
        () =>
          tf.tidy(() =>
            Ddpo.ppoLoss(Ddpo.logProbs(model, schedule, traj, items), tf.tensor1d(Ddpo.oldLogProbs(traj, items)), tf.tensor1d(adv), 1e-4)
          ),
        model.params
      )
      // On-policy the surrogate is -mean(A) exactly: here 0.
      assert.closeTo(value.dataSync()[0], 0, 1e-5)
      yield* AdamW.step(model.params, grads, adam, 1e-4, AdamW.paper)
      tf.dispose([value, ...Object.values(grads)])
      const after = ratios(model, schedule, traj, items)
      assert.isAbove(Math.max(...after.map((r) => Math.abs(r - 1))), 1e-4)
      // The update raised pi on positive-advantage items relative to negative ones.
      const mean = (f: (i: Ddpo.Item) => boolean) => {
        const xs = items.flatMap((it, j) => (f(it) ? [Math.log(after[j])] : []))
        return xs.reduce((a, b) => a + b, 0) / xs.length
      }
      assert.isAbove(mean((i) => i.row % 2 === 0), mean((i) => i.row % 2 === 1))
      AdamW.dispose(adam)
      PolicyRollout.dispose(traj)
      Denoiser.dispose(model)
    }))

  it("clipping stops the gradient once the ratio is past the range in the advantage's direction", () => {
    const eps = 1e-4
    const gradOf = (logRatio: number, advantage: number) =>
      tf.tidy(() => {
        const old = tf.tensor1d([-2])
        const g = tf.grad((lp: tf.Tensor) => Ddpo.ppoLoss(lp as tf.Tensor1D, old, tf.tensor1d([advantage]), eps))(tf.tensor1d([-2 + logRatio]))
        return g.dataSync()[0]
      })
    // Inside the range: d/dlogp of -A r = -A r.
    assert.closeTo(gradOf(0, 2), -2, 1e-5)
    assert.closeTo(gradOf(0, -2), 2, 1e-5)
    // Past the range where the objective already improved: no gradient.
    assert.strictEqual(gradOf(0.01, 2), 0)
    assert.strictEqual(gradOf(-0.01, -2), 0)
    // Past the range the other way (the update went wrong): PPO keeps the gradient.
    assert.closeTo(gradOf(-0.01, 2), -2 * Math.exp(-0.01), 1e-5)
    assert.closeTo(gradOf(0.01, -2), 2 * Math.exp(0.01), 1e-5)
  })

  it("the plan covers every sample once per inner epoch, with the chosen fraction of its steps", () => {
    const o = { ...Ddpo.ddpoPytorch, timestepFraction: 0.5, minibatches: 3, innerEpochs: 2 }
    const steps = Ddpo.plan(Rng.fromSeed(4), 7, 10, o)
    assert.strictEqual(steps.length, 6)
    for (let e = 0; e < 2; e++) {
      const rows = steps.slice(3 * e, 3 * e + 3).flatMap((s) => s.map((i) => i.row))
      assert.deepStrictEqual([...new Set(rows)].sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6])
      assert.strictEqual(rows.length, 7 * 5)
    }
    for (const s of steps) {
      for (const i of s) assert.isTrue(i.k >= 0 && i.k < 10)
      assert.isAtLeast(s.length, 2 * 5)
    }
    assert.throws(() => Ddpo.plan(Rng.fromSeed(0), 2, 10, { ...o, minibatches: 3 }))
  })
})

describe("DDPO objective", () => {
  beforeAll(useWasm)

  const prepare = (traj: PolicyRollout.RolloutTrajectories | NoisedSamples.NoisedSamples, model: Denoiser.Model, o: Ddpo.DdpoOptions) =>
    Effect.gen(function*() {
      const objective = yield* Objective
      const tracker = yield* StatTracker
      // trajectory[i][b]: sample i of prompt b. Prompt 0: 1, 3; prompt 1: 10, 50.
      const scores = { perStep: [[1, 10, 3, 50]], trajectory: [[1, 10], [3, 50]], rewardCalls: 4 }
      const prepared = yield* Effect.scoped(Effect.flatMap(
        objective.prepare(traj, { best: [1, 1], worst: [0, 0] }, scores),
        (p) =>
          Effect.gen(function*() {
            // The first step's gradient, flattened (parameters in name order).
            const { grads } = yield* accumulatedGrads(p.loss, model.params)
            const grad = tf.tidy(() => tf.concat(Object.keys(grads).sort().map((k) => tf.reshape(grads[k], [-1]))).dataSync() as Float32Array)
            tf.dispose(Object.values(grads))
            const losses = yield* Effect.forEach([p.loss, ...(p.updates ?? [])], (l) =>
              Effect.map(lossValue(l), (value) => ({ value, parts: typeof l === "function" ? 1 : l.length })))
            return { grad, losses }
          })
      ))
      return { losses: prepared.losses.map((l) => l.value), parts: prepared.losses.map((l) => l.parts), grad: prepared.grad, stats: yield* tracker.stats }
    }).pipe(
      Effect.provide(Ddpo.objective(o).pipe(
        Layer.provideMerge(Layer.mergeAll(
          Layer.succeed(Denoiser.Denoiser, Denoiser.Denoiser.of({ model })),
          StatTracker.layer({ bufferSize: 16, minCount: 0 }),
          RandomSource.fromSeed(0)
        ))
      ))
    )

  it.effect("normalises advantages per prompt, clips them, and takes one step per minibatch", () =>
    Effect.gen(function*() {
      const { model, traj } = yield* setup(2)
      // One row per minibatch, evaluated before any update: each loss is -A of its row.
      const o = { ...Ddpo.ddpoPytorch, minibatches: 4 }
      const { losses, stats } = yield* prepare(traj, model, o)
      assert.strictEqual(losses.length, 4)
      // Per prompt, rewards (1, 3) and (10, 50) both normalise to (-1, +1); a
      // whole-batch normalisation would give (-0.75, -0.65, -0.30, 1.71).
      const sorted = losses.slice().sort((a, b) => a - b)
      for (const [i, v] of [-1, -1, 1, 1].entries()) assert.closeTo(sorted[i], v, 1e-4)
      assert.closeTo(stats[prompts[0]].mean, 2, 1e-9)
      assert.closeTo(stats[prompts[1]].mean, 30, 1e-9)
      const clipped = yield* prepare(traj, model, { ...o, advClip: 0.5 })
      for (const v of clipped.losses) assert.closeTo(Math.abs(v), 0.5, 1e-4)
      PolicyRollout.dispose(traj)
      Denoiser.dispose(model)
    }))

  it.effect("a minibatch in micro-batch parts has the whole minibatch's loss", () =>
    Effect.gen(function*() {
      const { model, traj } = yield* setup(2)
      const o = { ...Ddpo.ddpoPytorch, minibatches: 1, timestepFraction: 0.5 }
      const whole = yield* prepare(traj, model, o)
      const parts = yield* prepare(traj, model, { ...o, microBatch: 3 })
      const pairs = traj.n * traj.batch * Ddpo.trainedSteps(traj.rollout.logProbs.length, 0.5)
      assert.deepStrictEqual(whole.parts, [1])
      assert.deepStrictEqual(parts.parts, [Math.ceil(pairs / 3)])
      // On-policy with balanced advantages the loss is 0; its gradient is not.
      assert.closeTo(parts.losses[0], whole.losses[0], 1e-5)
      const norm = Math.max(...whole.grad.map(Math.abs))
      assert.isAbove(norm, 1e-6)
      assert.isBelow(Math.max(...whole.grad.map((g, i) => Math.abs(g - parts.grad[i]))) / norm, 1e-3)
      PolicyRollout.dispose(traj)
      Denoiser.dispose(model)
    }))

  it.effect("other trajectories are a defect naming the generator it needs", () =>
    Effect.gen(function*() {
      const model = perturbed(3)
      const schedule = Schedule.make(tiny32.schedule)
      const clean = tf.zeros([2, 32, 32, 3]) as tf.Tensor4D
      const noised = NoisedSamples.make(schedule, { clean, noise: tf.zeros([2, 32, 32, 3]) as tf.Tensor4D, itemTimesteps: [5, 9], prompts, n: 1, nfe: 0 })
      const exit = yield* Effect.exit(prepare(noised, model, Ddpo.ddpoPytorch))
      assert.isTrue(Exit.isFailure(exit))
      assert.match(String(Exit.isFailure(exit) ? (exit.cause.reasons[0] as { defect?: unknown }).defect : ""), /PolicyRollout/)
      NoisedSamples.dispose(noised)
      Denoiser.dispose(model)
    }))
})
