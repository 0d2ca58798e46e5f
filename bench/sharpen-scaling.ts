/**
 * How the time of one default RLHF iteration (pipelines/rlhf.ts defaults:
 * models/shapeworld-base, the clip reward, batch 8, DDIM-20 paths, every
 * path continued to t = 0, 4 optimiser steps per batch) grows with n (paths
 * per prompt, m at its default) and with m (scored steps per path, n at its
 * default). Every point is a fresh run from the base model with the same
 * seed on the same threads; a table per axis gives seconds per iteration,
 * the work (generation NFE, reward calls, objective NFE) and the seconds of
 * each phase per iteration, and the time relative to the default n = m = 3
 * (always measured, once, and shown on both axes).
 *
 * With continuation the paths run to t = 0 whatever m is: m only raises the
 * lowest start timestep (t - (m - 1) * stride >= 0, which with the start
 * range [200, 980] on the DDIM-20 grid bites from m = 6 on), and the
 * image-level objective and the "final" reward see the final images only, so
 * m should change little; n multiplies the paths and the reward calls.
 *
 *   npx tsx bench/sharpen-scaling.ts                     # n 2,3,4,8 and m 1,2,3,4,8; 2 iterations each
 *   npx tsx bench/sharpen-scaling.ts --iterations 1 --batch-size 2 --n 2,3 --m 1,3 --threads 1   # a quick check that it runs
 */
import { Effect, Result } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { defaultWorkers } from "../src/parallel/ParallelGenerate.ts"
import * as Weights from "../src/model/Weights.ts"
import * as SharpenConfig from "../src/sharpen/SharpenConfig.ts"
import * as Trajectory from "../src/trajectory/Trajectory.ts"
import * as Load from "./Load.ts"
import * as SharpenTiming from "./SharpenTiming.ts"

const args = process.argv.slice(2)
const flag = (name: string) => {
  const i = args.indexOf(`--${name}`)
  return i >= 0 ? args[i + 1] : undefined
}
const list = (name: string, fallback: string) => (flag(name) ?? fallback).split(",").map(Number)
const iterations = Number(flag("iterations") ?? 2)
const threads = Number(flag("threads") ?? defaultWorkers())
const model = flag("model") ?? "models/shapeworld-base"
// The settings `pipelines/rlhf.ts` runs with no flags.
const resolved = SharpenConfig.resolve("rlhf", [])
if (Result.isFailure(resolved)) throw new Error(resolved.failure.message)
const rlhf = resolved.success
// Only to check quickly that the bench runs: the figures are of batch 8.
const batchSize = Number(flag("batch-size") ?? rlhf.batchSize)
if (!Number.isInteger(threads) || threads < 1) throw new Error(`--threads must be an integer of at least 1, got ${flag("threads")}`)

// The default is on both axes, so every table has the row its ratios refer to.
const axis = (values: ReadonlyArray<number>, fallback: number) => [...new Set([...values, fallback])].sort((a, b) => a - b)
const ns = axis(list("n", "2,3,4,8"), rlhf.n)
const ms = axis(list("m", "1,2,3,4,8"), rlhf.m)

const decodedModel = Weights.decodeConfig(fs.readFileSync(path.join(model, Weights.CONFIG_FILE), "utf8"), path.join(model, Weights.CONFIG_FILE))
if (Result.isFailure(decodedModel)) throw new Error(decodedModel.failure.message)
const modelConfig = decodedModel.success

/**
 * A point's settings, checked before anything runs: the config's ranges
 * (n >= 2, 1 <= m <= 64, ...) and that the timestep range leaves a start
 * for all m steps on the grid (the generator would fail mid-bench).
 */
const configOf = (n: number, m: number): SharpenConfig.SharpenConfig => {
  const r = SharpenConfig.resolve("rlhf", [{ n, m, iterations, batchSize, sampleEvery: 0 }])
  if (Result.isFailure(r)) throw new Error(`n = ${n}, m = ${m}: ${r.failure.message}`)
  const c = r.success
  if (Trajectory.startTimesteps(modelConfig.schedule.trainSteps, c).length === 0) {
    const range = c.timestep.kind === "range" ? ` in [${c.timestep.min}, ${c.timestep.max}]` : ""
    throw new Error(`m = ${m}: no start timestep of the DDIM-${c.inferenceSteps} grid${range} leaves room for ${m} steps`)
  }
  return c
}

