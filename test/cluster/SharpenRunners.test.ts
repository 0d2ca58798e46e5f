/**
 * A sharpening run over effect/cluster runners (#24 item 2): the wiring's
 * `jobs` (what `--runners` gives) in place of the worker threads, with 2
 * real runner processes on loopback and SQLite storage in a temp dir.
 */
import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Option } from "effect"
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { beforeAll } from "vitest"
import * as ClusterJobs from "../../src/cluster/ClusterJobs.ts"
import * as Setup from "../../src/cli/Setup.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import { Metrics } from "../../src/optim/Metrics.ts"
import { flatten } from "../../src/parallel/DataParallel.ts"
import { Reward } from "../../src/reward/Reward.ts"
import * as Sharpen from "../../src/sharpen/Sharpen.ts"
import * as SharpenLayers from "../../src/sharpen/SharpenLayers.ts"
import { Backend } from "../../src/tensor/Backend.ts"
import { savedTinyModel, smallConfig, tiny32, tmpDir } from "../sharpen-helpers.ts"
import { runner } from "./runners.ts"
import { maxAbsDiff, pretrain, storageIn } from "./scenarios.ts"

// A mock reward: mean brightness of the red channel (as test/parallel/SharpenThreads.test.ts).
const redness = Reward.fromFunction((image: Float32Array) => {
  let s = 0
  for (let k = 0; k < image.length; k += 3) s += image[k]
  return s / (image.length / 3)
}, { name: "redness", range: [0, 1] })

/** An RLHF (or SFT) run's metrics and final policy weights, on `threads` threads or with the given jobs layer. */
const run = (model: string, jobs: SharpenLayers.Wiring<never, never>["jobs"], config = smallConfig({ iterations: 2, batchSize: 3 }), threads = 1, algorithm: "rlhf" | "sft" = "rlhf") => {
  const wiring = { model, runDir: tmpDir("runners-run-"), reward: redness, backend: Backend.make("wasm"), metrics: Metrics.memory, threads, ...(jobs === undefined ? {} : { jobs }) }
  return Effect.gen(function*() {
    yield* algorithm === "sft" ? Sharpen.sft(config) : Sharpen.rlhf(config)
    const records = yield* (yield* Metrics).records
    return { records, weights: yield* flatten((yield* Denoiser.Denoiser).model.params) }
  }).pipe(Effect.provide(algorithm === "sft" ? SharpenLayers.sft(config, wiring) : SharpenLayers.rlhf(config, wiring)), Effect.scoped, Effect.provide(NodeServices.layer))
}

const root = path.resolve(import.meta.dirname, "../..")

/** `pipelines/rlhf.ts` with `args` and `env` added, its exit code and output; killed (SIGKILL) after `timeoutMs` or when the scope closes. */
const rlhfCli = (args: ReadonlyArray<string>, env: Record<string, string>, timeoutMs: number) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const { SHARPEN_CLUSTER_SECRET: _, ...base } = process.env
      const p = spawn(process.execPath, ["--import", "tsx", "pipelines/rlhf.ts", ...args], { cwd: root, env: { ...base, ...env, SHARPEN_CHILD: "1" }, stdio: ["ignore", "pipe", "pipe"] })
      let out = ""
      p.stdout!.on("data", (c: Buffer) => out += c.toString())
      p.stderr!.on("data", (c: Buffer) => out += c.toString())
      return { p, output: () => out }
    }),
    ({ p }) => Effect.sync(() => p.exitCode === null && p.signalCode === null && p.kill("SIGKILL"))
  ).pipe(Effect.flatMap(({ p, output }) =>
    Effect.callback<{ code: number | null; output: string }>((resume) => {
      const timer = setTimeout(() => p.kill("SIGKILL"), timeoutMs)
      const done = () => {
        clearTimeout(timer)
        resume(Effect.succeed({ code: p.exitCode, output: output() }))
      }
      if (p.exitCode !== null || p.signalCode !== null) return done()
      p.once("exit", done)
    })
  ))

