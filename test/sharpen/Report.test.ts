import { assert, describe, it } from "@effect/vitest"
import type * as Evaluate from "../../src/eval/Evaluate.ts"
import * as Report from "../../src/sharpen/Report.ts"

// One set of n prompts: `passes` of them pass, each with the given clip score.
const set = (passes: number, clips: ReadonlyArray<number>): Evaluate.SetReport => {
  const samples = clips.map((clip, i) => ({ prompt: `p${i}`, category: "color" as const, pass: i < passes, partial: i < passes, clip }))
  const accuracy = passes / clips.length
  const clip = clips.reduce((a, c) => a + c, 0) / clips.length
  return {
    name: "prompts-seen",
    nfePerImage: 100,
    samples,
    rows: [{ category: "overall", n: clips.length, accuracy, partial: accuracy, clip }]
  }
}

describe("Report.comparison", () => {
  it("shows Wilson intervals and says whether the paired differences clear their interval", () => {
    const n = 40
    const before = set(4, Array.from({ length: n }, (_, i) => 1.8 + 0.01 * (i % 5)))
    // Every prompt's clip score up by 0.1 (+-0.01): clearly up; 4 -> 20 passes.
    const up = Report.comparison([before], [set(20, before.samples.map((s, i) => s.clip! + 0.1 + 0.01 * (i % 2)))])
    assert.include(up, "10.0 [4.0, 23.1]")
    assert.include(up, "50.0 [35.2, 64.8]")
    assert.match(up, /clip score 1\.820 -> 1\.925, paired difference \+0\.105 ± 0\.00\d \(95%, 40 prompts\): up/)
    assert.match(up, /partial credit \(points\) 10\.0 -> 50\.0, paired difference \+40\.0 ± [\d.]+ .*: up/)
    // Half the prompts up, half down by the same amount: within noise.
    const mixed = Report.comparison([before], [set(4, before.samples.map((s, i) => s.clip! + (i % 2 === 0 ? 0.1 : -0.1)))])
    assert.match(mixed, /clip score .*: within noise/)
    const down = Report.comparison([before], [set(0, before.samples.map((s) => s.clip! - 0.05))])
    assert.match(down, /clip score .*: down/)
  })
})
