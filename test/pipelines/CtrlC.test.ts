// Ctrl-C under `npx tsx` (the documented way to run pipelines): the whole
// process group gets SIGINT; the run must stop (abandoning the iteration in
// progress) with a checkpoint of the iterations done.
import { assert, describe, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { savedTinyModel, tmpDir } from "../sharpen-helpers.ts"

const root = path.resolve(import.meta.dirname, "../..")

describe("Ctrl-C", () => {
  it("sft.ts under npx tsx stops with a checkpoint of the iterations done", async () => {
    const model = await savedTinyModel()
    const out = tmpDir("ctrlc-")
    const args = ["tsx", "pipelines/sft.ts", "--model", model, "--out", out, "--iterations", "500", "--batch-size", "1", "--m", "2",
      "--eval-prompts", "1", "--eval-steps", "2", "--checkpoint-every", "1000", "--backend", "wasm"]
    const child = spawn("npx", args, { cwd: root, detached: true, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, SHARPEN_BACKEND: "" } })
    let stderr = ""
    child.stderr.on("data", (d) => (stderr += d))
    child.stdout.on("data", (d) => (stderr += d))
    const metrics = path.join(out, "run", "metrics.jsonl")
    // Wait until two iterations are done, then Ctrl-C the process group.
    const deadline = Date.now() + 90_000
    while (Date.now() < deadline && !(fs.existsSync(metrics) && fs.readFileSync(metrics, "utf8").split("\n").length > 2)) {
      await new Promise((r) => setTimeout(r, 200))
    }
    assert.isTrue(fs.existsSync(metrics), stderr)
    process.kill(-child.pid!, "SIGINT")
    // npm may exit at once; the pipeline process finishes its iteration and
    // writes the checkpoint on its own.
    const pointer = path.join(out, "run", "LATEST")
    const until = Date.now() + 60_000
    while (Date.now() < until && !fs.existsSync(pointer)) await new Promise((r) => setTimeout(r, 200))
    await new Promise((r) => setTimeout(r, 1000))
    const latest = fs.readFileSync(pointer, "utf8").trim()
    const done = fs.readFileSync(metrics, "utf8").trim().split("\n").length
    assert.strictEqual(latest, `ckpt-${String(done).padStart(7, "0")}`)
    assert.match(stderr, /interrupted: checkpoint written at iteration/)
  })

  it("rlhf.ts on 2 threads stops with a checkpoint, and its whole process group exits", async () => {
    const model = await savedTinyModel()
    const out = tmpDir("ctrlc-threads-")
    const args = ["tsx", "pipelines/rlhf.ts", "--model", model, "--out", out, "--iterations", "500", "--batch-size", "2", "--m", "2", "--inference-steps", "10",
      "--online-steps", "20", "--cfg", "2", "--reward", "compositional-dense", "--eval-prompts", "1", "--eval-steps", "2", "--checkpoint-every", "1000", "--backend", "wasm", "--threads", "2"]
    const child = spawn("npx", args, { cwd: root, detached: true, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, SHARPEN_BACKEND: "" } })
    let stderr = ""
    child.stderr.on("data", (d) => (stderr += d))
    child.stdout.on("data", (d) => (stderr += d))
    const metrics = path.join(out, "run", "metrics.jsonl")
    const deadline = Date.now() + 90_000
    while (Date.now() < deadline && !(fs.existsSync(metrics) && fs.readFileSync(metrics, "utf8").split("\n").length > 2)) {
      await new Promise((r) => setTimeout(r, 200))
    }
    assert.isTrue(fs.existsSync(metrics), stderr)
    process.kill(-child.pid!, "SIGINT")
    const pointer = path.join(out, "run", "LATEST")
    // The whole process group is gone once the checkpoint is written (the threads are released by the
    // pool's scope, tested in GenerationPool.test.ts).
    const alive = () => {
      try {
        process.kill(-child.pid!, 0)
        return true
      } catch {
        return false
      }
    }
    const until = Date.now() + 60_000
    while (Date.now() < until && alive()) await new Promise((r) => setTimeout(r, 200))
    assert.isFalse(alive(), `the process group still runs: ${stderr}`)
    const latest = fs.readFileSync(pointer, "utf8").trim()
    const done = fs.readFileSync(metrics, "utf8").trim().split("\n").length
    assert.strictEqual(latest, `ckpt-${String(done).padStart(7, "0")}`)
    assert.match(stderr, /interrupted: checkpoint written at iteration/)
  }, 180_000)
})
