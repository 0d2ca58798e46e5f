import { assert, describe, it } from "@effect/vitest"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { beforeAll } from "vitest"
import { runPipeline, saveTinyModel } from "../cli-helpers.ts"

// The pipeline end to end at toy size: the RLHF stages on a tiny model, the
// eval prompts in file order, a reward that needs no model.
describe("path-agreement.ts", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "path-agreement-"))
  const model = path.join(dir, "model")
  const prompts = path.join(dir, "prompts.txt")
  const out = path.join(dir, "report.json")

  beforeAll(async () => {
    await saveTinyModel(model)
    fs.writeFileSync(prompts, "a red circle\ntwo blue squares\na green triangle\n")
  })

  it("writes the JSON and markdown reports for the prompts of the file", () => {
    const r = runPipeline("path-agreement.ts", [
      "--model", model, "--reward", "compositional-dense", "--clip-model", path.join(dir, "no-clip"),
      "--prompt-file", prompts, "--prompts", "0", "--n", "2", "--m", "2", "--batch-size", "2",
      "--inference-steps", "5", "--online-steps", "2", "--out", out, "--backend", "wasm"
    ])
    assert.strictEqual(r.status, 0, r.stderr.slice(-3000))
    const report = JSON.parse(fs.readFileSync(out, "utf8"))
    assert.deepStrictEqual(report.items.map((x: { prompt: string }) => x.prompt), ["a red circle", "two blue squares", "a green triangle"])
    assert.strictEqual(report.summary.items, 3)
    assert.strictEqual(report.summary.n, 2)
    assert.strictEqual(report.items[0].perStep.length, 2)
    assert.strictEqual(report.items[0].final.length, 2)
    // One start timestep per batch: the first two prompts share theirs.
    assert.strictEqual(report.items[0].t0, report.items[1].t0)
    // Batches of 2 and 1: nothing outlives a batch.
    assert.strictEqual(report.liveTensors.length, 2)
    assert.strictEqual(report.liveTensors[1], report.liveTensors[0])
    assert.include(fs.readFileSync(path.join(dir, "report.md"), "utf8"), "| sum |")
    assert.include(r.stdout, "argmax = final argmax")
    assert.include(report.command, "--prompt-file")

    // --from pools stored reports without generating; a file that is not a report is refused.
    const pooledFile = path.join(dir, "pooled.json")
    const tsx = (...args: Array<string>) => runPipeline("path-agreement.ts", args)
    const pooled = tsx("--from", `${out},${out}`, "--out", pooledFile)
    assert.strictEqual(pooled.status, 0, pooled.stderr.slice(-3000))
    const p = JSON.parse(fs.readFileSync(pooledFile, "utf8"))
    assert.strictEqual(p.summary.items, 6)
    assert.deepStrictEqual(p.sources, [out, out])
    assert.strictEqual(p.summary.rankings[0].argmax.hits, 2 * report.summary.rankings[0].argmax.hits)
    const bad = tsx("--from", prompts, "--out", path.join(dir, "bad.json"))
    assert.strictEqual(bad.status, 1)
    assert.include(bad.stderr, "PathAgreementError")
  })
})
