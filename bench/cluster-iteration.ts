/**
 * Seconds per iteration of the default RLHF run (`pipelines/rlhf.ts`,
 * models/shapeworld-base, wasm) over runners against worker threads, with
 * the bytes moved per iteration (issue #24 item 5):
 *
 * - "2 threads": one process on cores 0-1, `--threads 2`;
 * - "trainer + 1 runner": the trainer pinned to core 0, one runner process
 *   (`pipelines/runner.ts`, SQLite storage in a temp dir) pinned to core 1.
 *   The trainer computes one share itself, so this is the same split into 2
 *   shards, over a socket instead of a worker thread;
 * - with `--runners 2` in place of the above, "trainer + 2 runners": 3
 *   shards on the 2 cores (runners on cores 0 and 1 beside the trainer);
 * - with `--runners 2 --coordinate`, "coordinating trainer + 2 runners":
 *   the trainer computes no share (`--coordinate`), so the batch is split
 *   into 2 shards, one per runner (cores 0 and 1, the trainer on core 0
 *   for its serial part);
 * - with `--one-thread`, also "1 thread" (core 0): the serial and parallel
 *   parts of an iteration for scripts/cluster-model.ts.
 *
 * Runs alternate (threads, runners, threads, ...) so that a shared
 * machine's load falls on both alike. The figure of a run is the median of
 * its iterations after the first (the first sends the weights and warms
 * the kernels); beside the ratio of the medians it prints each pair's
 * ratio (runners / threads, run back to back) and their geometric mean,
 * steadier where the machine's speed drifts between pairs. Bytes: what the runner processes read and wrote
 * (`/proc/PID/io` rchar + wchar, sockets and the SQLite storage) between
 * the ends of iterations, minus the same runners' idle rate measured before
 * (storage heartbeats). Linux only (taskset, /proc).
 *
 *   npx tsx bench/cluster-iteration.ts [--iterations 4] [--pairs 2] [--runners 1] [--coordinate] [--one-thread] [--write docs/scaling.md]
 */
import { NodeServices } from "@effect/platform-node"
import { Effect } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as Block from "./Block.ts"
import { median } from "./SharpenTiming.ts"

const args = process.argv.slice(2)
const flag = (name: string) => {
  const i = args.indexOf(`--${name}`)
  return i >= 0 ? args[i + 1] : undefined
}
const iterations = Number(flag("iterations") ?? 4)
const pairs = Number(flag("pairs") ?? 2)
const runnerCount = Number(flag("runners") ?? 1)
const write = flag("write")
const oneThread = args.includes("--one-thread")
const coordinate = args.includes("--coordinate")
const root = path.resolve(import.meta.dirname, "..")
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "cluster-iteration-"))
const storage = `sqlite:${path.join(tmp, "runners.db")}`
const tsx = ["--import", "tsx"]
// Small before/after evaluation: only the iterations are timed.
const common = ["pipelines/rlhf.ts", "--iterations", String(iterations), "--eval-prompts", "2", "--eval-steps", "2", "--checkpoint-every", "1000", "--seed", "0"]

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** rchar + wchar of a process (every read and write syscall: sockets and files). */
const ioBytes = (pid: number): number => {
  const text = fs.readFileSync(`/proc/${pid}/io`, "utf8")
  const field = (name: string) => Number(new RegExp(`^${name}: (\\d+)$`, "m").exec(text)![1])
  return field("rchar") + field("wchar")
}

interface Runner {
  readonly child: ChildProcess
  readonly pid: number
  readonly address: string
}

