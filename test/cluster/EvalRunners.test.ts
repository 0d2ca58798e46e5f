/**
 * Evaluation over effect/cluster runners (#24): the evaluation images
 * (`ParallelGenerate.onTransport`, what a run with `--runners` samples its
 * before/after evaluation and grids with) against one thread's and worker
 * threads'; `sft.ts --runners` and `compare.ts --quick --runners` as child
 * processes. Real runner processes on loopback, SQLite storage in a temp dir.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { beforeAll } from "vitest"
import * as Denoiser from "../../src/model/Denoiser.ts"
import * as ParallelGenerate from "../../src/parallel/ParallelGenerate.ts"
import * as Generate from "../../src/trajectory/Generate.ts"
import { useWasm } from "../helpers.ts"
import { savedTinyModel, tmpDir } from "../sharpen-helpers.ts"
import { runner } from "./runners.ts"
import { connect, model, storageIn } from "./scenarios.ts"

const root = path.resolve(import.meta.dirname, "../..")

/** `pipelines/<script>` with `args` and `env` added, its exit code and output; killed (SIGKILL) after `timeoutMs` or when the scope closes. */
const cli = (script: string, args: ReadonlyArray<string>, env: Record<string, string>, timeoutMs: number) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const { SHARPEN_CLUSTER_SECRET: _, ...base } = process.env
      const p = spawn(process.execPath, ["--import", "tsx", `pipelines/${script}`, ...args], { cwd: root, env: { ...base, ...env, SHARPEN_CHILD: "1" }, stdio: ["ignore", "pipe", "pipe"] })
      let out = ""
      p.stdout!.on("data", (c: Buffer) => out += c.toString())
      p.stderr!.on("data", (c: Buffer) => out += c.toString())
      return { p, output: () => out }
    }),
    ({ p }) => Effect.sync(() => p.exitCode === null && p.signalCode === null && p.kill("SIGKILL"))
  ).pipe(Effect.flatMap(({ p, output }) =>
    Effect.callback<{ code: number | null; output: string; seconds: number }>((resume) => {
      const start = Date.now()
      const timer = setTimeout(() => p.kill("SIGKILL"), timeoutMs)
      const done = () => {
        clearTimeout(timer)
        resume(Effect.succeed({ code: p.exitCode, output: output(), seconds: (Date.now() - start) / 1000 }))
      }
      if (p.exitCode !== null || p.signalCode !== null) return done()
      p.once("exit", done)
    })
  ))

/** Every image equal bit for bit. */
const sameImages = (a: ReadonlyArray<Float32Array>, b: ReadonlyArray<Float32Array>, what: string) => {
  assert.strictEqual(a.length, b.length, what)
  a.forEach((x, i) => assert.deepStrictEqual(Array.from(x), Array.from(b[i]), `${what}: image ${i}`))
}

