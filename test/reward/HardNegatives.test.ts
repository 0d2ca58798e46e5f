import { assert, describe, it } from "@effect/vitest"
import { Result } from "effect"
import { CATEGORIES, enumerate, parse, parseOrThrow } from "../../src/data/Prompt.ts"
import { render } from "../../src/data/Render.ts"
import { verify } from "../../src/data/Verifier.ts"
import * as HardNegatives from "../../src/reward/HardNegatives.ts"
import { Rng } from "../../src/tensor/Random.ts"

const kindsOf = (text: string) => new Set(HardNegatives.candidates(parseOrThrow(text)).map((c) => c.kind))
const textsOf = (text: string, kind: HardNegatives.NegativeKind) =>
  HardNegatives.candidates(parseOrThrow(text)).filter((c) => c.kind === kind).map((c) => c.prompt.text)

describe("HardNegatives", () => {
  it("every candidate of every prompt is valid grammar, differs from the original and means something else", () => {
    for (const c of CATEGORIES) {
      for (const p of enumerate(c)) {
        const cs = HardNegatives.candidates(p)
        assert.isAbove(cs.length, 0, p.text)
        const texts = new Set<string>()
        for (const n of cs) {
          const r = parse(n.prompt.text)
          assert.isTrue(Result.isSuccess(r), `${p.text} -> ${n.prompt.text}`)
          if (Result.isSuccess(r)) assert.deepStrictEqual(r.success, n.prompt)
          assert.notStrictEqual(n.prompt.text, p.text)
          assert.isFalse(HardNegatives.sameMeaning(n.prompt, p), `${p.text} ~ ${n.prompt.text}`)
          assert.isFalse(texts.has(n.prompt.text), `duplicate ${n.prompt.text}`)
          texts.add(n.prompt.text)
        }
      }
    }
  })

  it("renders of the original fail every hard negative under the verifier", () => {
    const rng = Rng.fromSeed(11)
    for (const c of CATEGORIES) {
      for (let i = 0; i < 12; i++) {
        const p = enumerate(c)[rng.int(enumerate(c).length)]
        const image = render(p, rng)
        assert.isTrue(verify(p, image).pass, p.text)
        for (const n of HardNegatives.candidates(p)) assert.isFalse(verify(n.prompt, image).pass, `${p.text} vs ${n.prompt.text}`)
      }
    }
  })

  it("produces the expected kinds per category", () => {
    assert.deepStrictEqual([...kindsOf("a red square")], ["color", "shape", "count"])
    assert.deepStrictEqual(textsOf("a red square", "count"), ["two red squares", "three red squares", "four red squares"])
    assert.deepStrictEqual(textsOf("three blue circles", "count"), ["two blue circles", "four blue circles", "a blue circle"])
    assert.deepStrictEqual(textsOf("a red square and a blue circle", "swap-colors"), ["a blue square and a red circle"])
    assert.deepStrictEqual(textsOf("a red square and a blue circle", "swap-shapes"), ["a red circle and a blue square"])
    // Swapping the colors of two squares describes the same scene: no such negative.
    assert.isFalse(kindsOf("a red square and a blue square").has("swap-colors"))
    // ... but in a relation it is a real negative.
    assert.deepStrictEqual(textsOf("a red square above a blue square", "swap-colors"), ["a blue square above a red square"])
    assert.deepStrictEqual(textsOf("a red square to the left of a blue circle", "relation"), ["a red square to the right of a blue circle"])
    assert.deepStrictEqual(textsOf("a red square to the left of a blue circle", "relation-axis"), [
      "a red square above a blue circle",
      "a red square below a blue circle"
    ])
    assert.deepStrictEqual(textsOf("two red squares below a blue circle", "count"), ["a red square below a blue circle"])
    assert.deepStrictEqual(textsOf("a red square below a blue circle", "count"), ["two red squares below a blue circle"])
    assert.deepStrictEqual(textsOf("two red squares below a blue circle", "drop-object"), ["two red squares", "a blue circle"])
    // Changing a color never produces two alike objects.
    assert.notInclude(textsOf("a red square and a blue square", "color"), "a blue square and a blue square")
  })

  it("sameMeaning treats mirrored relations and binding order as the same scene", () => {
    const same = (a: string, b: string) => HardNegatives.sameMeaning(parseOrThrow(a), parseOrThrow(b))
    assert.isTrue(same("a red square to the left of a blue circle", "a blue circle to the right of a red square"))
    assert.isTrue(same("two red squares above a blue circle", "two red squares above a blue circle"))
    assert.isTrue(same("a red square and a blue circle", "a blue circle and a red square"))
    assert.isFalse(same("a red square to the left of a blue circle", "a red square and a blue circle"))
    assert.isFalse(same("a red square above a blue circle", "a blue circle above a red square"))
  })

  it("sample is seeded, returns k negatives and spreads them over kinds", () => {
    const p = parseOrThrow("two red squares to the left of a blue circle")
    const a = HardNegatives.sample(Rng.fromSeed(3), p, 6)
    const b = HardNegatives.sample(Rng.fromSeed(3), p, 6)
    assert.deepStrictEqual(a, b)
    assert.strictEqual(a.length, 6)
    assert.strictEqual(new Set(a.map((n) => n.prompt.text)).size, 6)
    assert.isAtLeast(new Set(a.map((n) => n.kind)).size, 5)
    // More than the candidates: all of them, then repeats.
    const few = parseOrThrow("a red square")
    const all = HardNegatives.candidates(few).length
    const many = HardNegatives.sample(Rng.fromSeed(1), few, all + 3)
    assert.strictEqual(many.length, all + 3)
    assert.strictEqual(new Set(many.map((n) => n.prompt.text)).size, all)
  })
})
