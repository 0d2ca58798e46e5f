import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Result } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { beforeAll } from "vitest"
import * as Compare from "../../src/experiments/Compare.ts"
import * as RunRecord from "../../src/sharpen/RunRecord.ts"
import * as SharpenConfig from "../../src/sharpen/SharpenConfig.ts"
import { Reward } from "../../src/reward/Reward.ts"
import { Backend } from "../../src/tensor/Backend.ts"
import { savedTinyModel, smallConfig, tmpDir } from "../sharpen-helpers.ts"

// A mock reward: mean of the red channel.
const redness = Reward.fromFunction((image) => {
  let s = 0
  for (let k = 0; k < image.length; k += 3) s += image[k]
  return s / (image.length / 3)
}, { name: "redness", range: [0, 1] })

const BUDGET = 240
const CAP = 400

/** A method's config at the test's size: its base settings (paper or library defaults), the budget, `own` settings. */
const configOf = (method: Compare.FinetuneMethod, own: Partial<SharpenConfig.SharpenConfig> = {}) => {
  const c = SharpenConfig.decode([
    smallConfig(),
    Compare.METHODS[method].base,
    { iterations: CAP, trainingNfe: BUDGET, checkpointEvery: CAP, n: 2, m: 1, cfg: 1, onlineSteps: 2, inferenceSteps: 4, sampleEvery: 1 },
    own
  ])
  if (Result.isFailure(c)) throw new Error(c.failure.message)
  return c.success
}

describe("Compare.train at a training-NFE budget", () => {
  let model = ""
  beforeAll(async () => {
    model = await savedTinyModel(7)
  })
  // The spec is what run.json records (a registry name); the mock is what scores.
  const wiring = () => ({ model, reward: redness, backend: Backend.make("wasm"), rewardSpec: { reward: "compressibility" } })

  it.effect("stops every method at (or just past) the same training NFE, and records the NFE curve and snapshots", () =>
    Effect.gen(function*() {
      const root = tmpDir("compare-budget-")
      for (const method of Compare.FINETUNE_METHODS) {
        const dir = path.join(root, method)
        const s = yield* Compare.train(method, configOf(method), dir, wiring(), { snapshots: 3 })
        const nfe = Compare.nfeCurve(s)
        assert.isFalse(nfe.estimated, method)
        const last = nfe.points[nfe.points.length - 1]
        const before = nfe.points.length > 1 ? nfe.points[nfe.points.length - 2] : 0
        assert.strictEqual(s.trainingNfe, last, method)
        // Reached the budget, and the iteration before had not: stopped by the budget, not the cap.
        assert.isAtLeast(last, BUDGET, method)
        assert.isBelow(before, BUDGET, method)
        assert.isBelow(s.iterations, CAP, method)
        assert.isAtLeast(s.iterations, 2, `${method}: the budget spans several iterations`)
        // Snapshots at 1/3 and 2/3 of the budget (or of the iterations), before the final model.
        assert.deepStrictEqual(s.snapshots?.map((p) => p.k), [1, 2], method)
        for (const p of s.snapshots ?? []) {
          assert.isAtLeast(p.trainingNfe, (p.k * BUDGET) / 3, method)
          assert.isBelow(p.trainingNfe, last, method)
          assert.isTrue(fs.existsSync(path.join(dir, "curve", `k${p.k}`, "model.safetensors")), method)
        }
      }
    }).pipe(Effect.provide(NodeServices.layer)), 600_000)

  it.effect("a method's own setting reaches its optimiser and run record, and a finished stage refuses a changed one", () =>
    Effect.gen(function*() {
      const dir = path.join(tmpDir("compare-settings-"), "raft")
      const s = yield* Compare.train("raft", configOf("raft", { lr: 3e-4 }), dir, wiring())
      const records = fs.readFileSync(path.join(dir, "run", "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as { lr: number })
      assert.strictEqual(records.length, s.iterations)
      for (const r of records) assert.strictEqual(r.lr, 3e-4)
      const run = JSON.parse(fs.readFileSync(path.join(dir, "run", RunRecord.FILE), "utf8"))
      assert.strictEqual(run.settings.lr, 3e-4)
      // The same settings reuse the stage; another lr would pass a stale summary off as its own.
      const again = yield* Compare.train("raft", configOf("raft", { lr: 3e-4 }), dir, wiring())
      assert.deepStrictEqual(again, s)
      const changed = (yield* Effect.flip(Compare.train("raft", configOf("raft", { lr: 1e-4 }), dir, wiring()))) as RunRecord.RunMismatch
      assert.strictEqual(changed._tag, "RunMismatch")
      assert.include(changed.message, "lr 0.0003 -> 0.0001")
    }).pipe(Effect.provide(NodeServices.layer)), 300_000)
})
