/**
 * Ctrl-C on a trainer over runners (#24 item 3): `pipelines/rlhf.ts
 * --runners` as a child process over 2 real runner processes on loopback
 * (SQLite storage in a temp dir), SIGINT while an iteration's online
 * samples are on the runners. The runners' jobs stop within 5 s, the
 * trainer exits with its checkpoint, and `--resume` over the same runners
 * ends with an uninterrupted run's weights and metrics, bit for bit.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { beforeAll } from "vitest"
import { savedTinyModel, tmpDir } from "../sharpen-helpers.ts"
import { runner } from "./runners.ts"
import { storageIn } from "./scenarios.ts"

const root = path.resolve(import.meta.dirname, "../..")

/** `pipelines/rlhf.ts` (or `script`) with `args` as a child process, its output gathered; killed (SIGKILL) when the scope closes. */
const rlhf = (args: ReadonlyArray<string>, script = "rlhf.ts") =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const { SHARPEN_CLUSTER_SECRET: _, ...env } = process.env
      const p = spawn(process.execPath, ["--import", "tsx", `pipelines/${script}`, ...args], { cwd: root, env: { ...env, SHARPEN_CHILD: "1" }, stdio: ["ignore", "pipe", "pipe"] })
      let out = ""
      p.stdout!.on("data", (c: Buffer) => out += c.toString())
      p.stderr!.on("data", (c: Buffer) => out += c.toString())
      return { p, output: () => out }
    }),
    ({ p }) => Effect.sync(() => p.exitCode === null && p.signalCode === null && p.kill("SIGKILL"))
  )

/** The exit code of `p` (null when killed by a signal), or "timeout" after `ms`. */
const exitOf = (p: ChildProcess, ms: number) =>
  Effect.callback<number | null | "timeout">((resume) => {
    if (p.exitCode !== null || p.signalCode !== null) return resume(Effect.succeed(p.exitCode))
    const timer = setTimeout(() => resume(Effect.succeed("timeout")), ms)
    p.once("exit", (code) => {
      clearTimeout(timer)
      resume(Effect.succeed(code))
    })
  })

/** Wait until `ready()` (polled every 200 ms), at most `ms`; whether it became true. */
const until = (ready: () => boolean, ms: number) =>
  Effect.gen(function*() {
    const deadline = Date.now() + ms
    while (!ready()) {
      if (Date.now() > deadline) return false
      yield* Effect.sleep("200 millis")
    }
    return true
  })

const lines = (file: string) => (fs.existsSync(file) ? fs.readFileSync(file, "utf8").split("\n").filter((l) => l !== "") : [])

/** metrics.jsonl without the wall times (the one field a resume may change). */
const metricsOf = (out: string) =>
  lines(path.join(out, "run", "metrics.jsonl")).map((l) => {
    const { wallMs: _, ...rest } = JSON.parse(l)
    return JSON.stringify(rest)
  })

/** A runner's "job ... interrupted" lines: the job and when it stopped (ms since the epoch). */
const interruptions = (output: string) =>
  [...output.matchAll(/job (\w+) interrupted: stopped ([\d.]+) s into it, at most ([\d.]+) s after the interrupt arrived \(its longest step\), at (\S+)\n/g)]
    .map((m) => ({ job: m[1], into: Number(m[2]), longest: Number(m[3]), at: Date.parse(m[4]) }))

