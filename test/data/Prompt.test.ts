import { NodeFileSystem } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, FileSystem, Result } from "effect"
import {
  CATEGORIES,
  enumerate,
  format,
  isHeldOut,
  loadPromptFile,
  parse,
  parseEffect,
  parseOrThrow,
  parsePromptFile,
  PromptParseError,
  sample
} from "../../src/data/Prompt.ts"
import { Rng } from "../../src/tensor/Random.ts"

const fails = (text: string, line?: number): PromptParseError => {
  const r = parse(text, line)
  if (Result.isSuccess(r)) assert.fail(`"${text}" parsed as ${JSON.stringify(r.success)}`)
  return r.failure
}

describe("Prompt grammar", () => {
  it("round-trips 600 random prompts of every category (full split)", () => {
    const rng = Rng.fromSeed(1)
    for (const c of CATEGORIES) {
      for (let k = 0; k < 600; k++) {
        const p = sample(rng, c, "full")
        assert.strictEqual(p.category, c)
        assert.strictEqual(format(p), p.text)
        assert.deepStrictEqual(parseOrThrow(p.text), p)
      }
    }
  })

  it("round-trips every prompt of the language and counts it", () => {
    const sizes = { color: 18, binding: 306, spatial: 1224, numeracy: 54, complex: 1224 }
    for (const c of CATEGORIES) {
      const all = enumerate(c)
      assert.strictEqual(all.length, sizes[c])
      assert.strictEqual(new Set(all.map((p) => p.text)).size, all.length)
      for (const p of all) assert.deepStrictEqual(parseOrThrow(p.text), p)
    }
  })

  it("parses each form into the object multiset and relation roles", () => {
    assert.deepStrictEqual(parseOrThrow("two red squares to the left of a blue circle"), {
      category: "complex",
      text: "two red squares to the left of a blue circle",
      objects: [
        { color: "red", shape: "square" },
        { color: "red", shape: "square" },
        { color: "blue", shape: "circle" }
      ],
      relation: { subjects: [0, 1], relation: "left", reference: 2 }
    })
    assert.deepStrictEqual(parseOrThrow("a white triangle below a green square").relation, {
      subjects: [0],
      relation: "below",
      reference: 1
    })
    assert.strictEqual(parseOrThrow("four yellow triangles").objects.length, 4)
    assert.strictEqual(parseOrThrow("a red square and a red circle").category, "binding")
    assert.strictEqual(parseOrThrow("two blue circles").category, "numeracy")
  })

  it("rejects everything else, naming the line and the first unexpected word", () => {
    const cases: Array<[string, string, RegExp?]> = [
      ["", "", /empty prompt/],
      ["A red square", "A", /lower case/],
      ["a red square.", "square.", /period/],
      ["a red  square", "", /double space after "red"/],
      [" a red square", "", /starts with a space/],
      ["a red square ", "", /ends with a space/],
      ["an red square", "an", /article/],
      ["the red square", "the", /article/],
      ["a red square and an blue circle", "an", /"a"/],
      ["a red square and a red square", "square", /differs/],
      ["a blue circle above a blue circle", "circle", /differs/],
      ["two red squares below a red square", "square", /differs/],
      ["a red", "", /ends early/],
      ["a crimson square", "crimson", /color/],
      ["a red hexagon", "hexagon", /shape/],
      ["a red squares", "squares", /singular/],
      ["two red square", "square", /plural/],
      ["five red squares", "five", undefined],
      ["three red squares above a blue circle", "above", /end of prompt/],
      ["a red square to the top of a blue circle", "top", /"left" or "right"/],
      ["a red square left of a blue circle", "left", /relation/],
      ["a red square and a blue circle and a green triangle", "and", /end of prompt/],
      ["a red square\tand a blue circle", "square\tand", undefined]
    ]
    for (const [text, word, message] of cases) {
      const e = fails(text, 42)
      assert.strictEqual(e._tag, "PromptParseError")
      assert.strictEqual(e.word, word, text)
      assert.strictEqual(e.line, 42)
      assert.strictEqual(e.prompt, text)
      assert.match(e.message, /^line 42: /)
      if (word !== "") assert.include(e.message, `"${word}"`)
      if (message) assert.match(e.message, message, text)
    }
    assert.notInclude(fails("a red").message, "line")
  })

  it.effect("parseEffect and parseOrThrow surface the typed error", () =>
    Effect.gen(function*() {
      assert.throws(() => parseOrThrow("a red square."), PromptParseError)
      const ok = yield* parseEffect("a red square", 3)
      assert.strictEqual(ok.category, "color")
      const err = yield* Effect.flip(parseEffect("a red square.", 3))
      assert.strictEqual(err.word, "square.")
      assert.strictEqual(err.line, 3)
    }))
})

