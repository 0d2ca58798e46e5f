/**
 * Timing of sharpening iterations by phase, shared by the sharpening
 * benches (sharpen-threads.ts, sharpen-scaling.ts): a configuration runs
 * through the default RLHF layers (`SharpenLayers.rlhf`) with a wrapper over
 * each stage that adds its wall time to a phase, and the run's metrics give
 * NFE and reward calls per iteration.
 */
import { NodeServices } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Objective } from "../src/objective/Objective.ts"
import { Optimizer } from "../src/optim/Optimizer.ts"
import { Metrics } from "../src/optim/Metrics.ts"
import * as Sharpen from "../src/sharpen/Sharpen.ts"
import type * as SharpenConfig from "../src/sharpen/SharpenConfig.ts"
import * as SharpenLayers from "../src/sharpen/SharpenLayers.ts"
import { BatchSource } from "../src/sharpen/Sources.ts"
import * as Registry from "../src/reward/Registry.ts"
import { Backend } from "../src/tensor/Backend.ts"
import { TrajectoryGenerator } from "../src/trajectory/TrajectoryGenerator.ts"
import { TrajectoryScorer } from "../src/trajectory/TrajectoryScorer.ts"
import type * as Load from "./Load.ts"

export type Phase = "online" | "paths" | "reward" | "objective" | "update"

/** The stages of a run, each timed into `ms` (wrappers over the default layers). */
export const timed = (ms: Record<Phase, number>) => {
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

/** One run of a configuration: wall time per iteration, time per phase, and its work. */
export interface Result {
  readonly secondsPerIteration: ReadonlyArray<number>
  readonly ms: Record<Phase, number>
  readonly nfe: { readonly online: number; readonly paths: number; readonly loss: number }
  readonly rewardCalls: number
  /** Tensor backend the run ran on. */
  readonly backend: string
}

/**
 * Run `config` (RLHF, the clip reward) from the base model `model` on
 * `threads` threads, in a throw-away run directory named after `label`.
 */
export const run = (config: SharpenConfig.SharpenConfig, o: { readonly model: string; readonly threads: number; readonly label: string }) =>
  Effect.gen(function*() {
    const backend = Backend.layer
    const reward = Registry.layerNode({ reward: "clip", modelDir: "models/shapeworld-clip" }).pipe(Layer.provide(backend))
    const runDir = fs.mkdtempSync(path.join(os.tmpdir(), `${o.label}-`))
    const ms = { online: 0, paths: 0, reward: 0, objective: 0, update: 0 }
    const layers = Layer.provideMerge(timed(ms), SharpenLayers.rlhf(config, { model: o.model, runDir, reward, backend, metrics: Metrics.memory, threads: o.threads }))
    const { name, records } = yield* Effect.gen(function*() {
      yield* Sharpen.rlhf(config)
      return { name: (yield* Backend).name, records: yield* (yield* Metrics).records }
    }).pipe(Effect.provide(layers), Effect.scoped)
    fs.rmSync(runDir, { recursive: true, force: true })
    // The online samples' NFE: `nfe` counts them together with the paths'.
    const online = records.length * config.batchSize * config.onlineSteps * (config.cfg === 1 ? 1 : 2)
    return {
      secondsPerIteration: records.map((r) => r.wallMs / 1000),
      ms,
      nfe: { online, paths: records.reduce((a, r) => a + r.nfe, 0) - online, loss: records.reduce((a, r) => a + (r.lossNfe ?? 0), 0) },
      rewardCalls: records.reduce((a, r) => a + r.rewardCalls, 0),
      backend: name
    } satisfies Result
  })

export const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}

/** Runs of one setting pooled: the median iteration, and seconds and work of each phase summed. */
export interface Summary {
  readonly iterations: number
  readonly perIteration: number
  readonly generation: { readonly s: number; readonly nfe: number }
  readonly online: { readonly s: number; readonly nfe: number }
  readonly paths: { readonly s: number; readonly nfe: number }
  readonly reward: { readonly s: number; readonly calls: number }
  readonly objective: { readonly s: number; readonly nfe: number }
}

export const summarise = (rs: ReadonlyArray<Result>): Summary => {
  const sum = (f: (r: Result) => number) => rs.reduce((a, r) => a + f(r), 0)
  const s = (phase: Phase) => sum((r) => r.ms[phase]) / 1000
  return {
    iterations: sum((r) => r.secondsPerIteration.length),
    perIteration: median(rs.flatMap((r) => r.secondsPerIteration)),
    generation: { s: s("online") + s("paths"), nfe: sum((r) => r.nfe.online + r.nfe.paths) },
    online: { s: s("online"), nfe: sum((r) => r.nfe.online) },
    paths: { s: s("paths"), nfe: sum((r) => r.nfe.paths) },
    reward: { s: s("reward"), calls: sum((r) => r.rewardCalls) },
    objective: { s: s("objective") + s("update"), nfe: sum((r) => r.nfe.loss) }
  }
}

/** "54.5 s, 46 NFE/s". */
export const rate = (x: { readonly s: number; readonly nfe: number }) => `${x.s.toFixed(1)} s, ${(x.nfe / x.s).toFixed(0)} NFE/s`

/** The machine: "2 x AMD EPYC". */
export const cpus = () => `${os.cpus().length} x ${os.cpus()[0]?.model ?? "cpu"}`

/** The closing line on the rest of the machine's load, if it was measured. */
export const loadLine = (load: Load.LoadMeter | undefined): ReadonlyArray<string> => {
  const other = load?.others()
  return other === undefined
    ? []
    : ["", `Other processes used ${(100 * other.share).toFixed(0)}% of the machine's CPU during the run (1-min load average ${other.loadavg.toFixed(2)} at its end).`]
}

/** Run a bench's program with the Node services; exit 1 with the error on failure. */
export const runMain = (main: Effect.Effect<void, unknown, NodeServices.NodeServices>) =>
  Effect.runPromise(main.pipe(Effect.provide(NodeServices.layer))).then(
    () => process.exit(0),
    (e) => {
      process.stderr.write(`${e}\n`)
      process.exit(1)
    }
  )
