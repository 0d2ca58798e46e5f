/**
 * Before/after of each kept speed-up, in one run: the default UNet's AdamW
 * training step at batch 8 (one thread) with the speed-ups switched on one
 * by one, and the update part of a data-parallel step. Variants alternate
 * round by round (the machine is shared) and each figure is the median of
 * its rounds; kernel calls are counted with tf.profile.
 *
 *   npx tsx bench/fusion.ts              # 8 rounds
 *   npx tsx bench/fusion.ts --reps 4
 */
import * as tf from "@tensorflow/tfjs-core"
import { NodeRuntime } from "@effect/platform-node"
import { Effect } from "effect"
import * as os from "node:os"
import * as Load from "./Load.ts"
import * as TrainingBench from "./TrainingBench.ts"
import * as Denoiser from "../src/model/Denoiser.ts"
import * as Layers from "../src/model/Layers.ts"
import { defaultConfig } from "../src/model/UNetConfig.ts"
import * as AdamW from "../src/optim/AdamW.ts"
import * as DataParallel from "../src/parallel/DataParallel.ts"
import { Backend, fromEnv } from "../src/tensor/Backend.ts"
import * as Conv from "../src/tensor/Conv.ts"
import * as Scoped from "../src/tensor/Scoped.ts"
import * as WasmKernels from "../src/tensor/WasmKernels.ts"

const args = process.argv.slice(2)
const i = args.indexOf("--reps")
const reps = i >= 0 ? Number(args[i + 1]) : 8
const batch = 8

const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

interface Variant {
  readonly name: string
  readonly adam: typeof AdamW.step
  readonly fusedNorm: boolean
  readonly denseConvRows: number
  readonly jsFlip: boolean
  readonly gemm1x1: boolean
  readonly shareIdentity: boolean
}

// Cumulative: each row adds one speed-up to the row above.
const variants: Array<Variant> = [
  { name: "before: AdamW as tensor ops per parameter, GroupNorm + SiLU as plain ops, dense layers as 1x1 convs from 256 rows", adam: AdamW.stepPerTensor, fusedNorm: false, denseConvRows: 256, jsFlip: false, gemm1x1: false, shareIdentity: false },
  { name: "+ AdamW as one pass over arrays", adam: AdamW.step, fusedNorm: false, denseConvRows: 256, jsFlip: false, gemm1x1: false, shareIdentity: false },
  { name: "+ GroupNorm (+ SiLU) as one op with a closed-form gradient", adam: AdamW.step, fusedNorm: true, denseConvRows: 256, jsFlip: false, gemm1x1: false, shareIdentity: false },
  { name: "+ dense layers as 1x1 convs from 64 rows (the text encoder's 96)", adam: AdamW.step, fusedNorm: true, denseConvRows: 64, jsFlip: false, gemm1x1: false, shareIdentity: false },
  { name: "+ conv input gradient's kernel flip permuted in JS (no Reverse/Transpose kernels)", adam: AdamW.step, fusedNorm: true, denseConvRows: 64, jsFlip: true, gemm1x1: false, shareIdentity: false },
  { name: "+ 1x1 convolutions' filter gradient as one GEMM", adam: AdamW.step, fusedNorm: true, denseConvRows: 64, jsFlip: true, gemm1x1: true, shareIdentity: false },
  { name: "+ tensors saved for the backward pass shared, not copied (wasm Identity)", adam: AdamW.step, fusedNorm: true, denseConvRows: 64, jsFlip: true, gemm1x1: true, shareIdentity: true }
]

