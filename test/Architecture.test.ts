import { assert, describe, it } from "@effect/vitest"
import * as path from "node:path"
import { read } from "../scripts/import-graph.ts"

// The import structure issue #22 holds: src/ reads bottom-up.
describe("src/ import structure", () => {
  const g = read(path.resolve(import.meta.dirname, ".."))

  it("has no import cycle", () => {
    assert.deepStrictEqual(g.cycles, [])
  })

  it("has at most 2 folder arrows back up a level", () => {
    assert.isAtMost(g.upward.length, 2, g.upward.map(([a, b]) => `${a} -> ${b}`).join(", "))
  })

  it("imports cli/ from nothing below it", () => {
    const into = g.arrows.filter(([, b]) => b === "cli").map(([a]) => a)
    assert.deepStrictEqual(into, [])
  })

  // reward/ (the reward models) and eval/ (evaluation) are over 2,000 lines, each one role.
  it("keeps every other folder under 2,000 lines", () => {
    const big = [...g.lines].filter(([f, n]) => n > 2000 && !["reward", "eval"].includes(f))
    assert.deepStrictEqual(big, [])
  })

  it("sees an injected cycle (the check can fail)", () => {
    const files = new Map([["a/X.ts", ["b/Y.ts"]], ["b/Y.ts", ["a/X.ts"]]])
    assert.strictEqual(read.cyclesOf(files).length, 1)
  })
})
