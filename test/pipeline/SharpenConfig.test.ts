import { assert, describe, it } from "@effect/vitest"
import * as SharpenConfig from "../../src/pipeline/SharpenConfig.ts"

const ok = (c: SharpenConfig.SharpenConfig | SharpenConfig.ConfigError): SharpenConfig.SharpenConfig => {
  if (c instanceof SharpenConfig.ConfigError) throw new Error(c.message)
  return c
}

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
    const paper = ok(SharpenConfig.resolve("rlhf", [], { paper: true }))
    assert.deepStrictEqual(paper, { ...SharpenConfig.defaults, ...SharpenConfig.paperVariant })
    const byFile = ok(SharpenConfig.resolve("rlhf", [{ ...SharpenConfig.paperVariant }]))
    assert.strictEqual(byFile.inferenceSteps, SharpenConfig.defaults.inferenceSteps)
    assert.strictEqual(byFile.dpoBeta, SharpenConfig.defaults.dpoBeta)
    // Bad values still name the field.
    const bad = SharpenConfig.resolve("rlhf", [{ stepsPerBatch: 0 }], { file: "x.json" })
    assert.instanceOf(bad, SharpenConfig.ConfigError)
    assert.strictEqual((bad as SharpenConfig.ConfigError).field, "stepsPerBatch")
  })
})
