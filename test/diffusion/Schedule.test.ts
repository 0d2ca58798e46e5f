import { assert, describe, it } from "@effect/vitest"
import * as Schedule from "../../src/diffusion/Schedule.ts"

/** Independent float64 reference: alphas_cumprod of a beta list. */
const cumprod = (betas: ReadonlyArray<number>) => {
  const out: Array<number> = []
  let p = 1
  for (const b of betas) out.push((p *= 1 - b))
  return out
}

describe("Schedule", () => {
  it("scaled_linear 0.00085 -> 0.012 (Stable Diffusion / SDXL) matches published alphas_cumprod", () => {
    const s = Schedule.make(Schedule.sdxl)
    const n = 1000
    const a = Math.sqrt(0.00085)
    const b = Math.sqrt(0.012)
    const ref = cumprod(Array.from({ length: n }, (_, i) => (a + ((b - a) * i) / (n - 1)) ** 2))
    assert.strictEqual(s.trainSteps, 1000)
    assert.strictEqual(s.alphasCumprod.length, 1000)
    for (const i of [0, 1, 250, 500, 998, 999]) assert.closeTo(s.alphasCumprod[i], ref[i], 1e-12)
    // Published values: beta_0 = 0.00085, beta_999 = 0.012, alphas_cumprod[999] = 0.004660...
    assert.closeTo(s.betas[0], 0.00085, 1e-15)
    assert.closeTo(s.betas[999], 0.012, 1e-15)
    assert.closeTo(s.alphasCumprod[0], 0.99915, 1e-12)
    assert.strictEqual(s.alphasCumprod[999].toPrecision(4), "0.004660")
    assert.strictEqual(ref[999].toPrecision(4), "0.004660")
  })

  it("linear DDPM 1e-4 -> 0.02: alphas_cumprod[999] = 4.04e-5", () => {
    const s = Schedule.make(Schedule.ddpmLinear)
    const ref = cumprod(Array.from({ length: 1000 }, (_, i) => 0.0001 + ((0.02 - 0.0001) * i) / 999))
    assert.closeTo(s.alphasCumprod[999], ref[999], 1e-15)
    assert.closeTo(s.alphasCumprod[999], 4.04e-5, 0.005e-5)
    assert.closeTo(ref[999], 4.036e-5, 0.0005e-5)
  })

  it("cosine: alphas_cumprod strictly decreasing, 0 < betas <= 0.999", () => {
    for (const trainSteps of [10, 1000, 4000]) {
      const s = Schedule.make({ kind: "cosine", trainSteps })
      for (let i = 0; i < trainSteps; i++) {
        assert.isAbove(s.betas[i], 0)
        assert.isAtMost(s.betas[i], 0.999)
        if (i > 0) assert.isBelow(s.alphasCumprod[i], s.alphasCumprod[i - 1])
      }
      assert.isBelow(s.alphasCumprod[0], 1)
      // the last beta is clipped at 0.999 (f(T) = 0)
      assert.strictEqual(s.betas[trainSteps - 1], 0.999)
    }
  })

  it("alpha/sigma: t = -1 is clean data; alpha^2 + sigma^2 = 1", () => {
    const s = Schedule.make(Schedule.sdxl)
    assert.strictEqual(Schedule.alpha(s, -1), 1)
    assert.strictEqual(Schedule.sigma(s, -1), 0)
    for (const t of [0, 17, 500, 999]) assert.closeTo(Schedule.alpha(s, t) ** 2 + Schedule.sigma(s, t) ** 2, 1, 1e-15)
  })
})
