/**
 * Seconds per sharpening iteration of two source trees, alternating runs of
 * `bench/sharpen-threads.ts` in each (A, B, A, B, ...), so that the load of
 * a shared machine falls on both alike. For a change to the threads (the
 * job protocol against the hand-rolled pools it replaced, issue #22): check
 * out the tree before it, e.g. `git worktree add --detach /tmp/before
 * <commit>` with a symlink to this node_modules, and compare.
 *
 *   npx tsx bench/threads-ab.ts --a /tmp/before --b . --pairs 4
 *   npx tsx bench/threads-ab.ts --a /tmp/before --b . --write docs/performance.md   # into its threads-ab block
 *
 * Each run: `--threads` (default 2) threads, `--iterations` (default 3) of
 * the default RLHF run from the base model and the same seed, so every run
 * does the same work; a run's figure is the median of its iterations, a
 * tree's the median of its runs.
 */
import { NodeServices } from "@effect/platform-node"
import { Effect } from "effect"
import { spawnSync } from "node:child_process"
import * as os from "node:os"
import * as path from "node:path"
import * as Block from "./Block.ts"
import { cpus, median } from "./SharpenTiming.ts"

const args = process.argv.slice(2)
const flag = (name: string) => {
  const i = args.indexOf(`--${name}`)
  return i >= 0 ? args[i + 1] : undefined
}
const a = flag("a")
const b = flag("b") ?? "."
if (a === undefined) throw new Error("--a <tree> is required (the tree to compare against)")
const pairs = Number(flag("pairs") ?? 4)
const threads = Number(flag("threads") ?? 2)
const iterations = Number(flag("iterations") ?? 3)
const write = flag("write")

const commit = (tree: string) => {
  const r = spawnSync("git", ["-C", tree, "describe", "--always", "--dirty"], { encoding: "utf8" })
  return r.status === 0 ? r.stdout.trim() : "?"
}

/** One run of bench/sharpen-threads.ts in `tree`: its seconds per iteration. */
const runIn = (tree: string): Array<number> => {
  const r = spawnSync("npx", ["tsx", "bench/sharpen-threads.ts", "--threads", String(threads), "--iterations", String(iterations)], { cwd: tree, encoding: "utf8" })
  const line = r.stderr.split("\n").find((l) => l.endsWith("s per iteration"))
  if (r.status !== 0 || line === undefined) throw new Error(`the bench failed in ${tree} (status ${r.status}):\n${r.stderr.slice(-2000)}`)
  return line.replace("s per iteration", "").split(",").map((s) => Number(s.trim()))
}

const sides = [{ name: "A", tree: path.resolve(a) }, { name: "B", tree: path.resolve(b) }] as const
const rows: Array<{ side: string; run: number; seconds: Array<number>; load: number }> = []
const loadBefore = os.loadavg()[0]
for (let p = 1; p <= pairs; p++) {
  for (const side of sides) {
    process.stderr.write(`${side.name} run ${p} (${side.tree}) ...\n`)
    const seconds = runIn(side.tree)
    rows.push({ side: side.name, run: p, seconds, load: os.loadavg()[0] })
    process.stderr.write(`  ${seconds.map((s) => s.toFixed(1)).join(", ")} s per iteration\n`)
  }
}
const perTree = sides.map((side) => ({ ...side, median: median(rows.filter((r) => r.side === side.name).map((r) => median(r.seconds))) }))
const [before, after] = perTree
const report = [
  `Seconds per iteration of the default RLHF run (bench/sharpen-threads.ts: batch 8, n = m = 3, continuation, clip reward) on ${threads} threads, ${iterations} iteration(s) per run, ${pairs} alternating pairs of runs, ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC, ${cpus()}; 1-min load average ${loadBefore.toFixed(2)} before, ${os.loadavg()[0].toFixed(2)} after.`,
  "",
  `Command: \`npx tsx bench/threads-ab.ts ${args.join(" ")}\` (A: ${commit(before.tree)}, B: ${commit(after.tree)})`,
  "",
  "| run | A: s / iteration | A median | B: s / iteration | B median | load after B |",
  "|---|---|---|---|---|---|",
  ...Array.from({ length: pairs }, (_, k) => {
    const x = rows.find((r) => r.side === "A" && r.run === k + 1)!
    const y = rows.find((r) => r.side === "B" && r.run === k + 1)!
    const list = (s: Array<number>) => s.map((v) => v.toFixed(1)).join(", ")
    return `| ${k + 1} | ${list(x.seconds)} | ${median(x.seconds).toFixed(1)} | ${list(y.seconds)} | ${median(y.seconds).toFixed(1)} | ${y.load.toFixed(2)} |`
  }),
  "",
  `Median of the runs: A ${before.median.toFixed(2)} s, B ${after.median.toFixed(2)} s per iteration; B / A = ${(after.median / before.median).toFixed(3)}.`
].join("\n")
process.stdout.write(report + "\n")
if (write !== undefined) await Effect.runPromise(Block.write(write, "threads-ab", report).pipe(Effect.provide(NodeServices.layer)))