const program = Effect.gen(function*() {
  const backend = yield* Backend
  const bench = TrainingBench.make(defaultConfig, batch)
  const { model, data } = bench
  const shard: DataParallel.Shard = {
    batch,
    images: data.images,
    prompts: data.prompts,
    t: Array.from({ length: batch }, (_, k) => 50 + 110 * k),
    noise: bench.rng.normals(data.images.length)
  }
  const defaults = { ...Layers.speedups }
  const convDefaults = { ...Conv.speedups }
  const step = (v: Variant) => () =>
    Effect.runPromise(Effect.gen(function*() {
      Object.assign(Layers.speedups, { groupNorm: v.fusedNorm, denseConvRows: v.denseConvRows })
      Object.assign(Conv.speedups, { jsFlip: v.jsFlip, gemm1x1: v.gemm1x1 })
      WasmKernels.speedups.shareIdentity = v.shareIdentity
      const r = yield* DataParallel.lossAndGrads(model, shard)
      yield* v.adam(model.params, r.grads, bench.adam, 1e-4, AdamW.defaults)
      Scoped.disposeAll(r.grads)
      Object.assign(Layers.speedups, defaults)
      Object.assign(Conv.speedups, convDefaults)
      WasmKernels.speedups.shareIdentity = true
    }))
  // Sampling's forward pass, before and after.
  const x = tf.tensor4d(data.images, [batch, 32, 32, 3])
  const fwd = (after: boolean) => () => {
    if (!after) {
      Object.assign(Layers.speedups, { groupNorm: false, denseConvRows: 256 })
      WasmKernels.speedups.shareIdentity = false
    }
    // (void: tf.tidy walks what it returns, element by element for a typed array)
    tf.tidy(() => void Denoiser.eps(model, x, 500, data.prompts).dataSync())
    Object.assign(Layers.speedups, defaults)
    WasmKernels.speedups.shareIdentity = true
  }

  // The update of a 2-shard data-parallel step, from the shards' flat gradients:
  // before, each shard's arrays became tensors averaged per parameter, then the
  // per-tensor AdamW; now one pass over the arrays, then AdamW.stepFlat.
  const keys = Object.keys(model.params)
  const n = keys.reduce((a, k) => a + model.params[k].size, 0)
  const shardGrads = [bench.rng.normals(n, 1e-3), bench.rng.normals(n, 1e-3)]
  const dpBefore = async () => {
    const grads: Record<string, tf.Tensor> = {}
    tf.tidy(() => {
      let o = 0
      for (const k of keys) {
        const p = model.params[k]
        let g = tf.mul(tf.tensor(shardGrads[0].subarray(o, o + p.size), p.shape), 0.5)
        g = tf.add(g, tf.mul(tf.tensor(shardGrads[1].subarray(o, o + p.size), p.shape), 0.5))
        grads[k] = tf.keep(g)
        o += p.size
      }
    })
    await Effect.runPromise(AdamW.stepPerTensor(model.params, grads, bench.adam, 1e-4, AdamW.defaults))
    Scoped.disposeAll(grads)
  }
  const dpAfter = () => {
    const g = new Float32Array(shardGrads[0])
    for (let k = 0; k < n; k++) g[k] = g[k] * 0.5 + shardGrads[1][k] * 0.5
    AdamW.stepFlat(model.params, g, bench.adam, 1e-4, AdamW.defaults)
  }

  // Promises where a task reads tensors (the step's loss, AdamW's gradients).
  const tasks: Array<{ key: string; run: () => void | Promise<void> }> = [
    ...variants.map((v) => ({ key: v.name, run: step(v) })),
    { key: "fwd.plain", run: fwd(false) },
    { key: "fwd.fused", run: fwd(true) },
    { key: "dp.before", run: dpBefore },
    { key: "dp.after", run: dpAfter }
  ]
  const calls = new Map<string, number>()
  for (const t of tasks) {
    yield* Effect.promise(async () => t.run()) // warm-up
    const info = yield* Effect.promise(() => tf.profile(t.run))
    // Registered kernels only: tf.profile also lists the scopes around them.
    calls.set(t.key, info.kernels.filter((k) => tf.getKernel(k.name, tf.getBackend()) !== undefined).length)
  }
  const load = Load.start(() => [])
  // Wall time, and this process's CPU time: on a shared machine the latter
  // barely moves with other people's load (the work runs on one thread).
  const times = new Map<string, Array<number>>()
  const cpuTimes = new Map<string, Array<number>>()
  for (let r = 0; r < reps; r++) {
    for (const t of tasks) {
      const c0 = process.cpuUsage()
      const t0 = performance.now()
      yield* Effect.promise(async () => t.run())
      const c = process.cpuUsage(c0)
      times.set(t.key, [...(times.get(t.key) ?? []), performance.now() - t0])
      cpuTimes.set(t.key, [...(cpuTimes.get(t.key) ?? []), (c.user + c.system) / 1000])
    }
  }
  const busy = load?.others()
  bench.dispose()
  x.dispose()

  const ms = (key: string) => median(times.get(key)!)
  const cpuMs = (key: string) => median(cpuTimes.get(key)!)
  const base = ms(variants[0].name)
  const cpuBase = cpuMs(variants[0].name)
  console.log(`Training step of the default UNet at batch ${batch} on **${backend.name}**, one thread, median of ${reps} interleaved rounds, ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC on ${os.cpus().length} x ${os.cpus()[0]?.model ?? "cpu"}` +
    (busy === undefined ? "" : `; other processes used ${(100 * busy.share).toFixed(0)}% of the machine's CPU meanwhile (1-min load average ${busy.loadavg.toFixed(2)} at the end, this run included)`) + ".")
  console.log("")
  console.log("Command: `npx tsx bench/fusion.ts" + (reps !== 8 ? ` --reps ${reps}` : "") + "`")
  console.log("")
  console.log("| variant | step ms (wall) | vs before | step ms (CPU time) | vs before | kernel calls |")
  console.log("|---|---|---|---|---|---|")
  for (const v of variants) {
    console.log(`| ${v.name} | ${ms(v.name).toFixed(0)} | ${(ms(v.name) / base).toFixed(2)}x | ${cpuMs(v.name).toFixed(0)} | ${(cpuMs(v.name) / cpuBase).toFixed(2)}x | ${calls.get(v.name)!.toLocaleString("en-US")} |`)
  }
  console.log("")
  console.log(`Forward pass (sampling, batch ${batch}): before (plain GroupNorm + SiLU, dense as 1x1 conv from 256 rows) ${ms("fwd.plain").toFixed(0)} ms wall, ${cpuMs("fwd.plain").toFixed(0)} ms CPU (${calls.get("fwd.plain")!.toLocaleString("en-US")} kernel calls); after ${ms("fwd.fused").toFixed(0)} ms wall, ${cpuMs("fwd.fused").toFixed(0)} ms CPU (${calls.get("fwd.fused")!.toLocaleString("en-US")}).`)
  console.log("")
  console.log(`Update of a 2-shard data-parallel step (average the shards' gradients, AdamW): per-parameter tensor ops ${ms("dp.before").toFixed(1)} ms wall, ${cpuMs("dp.before").toFixed(1)} ms CPU (${calls.get("dp.before")!.toLocaleString("en-US")} kernel calls); one pass over the arrays ${ms("dp.after").toFixed(1)} ms wall, ${cpuMs("dp.after").toFixed(1)} ms CPU (${calls.get("dp.after")!.toLocaleString("en-US")} kernel calls).`)
}).pipe(Effect.provide(Backend.make(fromEnv())))

NodeRuntime.runMain(program)
