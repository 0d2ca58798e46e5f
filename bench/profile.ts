/**
 * Where a training step's time goes: `tf.profile` of one AdamW step of the
 * default UNet, kernel time summed per kernel name.
 *
 *   npx tsx bench/profile.ts              # batch 8, auto backend
 *   npx tsx bench/profile.ts --batch 16
 *
 * Kernel times are the backend's own; on wasm they are wall times of each
 * kernel call, so the per-call overhead of many small kernels shows.
 */
import * as tf from "@tensorflow/tfjs-core"
import { NodeRuntime } from "@effect/platform-node"
import { Effect } from "effect"
import * as TrainingBench from "./TrainingBench.ts"
import { defaultConfig } from "../src/model/UNetConfig.ts"
import { Backend, fromEnv } from "../src/tensor/Backend.ts"

const args = process.argv.slice(2)
const i = args.indexOf("--batch")
const batch = i >= 0 ? Number(args[i + 1]) : 8

const program = Effect.gen(function*() {
  const backend = yield* Backend
  const bench = TrainingBench.make(defaultConfig, batch)
  const step = bench.step
  for (let k = 0; k < 2; k++) yield* Effect.promise(step) // warm-up
  const t0 = performance.now()
  const info = yield* Effect.promise(() => tf.profile(step))
  const wall = performance.now() - t0
  const byName = new Map<string, { ms: number; calls: number }>()
  // tf.profile also lists the scopes around kernels (custom gradients, "*__op"
  // wrappers), whose time includes their kernels': count registered kernels only.
  const kernels = info.kernels.filter((k) => tf.getKernel(k.name, tf.getBackend()) !== undefined)
  for (const k of kernels) {
    const ms = typeof k.kernelTimeMs === "number" ? k.kernelTimeMs : 0
    const e = byName.get(k.name) ?? { ms: 0, calls: 0 }
    e.ms += ms
    e.calls++
    byName.set(k.name, e)
  }
  const total = [...byName.values()].reduce((a, e) => a + e.ms, 0)
  const rows = [...byName.entries()].sort((a, b) => b[1].ms - a[1].ms).slice(0, 15)
  console.log(`One AdamW step of the default UNet at batch ${batch} on **${backend.name}**: ${wall.toFixed(0)} ms wall under the profiler, ${kernels.length} kernel calls, ${total.toFixed(0)} ms of kernel time.`)
  console.log("")
  console.log("| kernel | ms | share | calls |")
  console.log("|---|---|---|---|")
  for (const [name, e] of rows) console.log(`| ${name} | ${e.ms.toFixed(1)} | ${(100 * e.ms / total).toFixed(1)}% | ${e.calls} |`)
  bench.dispose()
}).pipe(Effect.provide(Backend.make(fromEnv())))

NodeRuntime.runMain(program)
