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
    const paper = ok(SharpenConfig.resolve("rlhf", [], { paper: true }))
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
