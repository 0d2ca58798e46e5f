import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Result } from "effect"
import * as Image from "../../src/data/Image.ts"
import * as Prompt from "../../src/data/Prompt.ts"
import * as Render from "../../src/data/Render.ts"
import type { PromptSet, SetReport } from "../../src/eval/Evaluate.ts"
import * as Compare from "../../src/experiments/Compare.ts"
import { Reward } from "../../src/reward/Reward.ts"
import { Rng } from "../../src/tensor/Random.ts"

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

describe("Compare.evaluateRow", () => {
  it.effect("hands each set's images and report to onSet, so a stage can keep examples without sampling again", () =>
    Effect.gen(function*() {
      const parsed = (texts: ReadonlyArray<string>) => texts.map((t) => Result.getOrThrow(Prompt.parse(t)))
      const sets: ReadonlyArray<PromptSet> = [
        { name: "a", prompts: parsed(["a red square", "two blue circles"]) },
        { name: "b", prompts: parsed(["a green triangle"]) }
      ]
      // Exact renders for the first prompt of each set, blank images otherwise.
      let calls = 0
      const generate = (texts: ReadonlyArray<string>) =>
        Effect.sync(() => {
          calls++
          return texts.map((t, i) => i === 0 ? Image.fromBytes(Render.render(Result.getOrThrow(Prompt.parse(t)), Rng.fromSeed(i))) : new Float32Array(Image.IMAGE_LENGTH))
        })
      const seen: Array<[string, number, ReadonlyArray<boolean>]> = []
      const row = yield* Compare.evaluateRow("r", "test", 100, generate, sets, undefined, (set, images, report) =>
        Effect.sync(() => {
          seen.push([set.name, images.length, report.samples.map((s) => s.pass)])
        }))
      assert.strictEqual(calls, 2)
      assert.deepStrictEqual(seen, [["a", 2, [true, false]], ["b", 1, [true]]])
      assert.deepStrictEqual(row.sets.map((s) => s.rows.find((r) => r.category === "overall")?.accuracy), [0.5, 1])
    }).pipe(Effect.provide([Reward.layerTest, NodeServices.layer])))
})