describe("a sharpening run over effect/cluster runners (2 runner processes on loopback, SQLite storage)", () => {
  let model = ""
  beforeAll(async () => {
    // The trainer's secret is given per test, never taken from this process's environment.
    delete process.env.SHARPEN_CLUSTER_SECRET
    model = await savedTinyModel(3)
  })

  it.live("RLHF, 2 iterations, batch 3, with the wiring's jobs on 2 runners: one thread's metrics and weights (3 worker threads' exactly); another seed differs; the runners are named; SFT too; rlhf.ts with the runners in its config file (coordinating) finishes with them in run.json, the secret printed nowhere", () =>
    Effect.gen(function*() {
      const storage = storageIn("sharpen-runners-")
      // Runners that require the shared secret; the trainer takes it from SHARPEN_CLUSTER_SECRET, as the CLI does.
      const secret = "s3cret-" + Math.random().toString(36).slice(2)
      const [a, b] = yield* Effect.all([runner(storage, { SHARPEN_CLUSTER_SECRET: secret }), runner(storage, { SHARPEN_CLUSTER_SECRET: secret })], { concurrency: "unbounded" })
      process.env.SHARPEN_CLUSTER_SECRET = secret
      yield* Effect.addFinalizer(() => Effect.sync(() => delete process.env.SHARPEN_CLUSTER_SECRET))
      const one = yield* run(model, undefined)
      // What --runners sqlite:... --runner-count 2 builds (Setup.clusterJobs over ClusterJobs.layer).
      const options = yield* Setup.runnersOptions({ runners: Option.some(storage), runnerCount: Option.some(2), connectTimeout: Option.some(90), jobTimeout: Option.none() })
      const cluster = Setup.clusterJobs(options!)
      const start = Date.now()
      const three = yield* run(model, cluster.layer)
      console.log(`RLHF over 2 runners: ${((Date.now() - start) / 1000).toFixed(1)} s for 2 iterations (connect included)`)
      assert.deepStrictEqual([...(cluster.used()?.addresses ?? [])].sort(), [a.address, b.address].sort())
      assert.strictEqual(cluster.used()?.count, 2)
      assert.strictEqual(cluster.used()?.storage, storage)
      assert.strictEqual(three.records.length, 2)
      // The runners computed jobs (each said Hello and got weights).
      for (const r of [a, b]) assert.include(r.output(), "a trainer said Hello")
      // One thread's metrics at 1e-5. Iteration 2's gradient norm is the exception: it is taken
      // at weights one AdamW step moved, where summation-order noise in a near-zero gradient
      // element moves a weight by a fraction of lr; the batch split in 3 (this process and 2
      // runners) gives 1.2e-4 relative here, and so do 3 worker threads (compared below).
      for (const key of ["loss", "rewardMean", "rewardBest", "rewardWorst", "gradNorm", "nfe"] as const) {
        three.records.forEach((r, i) => {
          const tolerance = key === "gradNorm" && i > 0 ? 1e-3 : 1e-5
          assert.approximately(r[key], one.records[i][key], tolerance * (1 + Math.abs(one.records[i][key])), `${key} of iteration ${i + 1}`)
        })
      }
      // The same split on 3 worker threads of this process: the same metrics and weights (measured: equal bit for bit).
      const threads = yield* run(model, undefined, smallConfig({ iterations: 2, batchSize: 3 }), 3)
      for (const key of ["loss", "rewardMean", "rewardBest", "rewardWorst", "gradNorm", "nfe"] as const) {
        three.records.forEach((r, i) => assert.approximately(r[key], threads.records[i][key], 1e-6 * (1 + Math.abs(threads.records[i][key])), `${key} of iteration ${i + 1} against 3 threads`))
      }
      assert.isBelow(maxAbsDiff(three.weights, threads.weights), 1e-6)
      // As SharpenThreads: AdamW's summation-order noise reaches the weights at a fraction of lr.
      const lr = smallConfig().lr
      const diff = maxAbsDiff(three.weights, one.weights)
      console.log(`max |weights over runners - one thread| = ${diff.toExponential(2)} (lr ${lr})`)
      assert.isBelow(diff, 0.05 * lr)
      // The comparison can fail: a run of another seed over the runners ends elsewhere.
      const other = yield* run(model, ClusterJobs.layer({ storage, runners: 2, connectTimeout: "90 seconds" }), smallConfig({ iterations: 2, batchSize: 3, seed: 1 }))
      assert.isAbove(maxAbsDiff(other.weights, one.weights), lr)

      // SFT (what sft.ts --runners builds): the same tolerances against one thread.
      const sftOne = yield* run(model, undefined, smallConfig({ iterations: 2, batchSize: 3 }), 1, "sft")
      const sftOver = yield* run(model, ClusterJobs.layer({ storage, runners: 2, connectTimeout: "90 seconds" }), smallConfig({ iterations: 2, batchSize: 3 }), 1, "sft")
      for (const key of ["loss", "rewardMean", "rewardBest", "gradNorm", "nfe"] as const) {
        sftOver.records.forEach((r, i) => {
          const tolerance = key === "gradNorm" && i > 0 ? 1e-3 : 1e-5
          assert.approximately(r[key], sftOne.records[i][key], tolerance * (1 + Math.abs(sftOne.records[i][key])), `SFT ${key} of iteration ${i + 1}`)
        })
      }
      console.log(`SFT over 2 runners: max |weights - one thread's| = ${maxAbsDiff(sftOver.weights, sftOne.weights).toExponential(2)}`)
      assert.isBelow(maxAbsDiff(sftOver.weights, sftOne.weights), 0.05 * lr)

      // The command line: rlhf.ts with the runners in its config file (storage, count, and
      // "coordinate": this process computes no share) finishes, run.json names the runners, and
      // the secret is printed nowhere.
      const dir = tmpDir("runners-cli-")
      const out = path.join(dir, "out")
      const config = path.join(dir, "config.json")
      fs.writeFileSync(config, JSON.stringify({ run: { runners: storage, runnerCount: 2, coordinate: true } }))
      const cli = yield* rlhfCli(
        ["--model", model, "--config", config, "--connect-timeout", "90", "--iterations", "1", "--batch-size", "2", "--eval-prompts", "2", "--eval-steps", "2", "--backend", "wasm", "--out", out],
        { SHARPEN_CLUSTER_SECRET: secret },
        300_000
      )
      assert.strictEqual(cli.code, 0, cli.output.slice(-2000))
      assert.include(cli.output, `jobs on 2 runner(s) of ${storage} (this process coordinates)`)
      const record = JSON.parse(fs.readFileSync(path.join(out, "run", "run.json"), "utf8"))
      assert.deepStrictEqual({ ...record.runners, addresses: [...record.runners.addresses].sort() }, { storage, count: 2, addresses: [a.address, b.address].sort(), coordinate: true })
      // A coordinate entry that is not a boolean is refused, naming the field.
      fs.writeFileSync(config, JSON.stringify({ run: { runners: storage, coordinate: "yes" } }))
      const bad = yield* rlhfCli(["--model", model, "--config", config, "--out", path.join(dir, "bad")], {}, 120_000)
      assert.notStrictEqual(bad.code, 0)
      assert.include(bad.output, "run.coordinate")
      assert.include(bad.output, "coordinate is true or false")
      for (const text of [cli.output, a.output(), b.output(), fs.readFileSync(path.join(out, "run", "run.json"), "utf8")]) assert.notInclude(text, secret)
    }).pipe(Effect.scoped), 600_000)

  it.live("pretraining's gradient shards over 2 runners (what pretrain.ts --runners builds): one thread's losses, 3 worker threads' losses and weights", () =>
    Effect.gen(function*() {
      const storage = storageIn("pretrain-runners-")
      const [a, b] = yield* Effect.all([runner(storage), runner(storage)], { concurrency: "unbounded" })
      const one = yield* pretrain(1)
      const threads = yield* pretrain(3)
      const none = Option.none()
      const options = yield* Setup.runnersOptions({ runners: Option.some(storage), runnerCount: Option.some(2), connectTimeout: Option.some(90), jobTimeout: none })
      const cluster = Setup.clusterTransport(tiny32, options!)
      const over = yield* pretrain(1).pipe(Effect.provide(cluster.layer))
      assert.deepStrictEqual([...(cluster.used()?.addresses ?? [])].sort(), [a.address, b.address].sort())
      assert.strictEqual(over.workers, "3")
      assert.strictEqual(over.losses.length, 3)
      // As test/train/Pretrain.test.ts: the losses of one thread up to float summation order.
      one.losses.forEach((l, i) => assert.approximately(over.losses[i], l, 1e-4 * Math.abs(l), `step ${i + 1}`))
      assert.notStrictEqual(one.losses[1], one.losses[0])
      // The same split on 3 worker threads: the same losses and weights.
      threads.losses.forEach((l, i) => assert.approximately(over.losses[i], l, 1e-6 * Math.abs(l), `step ${i + 1} against 3 threads`))
      const diff = maxAbsDiff(over.weights, threads.weights)
      console.log(`pretraining over 2 runners: max |weights - 3 threads'| = ${diff.toExponential(2)}, - one thread's = ${maxAbsDiff(over.weights, one.weights).toExponential(2)}`)
      assert.isBelow(diff, 1e-6)
      for (const r of [a, b]) assert.include(r.output(), "a trainer said Hello")
    }).pipe(Effect.scoped), 300_000)

  it.live("rlhf.ts takes the runners from a config file's run entry (checked; the URL's password never printed)", () =>
    Effect.gen(function*() {
      const dir = tmpDir("runners-config-")
      const config = (run: Record<string, unknown>) => {
        const file = path.join(dir, `config-${Math.random().toString(36).slice(2)}.json`)
        fs.writeFileSync(file, JSON.stringify({ run: { iterations: 1, ...run } }))
        return file
      }
      const args = (file: string) => ["--config", file, "--connect-timeout", "2", "--backend", "wasm", "--out", path.join(dir, "out")]
      // The entry is used: no runner in its storage, so ClusterUnavailable naming it.
      const storage = storageIn("runners-config-none-")
      const none = yield* rlhfCli(args(config({ runners: storage })), {}, 120_000)
      assert.strictEqual(none.code, 1, none.output.slice(-1000))
      assert.include(none.output, `ClusterUnavailable: runner storage ${storage}: 0 of 1 runner(s) up within 2s`)
      const other = yield* rlhfCli(args(config({ runners: "mysql://u:hunter2@h/db", runnerCount: 2 })), {}, 120_000)
      assert.strictEqual(other.code, 1)
      assert.include(other.output, "StorageUnsupported")
      assert.notInclude(other.output, "hunter2")
      const zero = yield* rlhfCli(args(config({ runners: storage, runnerCount: 0 })), {}, 120_000)
      assert.strictEqual(zero.code, 1)
      assert.include(zero.output, "run.runnerCount")
    }).pipe(Effect.scoped), 400_000)

  it.live("a runner storage that cannot be used (no PostgreSQL server there) is ClusterUnavailable naming it, the password masked", () =>
    Effect.gen(function*() {
      const url = "postgres://sharpen:hunter2@127.0.0.1:1/sharpen"
      const options = { storage: url, connectTimeout: "5 seconds" as const }
      for (const layer of [ClusterJobs.layer(options).pipe(Layer.provide(Layer.succeed(Denoiser.Denoiser, Denoiser.Denoiser.of({ model: {} as never })))), ClusterJobs.transportLayer(tiny32, options)]) {
        const e = yield* Effect.flip(Layer.build(layer).pipe(Effect.scoped, Effect.timeout("60 seconds")))
        assert.strictEqual(e._tag, "ClusterUnavailable", String(e))
        if (e._tag === "ClusterUnavailable") {
          assert.strictEqual(e.storage, "postgres://sharpen:***@127.0.0.1:1/sharpen")
          assert.include(e.message, "could not be used")
          assert.notInclude(JSON.stringify(e) + e.message, "hunter2")
        }
      }
    }), 120_000)

  it.effect("--runners options: a URL of another form is refused before anything starts, the password masked", () =>
    Effect.gen(function*() {
      const none = Option.none()
      const bad = yield* Effect.flip(Setup.runnersOptions({ runners: Option.some("mysql://u:hunter2@h/db"), runnerCount: none, connectTimeout: none, jobTimeout: none }))
      assert.strictEqual(bad._tag, "StorageUnsupported")
      assert.notInclude(JSON.stringify(bad), "hunter2")
      assert.isUndefined(yield* Setup.runnersOptions({ runners: none, runnerCount: none, connectTimeout: none, jobTimeout: none }))
      // From a config file's run entries, the flags first.
      const fromFile = yield* Setup.runnersOptions({ runners: none, runnerCount: none, connectTimeout: none, jobTimeout: none }, { runners: "sqlite:/tmp/x.db", runnerCount: 3 })
      assert.deepStrictEqual([fromFile?.storage, fromFile?.runners], ["sqlite:/tmp/x.db", 3])
      const zero = yield* Effect.flip(Setup.runnersOptions({ runners: Option.some("sqlite:/tmp/x.db"), runnerCount: Option.some(0), connectTimeout: none, jobTimeout: none }))
      assert.include(zero.message, "--runner-count")
    }))
})
