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
import { NodeServices } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Objective } from "../src/objective/Objective.ts"
import { Optimizer } from "../src/optim/Optimizer.ts"
import { Metrics } from "../src/pipeline/Metrics.ts"
import * as Sharpen from "../src/pipeline/Sharpen.ts"
import * as SharpenConfig from "../src/pipeline/SharpenConfig.ts"
import * as SharpenLayers from "../src/pipeline/SharpenLayers.ts"
import { BatchSource } from "../src/pipeline/Sources.ts"
import * as Registry from "../src/reward/Registry.ts"
import { Backend } from "../src/tensor/Backend.ts"
import { TrajectoryGenerator } from "../src/trajectory/TrajectoryGenerator.ts"
import { TrajectoryScorer } from "../src/trajectory/TrajectoryScorer.ts"
import * as Load from "./Load.ts"

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
const rlhf = SharpenConfig.resolve("rlhf", [])
if (rlhf instanceof SharpenConfig.ConfigError) throw new Error(rlhf.message)
const batchSize = Number(flag("batch-size") ?? rlhf.batchSize)

type Phase = "online" | "paths" | "reward" | "objective" | "update"

/** The stages of a run, each timed into `ms` (wrappers over the default layers). */
const timed = (ms: Record<Phase, number>) => {
  const time = <A, E, R>(phase: Phase, effect: Effect.Effect<A, E, R>) =>
    Effect.suspend(() => {
      const t0 = performance.now()
      return Effect.ensuring(effect, Effect.sync(() => (ms[phase] += performance.now() - t0)))
    })
  return Layer.mergeAll(
    Layer.effect(BatchSource, Effect.gen(function*() {
      const s = yield* BatchSource
      return BatchSource.of({ ...s, next: (b) => time("online", s.next(b)) })
    })),
    Layer.effect(TrajectoryGenerator, Effect.gen(function*() {
      const g = yield* TrajectoryGenerator
      return TrajectoryGenerator.of({ ...g, generate: (x0, p) => time("paths", g.generate(x0, p)) })
    })),
    Layer.effect(TrajectoryScorer, Effect.gen(function*() {
      const s = yield* TrajectoryScorer
      return TrajectoryScorer.of({ score: (t) => time("reward", s.score(t)) })
    })),
    Layer.effect(Objective, Effect.gen(function*() {
      const o = yield* Objective
      return Objective.of({ ...o, prepare: (t, sel, sc) => time("objective", o.prepare(t, sel, sc)) })
    })),
    Layer.effect(Optimizer, Effect.gen(function*() {
      const o = yield* Optimizer
      return Optimizer.of({ ...o, step: (l, i) => time("update", o.step(l, i)) })
    }))
  )
}

interface Result {
  readonly threads: number
  readonly secondsPerIteration: ReadonlyArray<number>
  readonly ms: Record<Phase, number>
  readonly nfe: { readonly online: number; readonly paths: number; readonly loss: number }
  readonly rewardCalls: number
}

const run = (threads: number) =>
  Effect.gen(function*() {
    const config = { ...rlhf, iterations, batchSize, sampleEvery: 0 }
    const backend = Backend.layer
    const reward = Registry.layerNode({ reward: "clip", modelDir: "models/shapeworld-clip" }).pipe(Layer.provide(backend))
    const runDir = fs.mkdtempSync(path.join(os.tmpdir(), `sharpen-threads-${threads}-`))
    const ms = { online: 0, paths: 0, reward: 0, objective: 0, update: 0 }
    const layers = Layer.provideMerge(timed(ms), SharpenLayers.rlhf(config, { model, runDir, reward, backend, metrics: Metrics.memory, threads }))
    const records = yield* Effect.gen(function*() {
      yield* Sharpen.rlhf(config)
      return yield* (yield* Metrics).records
    }).pipe(Effect.provide(layers), Effect.scoped)
    fs.rmSync(runDir, { recursive: true, force: true })
    const online = records.length * config.batchSize * config.onlineSteps * (config.cfg === 1 ? 1 : 2)
    return {
      threads,
      secondsPerIteration: records.map((r) => r.wallMs / 1000),
      ms,
      nfe: { online, paths: records.reduce((a, r) => a + r.nfe, 0) - online, loss: records.reduce((a, r) => a + (r.lossNfe ?? 0), 0) },
      rewardCalls: records.reduce((a, r) => a + r.rewardCalls, 0)
    } satisfies Result
  })

const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}

const main = Effect.gen(function*() {
  const load = Load.start(() => [])
  const results: Array<Result> = []
  for (const threads of threadCounts) {
    process.stderr.write(`${threads} thread(s): ${iterations} iteration(s) ...\n`)
    const r = yield* run(threads)
    process.stderr.write(`  ${r.secondsPerIteration.map((s) => s.toFixed(1)).join(", ")} s per iteration\n`)
    results.push(r)
  }
  const byCount = [...new Set(threadCounts)].map((threads) => {
    const rs = results.filter((r) => r.threads === threads)
    const sum = (f: (r: Result) => number) => rs.reduce((a, r) => a + f(r), 0)
    const s = (phase: Phase) => sum((r) => r.ms[phase]) / 1000
    return {
      threads,
      perIteration: median(rs.flatMap((r) => r.secondsPerIteration)),
      generation: { s: s("online") + s("paths"), nfe: sum((r) => r.nfe.online + r.nfe.paths) },
      online: { s: s("online"), nfe: sum((r) => r.nfe.online) },
      paths: { s: s("paths"), nfe: sum((r) => r.nfe.paths) },
      reward: { s: s("reward"), calls: sum((r) => r.rewardCalls) },
      objective: { s: s("objective") + s("update"), nfe: sum((r) => r.nfe.loss) }
    }
  })
  const rate = (x: { s: number; nfe: number }) => `${x.s.toFixed(1)} s, ${(x.nfe / x.s).toFixed(0)} NFE/s`
  const lines = [
    `Default RLHF iteration (batch ${batchSize}, n = m = 3, continuation on a DDIM-${rlhf.inferenceSteps} grid, ${rlhf.stepsPerBatch} steps per batch, clip reward, ${model}), ${iterations} iteration(s) per run, backend wasm, ${os.cpus().length} x ${os.cpus()[0]?.model ?? "cpu"}:`,
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
  const other = load?.others()
  if (other !== undefined) lines.push("", `Other processes used ${(100 * other.share).toFixed(0)}% of the machine's CPU during the run (1-min load average ${other.loadavg.toFixed(2)} at its end).`)
  process.stdout.write(lines.join("\n") + "\n")
})

Effect.runPromise(main.pipe(Effect.provide(NodeServices.layer))).then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`${e}\n`)
    process.exit(1)
  }
)
