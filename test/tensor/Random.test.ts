import { assert, describe, it } from "@effect/vitest"
import { Rng } from "../../src/tensor/Random.ts"

describe("Rng", () => {
  it("is reproducible from a seed and differs across seeds", () => {
    const a = Rng.fromSeed(7).normals(100)
    const b = Rng.fromSeed(7).normals(100)
    const c = Rng.fromSeed(8).normals(100)
    assert.deepStrictEqual(Array.from(a), Array.from(b))
    assert.notDeepEqual(Array.from(a), Array.from(c))
  })

  it("resumes exactly from a saved state, also after an odd number of normals", () => {
    const r = Rng.fromSeed(3)
    r.normals(13)
    r.uniform()
    const saved = r.state()
    const rest = [...r.normals(11), r.uniform(), r.int(10)]
    const resumed = Rng.fromState(saved)
    assert.deepStrictEqual([...resumed.normals(11), resumed.uniform(), resumed.int(10)], rest)
  })

  it("draws standard normals and uniforms with the right moments", () => {
    const r = Rng.fromSeed(1)
    const n = r.normals(200_000)
    const mean = n.reduce((a, b) => a + b, 0) / n.length
    const variance = n.reduce((a, b) => a + (b - mean) ** 2, 0) / n.length
    assert.isBelow(Math.abs(mean), 0.01)
    assert.isBelow(Math.abs(variance - 1), 0.01)
    const u = Array.from({ length: 100_000 }, () => r.uniform())
    assert.isTrue(u.every((x) => x >= 0 && x < 1))
    assert.isBelow(Math.abs(u.reduce((a, b) => a + b, 0) / u.length - 0.5), 0.01)
  })

  it("shuffles into a permutation", () => {
    const xs = Array.from({ length: 50 }, (_, i) => i)
    const s = Rng.fromSeed(5).shuffle(xs)
    assert.deepStrictEqual([...s].sort((a, b) => a - b), xs)
    assert.notDeepEqual(s, xs)
  })
})
