import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Exit } from "effect"
import * as Ddim from "../../src/diffusion/Ddim.ts"
import * as PathAgreement from "../../src/eval/PathAgreement.ts"
import * as Wilson from "../../src/eval/Wilson.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import { Backend } from "../../src/tensor/Backend.ts"
import { Rng } from "../../src/tensor/Random.ts"
import * as Trajectory from "../../src/trajectory/Trajectory.ts"
import { tiny32 } from "../sharpen-helpers.ts"

// Scores [n][B]: path i of item b.
const final = [
  [1, 5, 2],
  [2, 4, 3],
  [3, 6, 1]
]

describe("PathAgreement statistics", () => {
  it("perfectly agreeing rankings: every pick agrees, rho = 1, best - worst is the full spread", () => {
    const a = PathAgreement.itemAgreement(final.map((r) => r.map((v) => 10 * v + 1)), final)
    assert.deepStrictEqual(a.argmax, [true, true, true])
    assert.deepStrictEqual(a.argmin, [true, true, true])
    assert.deepStrictEqual(a.spearman, [1, 1, 1])
    assert.deepStrictEqual(a.bestFinal, [3, 6, 3])
    assert.deepStrictEqual(a.worstFinal, [1, 4, 1])
    assert.deepStrictEqual(a.spread, [2, 2, 2])
  })

  it("reversed rankings: no pick agrees, rho = -1, best - worst is minus the spread", () => {
    const a = PathAgreement.itemAgreement(final.map((r) => r.map((v) => -v)), final)
    assert.deepStrictEqual(a.argmax, [false, false, false])
    assert.deepStrictEqual(a.argmin, [false, false, false])
    assert.deepStrictEqual(a.spearman, [-1, -1, -1])
    assert.deepStrictEqual(a.bestFinal.map((v, b) => v - a.worstFinal[b]), [-2, -2, -2])
  })

  it("a mixed case: per-item hits and rho by hand", () => {
    // item 0: trajectory order (2 > 1 > 0) = final order; item 1: best right, middle and worst swapped
    // (rho 0.5); item 2: trajectory ranks path 0 best and path 1 worst, final has path 1 best, path 2 worst.
    const trajectory = [
      [0, 1, 9],
      [1, 5, 0],
      [2, 9, 5]
    ]
    const a = PathAgreement.itemAgreement(trajectory, final)
    assert.deepStrictEqual(a.argmax, [true, true, false])
    assert.deepStrictEqual(a.argmin, [true, false, false])
    assert.strictEqual(a.spearman[0], 1)
    assert.approximately(a.spearman[1]!, 0.5, 1e-12)
    // trajectory ranks of item 2: [3, 1, 2]; final ranks: [2, 3, 1]: rho = -0.5.
    assert.approximately(a.spearman[2]!, -0.5, 1e-12)
    assert.deepStrictEqual(a.bestFinal, [3, 6, 2])
    assert.deepStrictEqual(a.worstFinal, [1, 5, 3])
    // A full tie in one ranking leaves rho undefined rather than 0.
    assert.isNull(PathAgreement.itemAgreement([[1], [1], [1]], [[1], [2], [3]]).spearman[0])
  })

  it("step correlations separate pooled and within-prompt correlation", () => {
    // Within each prompt the better estimate has the worse final image, but the
    // second prompt is better on both: pooled r > 0, within-prompt r = -1.
    const perStep = [[0, 10, 1, 11]] // rows i*B + b: path 0 of items 0, 1; path 1 of items 0, 1
    const fin = [[1, 11], [0, 10]]
    const [c] = PathAgreement.stepCorrelations(perStep, fin)
    assert.isAbove(c.all!, 0.9)
    assert.approximately(c.withinItem!, -1, 1e-12)
  })

  it("items and tables are inverse layouts; the summary aggregates, rates and splits by t0", () => {
    const n = 3
    // Two batches of two items; per step rewards rise with the step.
    const perStepA = [[1, 4, 2, 5, 3, 6], [1.5, 4, 2.5, 5, 3.5, 6]] // item 0 ascending, item 1 ascending
    const finalA = [[1, 6], [2, 5], [3, 4]] // item 0 agrees, item 1 reversed
    const perStepB = [[3, 0, 2, 1, 1, 2], [3, 0, 2, 1, 1, 2.5]]
    const finalB = [[1, 0], [2, 1], [3, 2]] // item 0 reversed, item 1 agrees
    const xs = [...PathAgreement.items(["p0", "p1"], 900, perStepA, finalA), ...PathAgreement.items(["p2", "p3"], 100, perStepB, finalB)]
    assert.deepStrictEqual(xs[1], { prompt: "p1", t0: 900, perStep: [[4, 5, 6], [4, 5, 6]], final: [6, 5, 4] })
    const t = PathAgreement.tables(xs.slice(0, 2))
    assert.deepStrictEqual(t.perStep, perStepA)
    assert.deepStrictEqual(t.final, finalA)

    const s = PathAgreement.summarize(xs, 500)
    assert.strictEqual(s.items, 4)
    const [sum, last] = s.rankings
    assert.strictEqual(sum.aggregation, "sum")
    assert.strictEqual(last.aggregation, "last")
    // sum: items 0 and 3 agree on the best path.
    assert.strictEqual(sum.argmax.hits, 2)
    assert.strictEqual(sum.argmax.rate, 0.5)
    assert.approximately(sum.argmax.chance, 1 / n, 1e-12)
    assert.deepStrictEqual([sum.argmax.low, sum.argmax.high], [...Wilson.interval(2, 4)])
    assert.approximately(sum.spearman!, 0, 1e-12)
    // The reversed items (1 and 2) have the preferred path's final image below the rejected one's.
    assert.strictEqual(sum.pairInverted.hits, 2)
    assert.strictEqual(sum.pairInverted.chance, 0.5)
    // Final spreads are all 2; best - worst is +2 on agreeing and -2 on reversed items.
    assert.strictEqual(s.finalSpread, 2)
    assert.strictEqual(sum.bestMinusWorst, 0)
    assert.strictEqual(sum.absBestMinusWorst, 2)
    assert.strictEqual(s.oracleBestMinusMean, 1)
    assert.deepStrictEqual(s.t0, [{ t0: 900, items: 2 }, { t0: 100, items: 2 }])
    const [high, low] = s.byT0
    assert.deepStrictEqual([high.half, high.items, low.half, low.items], ["high", 2, "low", 2])
    assert.strictEqual(high.rankings[0].argmax.hits, 1)
    assert.strictEqual(low.rankings[0].argmax.hits, 1)
    // The last step alone: item 3's last step (1, 2, 2.5) still ranks path 2 best.
    assert.strictEqual(last.argmax.hits, 2)
    assert.strictEqual(s.steps.length, 2)
    assert.include(PathAgreement.markdown(s), "| sum | 50.0 [")
  })

  it("the t0 split halves the start grid", () => {
    const grid = Trajectory.startTimesteps(1000, { m: 3, inferenceSteps: 50, timestep: { kind: "uniform" } })
    assert.strictEqual(grid.length, 48)
    const threshold = PathAgreement.splitThreshold(grid)
    assert.strictEqual(grid.filter((t) => t >= threshold).length, 24)
    assert.strictEqual(PathAgreement.splitThreshold([0, 20, 40]), 20)
  })
})

