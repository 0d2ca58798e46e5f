/**
 * The pipelines on webgpu, smoke-sized: rlhf.ts trains, saves and reports
 * (with the peak GPU memory), and sample.ts writes its images. Any adapter
 * does (CI: Mesa's lavapipe); see test/gpu-helpers.ts for the gate.
 */
import { assert, describe, it } from "@effect/vitest"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { beforeAll } from "vitest"
import { runPipeline, saveTinyModel } from "../cli-helpers.ts"
import { requireAdapter, skipGpu } from "../gpu-helpers.ts"

describe.skipIf(skipGpu)("pipelines on webgpu", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "webgpu-cli-"))
  const model = path.join(dir, "model")

  beforeAll(async () => {
    await requireAdapter()
    await saveTinyModel(model)
  })

  it("rlhf.ts --backend webgpu: two iterations on one thread, the model saved, GPU memory in the metrics and the report", () => {
    const out = path.join(dir, "rlhf")
    const r = runPipeline("rlhf.ts", [
      "--model", model, "--clip-model", "/nonexistent", "--reward", "compositional-dense", "--batch-size", "2", "--n", "2", "--m", "2",
      "--online-steps", "2", "--inference-steps", "10", "--iterations", "2", "--eval-prompts", "1", "--eval-steps", "2",
      "--backend", "webgpu", "--threads", "2", "--out", out
    ])
    assert.strictEqual(r.status, 0, r.stderr)
    assert.match(r.stderr, /tensor backend: webgpu on /)
    // --threads 2 is refused with the reason, and the run goes on with one.
    assert.match(r.stderr, /--threads 2 on webgpu: running with 1, since each worker thread would open the GPU/)
    const records = fs.readFileSync(path.join(out, "run", "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l))
    assert.strictEqual(records.length, 2)
    for (const rec of records) {
      assert.isAbove(rec.gpuBytes, 0)
      assert.isAtLeast(rec.gpuAllocatedBytes, rec.gpuBytes)
    }
    assert.strictEqual(records[1].liveTensors, records[0].liveTensors)
    assert.isTrue(fs.existsSync(path.join(out, "model", "model.safetensors")))
    assert.match(fs.readFileSync(path.join(out, "report.md"), "utf8"), /peak GPU memory \d+ MiB/)
    // lavapipe on a loaded 2-core host: 61 s idle, past 120 s beside two training processes.
  }, 300_000)

  it("sample.ts --backend webgpu writes one PNG per prompt", () => {
    const prompts = path.join(dir, "prompts.txt")
    fs.writeFileSync(prompts, "a red square\ntwo blue circles\n")
    const out = path.join(dir, "samples")
    const r = runPipeline("sample.ts", ["--model", model, "--prompts", prompts, "--out", out, "--steps", "2", "--backend", "webgpu"])
    assert.strictEqual(r.status, 0, r.stderr)
    assert.deepStrictEqual(fs.readdirSync(out).sort(), ["0000.png", "0001.png", "samples.json"])
  })
})
