import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { SIZE } from "../../src/data/Image.ts"
import { PALETTE } from "../../src/data/Palette.ts"
import { CATEGORIES, parseOrThrow, sample } from "../../src/data/Prompt.ts"
import { relationHolds } from "../../src/data/Relations.ts"
import { placementViolations, render, RenderError, renderEffect, renderScene } from "../../src/data/Render.ts"
import { shapeMask } from "../../src/data/Shapes.ts"
import { Rng } from "../../src/tensor/Random.ts"

describe("Shapes", () => {
  it("follow the spec's pixel rules", () => {
    for (const s of [8, 9, 10]) {
      const sq = shapeMask("square", s)
      assert.strictEqual(sq.count, s * s)
      const c = shapeMask("circle", s)
      const t = shapeMask("triangle", s)
      for (let y = 0; y < s; y++) {
        for (let x = 0; x < s; x++) {
          const inCircle = (x + 0.5 - s / 2) ** 2 + (y + 0.5 - s / 2) ** 2 <= (s / 2) ** 2
          const inTriangle = Math.abs(x + 0.5 - s / 2) <= ((y + 1) / s) * (s / 2)
          assert.strictEqual(c.data[y * s + x] === 1, inCircle, `circle ${s} (${x}, ${y})`)
          assert.strictEqual(t.data[y * s + x] === 1, inTriangle, `triangle ${s} (${x}, ${y})`)
        }
      }
      // Base on the bottom row, apex in the top row; all three fill their box's extent.
      for (let x = 0; x < s; x++) assert.strictEqual(t.data[(s - 1) * s + x], 1)
      assert.isAbove(t.data.slice(0, s).reduce((a, b) => a + b, 0), 0)
      assert.isAbove(c.data.slice(0, s).reduce((a, b) => a + b, 0), 0)
    }
    // Known counts, and the triangle's centroid lies below the box centre.
    assert.strictEqual(shapeMask("triangle", 9).data.slice(0, 9).reduce((a, b) => a + b, 0), 1)
    assert.isAbove(shapeMask("triangle", 10).cy, 5)
  })
})

const collect = (seed: number, perCategory: number) => {
  const rng = Rng.fromSeed(seed)
  return CATEGORIES.flatMap((c) =>
    Array.from({ length: perCategory }, () => {
      const p = sample(rng, c, "full")
      return { p, ...renderScene(p, rng) }
    })
  )
}

describe("Render", () => {
  it("obeys every placement rule in 2500 scenes", () => {
    for (const { p, boxes } of collect(1, 500)) {
      assert.deepStrictEqual(placementViolations(p, boxes), [], p.text)
      // Spelled out once more, independently of placementViolations:
      for (const [i, b] of boxes.entries()) {
        assert.include([8, 9, 10], b.size)
        assert.isAtLeast(b.x, 1)
        assert.isAtLeast(b.y, 1)
        assert.isAtMost(b.x + b.size, SIZE - 1)
        assert.isAtMost(b.y + b.size, SIZE - 1)
        for (const a of boxes.slice(0, i)) {
          const gapX = Math.max(b.x - (a.x + a.size), a.x - (b.x + b.size))
          const gapY = Math.max(b.y - (a.y + a.size), a.y - (b.y + b.size))
          assert.isAtLeast(Math.max(gapX, gapY), 2, p.text)
        }
      }
      const rel = p.relation
      if (rel !== undefined) {
        const ref = boxes[rel.reference]
        for (const s of rel.subjects) {
          const dx = boxes[s].cx - ref.cx
          const dy = boxes[s].cy - ref.cy
          const [along, other] = rel.relation === "left" ? [-dx, dy] : rel.relation === "right" ? [dx, dy] : rel.relation === "above" ? [-dy, dx] : [dy, dx]
          assert.isAtLeast(along, 4, p.text)
          assert.isAbove(along, Math.abs(other), p.text)
        }
      }
    }
  })

  it("draws exactly the placed masks in palette colours on black", () => {
    for (const { p, image, boxes } of collect(2, 60)) {
      const expected = new Uint8Array(SIZE * SIZE * 3)
      for (const b of boxes) {
        const m = shapeMask(b.shape, b.size)
        for (let y = 0; y < b.size; y++) {
          for (let x = 0; x < b.size; x++) {
            if (m.data[y * b.size + x]) expected.set(PALETTE[b.color], ((b.y + y) * SIZE + b.x + x) * 3)
          }
        }
      }
      assert.deepStrictEqual(image, expected, p.text)
      assert.deepStrictEqual(boxes.map((b) => `${b.color} ${b.shape}`), p.objects.map((o) => `${o.color} ${o.shape}`))
    }
  })

  it("is deterministic per seed and varies across seeds", () => {
    const p = parseOrThrow("two red squares below a blue circle")
    const a = render(p, Rng.fromSeed(7))
    const b = render(p, Rng.fromSeed(7))
    const c = render(p, Rng.fromSeed(8))
    assert.deepStrictEqual(a, b)
    assert.notDeepEqual(a, c)
    const ra = Rng.fromSeed(5)
    const rb = Rng.fromSeed(5)
    for (let k = 0; k < 50; k++) assert.deepStrictEqual(render(p, ra), render(p, rb))
    assert.deepStrictEqual(ra.state(), rb.state())
  })

  it("places hard scenes (four 10 px objects, complex relations) across many seeds", () => {
    for (const text of ["four white squares", "two green triangles above a red square", "two blue squares to the right of a white circle"]) {
      const p = parseOrThrow(text)
      const rng = Rng.fromSeed(11)
      for (let k = 0; k < 300; k++) assert.deepStrictEqual(placementViolations(p, renderScene(p, rng).boxes), [])
    }
  })

  it("relation rule is strict about the other axis", () => {
    assert.isTrue(relationHolds("left", { x: 5, y: 10 }, { x: 10, y: 12 }, 4))
    assert.isFalse(relationHolds("left", { x: 5, y: 10 }, { x: 10, y: 15 }, 4))
    assert.isFalse(relationHolds("left", { x: 7, y: 10 }, { x: 10, y: 10 }, 4))
    assert.isTrue(relationHolds("below", { x: 10, y: 20 }, { x: 12, y: 10 }, 4))
    assert.isFalse(relationHolds("above", { x: 10, y: 20 }, { x: 12, y: 10 }, 4))
  })

  it.effect("renderEffect succeeds with the same scene as renderScene", () =>
    Effect.gen(function*() {
      const p = parseOrThrow("a red square to the left of a blue circle")
      const { image } = yield* renderEffect(p, Rng.fromSeed(3))
      assert.deepStrictEqual(image, render(p, Rng.fromSeed(3)))
    }))

  it.effect("an impossible scene fails with a bounded, clear RenderError", () =>
    Effect.gen(function*() {
      // Not a grammar prompt: grown by 1 px each side, boxes become disjoint
      // squares of side >= 10 in the 32 x 32 canvas, which holds at most 9.
      const crowd = { text: "ten red squares", objects: Array.from({ length: 10 }, () => ({ color: "red" as const, shape: "square" as const })) }
      assert.throws(() => render(crowd, Rng.fromSeed(1)), RenderError)
      const err = yield* Effect.flip(renderEffect(crowd, Rng.fromSeed(1)))
      assert.strictEqual(err._tag, "RenderError")
      assert.strictEqual(err.prompt, "ten red squares")
      assert.match(err.message, /could not place "ten red squares" within 500 scenes/)
    }))
})