const startRunner = (core: number): Promise<Runner> =>
  new Promise((resolve, reject) => {
    const child = spawn("taskset", ["-c", String(core), process.execPath, ...tsx, "pipelines/runner.ts", "--listen", "127.0.0.1:0", "--runners", storage, "--backend", "wasm"], {
      cwd: root,
      env: { ...process.env, SHARPEN_CHILD: "1" },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let out = ""
    const timer = setTimeout(() => reject(new Error(`runner: no address within 180 s: ${out.slice(-500)}`)), 180_000)
    const read = (chunk: Buffer) => {
      out += chunk.toString()
      const m = /runner listening on (\S+);.* pid (\d+)/.exec(out)
      if (m !== null) {
        clearTimeout(timer)
        resolve({ child, pid: Number(m[2]), address: m[1] })
      }
    }
    child.stdout!.on("data", read)
    child.stderr!.on("data", read)
    child.once("exit", (code) => reject(new Error(`runner exited (${code}): ${out.slice(-500)}`)))
  })

interface Run {
  readonly name: string
  readonly seconds: Array<number>
  readonly losses: Array<number>
  /** Bytes the runners moved per iteration (after the first); empty for threads. */
  readonly bytes: Array<number>
  readonly load: number
}

/** One rlhf.ts run under `taskset -c cores`; the runners' io sampled at each iteration's end. */
const run = async (name: string, cores: string, extra: Array<string>, runners: ReadonlyArray<Runner>, idleRate: number): Promise<Run> => {
  const out = path.join(tmp, `${name.replace(/\W+/g, "-")}-${Date.now()}`)
  const child = spawn("taskset", ["-c", cores, process.execPath, ...tsx, ...common, ...extra, "--out", out], { cwd: root, env: { ...process.env, SHARPEN_CHILD: "1" }, stdio: ["ignore", "ignore", "pipe"] })
  let err = ""
  child.stderr!.on("data", (c: Buffer) => (err = (err + c.toString()).slice(-4000)))
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)))
  const marks: Array<{ at: number; bytes: number }> = []
  const metrics = path.join(out, "run", "metrics.jsonl")
  let done = false
  void exited.then(() => (done = true))
  while (!done) {
    const lines = fs.existsSync(metrics) ? fs.readFileSync(metrics, "utf8").split("\n").filter((l) => l !== "").length : 0
    if (lines > marks.length) marks.push({ at: performance.now(), bytes: runners.reduce((a, r) => a + ioBytes(r.pid), 0) })
    await sleep(100)
  }
  if ((await exited) !== 0) throw new Error(`${name}: rlhf.ts failed:\n${err}`)
  const records = fs.readFileSync(metrics, "utf8").split("\n").filter((l) => l !== "").map((l) => JSON.parse(l) as { wallMs: number; loss: number })
  const bytes = runners.length === 0 ? [] : marks.slice(1).map((m, i) => m.bytes - marks[i].bytes - idleRate * (m.at - marks[i].at) / 1000)
  return { name, seconds: records.slice(1).map((r) => r.wallMs / 1000), losses: records.map((r) => r.loss), bytes, load: os.loadavg()[0] }
}

