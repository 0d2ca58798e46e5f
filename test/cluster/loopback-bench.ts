/**
 * Online samples of one default RLHF batch (8 prompts, DDIM 20, CFG 5,
 * models/shapeworld-base, wasm) on 1 thread, on 2 threads (a worker
 * thread), and on this process plus 1 runner process on loopback (SQLite
 * storage in a temp dir), interleaved, with the bytes a job sends. Not a
 * test (vitest runs only *.test.ts):
 *
 *   npx tsx test/cluster/loopback-bench.ts [--reps 3]
 */
import "@tensorflow/tfjs-backend-wasm"
import * as tf from "@tensorflow/tfjs-core"
import { NodeServices } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as ClusterJobs from "../../src/cluster/ClusterJobs.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import * as GenerationPool from "../../src/parallel/GenerationPool.ts"
import { Backend } from "../../src/tensor/Backend.ts"
import { Rng } from "../../src/tensor/Random.ts"
import { runner } from "./runners.ts"

const reps = Number(process.argv[process.argv.indexOf("--reps") + 1]) || 3
const prompts = ["a red square", "two blue circles", "a green triangle above a white square", "a yellow circle", "three red triangles", "a blue square left of a green circle", "a white triangle", "two yellow squares"]

const program = Effect.gen(function*() {
  const { model } = yield* Denoiser.Denoiser
  const size = Object.values(model.params).reduce((a, p) => a + p.size, 0)
  const xT = Rng.fromSeed(1).normals(prompts.length * 32 * 32 * 3)
  const o = { steps: 20, cfg: 5 }
  const threads = yield* GenerationPool.make(model.config, 2, "wasm")
  const storage = `sqlite:${path.join(fs.mkdtempSync(path.join(os.tmpdir(), "cluster-bench-")), "runners.db")}`
  yield* runner(storage)
  const context = yield* Layer.build(ClusterJobs.client(storage))
  const cluster = GenerationPool.fromThreads(yield* Effect.provideContext(ClusterJobs.connect(model.config, { storage, runners: 1 }), context))
  const time = (pool: GenerationPool.Pool) =>
    Effect.gen(function*() {
      const start = performance.now()
      const x = yield* pool.sample(model, prompts, xT, o)
      const data = x.dataSync()
      x.dispose()
      return { s: (performance.now() - start) / 1000, first: data[0] }
    })
  const rows: Record<string, Array<number>> = { "1 thread": [], "2 threads": [], "this process + 1 runner": [] }
  let reference: number | undefined
  for (let r = 0; r < reps; r++) {
    for (const [name, pool] of [["1 thread", GenerationPool.inline], ["2 threads", threads], ["this process + 1 runner", cluster]] as const) {
      const t = yield* time(pool)
      reference ??= t.first
      if (Math.abs(t.first - reference) > 1e-5) throw new Error(`${name}: another result`)
      rows[name].push(t.s)
    }
  }
  const median = (a: Array<number>) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]
  console.log(`online samples of ${prompts.length} prompts, DDIM ${o.steps}, CFG ${o.cfg}, ${reps} rep(s), interleaved; 1-min load average ${os.loadavg()[0].toFixed(1)} on ${os.availableParallelism()} cores`)
  console.log(`weights: ${size} floats = ${(size * 4 / 2 ** 20).toFixed(2)} MiB, sent to the runner with its first job only (later jobs name them by hash); a job's shard: ${(prompts.length / 2 * 32 * 32 * 3 * 4 / 1024).toFixed(0)} KiB of noise; the reply is the shard's samples`)
  console.log("| transport | s (median) | all |\n|---|---|---|")
  for (const [name, s] of Object.entries(rows)) console.log(`| ${name} | ${median(s).toFixed(2)} | ${s.map((x) => x.toFixed(2)).join(", ")} |`)
}).pipe(Effect.scoped, Effect.provide(Denoiser.Denoiser.fromDir("models/shapeworld-base", false).pipe(Layer.provideMerge(Backend.make("wasm")), Layer.provideMerge(NodeServices.layer))))

Effect.runPromise(program).then(() => process.exit(0), (e) => {
  console.error(e)
  process.exit(1)
})
void tf
