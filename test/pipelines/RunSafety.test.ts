// Run safety of the training CLIs (issue #15), with real processes: a hung
// reward server interrupted by Ctrl-C, two writers on one run directory, the
// npx wrapper killed alone, and what --resume accepts and refuses.
import { assert, describe, it } from "@effect/vitest"
import { Result } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { beforeAll } from "vitest"
import * as SharpenConfig from "../../src/sharpen/SharpenConfig.ts"
import { root, tsxLoader } from "../cli-helpers.ts"
import { startServer } from "../reward/RewardServer.ts"
import { savedTinyModel, tmpDir } from "../sharpen-helpers.ts"

interface Run {
  readonly child: ChildProcess
  output: string
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number }>
}

const start = (command: string, args: ReadonlyArray<string>, env: Record<string, string> = {}, detached = false): Run => {
  const child = spawn(command, args, { cwd: root, detached, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, SHARPEN_BACKEND: "", ...env } })
  const started = Date.now()
  const run: Run = {
    child,
    output: "",
    exited: new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal, ms: Date.now() - started })))
  }
  child.stdout!.on("data", (d) => (run.output += d))
  child.stderr!.on("data", (d) => (run.output += d))
  return run
}

/** A pipeline as `node --import tsx` runs it (its exit code is the trainer's). */
const pipeline = (script: string, args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
  start(process.execPath, ["--import", tsxLoader, path.join("pipelines", script), ...args], env)

const until = async (what: string, ok: () => boolean, ms = 90_000, run?: Run) => {
  const deadline = Date.now() + ms
  while (!ok()) {
    if (Date.now() > deadline || (run !== undefined && run.child.exitCode !== null)) throw new Error(`gave up waiting for ${what}${run === undefined ? "" : `:\n${run.output}`}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

const lines = (file: string) => (fs.existsSync(file) ? fs.readFileSync(file, "utf8").trim().split("\n").filter((l) => l !== "") : [])
const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

describe("run safety", () => {
  let model = ""
  beforeAll(async () => {
    model = await savedTinyModel(5)
  })
  // Small and fast: one prompt, 2-step trajectories, tiny evaluation, no clip score.
  const small = () => [
    "--model", model, "--clip-model", "/nonexistent", "--batch-size", "1", "--n", "2", "--m", "2", "--online-steps", "2",
    "--inference-steps", "10", "--eval-prompts", "1", "--eval-steps", "2", "--backend", "wasm"
  ]

  it("Ctrl-C and SIGTERM reach a hung reward server: exit 130 / 143 within seconds, each timeout printed, the last checkpoint kept", async () => {
    // Answers until two iterations are done, then never again (an iteration
    // may have started its requests by then: it is the one abandoned).
    let hang = false
    const server = await startServer((req) =>
      hang ? { delayMs: 600_000 } : { body: { rewards: (req.body.images as Array<unknown>).map((_, i) => i / 10) } }
    )
    try {
      const out = tmpDir("hung-")
      const run = pipeline("rlhf.ts", [...small(), "--out", out, "--iterations", "50", "--checkpoint-every", "1",
        "--reward", "http", "--base-url", server.url, "--timeout-ms", "800", "--retries", "5"])
      await until("two iterations", () => lines(path.join(out, "run", "metrics.jsonl")).length >= 2, 90_000, run)
      hang = true
      await until("a timed-out attempt", () => /attempt 2 of 6: no answer within 800 ms; retrying/.test(run.output), 90_000, run)
      const done = lines(path.join(out, "run", "metrics.jsonl")).length
      const latest = `ckpt-${String(done).padStart(7, "0")}`
      const sent = Date.now()
      run.child.kill("SIGINT")
      const exit = await run.exited
      assert.strictEqual(exit.code, 130, run.output)
      assert.isBelow(Date.now() - sent, 10_000)
      assert.match(run.output, /reward http \(http:\/\/127\.0\.0\.1:\d+\): attempt 1 of 6: no answer within 800 ms; retrying/)
      // The iterations done are checkpointed; nothing of the hung one.
      assert.strictEqual(fs.readFileSync(path.join(out, "run", "LATEST"), "utf8").trim(), latest)
      assert.strictEqual(lines(path.join(out, "run", "metrics.jsonl")).length, done)
      assert.isFalse(fs.existsSync(path.join(out, "LOCK")))
      assert.deepStrictEqual(fs.readdirSync(out).filter((f) => f.endsWith(".tmp")), [])

      // Resumed, hung again: SIGTERM stops it the same way, exit 143.
      const resumed = pipeline("rlhf.ts", [...small(), "--out", out, "--iterations", "50", "--checkpoint-every", "1",
        "--reward", "http", "--base-url", server.url, "--timeout-ms", "800", "--retries", "5", "--resume"])
      await until("the resumed run's timed-out attempt", () => new RegExp(`resumed from .*${latest} at iteration ${done}[\\s\\S]*attempt 1 of 6: no answer`).test(resumed.output), 90_000, resumed)
      const termed = Date.now()
      resumed.child.kill("SIGTERM")
      assert.strictEqual((await resumed.exited).code, 143, resumed.output)
      assert.isBelow(Date.now() - termed, 10_000)
      assert.strictEqual(lines(path.join(out, "run", "metrics.jsonl")).length, done)
      assert.strictEqual(fs.readFileSync(path.join(out, "run", "LATEST"), "utf8").trim(), latest)
      assert.isFalse(fs.existsSync(path.join(out, "LOCK")))
    } finally {
      await server.close()
    }
  }, 120_000)

  it("one writer per run directory; SIGTERM to the npx wrapper alone stops the trainer with a checkpoint", async () => {
    const out = tmpDir("lock-")
    const metrics = path.join(out, "run", "metrics.jsonl")
    const first = start("npx", ["tsx", "pipelines/sft.ts", ...small(), "--reward", "compositional-dense", "--out", out, "--iterations", "500", "--checkpoint-every", "1000"], {}, true)
    try {
      await until("the first run's first iteration", () => lines(metrics).length >= 1, 90_000, first)
      const owner = JSON.parse(fs.readFileSync(path.join(out, "LOCK"), "utf8")).pid as number
      assert.notStrictEqual(owner, first.child.pid)
      // A second writer is refused, naming the owner, and changes nothing.
      const second = pipeline("sft.ts", [...small(), "--reward", "compositional-dense", "--out", out, "--iterations", "500", "--resume-if-present"])
      const refused = await second.exited
      assert.strictEqual(refused.code, 1, second.output)
      assert.include(second.output, `RunDirectoryLocked: in use by process ${owner}`)
      assert.strictEqual(JSON.parse(fs.readFileSync(path.join(out, "LOCK"), "utf8")).pid, owner)
      // A supervisor's SIGTERM to npx only: the trainer must not outlive it.
      process.kill(first.child.pid!, "SIGTERM")
      await until("the trainer to stop", () => !alive(owner), 30_000)
      assert.isFalse(fs.existsSync(path.join(out, "LOCK")))
      const done = lines(metrics).length
      assert.strictEqual(fs.readFileSync(path.join(out, "run", "LATEST"), "utf8").trim(), `ckpt-${String(done).padStart(7, "0")}`)
    } finally {
      // Whatever is left of the wrapper's process group (only when the test failed).
      try {
        process.kill(-first.child.pid!, "SIGKILL")
      } catch {
        // already gone
      }
    }
  }, 150_000)

  it("--resume: refuses no checkpoint and changed settings, accepts more iterations; reward options from the config file", async () => {
    const server = await startServer((req) => ({ body: { rewards: (req.body.images as Array<unknown>).map(() => 0.5) } }))
    try {
      const out = path.join(tmpDir("resume-"), "out")
      // A mistyped --out: refused, and nothing is created.
      const missing = pipeline("rlhf.ts", [...small(), "--out", out, "--resume"])
      assert.strictEqual((await missing.exited).code, 1)
      assert.include(missing.output, "NothingToResume")
      assert.isFalse(fs.existsSync(out))

      // Every reward option in the config file; a stale temporary is cleared.
      const config = path.join(path.dirname(out), "config.json")
      fs.writeFileSync(config, JSON.stringify({ iterations: 2, sampleEvery: 1, reward: { reward: "http", baseUrl: server.url, apiKeyEnv: "RUN_SAFETY_KEY", timeoutMs: 5000, retries: 1, concurrency: 1 } }))
      fs.mkdirSync(path.join(out, "run"), { recursive: true })
      fs.writeFileSync(path.join(out, "run", "metrics.jsonl.4242.1700000000000.tmp"), "torn")
      const first = pipeline("rlhf.ts", [...small(), "--out", out, "--config", config, "--resume-if-present"], { RUN_SAFETY_KEY: "s3cret" })
      assert.strictEqual((await first.exited).code, 0, first.output)
      assert.include(first.output, "removed 1 temporary file(s) of interrupted writes")
      assert.isFalse(fs.existsSync(path.join(out, "run", "metrics.jsonl.4242.1700000000000.tmp")))
      // sampleEvery: a grid after iteration 1 (the last one has the after- grids).
      assert.isTrue(fs.existsSync(path.join(out, "samples", "iter-0000001-prompts-seen.png")))
      assert.isFalse(fs.existsSync(path.join(out, "samples", "iter-0000002-prompts-seen.png")))
      assert.isAbove(server.requests.length, 0)
      assert.strictEqual(server.requests[0].headers.authorization, "Bearer s3cret")
      assert.notInclude(first.output, "s3cret")
      const record = JSON.parse(fs.readFileSync(path.join(out, "run", "run.json"), "utf8"))
      assert.strictEqual(record.reward.timeoutMs, 5000)
      assert.match(record.baseModel.sha256, /^[0-9a-f]{64}$/)

      // A setting that changes the training: refused, naming it; nothing rewritten.
      const before = ["run/metrics.jsonl", "run/run.json", "config.json"].map((f) => fs.readFileSync(path.join(out, f), "utf8"))
      // What rlhf.ts runs with these flags (its measured defaults under them).
      const resolved = SharpenConfig.resolve("rlhf", [])
      if (Result.isFailure(resolved)) throw new Error(resolved.failure.message)
      const { cfg, dpoBeta } = resolved.success
      const changed = pipeline("rlhf.ts", [...small(), "--out", out, "--config", config, "--resume", "--cfg", String(cfg + 1), "--dpo-beta", String(dpoBeta + 1)], { RUN_SAFETY_KEY: "s3cret" })
      assert.strictEqual((await changed.exited).code, 1)
      assert.include(changed.output, "RunMismatch: cannot resume: ")
      assert.include(changed.output, `cfg ${cfg} -> ${cfg + 1}; dpoBeta ${dpoBeta} -> ${dpoBeta + 1}`)
      // The lock is released after a success and after a failure alike.
      assert.isFalse(fs.existsSync(path.join(out, "LOCK")))
      assert.deepStrictEqual(["run/metrics.jsonl", "run/run.json", "config.json"].map((f) => fs.readFileSync(path.join(out, f), "utf8")), before)

      // More iterations (and another timeout) may change.
      const more = pipeline("rlhf.ts", [...small(), "--out", out, "--config", config, "--resume", "--iterations", "3", "--timeout-ms", "9000"], { RUN_SAFETY_KEY: "s3cret" })
      assert.strictEqual((await more.exited).code, 0, more.output)
      assert.deepStrictEqual(lines(path.join(out, "run", "metrics.jsonl")).map((l) => JSON.parse(l).iteration), [1, 2, 3])
      // The base model's evaluation is reused: same model, same evaluation settings.
      assert.include(first.output, "evaluating the base model")
      assert.notInclude(more.output, "evaluating the base model")
    } finally {
      await server.close()
    }
  }, 150_000)

  it("--out naming a regular file or a path under /proc fails at once with OutputError", async () => {
    const file = path.join(tmpDir("out-file-"), "f")
    fs.writeFileSync(file, "")
    for (const out of [file, "/proc/sharpen-test/x"]) {
      const run = pipeline("sft.ts", [...small(), "--out", out])
      const exit = await run.exited
      assert.strictEqual(exit.code, 1, run.output)
      assert.match(run.output, /error: OutputError: .*\(path: /)
    }
  }, 60_000)
})
