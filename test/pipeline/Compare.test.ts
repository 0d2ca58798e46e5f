import { assert, describe, it } from "@effect/vitest"
import type { SetReport } from "../../src/eval/Evaluate.ts"
import * as Compare from "../../src/pipeline/Compare.ts"

const sample = (prompt: string, pass: boolean, clip: number) => ({ prompt, category: "color" as const, pass, partial: pass, clip })

describe("Compare.disagreements", () => {
  it("counts failures the learned reward scores like a pass and lists the ones it likes most", () => {
    const report: SetReport = {
      name: "prompts-seen",
      rows: [],
      nfePerImage: 100,
      samples: [
        sample("a red square", true, 2.0),
        sample("a blue circle", false, 2.2),
        sample("a green triangle", true, 1.6),
        sample("a white square", false, 1.7),
        sample("a red circle", false, 0.9),
        sample("a blue square", true, 1.8)
      ]
    }
    const h = Compare.disagreements("rlhf", report, 2)
    assert.strictEqual(h.n, 6)
    assert.strictEqual(h.passes, 3)
    assert.strictEqual(h.medianClipPass, 1.8)
    assert.strictEqual(h.medianClipFail, 1.7)
    assert.strictEqual(h.failsAbovePassMedian, 1) // only 2.2 >= 1.8
    assert.deepStrictEqual(h.examples.map((e) => [e.index, e.clip]), [[1, 2.2], [3, 1.7]])
  })
})