const key = (n: number, m: number) => `${n},${m}`
const points = [...new Map([[rlhf.n, rlhf.m], ...ns.map((n) => [n, rlhf.m]), ...ms.map((m) => [rlhf.n, m])].map(([n, m]) => [key(n, m), { n, m, config: configOf(n, m) }])).values()]

const main = Effect.gen(function*() {
  const load0 = os.loadavg()[0]
  const load = Load.start(() => [])
  const results = new Map<string, SharpenTiming.Result>()
  for (const p of points) {
    process.stderr.write(`n = ${p.n}, m = ${p.m}: ${iterations} iteration(s) on ${threads} thread(s) ...\n`)
    const r = yield* SharpenTiming.run(p.config, { model, threads, label: `sharpen-scaling-${p.n}-${p.m}` })
    process.stderr.write(`  ${r.secondsPerIteration.map((s) => s.toFixed(1)).join(", ")} s per iteration\n`)
    results.set(key(p.n, p.m), r)
  }
  const summary = (n: number, m: number) => SharpenTiming.summarise([results.get(key(n, m))!])
  const base = summary(rlhf.n, rlhf.m)
  const table = (name: "n" | "m", values: ReadonlyArray<number>, at: (v: number) => SharpenTiming.Summary) => [
    `| ${name} | s / iteration (median) | relative to n = m = ${rlhf.n === rlhf.m ? rlhf.n : `${rlhf.n}, ${rlhf.m}`} | generation NFE / iteration (online + paths) | reward calls / iteration | objective NFE / iteration | generation s / iteration | reward s / iteration | objective + update s / iteration |`,
    "|---|---|---|---|---|---|---|---|---|",
    ...values.map((v) => {
      const c = at(v)
      const per = (x: number) => x / c.iterations
      const isDefault = v === (name === "n" ? rlhf.n : rlhf.m)
      return `| ${v}${isDefault ? " (default)" : ""} | ${c.perIteration.toFixed(1)} | ${(c.perIteration / base.perIteration).toFixed(2)}x | ${per(c.generation.nfe).toFixed(0)} (${per(c.online.nfe).toFixed(0)} + ${per(c.paths.nfe).toFixed(0)}) | ${per(c.reward.calls).toFixed(0)} | ${per(c.objective.nfe).toFixed(0)} | ${per(c.generation.s).toFixed(1)} | ${per(c.reward.s).toFixed(2)} | ${per(c.objective.s).toFixed(1)} |`
    })
  ]
  const backend = [...new Set([...results.values()].map((r) => r.backend))].join(", ")
  const lines = [
    `Default RLHF iteration against n and m (batch ${batchSize}, continuation on a DDIM-${rlhf.inferenceSteps} grid, ${rlhf.stepsPerBatch} steps per batch, clip reward, ${model}), ${iterations} iteration(s) per point from seed ${rlhf.seed}, ${threads} thread(s), backend ${backend} (${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC, ${SharpenTiming.cpus()}; 1-min load average ${load0.toFixed(2)} before, ${os.loadavg()[0].toFixed(2)} after).`,
    "",
    `Command: \`npx tsx bench/sharpen-scaling.ts${args.length > 0 ? ` ${args.join(" ")}` : ""}\``,
    "",
    `Paths per prompt n (m = ${rlhf.m}):`,
    "",
    ...table("n", ns, (n) => summary(n, rlhf.m)),
    "",
    `Scored steps per path m (n = ${rlhf.n}):`,
    "",
    ...table("m", ms, (m) => summary(rlhf.n, m)),
    "",
    "Seconds and work per phase are means over a point's iterations; seconds per iteration are their median."
  ]
  lines.push(...SharpenTiming.loadLine(load))
  process.stdout.write(lines.join("\n") + "\n")
})

SharpenTiming.runMain(main)