describe("Prompt splits", () => {
  it("marks held-out compositions", () => {
    assert.isTrue(isHeldOut(parseOrThrow("a purple triangle")))
    assert.isTrue(isHeldOut(parseOrThrow("a red square to the left of a yellow circle")))
    assert.isTrue(isHeldOut(parseOrThrow("three yellow circles")))
    assert.isTrue(isHeldOut(parseOrThrow("two red squares below a blue circle")))
    assert.isFalse(isHeldOut(parseOrThrow("a red square below a blue circle")))
    assert.isFalse(isHeldOut(parseOrThrow("two red squares above a blue circle")))
    assert.isFalse(isHeldOut(parseOrThrow("a purple circle and a yellow triangle")))
  })

  it("train sampling never yields a held-out composition, yet covers the rest", () => {
    const rng = Rng.fromSeed(2)
    const seen = new Set<string>()
    for (const c of CATEGORIES) {
      for (let k = 0; k < 4000; k++) {
        const p = sample(rng, c, "train")
        assert.isFalse(isHeldOut(p), p.text)
        assert.isFalse(p.objects.some((o) => (o.color === "purple" && o.shape === "triangle") || (o.color === "yellow" && o.shape === "circle")))
        if (c === "complex") assert.notStrictEqual(p.relation?.relation, "below")
        seen.add(p.text)
      }
    }
    // Every seen color and numeracy prompt and "below" in spatial prompts do occur.
    for (const c of ["color", "numeracy"] as const) {
      for (const p of enumerate(c)) if (!isHeldOut(p)) assert.isTrue(seen.has(p.text), p.text)
    }
    assert.isTrue([...seen].some((t) => t.startsWith("a ") && t.includes(" below ")))
  })

  it("full sampling reaches held-out compositions; heldout sampling only them", () => {
    const rng = Rng.fromSeed(3)
    let held = 0
    for (let k = 0; k < 2000; k++) if (isHeldOut(sample(rng, "complex", "full"))) held++
    // 504 of the 1224 complex prompts are held out.
    assert.isAbove(held / 2000, 0.35)
    assert.isBelow(held / 2000, 0.48)
    for (const c of CATEGORIES) for (let k = 0; k < 300; k++) assert.isTrue(isHeldOut(sample(rng, c, "heldout")))
  })

  it("sampling is deterministic per seed", () => {
    const run = (seed: number) => {
      const rng = Rng.fromSeed(seed)
      return CATEGORIES.flatMap((c) => Array.from({ length: 20 }, () => sample(rng, c, "train").text))
    }
    assert.deepStrictEqual(run(9), run(9))
    assert.notDeepEqual(run(9), run(10))
  })
})

describe("Prompt files", () => {
  it("skips empty lines and accepts CRLF", () => {
    const r = parsePromptFile("a red square\n\ntwo blue circles\r\n", "x.txt")
    assert.isTrue(Result.isSuccess(r))
    if (Result.isSuccess(r)) assert.deepStrictEqual(r.success.map((p) => p.text), ["a red square", "two blue circles"])
  })

  it("errors name the path, the line and the word", () => {
    const r = parsePromptFile("a red square\n\na blue circle\nthree green triangle\n", "prompts/x.txt")
    assert.isTrue(Result.isFailure(r))
    if (Result.isFailure(r)) {
      assert.strictEqual(r.failure.path, "prompts/x.txt")
      assert.strictEqual(r.failure.line, 4)
      assert.strictEqual(r.failure.word, "triangle")
      assert.match(r.failure.message, /^prompts\/x\.txt:4: unexpected word "triangle"/)
    }
  })

  it.effect("loadPromptFile reads through FileSystem and fails with the typed error", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const dir = yield* fs.makeTempDirectoryScoped()
      yield* fs.writeFileString(`${dir}/good.txt`, "a red square\na blue circle and a red square\n")
      yield* fs.writeFileString(`${dir}/bad.txt`, "a red square\na blue circle and a blue circle\n")
      const good = yield* loadPromptFile(`${dir}/good.txt`)
      assert.deepStrictEqual(good.map((p) => p.category), ["color", "binding"])
      const bad = yield* Effect.exit(loadPromptFile(`${dir}/bad.txt`))
      assert.isTrue(Exit.isFailure(bad))
      const err = yield* Effect.flip(loadPromptFile(`${dir}/bad.txt`))
      assert.strictEqual(err._tag, "PromptParseError")
      if (err._tag === "PromptParseError") {
        assert.strictEqual(err.line, 2)
        assert.strictEqual(err.word, "circle")
      }
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))
})
