import { readFileSync } from "node:fs"
import { join } from "node:path"
import { assert, describe, it } from "@effect/vitest"
import { Result } from "effect"
import { CATEGORIES, isHeldOut, type ParsedPrompt, parsePromptFile } from "../../src/data/Prompt.ts"
import { EVAL_DIR, makeEvalPrompts, toFileText } from "../../scripts/make-eval-prompts.ts"

const load = (name: string): { text: string; prompts: Array<ParsedPrompt> } => {
  const path = join(EVAL_DIR, name)
  const text = readFileSync(path, "utf8")
  const r = parsePromptFile(text, path)
  if (Result.isFailure(r)) assert.fail(r.failure.message)
  return { text, prompts: r.success }
}

describe("evaluation prompt files", () => {
  const seen = load("prompts-seen.txt")
  const heldout = load("prompts-heldout.txt")

  it("are what the seeded script generates", () => {
    const made = makeEvalPrompts()
    assert.strictEqual(seen.text, toFileText(made.seen))
    assert.strictEqual(heldout.text, toFileText(made.heldout))
  })

  it("have >= 200 unique prompts covering every category", () => {
    for (const { text, prompts } of [seen, heldout]) {
      assert.isAtLeast(prompts.length, 200)
      assert.isTrue(text.endsWith("\n") && !text.endsWith("\n\n"))
      assert.strictEqual(new Set(prompts.map((p) => p.text)).size, prompts.length)
      for (const c of CATEGORIES) assert.isTrue(prompts.some((p) => p.category === c), c)
    }
  })

  it("seen prompts are all in the training split; held-out prompts all hold something out", () => {
    for (const p of seen.prompts) assert.isFalse(isHeldOut(p), p.text)
    for (const p of heldout.prompts) assert.isTrue(isHeldOut(p), p.text)
    const has = (pred: (p: ParsedPrompt) => boolean) => heldout.prompts.some(pred)
    assert.isTrue(has((p) => p.objects.some((o) => o.color === "purple" && o.shape === "triangle")))
    assert.isTrue(has((p) => p.objects.some((o) => o.color === "yellow" && o.shape === "circle")))
    // Complex "below" with only seen objects: the pure relation composition.
    assert.isTrue(has((p) => p.category === "complex" && p.relation?.relation === "below" && !p.objects.some((o) => (o.color === "purple" && o.shape === "triangle") || (o.color === "yellow" && o.shape === "circle"))))
  })
})
