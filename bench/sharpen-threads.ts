/**
 * Seconds per iteration of the default RLHF run (pipelines/rlhf.ts defaults:
 * models/shapeworld-base, the clip reward, batch 8, n = m = 3, every path
 * continued to t = 0) on 1 and on 2 threads, in one process, and the time
 * and NFE per second of each phase: generation (online samples, paths and
 * continuations: `GenerationPool`), reward (decode + clip, `TrajectoryScorer`)
 * and objective/update (`Objective.prepare` and the optimiser steps).
 * Each thread count runs the same iterations from the base model with the
 * same seed, so both do the same work (and end with the same weights).
 *
 *   npx tsx bench/sharpen-threads.ts                    # 3 iterations each, threads 1,2
 *   npx tsx bench/sharpen-threads.ts --iterations 1 --batch-size 2   # a quick check that it runs
 *   npx tsx bench/sharpen-threads.ts --threads 1,2,1,2  # alternate, medians per count
 */
import { Effect, Result } from "effect"
import * as SharpenConfig from "../src/sharpen/SharpenConfig.ts"
import * as Load from "./Load.ts"
import * as SharpenTiming from "./SharpenTiming.ts"

const args = process.argv.slice(2)
const flag = (name: string) => {
  const i = args.indexOf(`--${name}`)
  return i >= 0 ? args[i + 1] : undefined
}
const iterations = Number(flag("iterations") ?? 3)
const threadCounts = (flag("threads") ?? "1,2").split(",").map(Number)
const model = flag("model") ?? "models/shapeworld-base"
// Only to check quickly that the bench runs: the figures are of batch 8.
// The settings `pipelines/rlhf.ts` runs with no flags.
const rlhf = Result.getOrThrow(SharpenConfig.resolve("rlhf", []))
const batchSize = Number(flag("batch-size") ?? rlhf.batchSize)

interface Row extends SharpenTiming.Result {
  readonly threads: number
}

const run = (threads: number) =>
  Effect.map(
    SharpenTiming.run({ ...rlhf, iterations, batchSize, sampleEvery: 0 }, { model, threads, label: `sharpen-threads-${threads}` }),
    (r): Row => ({ threads, ...r })
  )

const main = Effect.gen(function*() {
  const load = Load.start(() => [])
  const results: Array<Row> = []
  for (const threads of threadCounts) {
    process.stderr.write(`${threads} thread(s): ${iterations} iteration(s) ...\n`)
    const r = yield* run(threads)
    process.stderr.write(`  ${r.secondsPerIteration.map((s) => s.toFixed(1)).join(", ")} s per iteration\n`)
    results.push(r)
  }
  const byCount = [...new Set(threadCounts)].map((threads) => ({
    threads,
    ...SharpenTiming.summarise(results.filter((r) => r.threads === threads))
  }))
  const rate = SharpenTiming.rate
  const lines = [
    `Default RLHF iteration (batch ${batchSize}, n = m = 3, continuation on a DDIM-${rlhf.inferenceSteps} grid, ${rlhf.stepsPerBatch} steps per batch, clip reward, ${model}), ${iterations} iteration(s) per run, backend wasm, ${SharpenTiming.cpus()}:`,
    "",
    "| threads | s / iteration (median) | generation | of which online samples | of which paths + continuation | reward | objective + update |",
    "|---|---|---|---|---|---|---|",
    ...byCount.map((c) =>
      `| ${c.threads} | ${c.perIteration.toFixed(1)} | ${rate(c.generation)} | ${rate(c.online)} | ${rate(c.paths)} | ${c.reward.s.toFixed(1)} s, ${(c.reward.calls / c.reward.s).toFixed(0)} calls/s | ${rate(c.objective)} |`
    )
  ]
  const one = byCount.find((c) => c.threads === 1)
  for (const c of byCount.filter((c) => c.threads > 1 && one !== undefined)) {
    lines.push("", `Speed-up on ${c.threads} threads: ${(one!.perIteration / c.perIteration).toFixed(2)}x per iteration, ${(one!.generation.s / one!.generation.nfe / (c.generation.s / c.generation.nfe)).toFixed(2)}x in generation.`)
  }
  lines.push(...SharpenTiming.loadLine(load))
  process.stdout.write(lines.join("\n") + "\n")
})

SharpenTiming.runMain(main)
