import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Layer } from "effect"
import { beforeAll } from "vitest"
import * as Schedule from "../../src/diffusion/Schedule.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import * as Mlp from "../../src/model/Mlp.ts"
import { Reference } from "../../src/model/Reference.ts"
import * as NoisedSamples from "../../src/trajectory/NoisedSamples.ts"
import * as ImageLevel from "../../src/objective/ImageLevel.ts"
import { Objective } from "../../src/objective/Objective.ts"
import { accumulatedGrads, lossValue } from "../../src/optim/Optimizer.ts"
import { Rng } from "../../src/tensor/Random.ts"
import { RandomSource } from "../../src/tensor/RandomSource.ts"
import type { Selection } from "../../src/trajectory/PathSelector.ts"
import type { Trajectories } from "../../src/trajectory/Trajectory.ts"
import { useWasm } from "../helpers.ts"

const tinyMlp: Mlp.MlpConfig = { ...Mlp.labConfig, architecture: { dim: 2, hidden: 8, blocks: 1, timeDim: 4 } }
const B = 2
const N = 3
const BETA = 40

/** A perturbed MLP (the zero-initialised output layer would give zero errors' gradients). */
const perturbed = (seed: number) => {
  const m = Denoiser.init(tinyMlp, seed)
  tf.tidy(() => {
    for (const v of Object.values(m.params)) v.assign(tf.add(v, tf.randomNormal(v.shape, 0, 0.3, "float32", seed + 7)))
  })
  return m
}

/** Hand-made trajectories: only the paths' final images matter to these objectives. */
const trajectories = (): Trajectories => {
  const final = tf.tensor2d([[0.1, 0.2], [0.3, -0.4], [-0.5, 0.6], [0.7, 0.1], [0.2, -0.2], [-0.3, -0.6]], [N * B, 2])
  return { n: N, batch: B, prompts: ["", ""], x0: tf.zeros([B, 2]), noise: tf.zeros([N * B, 2]), steps: [], nfe: 0, final }
}

/** Winner of item 0 is path 2 (row 4), loser path 0 (row 0); item 1: winner path 0 (row 1), loser path 1 (row 3). */
const selection: Selection = { best: [2, 0], worst: [0, 1] }
const scores = { perStep: [], trajectory: [[0.1, 0.9], [0.5, 0.2], [0.8, 0.4]], rewardCalls: 0 }

const errorOf = (model: Denoiser.Model, x: tf.Tensor, t: ReadonlyArray<number>, eps: tf.Tensor): Array<number> =>
  tf.tidy(() => Array.from(tf.mean(tf.square(tf.sub(Denoiser.eps(model, x, t, ["", ""]), eps)), 1).dataSync()))

const softplus = (z: number) => Math.log1p(Math.exp(z))

const prepare = (model: Denoiser.Model, reference: Denoiser.Model, t: Trajectories, sel: Selection, which: "rlhf" | "sft", stepsPerBatch = 1, winnerSft = 0) =>
  Effect.gen(function*() {
    const objective = yield* Objective
    return yield* objective.prepare(t, sel, scores)
  }).pipe(
    Effect.provide(
      (which === "rlhf" ? ImageLevel.rlhf({ beta: BETA, margin: "inside", stepsPerBatch, winnerSft }) : ImageLevel.sft({ stepsPerBatch })).pipe(
        Layer.provide(Layer.mergeAll(Layer.succeed(Denoiser.Denoiser, { model }), Layer.succeed(Reference, { model: reference }), RandomSource.fromSeed(3)))
      )
    )
  )

