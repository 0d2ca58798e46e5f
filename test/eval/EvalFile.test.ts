import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as EvalFile from "../../src/eval/EvalFile.ts"

const committed = "docs/data/eval-shapeworld-base.json"

// The plan of an evaluation that would produce this report.
const plan = (f: EvalFile.EvalFile): EvalFile.Plan => ({ sampler: f.sampler, sets: f.reports.map((r) => ({ name: r.name, prompts: r.samples.map((s) => s.prompt) })) })

describe("EvalFile", () => {
  it.effect("reads a committed report; pairs it with itself and names the first difference otherwise", () =>
    Effect.gen(function*() {
      const base = yield* EvalFile.read(committed)
      assert.strictEqual(base.reports.length, 2)
      assert.strictEqual(base.reports[0].samples.length, 210)
      assert.isUndefined(EvalFile.unpairable(base, plan(base)))
      assert.strictEqual(EvalFile.unpairable(base, plan({ ...base, sampler: { ...base.sampler, seed: 1 } })), "sampler seed 0 there, 1 here")
      // The batch size changes nothing per prompt: still pairable.
      assert.isUndefined(EvalFile.unpairable(base, plan({ ...base, sampler: { ...base.sampler, batchSize: 4 } })))
      const moved = base.reports.map((r, s) => s === 1 ? { ...r, samples: r.samples.map((x, i) => i === 6 ? { ...x, prompt: "a red square" } : x) } : r)
      assert.match(EvalFile.unpairable(base, plan({ ...base, reports: moved }))!, /^prompts-heldout line 7: ".*" there, "a red square" here$/)
      assert.match(EvalFile.unpairable(base, plan({ ...base, reports: base.reports.slice(0, 1) }))!, /2 prompt sets there, 1 here/)
    }).pipe(Effect.provide(NodeServices.layer)))

  it.effect("a file that is not a report is an EvalFileError naming the file", () =>
    Effect.gen(function*() {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "evalfile-"))
      const bad = path.join(dir, "bad.json")
      fs.writeFileSync(bad, JSON.stringify({ model: "m", reports: [] }))
      const e1 = yield* Effect.flip(EvalFile.read(bad))
      assert.strictEqual(e1._tag, "EvalFileError")
      assert.strictEqual(e1.file, bad)
      assert.match(e1.message, /not an evaluation report/)
      fs.writeFileSync(bad, "{")
      assert.match((yield* Effect.flip(EvalFile.read(bad))).message, /not valid JSON/)
      assert.match((yield* Effect.flip(EvalFile.read(path.join(dir, "missing.json")))).message, /cannot read/)
      fs.rmSync(dir, { recursive: true })
    }).pipe(Effect.provide(NodeServices.layer)))
})