describe("Ctrl-C on rlhf.ts over 2 runner processes (loopback, SQLite storage)", () => {
  let model = ""
  beforeAll(async () => {
    delete process.env.SHARPEN_CLUSTER_SECRET
    model = await savedTinyModel(3)
  })

  it.live("SIGINT during an iteration's online samples: each runner's job stops within 5 s, the trainer exits (130) with its checkpoint, and --resume over the runners ends bit for bit as an uninterrupted run", () =>
    Effect.gen(function*() {
      const storage = storageIn("interrupt-runners-")
      const [a, b] = yield* Effect.all([runner(storage), runner(storage)], { concurrency: "unbounded" })
      const dir = tmpDir("interrupt-")
      // 150 DDIM steps of online samples: each runner's Sample job (one prompt of 3) takes some
      // 10-20 s on this loaded 2-core host, a step some 0.1 s.
      const args = (out: string) => [
        "--model", model, "--runners", storage, "--runner-count", "2", "--connect-timeout", "90",
        "--iterations", "3", "--batch-size", "3", "--online-steps", "150", "--checkpoint-every", "1",
        "--eval-prompts", "2", "--eval-steps", "2", "--backend", "wasm", "--out", out
      ]

      // The uninterrupted run over the runners (the same split: this process and 2 runners).
      const whole = path.join(dir, "whole")
      const reference = yield* rlhf(args(whole))
      const wholeExit = yield* exitOf(reference.p, 900_000)
      assert.strictEqual(wholeExit, 0, reference.output().slice(-2000))

      // The same run, interrupted once iteration 1 is done and iteration 2's online samples are out.
      const cut = path.join(dir, "cut")
      const interrupted = yield* rlhf(args(cut))
      const metrics = path.join(cut, "run", "metrics.jsonl")
      assert.isTrue(yield* until(() => lines(metrics).length >= 1, 600_000), `iteration 1 did not end: ${interrupted.output().slice(-2000)}`)
      yield* Effect.sleep("2 seconds")
      const before = [a, b].map((r) => interruptions(r.output()).length)
      const sigint = Date.now()
      interrupted.p.kill("SIGINT")
      const code = yield* exitOf(interrupted.p, 120_000)
      const exitedAfter = (Date.now() - sigint) / 1000
      assert.strictEqual(code, 130, `the trainer's exit after SIGINT: ${interrupted.output().slice(-2000)}`)
      assert.notInclude(interrupted.output(), "error:")
      // Each runner's job stopped within 5 s of the SIGINT (the runners print when, to the ms).
      yield* until(() => [a, b].every((r, k) => interruptions(r.output()).length > before[k]), 10_000)
      for (const [k, r] of [a, b].entries()) {
        const stops = interruptions(r.output()).slice(before[k])
        assert.isAbove(stops.length, 0, `runner ${r.address} reported no interrupted job: ${r.output().slice(-1500)}`)
        for (const s of stops) {
          const after = (s.at - sigint) / 1000
          console.log(`runner ${r.address}: job ${s.job} stopped ${after.toFixed(2)} s after the SIGINT (${s.into.toFixed(2)} s into it; longest step ${s.longest.toFixed(2)} s)`)
          assert.isAtLeast(after, 0)
          assert.isBelow(after, 5, `runner ${r.address}'s job ${s.job} stopped ${after.toFixed(2)} s after the SIGINT`)
        }
      }
      console.log(`the trainer exited ${exitedAfter.toFixed(2)} s after the SIGINT`)
      // Iteration 2 was abandoned; iteration 1's checkpoint is the latest, whole.
      assert.strictEqual(lines(metrics).length, 1)
      assert.strictEqual(fs.readFileSync(path.join(cut, "run", "LATEST"), "utf8").trim(), "ckpt-0000001")
      for (const f of ["state.json", "policy.safetensors", "optimizer.safetensors"]) assert.isTrue(fs.existsSync(path.join(cut, "run", "ckpt-0000001", f)), f)

      // --resume over the same runners (each served an interrupted job last): it finishes with
      // the uninterrupted run's weights, checkpoint and metrics, bit for bit.
      const resumed = yield* rlhf([...args(cut), "--resume"])
      const resumedExit = yield* exitOf(resumed.p, 900_000)
      assert.strictEqual(resumedExit, 0, resumed.output().slice(-2000))
      assert.include(resumed.output(), "at iteration 1")
      for (const f of ["model/model.safetensors", "run/ckpt-0000003/policy.safetensors", "run/ckpt-0000003/optimizer.safetensors"]) {
        assert.isTrue(fs.readFileSync(path.join(cut, f)).equals(fs.readFileSync(path.join(whole, f))), `${f} differs from the uninterrupted run's`)
      }
      assert.deepStrictEqual(metricsOf(cut), metricsOf(whole))
      assert.strictEqual(metricsOf(whole).length, 3)
      const rng = (out: string) => JSON.parse(fs.readFileSync(path.join(out, "run", "ckpt-0000003", "state.json"), "utf8")).rng
      assert.deepStrictEqual(rng(cut), rng(whole))
    }).pipe(Effect.scoped), 2_400_000)

  it.live("SIGINT during evaluate.ts --runners --coordinate: each runner's Images job stops within 5 s (the sampler's steps), and evaluate.ts exits (130) writing no report", () =>
    Effect.gen(function*() {
      const storage = storageIn("interrupt-images-")
      const [a, b] = yield* Effect.all([runner(storage), runner(storage)], { concurrency: "unbounded" })
      const dir = tmpDir("interrupt-images-")
      // 8 prompts in sampler batches of 4, one Images job per runner a round; 1000 DDIM steps make
      // each job long, and a small batch each step short.
      const prompts = path.join(dir, "prompts.txt")
      fs.writeFileSync(prompts, fs.readFileSync(path.join(root, "data/eval/prompts-seen.txt"), "utf8").split("\n").slice(0, 8).join("\n") + "\n")
      const json = path.join(dir, "report.json")
      const evaluation = yield* rlhf([
        "--model", model, "--prompts", prompts, "--steps", "1000", "--batch-size", "4", "--runners", storage, "--runner-count", "2", "--coordinate",
        "--connect-timeout", "90", "--backend", "wasm", "--json", json
      ], "evaluate.ts")
      assert.isTrue(yield* until(() => evaluation.output().includes("jobs on 2 runner(s)"), 120_000), evaluation.output().slice(-2000))
      // The clip model loads, then the jobs go out; each runs for tens of seconds.
      yield* Effect.sleep("10 seconds")
      const sigint = Date.now()
      evaluation.p.kill("SIGINT")
      const code = yield* exitOf(evaluation.p, 120_000)
      assert.strictEqual(code, 130, `evaluate.ts's exit after SIGINT: ${evaluation.output().slice(-2000)}`)
      yield* until(() => [a, b].every((r) => interruptions(r.output()).length > 0), 10_000)
      for (const r of [a, b]) {
        const stops = interruptions(r.output())
        assert.isAbove(stops.length, 0, `runner ${r.address} reported no interrupted job: ${r.output().slice(-1500)}; evaluate.ts: ${evaluation.output().slice(-1500)}`)
        for (const s of stops) {
          const after = (s.at - sigint) / 1000
          console.log(`runner ${r.address}: job ${s.job} stopped ${after.toFixed(2)} s after the SIGINT (${s.into.toFixed(2)} s into it; longest step ${s.longest.toFixed(2)} s)`)
          assert.strictEqual(s.job, "Images")
          assert.isBelow(after, 5, `runner ${r.address}'s job stopped ${after.toFixed(2)} s after the SIGINT`)
        }
      }
      assert.isFalse(fs.existsSync(json))
    }).pipe(Effect.scoped), 600_000)
})