const main = async () => {
  const runners: Array<Runner> = []
  try {
    for (let k = 0; k < runnerCount; k++) runners.push(await startRunner(runnerCount === 1 ? 1 : k % 2))
    // The runners' idle io (storage heartbeats), to subtract.
    const before = runners.reduce((a, r) => a + ioBytes(r.pid), 0)
    const t0 = performance.now()
    await sleep(10_000)
    const idleRate = (runners.reduce((a, r) => a + ioBytes(r.pid), 0) - before) / ((performance.now() - t0) / 1000)
    const label = `${coordinate ? "coordinating trainer" : "trainer"} + ${runnerCount} runner${runnerCount === 1 ? "" : "s"}`
    const rows: Array<Run> = []
    for (let p = 1; p <= pairs; p++) {
      for (const side of [
        ...(oneThread ? [{ name: "1 thread", cores: "0", extra: ["--threads", "1"], with: [] as Array<Runner> }] : []),
        { name: "2 threads", cores: "0,1", extra: ["--threads", "2"], with: [] as Array<Runner> },
        { name: label, cores: "0", extra: ["--runners", storage, "--runner-count", String(runnerCount), ...(coordinate ? ["--coordinate"] : [])], with: runners }
      ]) {
        process.stderr.write(`${side.name}, run ${p} ...\n`)
        const r = await run(side.name, side.cores, side.extra, side.with, idleRate)
        rows.push(r)
        process.stderr.write(`  ${r.seconds.map((s) => s.toFixed(1)).join(", ")} s per iteration${r.bytes.length > 0 ? `; ${r.bytes.map((b) => (b / 2 ** 20).toFixed(2)).join(", ")} MiB per iteration` : ""}\n`)
      }
    }
    // The same split gives the same losses up to float summation order.
    const reference = rows[0].losses
    const drift = Math.max(...rows.flatMap((r) => r.losses.map((l, i) => Math.abs(l - reference[i]) / Math.max(1e-12, Math.abs(reference[i])))))
    const of = (name: string) => median(rows.filter((r) => r.name === name).map((r) => median(r.seconds)))
    const threads = of("2 threads")
    const cluster = of(label)
    const bytes = rows.flatMap((r) => r.bytes)
    const runsOf = (name: string) => rows.filter((r) => r.name === name).map((r) => median(r.seconds).toFixed(1)).join(", ")
    // Paired by run: each pair ran back to back, so a drift of the machine's speed falls on both.
    const runsOfPair = (name: string) => rows.filter((r) => r.name === name).map((r) => median(r.seconds))
    const threadRuns = runsOfPair("2 threads")
    const ratios = runsOfPair(label).map((s, p) => s / threadRuns[p])
    const geometric = Math.exp(ratios.reduce((a, r) => a + Math.log(r), 0) / ratios.length)
    const lines = [
      `Generated by \`npx tsx bench/cluster-iteration.ts --iterations ${iterations} --pairs ${pairs} --runners ${runnerCount}${coordinate ? " --coordinate" : ""}${oneThread ? " --one-thread" : ""}\` on ${os.availableParallelism()} cores (${os.cpus()[0]?.model ?? "?"}), 1-min load average ${rows.map((r) => r.load.toFixed(1)).join(", ")} at the end of each run.`,
      `Default RLHF run (models/shapeworld-base, wasm, batch 8, n 3, DDIM 20, 4 steps per batch), ${iterations} iterations per run, ${pairs} run(s) of each, alternating; a run's figure is the median of its iterations after the first.`,
      "",
      "| transport | s per iteration (median of runs) | runs (median of each) | runner bytes per iteration (median) |",
      "|---|---|---|---|",
      ...(oneThread ? [`| 1 thread (core 0) | ${of("1 thread").toFixed(1)} | ${runsOf("1 thread")} | |`] : []),
      `| 2 threads (one process, cores 0-1) | ${threads.toFixed(1)} | ${runsOf("2 threads")} | |`,
      `| ${label} (trainer on core 0${runnerCount === 1 ? ", runner on core 1" : ", runners on cores 0 and 1"}) | ${cluster.toFixed(1)} | ${runsOf(label)} | ${bytes.length === 0 ? "" : `${(median(bytes) / 2 ** 20).toFixed(2)} MiB (${bytes.map((b) => (b / 2 ** 20).toFixed(2)).join(", ")})`} |`,
      "",
      `Runners against threads: ${((cluster / threads - 1) * 100).toFixed(1)}% (${cluster > threads ? "slower" : "faster"}); paired by run, ${ratios.map((r) => `${((r - 1) * 100).toFixed(1)}%`).join(", ")} (geometric mean ${((geometric - 1) * 100).toFixed(1)}%); losses of every run within ${drift.toExponential(1)} relative of the first run's; runners' idle io ${(idleRate / 1024).toFixed(1)} KiB/s (subtracted).`
    ]
    console.log(lines.join("\n"))
    if (write !== undefined) await Effect.runPromise(Block.write(write, `cluster-iteration-${runnerCount}${coordinate ? "-coordinate" : ""}${oneThread ? "-one" : ""}`, lines.join("\n")).pipe(Effect.provide(NodeServices.layer)))
  } finally {
    for (const r of runners) r.child.kill("SIGTERM")
  }
}

main().then(() => process.exit(0), (e) => {
  console.error(e)
  process.exit(1)
})
