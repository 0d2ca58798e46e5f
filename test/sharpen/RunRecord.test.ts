import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Result, Schema } from "effect"
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

  it.effect("the runners of a run (--runners) are informational: a resume on other runners, or on threads, proceeds and records the new ones", () =>
    Effect.gen(function*() {
      const dir = tmpDir("record-runners-")
      const runners = { storage: "postgres://sharpen:***@10.0.0.2:5432/sharpen", count: 2, addresses: ["10.0.0.5:7001", "10.0.0.6:7001"] }
      const run = { ...record(), runners }
      assert.deepStrictEqual(RunRecord.differences(run, record()), [])
      assert.deepStrictEqual(RunRecord.differences(record(), run), [])
      assert.deepStrictEqual(RunRecord.differences(run, { ...record(), runners: { storage: "sqlite:/tmp/r.db", count: 1, addresses: ["127.0.0.1:4000"] } }), [])
      yield* RunRecord.check(dir, run, false)
      const written = JSON.parse(fs.readFileSync(path.join(dir, RunRecord.FILE), "utf8"))
      assert.deepStrictEqual(written.runners, runners)
      assert.isTrue(Result.isSuccess(Schema.decodeUnknownResult(RunRecord.RunRecord)(written)))
      // Resumed on threads: the record no longer names runners.
      yield* RunRecord.check(dir, record(), true)
      assert.isUndefined(JSON.parse(fs.readFileSync(path.join(dir, RunRecord.FILE), "utf8")).runners)
      // The check can fail: a setting that trains differently still refuses.
      assert.isTrue(Exit.isFailure(yield* Effect.exit(RunRecord.check(dir, { ...record({ n: SharpenConfig.defaults.n + 1 }), runners }, true))))
    }).pipe(Effect.provide(NodeServices.layer)))

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

  it("a record with the old spellings (preference and margin \"paper\", margin \"reference-code\") equals one with the new", () => {
    const old = (settings: Record<string, unknown>) => ({ ...record(), settings: { ...record().settings, ...settings } })
    assert.deepStrictEqual(RunRecord.differences(old({ preference: "paper", margin: "paper" }), record({ preference: "noise", margin: "inside" })), [])
    assert.deepStrictEqual(RunRecord.differences(record({ margin: "outside" }), old({ margin: "reference-code" })), [])
    // A real difference is still one, named with the new spelling.
    assert.deepStrictEqual(RunRecord.differences(old({ preference: "paper" }), record({ preference: "image" })), [`preference "noise" -> "image"`])
    assert.deepStrictEqual(RunRecord.differences(old({ margin: "reference-code" }), record({ margin: "inside" })), [`margin "outside" -> "inside"`])
  })

  it.effect("a committed stage recorded before the rename is still reused; a new record is written with the new spellings", () =>
    Effect.gen(function*() {
      const stage = "docs/data/compare-seeds/train/diffusion-dpo-s1-nfe20000/run"
      const committed = Schema.decodeUnknownSync(RunRecord.RunRecord)(JSON.parse(fs.readFileSync(path.join(stage, RunRecord.FILE), "utf8")))
      assert.strictEqual(committed.settings.preference, "paper")
      assert.strictEqual(committed.settings.margin, "paper")
      // The same invocation today: its settings decoded and encoded again, as RunRecord.make writes them.
      const config = SharpenConfig.decode([committed.settings])
      assert.isTrue(Result.isSuccess(config))
      const settings = Schema.encodeSync(SharpenConfig.SharpenConfig)(Result.getOrThrow(config)) as Record<string, unknown>
      assert.strictEqual(settings.preference, "noise")
      assert.strictEqual(settings.margin, "inside")
      const now: RunRecord.RunRecord = { ...committed, version: RunRecord.VERSION, settings }
      yield* RunRecord.verify(stage, now)
      // A resume rewrites the record with the new spellings.
      const dir = tmpDir("record-old-")
      fs.writeFileSync(path.join(dir, RunRecord.FILE), JSON.stringify(committed))
      yield* RunRecord.check(dir, now, true)
      const written = JSON.parse(fs.readFileSync(path.join(dir, RunRecord.FILE), "utf8"))
      assert.strictEqual(written.settings.preference, "noise")
      assert.strictEqual(written.settings.margin, "inside")
    }).pipe(Effect.provide(NodeServices.layer)))
})
