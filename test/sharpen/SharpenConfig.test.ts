import { assert, describe, it } from "@effect/vitest"
import { Result } from "effect"
import * as SharpenConfig from "../../src/sharpen/SharpenConfig.ts"

const ok = (c: Result.Result<SharpenConfig.SharpenConfig, SharpenConfig.ConfigError>): SharpenConfig.SharpenConfig => {
  if (Result.isFailure(c)) throw new Error(c.failure.message)
  return c.success
}

/** The error of a failed decode (a success fails the test). */
const failureOf = <A, E>(r: Result.Result<A, E>): E => (Result.isSuccess(r) ? assert.fail(`expected a failure, got ${JSON.stringify(r.success)}`) : r.failure)

describe("SharpenConfig.resolve", () => {
  it("rlhf runs its measured settings under the given ones; sft and --paper do not", () => {
    const rlhf = ok(SharpenConfig.resolve("rlhf", []))
    for (const [k, v] of Object.entries(SharpenConfig.rlhfDefaults)) assert.deepStrictEqual(rlhf[k as keyof SharpenConfig.SharpenConfig], v, k)
    assert.strictEqual(rlhf.preference, "image")
    // Flags and files still win over them.
    assert.strictEqual(ok(SharpenConfig.resolve("rlhf", [{ lr: 1e-3 }, { stepsPerBatch: 2 }])).lr, 1e-3)
    assert.strictEqual(ok(SharpenConfig.resolve("rlhf", [{ lr: 1e-3 }, { stepsPerBatch: 2 }])).stepsPerBatch, 2)
    // SFT keeps the library defaults.
    assert.deepStrictEqual(ok(SharpenConfig.resolve("sft", [])), SharpenConfig.defaults)
    // The published algorithm runs as published, by flag or by a file asking for its preference.
    const paper = ok(SharpenConfig.resolve("rlhf", [], { preset: "paper" }))
    assert.deepStrictEqual(paper, { ...SharpenConfig.defaults, ...SharpenConfig.paperVariant })
    const byFile = ok(SharpenConfig.resolve("rlhf", [{ ...SharpenConfig.paperVariant }]))
    assert.strictEqual(byFile.inferenceSteps, SharpenConfig.defaults.inferenceSteps)
    assert.strictEqual(byFile.dpoBeta, SharpenConfig.defaults.dpoBeta)
    // Bad values still name the field.
    const bad = SharpenConfig.resolve("rlhf", [{ stepsPerBatch: 0 }], { file: "x.json" })
    assert.instanceOf(failureOf(bad), SharpenConfig.ConfigError)
    assert.strictEqual(failureOf(bad).field, "stepsPerBatch")
  })
})

describe("SharpenConfig presets and grouped files", () => {
  it("every setting is in one group, and every default is in defaults", () => {
    const keys = Object.keys(SharpenConfig.fields)
    assert.deepStrictEqual([...keys].sort(), Object.keys(SharpenConfig.SharpenConfig.fields).sort())
    const grouped = SharpenConfig.Group.literals.flatMap((g) => SharpenConfig.groupFields(g))
    assert.deepStrictEqual([...grouped].sort(), [...keys].sort())
    // microBatchRows alone has no default (the backend's).
    assert.deepStrictEqual(keys.filter((k) => !(k in SharpenConfig.defaults)), ["microBatchRows"])
  })

  it("a grouped file reads as the flat one; a setting in the wrong group or an unknown preset names itself", () => {
    const grouped = ok2(SharpenConfig.fromFile({ preset: "paper", optimizer: { lr: 1e-5 }, algorithm: { n: 4 }, $comment: "x" }))
    assert.deepStrictEqual(grouped, { preset: "paper", settings: { lr: 1e-5, n: 4 } })
    assert.deepStrictEqual(ok2(SharpenConfig.fromFile({ lr: 1e-5 })), { preset: undefined, settings: { lr: 1e-5 } })
    const misplaced = failureOf(SharpenConfig.fromFile({ algorithm: { lr: 1e-5 } }, "f.json"))
    assert.strictEqual(misplaced.field, "algorithm.lr")
    assert.include(misplaced.message, `belongs in "optimizer"`)
    assert.strictEqual(failureOf(SharpenConfig.fromFile({ run: { nope: 1 } })).field, "run.nope")
    assert.strictEqual(failureOf(SharpenConfig.fromFile({ preset: "papr" })).field, "preset")
    assert.strictEqual(failureOf(SharpenConfig.fromFile({ optimizer: 3 })).field, "optimizer")
  })

  it("toFile groups the resolved settings and fromFile reads them back to the same settings", () => {
    const config = ok(SharpenConfig.resolve("rlhf", [{ n: 5 }], { preset: "paper" }))
    const file = SharpenConfig.toFile(config, "paper")
    assert.strictEqual(file.preset, "paper")
    assert.strictEqual((file.algorithm as Record<string, unknown>).n, 5)
    assert.strictEqual((file.optimizer as Record<string, unknown>).beta1, 0)
    const back = ok2(SharpenConfig.fromFile(file))
    assert.deepStrictEqual(ok(SharpenConfig.decode([back.settings])), config)
  })

  it("presets: image-level by default, paper and lab by name, the published preference alone keeps the plain defaults", () => {
    assert.strictEqual(SharpenConfig.presetFor([]), "image-level")
    assert.strictEqual(SharpenConfig.presetFor([{ preference: "noise" }]), "defaults")
    assert.strictEqual(SharpenConfig.presetFor([{ preference: "noise" }], "paper"), "paper")
    // The old spelling of the published preference still asks for it.
    assert.strictEqual(SharpenConfig.presetFor([{ preference: "paper" }]), "defaults")
    assert.strictEqual(SharpenConfig.presetFor([{ preference: "image" }]), "image-level")
    const lab = ok(SharpenConfig.resolve("rlhf", [], { preset: "lab" }))
    assert.strictEqual(lab.cfg, 1)
    assert.strictEqual(lab.dpoBeta, 5)
    assert.deepStrictEqual(ok(SharpenConfig.resolve("sft", [], { preset: "paper" })), { ...SharpenConfig.defaults, ...SharpenConfig.presets.paper.sft })
  })
})