describe("PathAgreement.continueToClean", () => {
  const options: Trajectory.TrajectoryOptions = {
    n: 2,
    m: 2,
    inferenceSteps: 10,
    cfg: 2,
    estimator: { kind: "tweedie" },
    timestep: { kind: "range", min: 300, max: 300 }
  }
  const setup = () => {
    const model = Denoiser.init(tiny32, 3)
    // Zero-initialised output layers would predict zero noise: give them weights.
    for (const [k, v] of Object.entries(model.params)) {
      if (k.endsWith(".w")) tf.tidy(() => v.assign(tf.add(v, tf.randomNormal(v.shape, 0, 0.05, "float32", 7))))
    }
    const schedule = Denoiser.scheduleOf(model.config)
    const x0 = tf.tidy(() => tf.clipByValue(tf.randomNormal([2, 32, 32, 3], 0, 0.5, "float32", 3), -1, 1) as tf.Tensor4D)
    const prompts = ["a red circle", "two blue squares"]
    return { model, schedule, x0, prompts }
  }

  it.effect("reaches the image of a plain DDIM run from the first state, on the same grid and guidance, and leaks nothing", () =>
    Effect.gen(function*() {
      const { model, schedule, x0, prompts } = setup()
      const t = Trajectory.generate(model, schedule, x0, prompts, Rng.fromSeed(1), options)
      assert.deepStrictEqual(t.steps.map((s) => s.t), [300, 200])
      const rowPrompts = [0, 1, 2, 3].map((r) => prompts[r % 2])
      const before = tf.memory().numTensors
      const c = PathAgreement.continueToClean(model, t, options)
      assert.deepStrictEqual(c.images.shape, [4, 32, 32, 3])
      // The recorded eps takes t = 200 to 100; then 100 and 0 -> clean: 2 calls of 4 rows, guidance counts 2.
      assert.strictEqual(c.nfe, 2 * 4 * 2)
      const [lo, hi] = tf.tidy(() => [tf.min(c.images).dataSync()[0], tf.max(c.images).dataSync()[0]])
      assert.isAtLeast(lo, -1)
      assert.isAtMost(hi, 1)
      const plain = Ddim.sample({
        schedule,
        denoise: (x, tt) => Denoiser.guidedEps(model, x, tt, rowPrompts, options.cfg),
        xT: t.steps[0].xt,
        inferenceSteps: options.inferenceSteps,
        startTimestep: t.steps[0].t,
        clipSample: 1
      })
      const diff = tf.tidy(() => tf.max(tf.abs(tf.sub(plain, c.images))).dataSync()[0])
      assert.isBelow(diff, 1e-5)
      // The paths differ (their noises do), so the comparison is not trivially of one image.
      const across = tf.tidy(() => tf.max(tf.abs(tf.sub(c.images.slice([0], [2]), c.images.slice([2], [2])))).dataSync()[0])
      assert.isAbove(across, 1e-3)
      tf.dispose([plain, c.images])
      assert.strictEqual(tf.memory().numTensors, before)
      // A second call allocates and frees the same: no growth.
      const again = PathAgreement.continueToClean(model, t, options)
      again.images.dispose()
      assert.strictEqual(tf.memory().numTensors, before)
      Trajectory.dispose(t)
      x0.dispose()
      Denoiser.dispose(model)
    }).pipe(Effect.provide(Backend.make("wasm"))))

  it.effect("a path that ends at t = 0 continues to its last x0 estimate; the scoped version frees its images", () =>
    Effect.gen(function*() {
      const { model, schedule, x0, prompts } = setup()
      const t = Trajectory.generate(model, schedule, x0, prompts, Rng.fromSeed(2), { ...options, timestep: { kind: "range", min: 100, max: 100 } })
      assert.deepStrictEqual(t.steps.map((s) => s.t), [100, 0])
      const before = tf.memory().numTensors
      for (let call = 0; call < 2; call++) {
        yield* Effect.scoped(Effect.gen(function*() {
          const c = yield* PathAgreement.continuePaths(model, t, options)
          assert.strictEqual(c.nfe, 0)
          const diff = tf.tidy(() => tf.max(tf.abs(tf.sub(c.images, t.steps[1].x0))).dataSync()[0])
          assert.isBelow(diff, 1e-6)
          assert.strictEqual((yield* PathAgreement.rowsOf(c.images)).length, 4)
        }))
        assert.strictEqual(tf.memory().numTensors, before)
      }
      const empty = yield* Effect.exit(Effect.scoped(PathAgreement.continuePaths(model, { ...t, steps: [] }, options)))
      assert.isTrue(Exit.isFailure(empty))
      assert.include(String(Exit.isFailure(empty) ? empty.cause : ""), "PathAgreementError")
      Trajectory.dispose(t)
      x0.dispose()
      Denoiser.dispose(model)
    }).pipe(Effect.provide(Backend.make("wasm"))))
})