describe("ImageLevel", () => {
  beforeAll(useWasm)

  it.effect("rlhf: the loss is reward-modulated Diffusion-DPO on the selected final images, shared noise and t per item", () =>
    Effect.gen(function*() {
      const model = perturbed(0)
      const reference = perturbed(1)
      const t = trajectories()
      const schedule = Schedule.make(tinyMlp.schedule)
      const prepared = yield* prepare(model, reference, t, selection, "rlhf")
      // The same draws by hand: timesteps, then one eps per item shared by winner and loser.
      const rng = Rng.fromSeed(3)
      const ts = [rng.int(schedule.trainSteps), rng.int(schedule.trainSteps)]
      const eps = tf.tensor2d(rng.normals(2 * B), [B, 2])
      const noised = (rows: Array<number>) =>
        tf.tidy(() => {
          const x = tf.gather(t.final!, rows)
          const a = tf.tensor2d(ts.map((s) => Schedule.alpha(schedule, s)), [B, 1])
          const s = tf.tensor2d(ts.map((u) => Schedule.sigma(schedule, u)), [B, 1])
          return tf.add(tf.mul(a, x), tf.mul(s, eps))
        })
      const xw = noised([4, 1])
      const xl = noised([0, 3])
      const [mw, ml, rw, rl] = [errorOf(model, xw, ts, eps), errorOf(model, xl, ts, eps), errorOf(reference, xw, ts, eps), errorOf(reference, xl, ts, eps)]
      const margin = [0.8 - 0.1, 0.9 - 0.2]
      const expected = [0, 1].reduce((acc, b) => acc + softplus(-(BETA / 2) * ((rw[b] - rl[b]) - (mw[b] - ml[b])) + margin[b]), 0) / B
      const got = yield* lossValue(prepared.loss)
      assert.isTrue(Math.abs(got - expected) < 1e-4 * Math.max(1, expected), `loss ${got} vs hand-computed ${expected}`)
      assert.strictEqual(prepared.nfe, 4 * B)
      assert.isTrue(Math.abs((prepared.stats.rewardMargin ?? 0) - (margin[0] + margin[1]) / 2) < 1e-9)
      tf.dispose([xw, xl, eps, t.final!, t.x0, t.noise])
      Denoiser.dispose(model)
      Denoiser.dispose(reference)
    }).pipe(Effect.scoped))

  it.effect("rlhf: a gradient step lowers the winner's error relative to the loser's; flipping the preference reverses it", () =>
    Effect.gen(function*() {
      const gap = (sel: Selection) =>
        Effect.gen(function*() {
          const model = perturbed(0)
          const reference = Denoiser.clone(model, false)
          const t = trajectories()
          const prepared = yield* prepare(model, reference, t, sel, "rlhf")
          // The winner-minus-loser error gap on the objective's own noised pairs, before and after one SGD step.
          const before = yield* lossValue(prepared.loss)
          const { grads } = yield* accumulatedGrads(prepared.loss, model.params)
          tf.tidy(() => {
            for (const [k, g] of Object.entries(grads)) model.params[k].assign(tf.sub(model.params[k], tf.mul(g, 0.05)))
          })
          tf.dispose(Object.values(grads))
          const after = yield* lossValue(prepared.loss)
          tf.dispose([t.final!, t.x0, t.noise])
          Denoiser.dispose(model)
          Denoiser.dispose(reference)
          return { before, after }
        }).pipe(Effect.scoped)
      const right = yield* gap(selection)
      const flipped = yield* gap({ best: selection.worst, worst: selection.best })
      // At the reference the logits are 0; the step must raise them (lower the loss) for whichever pair is preferred.
      assert.isTrue(right.after < right.before, `loss ${right.before} -> ${right.after}`)
      assert.isTrue(flipped.after < flipped.before)
      // ... and the two preferences move the model in opposite directions: compare the winner-vs-loser errors directly.
      const direction = (sel: Selection) =>
        Effect.gen(function*() {
          const model = perturbed(0)
          const reference = Denoiser.clone(model, false)
          const t = trajectories()
          const prepared = yield* prepare(model, reference, t, sel, "rlhf")
          const { grads } = yield* accumulatedGrads(prepared.loss, model.params)
          // Directional derivative of (e_w - e_l) for the fixed pair of `selection` along -grad.
          const pairGap = () => {
            const s = ImageLevel.noisedFinals(Schedule.make(tinyMlp.schedule), t, [selection.best, selection.worst], Rng.fromSeed(11))
            const e = tf.tidy(() => Array.from(tf.mean(tf.square(tf.sub(Denoiser.eps(model, s.steps[0].xt, s.timesteps, ["", "", "", ""]), s.noise)), 1).dataSync()))
            tf.dispose([s.x0, s.noise, s.clean, s.steps[0].xt])
            return e[0] + e[1] - e[2] - e[3]
          }
          const g0 = pairGap()
          tf.tidy(() => {
            for (const [k, g] of Object.entries(grads)) model.params[k].assign(tf.sub(model.params[k], tf.mul(g, 0.05)))
          })
          tf.dispose(Object.values(grads))
          const g1 = pairGap()
          tf.dispose([t.final!, t.x0, t.noise])
          Denoiser.dispose(model)
          Denoiser.dispose(reference)
          return g1 - g0
        }).pipe(Effect.scoped)
      const towardWinner = yield* direction(selection)
      const towardLoser = yield* direction({ best: selection.worst, worst: selection.best })
      assert.isTrue(towardWinner < 0, `winner-minus-loser error changed by ${towardWinner}`)
      assert.isTrue(towardLoser > 0, `flipped: ${towardLoser}`)
    }))

  it.effect("rlhf: a tie (winner = loser) gives no gradient", () =>
    Effect.gen(function*() {
      const model = perturbed(0)
      const reference = perturbed(1)
      const t = trajectories()
      const prepared = yield* prepare(model, reference, t, { best: [1, 2], worst: [1, 2] }, "rlhf")
      const { grads } = yield* accumulatedGrads(prepared.loss, model.params)
      const norm = tf.tidy(() => Math.sqrt(tf.addN(Object.values(grads).map((g) => tf.sum(tf.square(g)))).dataSync()[0]))
      tf.dispose(Object.values(grads))
      assert.isTrue(norm < 1e-6, `gradient norm ${norm}`)
      tf.dispose([t.final!, t.x0, t.noise])
      Denoiser.dispose(model)
      Denoiser.dispose(reference)
    }).pipe(Effect.scoped))

  it.effect("sft: the denoising loss of the best path's final image, not of the shared start image", () =>
    Effect.gen(function*() {
      const model = perturbed(0)
      const t = trajectories()
      const schedule = Schedule.make(tinyMlp.schedule)
      const prepared = yield* prepare(model, model, t, selection, "sft")
      const rng = Rng.fromSeed(3)
      const ts = [rng.int(schedule.trainSteps), rng.int(schedule.trainSteps)]
      const eps = tf.tensor2d(rng.normals(2 * B), [B, 2])
      const expectedOf = (rows: Array<number>) => {
        const x = tf.tidy(() =>
          tf.add(
            tf.mul(tf.tensor2d(ts.map((s) => Schedule.alpha(schedule, s)), [B, 1]), tf.gather(t.final!, rows)),
            tf.mul(tf.tensor2d(ts.map((s) => Schedule.sigma(schedule, s)), [B, 1]), eps)
          )
        )
        const e = errorOf(model, x, ts, eps)
        x.dispose()
        return (e[0] + e[1]) / 2
      }
      const got = yield* lossValue(prepared.loss)
      assert.isTrue(Math.abs(got - expectedOf([4, 1])) < 1e-5, `${got} vs ${expectedOf([4, 1])}`)
      // The worst paths' finals give another loss: the target is the selected image.
      assert.isTrue(Math.abs(got - expectedOf([0, 3])) > 1e-4)
      assert.strictEqual(prepared.nfe, B)
      tf.dispose([eps, t.final!, t.x0, t.noise])
      Denoiser.dispose(model)
    }).pipe(Effect.scoped))

  it.effect("stepsPerBatch: K steps on the same selection, the first as one step's, each later one with fresh eps and t", () =>
    Effect.gen(function*() {
      const model = perturbed(0)
      const reference = perturbed(1)
      for (const which of ["rlhf", "sft"] as const) {
        const t = trajectories()
        const one = yield* lossValue((yield* prepare(model, reference, t, selection, which)).loss)
        const k = yield* prepare(model, reference, t, selection, which, 3)
        assert.strictEqual(k.updates?.length, 2)
        assert.strictEqual(k.nfe, (which === "rlhf" ? 4 : 1) * B * 3)
        // Same RNG order: the first step is the one-step objective's.
        const first = yield* lossValue(k.loss)
        assert.isTrue(Math.abs(first - one) < 1e-6, `${which}: ${first} vs ${one}`)
        const later = yield* Effect.forEach(k.updates!, lossValue)
        for (const v of later) assert.isTrue(Math.abs(v - one) > 1e-6, `${which}: a later step reused the first step's eps and t`)
        assert.isTrue(Math.abs(later[0] - later[1]) > 1e-6)
        tf.dispose([t.final!, t.x0, t.noise])
      }
      Denoiser.dispose(model)
      Denoiser.dispose(reference)
    }).pipe(Effect.scoped))

  it.effect("winnerSft adds that multiple of the winners' mean denoising error to the DPO loss", () =>
    Effect.gen(function*() {
      const model = perturbed(0)
      const reference = perturbed(1)
      const t = trajectories()
      const schedule = Schedule.make(tinyMlp.schedule)
      const dpo = yield* lossValue((yield* prepare(model, reference, t, selection, "rlhf")).loss)
      const anchored = yield* lossValue((yield* prepare(model, reference, t, selection, "rlhf", 1, 3)).loss)
      // The same draws as the first test: the winners' finals noised with one eps and t per item.
      const rng = Rng.fromSeed(3)
      const ts = [rng.int(schedule.trainSteps), rng.int(schedule.trainSteps)]
      const eps = tf.tensor2d(rng.normals(2 * B), [B, 2])
      const xw = tf.tidy(() =>
        tf.add(
          tf.mul(tf.tensor2d(ts.map((s) => Schedule.alpha(schedule, s)), [B, 1]), tf.gather(t.final!, [4, 1])),
          tf.mul(tf.tensor2d(ts.map((s) => Schedule.sigma(schedule, s)), [B, 1]), eps)
        )
      )
      const mw = errorOf(model, xw, ts, eps)
      const expected = dpo + 3 * (mw[0] + mw[1]) / 2
      assert.isTrue(Math.abs(anchored - expected) < 1e-5 * Math.max(1, expected), `${anchored} vs ${expected}`)
      assert.isTrue(anchored - dpo > 1e-6)
      tf.dispose([xw, eps, t.final!, t.x0, t.noise])
      Denoiser.dispose(model)
      Denoiser.dispose(reference)
    }).pipe(Effect.scoped))

  it.effect("minLossTimestep: the DPO noise's t is drawn from [min, T); 0 draws exactly as before", () =>
    Effect.gen(function*() {
      const schedule = Schedule.make(tinyMlp.schedule)
      const t = trajectories()
      const draw = (min: number | undefined) => {
        const s = min === undefined
          ? ImageLevel.noisedFinals(schedule, t, [selection.best, selection.worst], Rng.fromSeed(9))
          : ImageLevel.noisedFinals(schedule, t, [selection.best, selection.worst], Rng.fromSeed(9), min)
        const ts = [...s.timesteps]
        NoisedSamples.dispose(s)
        return ts
      }
      assert.deepStrictEqual(draw(0), draw(undefined))
      const many = Array.from({ length: 50 }, (_, k) => {
        const s = ImageLevel.noisedFinals(schedule, t, [selection.best], Rng.fromSeed(k), 900)
        const ts = [...s.timesteps]
        NoisedSamples.dispose(s)
        return ts
      }).flat()
      assert.isTrue(many.every((u) => u >= 900 && u < schedule.trainSteps), `${Math.min(...many)}..${Math.max(...many)}`)
      // Not all 900: the draw spans the range.
      assert.isTrue(new Set(many).size > 10)
      tf.dispose([t.final!, t.x0, t.noise])
    }))

  it.effect("objectives without continued paths fail loudly", () =>
    Effect.gen(function*() {
      const model = perturbed(0)
      const t = { ...trajectories() }
      const final = t.final!
      const exit = yield* Effect.exit(prepare(model, model, { ...t, final: undefined } as Trajectories, selection, "rlhf").pipe(Effect.scoped))
      assert.strictEqual(exit._tag, "Failure")
      tf.dispose([final, t.x0, t.noise])
      Denoiser.dispose(model)
    }))
})