describe("SharpenConfig deprecated spellings", () => {
  it("the old spellings decode to the new values, from a flat or grouped file, and each names itself as deprecated", () => {
    const c = ok(SharpenConfig.decode([{ preference: "paper", margin: "reference-code" }]))
    assert.strictEqual(c.preference, "noise")
    assert.strictEqual(c.margin, "outside")
    assert.strictEqual(ok(SharpenConfig.decode([{ margin: "paper" }])).margin, "inside")
    assert.deepStrictEqual(ok(SharpenConfig.decode([{ preference: "noise", margin: "inside" }])), ok(SharpenConfig.decode([{ preference: "paper", margin: "paper" }])))
    // A later layer (flags) still overrides an old spelling in the file.
    assert.strictEqual(ok(SharpenConfig.decode([{ preference: "paper" }, { preference: "image" }])).preference, "image")
    const grouped = ok2(SharpenConfig.fromFile({ algorithm: { preference: "paper", margin: "reference-code" } }))
    assert.deepStrictEqual(ok(SharpenConfig.resolve("rlhf", [grouped.settings])), ok(SharpenConfig.resolve("rlhf", [{ preference: "noise", margin: "outside" }])))
    assert.deepStrictEqual(SharpenConfig.normalise({ preference: "paper", margin: "reference-code", lr: 1e-5 }), { preference: "noise", margin: "outside", lr: 1e-5 })
    assert.deepStrictEqual(SharpenConfig.deprecations({ preference: "paper", margin: "inside", lr: 1e-5 }, "c.json"), [
      `c.json: "preference": "paper" is deprecated: use "noise" (the same setting)`
    ])
    assert.deepStrictEqual(SharpenConfig.deprecations({ margin: "reference-code" }), ["--margin reference-code is deprecated: use --margin outside (the same setting)"])
    assert.deepStrictEqual(SharpenConfig.deprecations({ preference: "noise", margin: "outside" }), [])
    // The preset keeps its name; new files are written with the new spellings.
    const file = SharpenConfig.toFile(ok(SharpenConfig.resolve("rlhf", [], { preset: "paper" })), "paper")
    assert.strictEqual(file.preset, "paper")
    assert.strictEqual((file.algorithm as Record<string, unknown>).preference, "noise")
    assert.strictEqual((file.algorithm as Record<string, unknown>).margin, "inside")
  })

  it("an unknown value is a ConfigError naming the field and the current values", () => {
    for (const [field, value, allowed] of [["preference", "papr", "noise"], ["margin", "reference", "outside"]] as const) {
      const e = failureOf(SharpenConfig.decode([{ [field]: value }], "c.json"))
      assert.instanceOf(e, SharpenConfig.ConfigError)
      assert.strictEqual(e.field, field)
      assert.strictEqual(e.file, "c.json")
      assert.include(e.message, allowed)
    }
  })
})

const ok2 = <A>(r: Result.Result<A, SharpenConfig.ConfigError>): A => {
  if (Result.isFailure(r)) throw new Error(r.failure.message)
  return r.success
}

describe("SharpenConfig guard", () => {
  it("off by default; a reward expression decodes; anything else names the field", () => {
    assert.strictEqual(SharpenConfig.defaults.guard, "")
    assert.strictEqual(ok(SharpenConfig.resolve("rlhf", [{ guard: "0.5*aesthetic" }])).guard, "0.5*aesthetic")
    const bad = failureOf(SharpenConfig.resolve("rlhf", [{ guard: "beauty" }], { file: "g.json" }))
    assert.strictEqual(bad.field, "guard")
    assert.match(bad.message, /reward expression/)
  })
})
