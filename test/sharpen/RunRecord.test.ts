import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Schema } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import * as RunRecord from "../../src/sharpen/RunRecord.ts"
import * as SharpenConfig from "../../src/sharpen/SharpenConfig.ts"
import { tmpDir } from "../sharpen-helpers.ts"

const record = (settings: Partial<SharpenConfig.SharpenConfig> = {}, reward: Record<string, unknown> = { reward: "clip" }, sha = "a".repeat(64)): RunRecord.RunRecord => ({
  format: "diffusion-sharpening/run@1",
  version: RunRecord.VERSION,
  algorithm: "rlhf",
  settings: Schema.encodeSync(SharpenConfig.SharpenConfig)({ ...SharpenConfig.defaults, ...settings }) as Record<string, unknown>,
  reward,
  baseModel: { path: "models/base", sha256: sha }
})

describe("RunRecord", () => {
  it("names every difference that changes the training", () => {
    const run = record()
    assert.deepStrictEqual(RunRecord.differences(run, record()), [])
    const d = SharpenConfig.defaults
    assert.deepStrictEqual(RunRecord.differences(run, record({ n: d.n + 1 })), [`n ${d.n} -> ${d.n + 1}`])
    assert.deepStrictEqual(RunRecord.differences(run, record({}, { reward: "aesthetic" })), ["reward clip -> aesthetic"])
    assert.deepStrictEqual(RunRecord.differences(run, record({}, { reward: "mllm", model: "gpt-4o" })), ["reward clip -> mllm", "reward option model (none) -> \"gpt-4o\""])
    const other = RunRecord.differences(run, { ...record({}, { reward: "clip" }, "b".repeat(64)), baseModel: { path: "models/other", sha256: "b".repeat(64) } })
    assert.strictEqual(other.length, 1)
    assert.match(other[0], /^base model models\/base \(sha256 a{12}\) -> models\/other \(sha256 b{12}\)$/)
    assert.deepStrictEqual(RunRecord.differences(run, { ...record(), version: "9.9.9" }), [`library version ${RunRecord.VERSION} -> 9.9.9`])
  })

  it("lets what does not change the training differ: iterations (constant lr), eval sizes, checkpoints, reward transport", () => {
    const run = record({}, { reward: "http", baseUrl: "http://x/score", timeoutMs: 1000 })
    const now = record(
      { iterations: 99, evalPrompts: 3, evalSteps: 7, checkpointEvery: 1, sampleEvery: 0, keepCheckpoints: 5, microBatchRows: 6 },
      { reward: " http ", baseUrl: "http://x/score", timeoutMs: 5000, retries: 0, apiKeyEnv: "KEY", concurrency: 4, requestsPerSecond: 2, batchSize: 8 }
    )
    assert.deepStrictEqual(RunRecord.differences(run, now), [])
    // The endpoint is what computes the reward.
    assert.strictEqual(RunRecord.differences(run, record({}, { reward: "http", baseUrl: "http://y/score" })).length, 1)
    // A cosine schedule spans the iterations: they define the run.
    const cosine = record({ lrSchedule: "cosine" })
    assert.match(RunRecord.differences(cosine, record({ lrSchedule: "cosine", iterations: 99 }))[0], new RegExp(`^iterations ${SharpenConfig.defaults.iterations} -> 99`))
  })

  it("a setting absent from an older record counts as its default", () => {
    const run = record()
    const { dpoBeta: _, ...older } = run.settings
    assert.deepStrictEqual(RunRecord.differences({ ...run, settings: older }, record()), [])
    assert.deepStrictEqual(RunRecord.differences({ ...run, settings: older }, record({ dpoBeta: 0.5 })), [`dpoBeta ${SharpenConfig.defaults.dpoBeta} -> 0.5`])
  })

  it.effect("check refuses a resume that differs and leaves the record as it was; writes it otherwise", () =>
    Effect.gen(function*() {
      const dir = tmpDir("record-")
      yield* RunRecord.check(dir, record(), false)
      const file = path.join(dir, RunRecord.FILE)
      const before = fs.readFileSync(file, "utf8")
      const exit = yield* Effect.exit(RunRecord.check(dir, record({ m: SharpenConfig.defaults.m + 2 }), true))
      assert.isTrue(Exit.isFailure(exit))
      const error = Exit.isFailure(exit) ? (exit.cause.reasons[0] as { error?: { _tag: string; message: string } }).error : undefined
      assert.strictEqual(error?._tag, "RunMismatch")
      assert.include(error?.message, `m ${SharpenConfig.defaults.m} -> ${SharpenConfig.defaults.m + 2}`)
      assert.strictEqual(fs.readFileSync(file, "utf8"), before)
      yield* RunRecord.check(dir, record({ iterations: 40 }), true)
      assert.strictEqual(JSON.parse(fs.readFileSync(file, "utf8")).settings.iterations, 40)
    }).pipe(Effect.provide(NodeServices.layer)))
})