describe("evaluation over effect/cluster runners (runner processes on loopback, SQLite storage)", () => {
  beforeAll(async () => {
    // The trainer's secret is given per test, never taken from this process's environment.
    delete process.env.SHARPEN_CLUSTER_SECRET
    await useWasm()
  })

  it.live("evaluation images over 1 and 2 runners: one thread's and 2 worker threads' images bit for bit, the runners computing some; another seed differs; evaluate.ts --runners --coordinate writes the report of worker threads", () =>
    Effect.gen(function*() {
      const storage = storageIn("eval-runners-")
      const m = model()
      yield* Effect.addFinalizer(() => Effect.sync(() => Denoiser.dispose(m)))
      // 7 prompts in sampler batches of 2: 4 jobs, the last one short.
      const prompts = ["a red square", "two blue circles", "a green triangle above a white square", "a purple circle", "a yellow square", "three red triangles", "a blue square left of a green circle"]
      const sampler: Generate.SamplerOptions = { steps: 3, cfg: 2, eta: 0, seed: 9, batchSize: 2 }
      const one = yield* Generate.generate(m, prompts, sampler)
      const threads = yield* Effect.promise(() => ParallelGenerate.generate(m, prompts, sampler, { workers: 2, backend: "wasm" }))
      sameImages(threads, one, "2 worker threads against one thread")

      const a = yield* runner(storage)
      const overOne = yield* Effect.scoped(Effect.gen(function*() {
        const transport = yield* connect(storage, { runners: 1 })
        assert.strictEqual(transport.threads, 2)
        const progress: Array<number> = []
        const images = yield* ParallelGenerate.onTransport(transport, m, prompts, sampler, (done) => progress.push(done))
        // Rounds of 2 batches (this process and the runner): 4, then 7 images.
        assert.deepStrictEqual(progress, [4, 7])
        // The runner computed batches 2 and 4 (a job per round).
        assert.strictEqual(transport.jobsDone().get(a.address), 2)
        return images
      }))
      sameImages(overOne, one, "this process and 1 runner against one thread")

      const b = yield* runner(storage)
      const overTwo = yield* Effect.scoped(Effect.gen(function*() {
        const transport = yield* connect(storage, { runners: 2 })
        assert.strictEqual(transport.threads, 3)
        const images = yield* ParallelGenerate.onTransport(transport, m, prompts, sampler)
        // Rounds of 3 batches: the runners took batches 2, 3 (first round); batch 4 was this process's.
        assert.deepStrictEqual([...transport.jobsDone().values()].sort(), [1, 1])
        // The comparison can fail: another seed over the same runners gives other images.
        const other = yield* ParallelGenerate.onTransport(transport, m, prompts, { ...sampler, seed: 10 })
        assert.notDeepEqual(Array.from(other[3]), Array.from(one[3]))
        return images
      }))
      sameImages(overTwo, one, "this process and 2 runners against one thread")
      sameImages(overTwo, threads, "this process and 2 runners against 2 worker threads")
      for (const r of [a, b]) assert.include(r.output(), "a trainer said Hello")

      // evaluate.ts --runners --coordinate: the report of its worker threads, byte for byte.
      const tiny = yield* Effect.promise(() => savedTinyModel(3))
      const dir = tmpDir("eval-runners-evaluate-")
      const promptsFile = path.join(dir, "prompts.txt")
      fs.writeFileSync(promptsFile, fs.readFileSync(path.join(root, "data/eval/prompts-seen.txt"), "utf8").split("\n").slice(0, 20).join("\n") + "\n")
      const common = ["--model", tiny, "--prompts", promptsFile, "--steps", "2", "--backend", "wasm", "--clip", "models/shapeworld-clip"]
      const evaluated = yield* cli("evaluate.ts", [...common, "--runners", storage, "--runner-count", "2", "--coordinate", "--connect-timeout", "90", "--json", path.join(dir, "runners.json")], {}, 300_000)
      assert.strictEqual(evaluated.code, 0, evaluated.output.slice(-2000))
      assert.include(evaluated.output, `jobs on 2 runner(s) of ${storage} (this process coordinates)`)
      const local = yield* cli("evaluate.ts", [...common, "--json", path.join(dir, "threads.json")], {}, 300_000)
      assert.strictEqual(local.code, 0, local.output.slice(-2000))
      assert.strictEqual(fs.readFileSync(path.join(dir, "runners.json"), "utf8"), fs.readFileSync(path.join(dir, "threads.json"), "utf8"))
    }).pipe(Effect.scoped), 600_000)

  it.live("sft.ts --runners: exit 0, its evaluation on the runners with the base model's evaluation of worker threads (before.json equal), run.json names the runners, the secret printed nowhere; --threads with --runners refused", () =>
    Effect.gen(function*() {
      const storage = storageIn("eval-runners-sft-")
      const tiny = yield* Effect.promise(() => savedTinyModel(3))
      const secret = "s3cret-" + Math.random().toString(36).slice(2)
      const [a, b] = yield* Effect.all([runner(storage, { SHARPEN_CLUSTER_SECRET: secret }), runner(storage, { SHARPEN_CLUSTER_SECRET: secret })], { concurrency: "unbounded" })
      const dir = tmpDir("eval-runners-sft-cli-")
      const common = ["--model", tiny, "--iterations", "1", "--batch-size", "2", "--eval-prompts", "20", "--eval-steps", "2", "--backend", "wasm"]
      const over = yield* cli("sft.ts", [...common, "--runners", storage, "--runner-count", "2", "--connect-timeout", "90", "--out", path.join(dir, "runners")], { SHARPEN_CLUSTER_SECRET: secret }, 300_000)
      console.log(`sft.ts --runners (2 runners): exit ${over.code} in ${over.seconds.toFixed(1)} s`)
      assert.strictEqual(over.code, 0, over.output.slice(-2000))
      assert.include(over.output, "jobs on 2 runner(s) of " + storage)
      // The evaluation before and after went over the runners (20 prompts: 2 sampler batches of 16 per set).
      assert.include(over.output, "evaluating the base model on 20 prompts-seen + 20 prompts-heldout prompts on this process and 2 runner(s) ...")
      assert.include(over.output, "evaluating the sharpened model on this process and 2 runner(s) ...")
      const runJson = fs.readFileSync(path.join(dir, "runners", "run", "run.json"), "utf8")
      const record = JSON.parse(runJson)
      assert.deepStrictEqual({ ...record.runners, addresses: [...record.runners.addresses].sort() }, { storage, count: 2, addresses: [a.address, b.address].sort() })
      for (const text of [over.output, a.output(), b.output(), runJson, fs.readFileSync(path.join(dir, "runners", "report.md"), "utf8")]) assert.notInclude(text, secret)

      // The same base model evaluated on 2 worker threads (the default path): the same images, so the same before.json.
      const threads = yield* cli("sft.ts", [...common, "--threads", "2", "--out", path.join(dir, "threads")], {}, 300_000)
      console.log(`sft.ts --threads 2: exit ${threads.code} in ${threads.seconds.toFixed(1)} s`)
      assert.strictEqual(threads.code, 0, threads.output.slice(-2000))
      assert.notInclude(threads.output, "runner(s)")
      const before = (which: string) => fs.readFileSync(path.join(dir, which, "before.json"), "utf8")
      assert.strictEqual(before("runners"), before("threads"))
      assert.isAbove(JSON.parse(before("runners"))[0].samples.length, 0)

      const both = yield* cli("sft.ts", [...common, "--runners", storage, "--threads", "2", "--out", path.join(dir, "both")], {}, 120_000)
      assert.strictEqual(both.code, 1, both.output.slice(-1000))
      assert.include(both.output, "ConfigError")
    }).pipe(Effect.scoped), 900_000)

  it.live("compare.ts --runners (one image-level RLHF stage, tiny sizes): exit 0, the stage's run.json names the runners, its evaluations those of 3 worker threads (eval/*.json equal); --threads with --runners refused", () =>
    Effect.gen(function*() {
      const storage = storageIn("eval-runners-compare-")
      const tiny = yield* Effect.promise(() => savedTinyModel(3))
      const [a, b] = yield* Effect.all([runner(storage), runner(storage)], { concurrency: "unbounded" })
      const dir = tmpDir("eval-runners-compare-")
      // --quick's sizes, but 20 prompts per eval set (2 sampler batches of 16, so the runners sample some) and no inference rows.
      const config = path.join(dir, "config.json")
      fs.writeFileSync(config, JSON.stringify({ batchSize: 2, n: 2, m: 2, onlineSteps: 3, inferenceSteps: 10 }))
      const args = (out: string) => [
        "--model", tiny, "--config", config, "--methods", "rlhf-sharpening-image", "--iterations", "1", "--eval-prompts", "20", "--inference-prompts", "2",
        "--eval-steps", "2", "--best-of", "", "--step-search", "", "--backend", "wasm", "--out", path.join(dir, out)
      ]
      const both = yield* cli("compare.ts", [...args("both"), "--runners", storage, "--threads", "2"], {}, 120_000)
      assert.strictEqual(both.code, 1, both.output.slice(-1000))
      assert.include(both.output, "ConfigError")
      const over = yield* cli("compare.ts", [...args("runners"), "--runners", storage, "--runner-count", "2", "--connect-timeout", "90"], {}, 600_000)
      console.log(`compare.ts --runners (2 runners, 1 method): exit ${over.code} in ${over.seconds.toFixed(1)} s`)
      assert.strictEqual(over.code, 0, over.output.slice(-2000))
      assert.include(over.output, "jobs on 2 runner(s) of " + storage)
      const record = JSON.parse(fs.readFileSync(path.join(dir, "runners", "train", "rlhf-sharpening-image-s0", "run", "run.json"), "utf8"))
      assert.deepStrictEqual({ ...record.runners, addresses: [...record.runners.addresses].sort() }, { storage, count: 2, addresses: [a.address, b.address].sort() })
      // The same comparison on 3 worker threads (the runners' split): the same evaluations.
      const threads = yield* cli("compare.ts", [...args("threads"), "--threads", "3"], {}, 600_000)
      console.log(`compare.ts --threads 3: exit ${threads.code} in ${threads.seconds.toFixed(1)} s`)
      assert.strictEqual(threads.code, 0, threads.output.slice(-2000))
      const evals = fs.readdirSync(path.join(dir, "runners", "eval")).filter((f) => f.endsWith(".json")).sort()
      assert.includeMembers(evals, ["base.json", "rlhf-sharpening-image-s0.json"])
      assert.deepStrictEqual(fs.readdirSync(path.join(dir, "threads", "eval")).filter((f) => f.endsWith(".json")).sort(), evals)
      for (const f of evals) assert.strictEqual(fs.readFileSync(path.join(dir, "runners", "eval", f), "utf8"), fs.readFileSync(path.join(dir, "threads", "eval", f), "utf8"), f)
    }).pipe(Effect.scoped), 900_000)
})
