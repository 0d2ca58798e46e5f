import { assert, describe, it } from "@effect/vitest"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { beforeAll } from "vitest"
import { runPipeline, saveTinyModel } from "../cli-helpers.ts"

// The whole comparison at --quick size on a tiny model: every training
// method, every inference-time method, the ablations, tables and plots.
describe("compare.ts --quick", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "compare-"))
  const model = path.join(dir, "model")
  const out = path.join(dir, "out")
  const results = path.join(dir, "results.md")
  // Every fine-tuning row, the paper's and this project's (image-level sharpening, RAFT).
  const methods = ["standard", "diffusion-dpo", "ddpo", "sft-sharpening", "rlhf-sharpening", "sft-sharpening-image", "rlhf-sharpening-image", "raft", "nft", "group-pairs"]
  const run = (...extra: Array<string>) =>
    runPipeline("compare.ts", [
      ...extra, "--quick", "--ablations", "--model", model, "--reward", "compositional-dense", "--clip-model", path.join(dir, "no-clip"),
      "--out", out, "--results", results, "--models-dir", path.join(dir, "models"), "--backend", "wasm"
    ])

  beforeAll(async () => {
    await saveTinyModel(model)
    fs.writeFileSync(results, "# Results\n\nhand-written text\n\n<!-- compare:begin -->\nold\n<!-- compare:end -->\n\nmore text\n")
  })

  it("trains and evaluates every row, writes the tables into the results block, and resumes from its stages", () => {
    // A second process can train the ablations alone; the full run then reuses them.
    const ablationsOnly = run("--only-ablations")
    assert.strictEqual(ablationsOnly.status, 0, ablationsOnly.stderr.slice(-3000))
    assert.isTrue(fs.existsSync(path.join(out, "ablation", "n3", "summary.json")))
    assert.isTrue(fs.existsSync(path.join(out, "eval", "ablation-m1.json")))
    assert.isFalse(fs.existsSync(path.join(out, "ablation", "n2")), "the main run's point is left to the main run")
    assert.isFalse(fs.existsSync(path.join(out, "train")), "no Table 1 stage runs")
    assert.include(fs.readFileSync(results, "utf8"), "\nold\n", "no tables are written")

    const r = run()
    assert.strictEqual(r.status, 0, r.stderr.slice(-3000))
    assert.notInclude(r.stderr, `in ${path.join(out, "ablation")}`)
    const text = fs.readFileSync(results, "utf8")
    assert.include(text, "hand-written text")
    assert.include(text, "more text")
    assert.notInclude(text, "\nold\n")
    assert.include(text, "accuracy % [95% CI]")
    for (
      const label of [
        "base model", "standard fine-tuning", "Diffusion-DPO", "DDPO", "SFT Diffusion-Sharpening (paper)", "RLHF Diffusion-Sharpening (paper)",
        "SFT Diffusion-Sharpening (image-level)", "RLHF Diffusion-Sharpening (image-level)", "| RAFT |", "| DiffusionNFT |", "| group-relative image-level RLHF (all pairs) |",
        "best-of-2", "step-search 1x2", "Table 2", "Table 3"
      ]
    ) {
      assert.include(text, label)
    }
    // Without --training-nfe, every method runs the same iterations (no NFE columns in Table 1).
    assert.notInclude(text, "training NFE | iterations |")
    for (const m of methods) {
      const s = JSON.parse(fs.readFileSync(path.join(out, "train", `${m}-s0`, "summary.json"), "utf8"))
      assert.strictEqual(s.iterations, 2, m)
      assert.isTrue(fs.existsSync(path.join(out, "train", `${m}-s0`, "model", "model.safetensors")), m)
    }
    // The group methods' own settings are part of their run record.
    assert.strictEqual(JSON.parse(fs.readFileSync(path.join(out, "train", "nft-s0", "run", "run.json"), "utf8")).settings.nftBeta, 0.1)
    assert.isUndefined(JSON.parse(fs.readFileSync(path.join(out, "train", "raft-s0", "run", "run.json"), "utf8")).settings.nftBeta)
    const dpo = JSON.parse(fs.readFileSync(path.join(out, "eval", "best-of-2.json"), "utf8"))
    assert.strictEqual(dpo.nfePerImage, 2 * 4 * 2)
    assert.isTrue(fs.existsSync(path.join(dir, "img", "compare", "reward-vs-nfe.png")))
    assert.include(text, "](img/compare/reward-vs-nfe.png)")
    for (const m of methods) {
      assert.isTrue(fs.existsSync(path.join(dir, "models", `shapeworld-${m}-compositional-dense`, "model.safetensors")), m)
    }
    // The ablation point with the main run's settings (--quick: n = 2, m = 2) reuses it.
    assert.isTrue(fs.existsSync(path.join(out, "ablation", "n3", "summary.json")))
    assert.isFalse(fs.existsSync(path.join(out, "ablation", "n2")))
    // A second run finds every stage done and writes the same tables.
    const again = run()
    assert.strictEqual(again.status, 0, again.stderr.slice(-3000))
    assert.notInclude(again.stderr, "training ")
    assert.strictEqual(fs.readFileSync(results, "utf8"), text)
  }, 600_000)
})
