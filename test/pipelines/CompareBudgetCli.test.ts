import { assert, describe, it } from "@effect/vitest"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { beforeAll } from "vitest"
import { runPipeline, saveTinyModel } from "../cli-helpers.ts"

// compare.ts at one training-NFE budget with the rows this project adds
// (image-level sharpening, RAFT), per-method settings and curve evaluations.
describe("compare.ts --quick --training-nfe", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "compare-nfe-"))
  const model = path.join(dir, "model")
  const out = path.join(dir, "out")
  const results = path.join(dir, "results.md")
  const settingsFile = path.join(dir, "methods.json")
  const BUDGET = 200
  const methods = ["sft-sharpening-image", "rlhf-sharpening-image", "raft"]
  const run = () =>
    runPipeline("compare.ts", [
      "--quick", "--training-nfe", String(BUDGET), "--methods", methods.join(","), "--method-settings", settingsFile, "--curve-evals", "2",
      "--model", model, "--reward", "compositional-dense", "--clip-model", path.join(dir, "no-clip"),
      "--out", out, "--results", results, "--block", "nfe", "--backend", "wasm"
    ])
  const writeSettings = (raftLr: number) =>
    fs.writeFileSync(settingsFile, JSON.stringify({ "$comment": "test", "raft": { "lr": raftLr, "$source": "from the test" }, "rlhf-sharpening-image": { "dpoBeta": 500 } }))

  beforeAll(async () => {
    await saveTinyModel(model)
    // The iteration-count comparison's block, which a budget run (--block nfe) must leave alone.
    fs.writeFileSync(results, "# Results\n\n<!-- compare:begin -->\nthe iteration-count table\n<!-- compare:end -->\n")
  })

  it("trains every method to the budget with its own settings, tabulates NFE and iterations, plots against training NFE, and refuses changed settings", () => {
    writeSettings(3e-5)
    const r = run()
    assert.strictEqual(r.status, 0, r.stderr.slice(-3000))
    for (const m of methods) {
      const stage = path.join(out, "train", `${m}-s0-nfe${BUDGET}`)
      const s = JSON.parse(fs.readFileSync(path.join(stage, "summary.json"), "utf8"))
      assert.isAtLeast(s.trainingNfe, BUDGET, m)
      assert.isBelow(s.curve.length > 1 ? s.curve[s.curve.length - 2].trainingNfe : 0, BUDGET, m)
      assert.isTrue(fs.existsSync(path.join(out, "eval", `curve-${m}-s0-nfe${BUDGET}-k2-p2.json`)), m)
    }
    const record = (m: string) => JSON.parse(fs.readFileSync(path.join(out, "train", `${m}-s0-nfe${BUDGET}`, "run", "run.json"), "utf8")).settings
    assert.strictEqual(record("raft").lr, 3e-5)
    assert.strictEqual(record("rlhf-sharpening-image").dpoBeta, 500)
    assert.strictEqual(record("rlhf-sharpening-image").lr, 1e-4, "--lr's default where no own setting")
    assert.strictEqual(record("sft-sharpening-image").preference, "image")
    const text = fs.readFileSync(results, "utf8")
    assert.include(text, "<!-- compare:begin -->\nthe iteration-count table\n<!-- compare:end -->")
    assert.isAbove(text.indexOf("<!-- compare-nfe:begin -->"), text.indexOf("<!-- compare:end -->"), "appended after the other block")
    for (const s of ["SFT Diffusion-Sharpening (image-level)", "RLHF Diffusion-Sharpening (image-level)", "| RAFT |", "training NFE | iterations |", `a budget of ${BUDGET} training NFE each`, "`raft`): lr 0.00003 (from the test)", "dpoBeta 500"]) {
      assert.include(text, s)
    }
    for (const plot of ["reward-vs-training-nfe", "accuracy-vs-training-nfe", "eval-reward-vs-training-nfe"]) {
      assert.isTrue(fs.existsSync(path.join(dir, "img", "compare-nfe", `${plot}.png`)), plot)
      assert.include(text, `](img/compare-nfe/${plot}.png)`)
    }
    // A finished stage with another setting is refused, not passed off as the new one's.
    writeSettings(1e-4)
    const changed = run()
    assert.notStrictEqual(changed.status, 0)
    assert.include(changed.stderr, "RunMismatch")
    assert.include(changed.stderr, "lr 0.00003 -> 0.0001")
  }, 600_000)
})
