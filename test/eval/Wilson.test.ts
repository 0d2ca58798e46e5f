import { assert, describe, it } from "@effect/vitest"
import * as Wilson from "../../src/eval/Wilson.ts"

describe("Wilson.interval", () => {
  it("matches the closed form for 8 of 100 at 95%", () => {
    // centre (p + z²/2n) / (1 + z²/n), half-width z/(1 + z²/n) * sqrt(p(1-p)/n + z²/4n²)
    const [low, high] = Wilson.interval(8, 100)
    assert.closeTo(low, 0.04109, 1e-4)
    assert.closeTo(high, 0.14998, 1e-4)
  })

  it("stays inside [0, 1] at 0 and n passes, and is wide on few prompts", () => {
    const [low0, high0] = Wilson.interval(0, 40)
    assert.strictEqual(low0, 0)
    assert.closeTo(high0, 0.0876, 1e-3)
    const [lowN, highN] = Wilson.interval(40, 40)
    assert.closeTo(lowN, 0.9124, 1e-3)
    assert.strictEqual(highN, 1)
    assert.deepStrictEqual(Wilson.interval(0, 0), [0, 1])
  })

  it("narrows as n grows at the same rate", () => {
    const width = (k: number, n: number) => Wilson.interval(k, n)[1] - Wilson.interval(k, n)[0]
    assert.isTrue(width(10, 100) < width(4, 40))
    assert.isTrue(width(100, 1000) < width(10, 100))
  })
})

describe("Wilson.format", () => {
  it("prints percent with the interval, from an accuracy and its n", () => {
    assert.strictEqual(Wilson.format(0.08, 100), "8.0 [4.1, 15.0]")
  })
})
