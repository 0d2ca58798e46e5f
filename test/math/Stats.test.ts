import { assert, describe, it } from "@effect/vitest"
import * as Stats from "../../src/math/Stats.ts"

describe("Stats", () => {
  it("ranks average ties; Pearson and Spearman match hand computations", () => {
    assert.deepStrictEqual(Stats.ranks([3, 1, 2]), [3, 1, 2])
    assert.deepStrictEqual(Stats.ranks([1, 2, 2, 0]), [2, 3.5, 3.5, 1])
    // dx = [-1, 0, 1], dy = [-4/3, -1/3, 5/3]: sxy = 3, sxx = 2, syy = 42/9.
    assert.approximately(Stats.pearson([1, 2, 3], [1, 2, 4])!, 3 / Math.sqrt(2 * 42 / 9), 1e-12)
    assert.strictEqual(Stats.pearson([1, 2, 3], [1, 2, 4].map((v) => -v))! < 0, true)
    assert.isNull(Stats.pearson([1, 1, 1], [1, 2, 3]))
    assert.isNull(Stats.pearson([1], [2]))
    // Spearman ignores the scale: a monotone map gives 1, one swapped pair of 3 gives 0.5.
    assert.strictEqual(Stats.spearman([1, 2, 3], [1, 20, 300]), 1)
    assert.approximately(Stats.spearman([1, 2, 3], [2, 1, 3])!, 0.5, 1e-12)
  })

  it("mean is 0 for no values unless told otherwise; pearson refuses unequal lengths", () => {
    assert.strictEqual(Stats.mean([]), 0)
    assert.isNaN(Stats.mean([], NaN))
    assert.strictEqual(Stats.mean([4], NaN), 4)
    assert.strictEqual(Stats.mean(new Float32Array([1, 2, 3, 6])), 3)
    assert.throws(() => Stats.pearson([1, 2], [1, 2, 3]), /2 vs 3/)
  })

  it("meanStd: population SD (divided by n); `empty` for both with no values", () => {
    // Deviations -3, -1, -1, -1, 0, 0, 2, 4: squares sum to 32, / 8 = 4.
    assert.deepStrictEqual(Stats.meanStd([2, 4, 4, 4, 5, 5, 7, 9]), { mean: 5, std: 2 })
    assert.deepStrictEqual(Stats.meanStd(new Float32Array([3])), { mean: 3, std: 0 })
    assert.deepStrictEqual(Stats.meanStd([]), { mean: 0, std: 0 })
    const none = Stats.meanStd([], NaN)
    assert.isNaN(none.mean)
    assert.isNaN(none.std)
  })

  it("mean and meanStd sum left to right, as the copies they replaced did (figures reproduce to the digit)", () => {
    const xs = [0.1, 0.2, 0.3, 1e-17, 7.7, -3.3, 1 / 3, 2 / 3, 1e3 + 0.1]
    const m = xs.reduce((a, b) => a + b, 0) / xs.length
    const std = Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / xs.length)
    assert.strictEqual(Stats.mean(xs), m)
    assert.deepStrictEqual(Stats.meanStd(xs), { mean: m, std })
  })

  it("meanSampleStd: sample SD (divided by n - 1), the same mean as meanStd; NaN SD for one value", () => {
    // Squares of the deviations sum to 32: / 7 for the sample SD, / 8 for the population's.
    const xs = [2, 4, 4, 4, 5, 5, 7, 9]
    assert.deepStrictEqual(Stats.meanSampleStd(xs), { mean: 5, std: Math.sqrt(32 / 7) })
    assert.strictEqual(Stats.meanSampleStd(xs).mean, Stats.meanStd(xs).mean)
    // The lab's rlhf-image rewards over 3 seeds (docs/data/lab/lab.json): population 0.038, sample 0.046.
    const seeds = [0.6636102490008253, 0.5974587230893555, 0.5750942717667213]
    assert.strictEqual(Stats.meanStd(seeds).std.toFixed(3), "0.038")
    assert.strictEqual(Stats.meanSampleStd(seeds).std.toFixed(3), "0.046")
    const one = Stats.meanSampleStd([3])
    assert.strictEqual(one.mean, 3)
    assert.isNaN(one.std)
    assert.deepStrictEqual(Stats.meanSampleStd([]), { mean: 0, std: 0 })
  })

  it("pairedDifference: the mean difference and 1.96 sd / sqrt(n)", () => {
    // d = [1, 2, 3]: mean 2, sample sd 1.
    const d = Stats.pairedDifference([0, 0, 0], [1, 2, 3])
    assert.approximately(d.mean, 2, 1e-12)
    assert.approximately(d.half, 1.96 / Math.sqrt(3), 1e-12)
    assert.strictEqual(Stats.pairedDifference([1], [2]).half, Infinity)
    assert.throws(() => Stats.pairedDifference([1, 2], [1]), /2 vs 1/)
  })
})

describe("Stats.tInterval95", () => {
  it("uses Student's t for the seeds' mean: 3 values, t = 4.303", () => {
    const r = Stats.tInterval95([1, 2, 3])
    assert.strictEqual(r.mean, 2)
    assert.approximately(r.half, (4.303 * 1) / Math.sqrt(3), 1e-12)
    assert.strictEqual(Stats.tInterval95([5]).half, Infinity)
  })

  it("t975: 2 seeds (df 1) 12.706, 3 seeds 4.303, large df the normal 1.96", () => {
    assert.strictEqual(Stats.t975(1), 12.706)
    assert.strictEqual(Stats.t975(2), 4.303)
    assert.strictEqual(Stats.t975(100), 1.96)
    assert.approximately(Stats.tInterval95([1, 3]).half, (12.706 * Math.SQRT2) / Math.SQRT2, 1e-12)
  })
})
