/**
 * Throughput benchmark: the default ShapeWorld UNet and the 4-conv reference
 * net, forward and AdamW train step, on one backend, in one run.
 *
 *   npm run bench                       # auto backend, prints a markdown report
 *   npm run bench -- --write docs/performance.md
 *   SHARPEN_BACKEND=cpu npm run bench   # (slow) pure-JS backend
 *
 * Each figure is the median of `--reps` timed repetitions after warm-up.
 * FLOPs count 2 per multiply-add of convolutions and matrix products
 * (element-wise ops excluded); a train step is counted as 3x a forward.
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import * as fs from "node:fs"
import * as os from "node:os"
import * as AtomicFile from "../src/io/AtomicFile.ts"
import * as TrainingBench from "./TrainingBench.ts"
import * as Denoiser from "../src/model/Denoiser.ts"
import { initParams, spec } from "../src/model/Layers.ts"
import { defaultConfig } from "../src/model/UNetConfig.ts"
import * as AdamW from "../src/optim/AdamW.ts"
import * as DataParallel from "../src/pipeline/DataParallel.ts"
import { trainStepParallel } from "../src/pipeline/Pretrain.ts"
import { Backend, fromEnv } from "../src/tensor/Backend.ts"
import { conv2dSame } from "../src/tensor/Conv.ts"
import { paramGrads } from "../src/tensor/Grad.ts"
import { Rng } from "../src/tensor/Random.ts"

const args = process.argv.slice(2)
const flag = (name: string) => {
  const i = args.indexOf(`--${name}`)
  return i >= 0 ? args[i + 1] : undefined
}
const reps = Number(flag("reps") ?? 10)
const batch = Number(flag("batch") ?? 8)
const write = flag("write")

const median = (xs: Array<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

const time = (f: () => void, n: number, warmup = 2): number => {
  for (let i = 0; i < warmup; i++) f()
  const ts: Array<number> = []
  for (let i = 0; i < n; i++) {
    const t0 = performance.now()
    f()
    ts.push(performance.now() - t0)
  }
  return median(ts)
}

/** The reference net of the foundation issue: 4 convs 3-32-32-32-3 on 16x16x3, batch 8. */
const referenceNet = (backendName: string) => {
  const specs = [...spec.conv("c0", 3, 3, 32), ...spec.conv("c1", 3, 32, 32), ...spec.conv("c2", 3, 32, 32), ...spec.conv("c3", 3, 32, 3)]
  const params: Record<string, tf.Variable> = {}
  for (const [k, v] of Object.entries(initParams(specs, Rng.fromSeed(0)))) {
    params[k] = tf.variable(v)
    v.dispose()
  }
  const x = tf.randomNormal([8, 16, 16, 3], 0, 1, "float32", 1) as tf.Tensor4D
  const builtin = backendName === "cpu" || backendName.startsWith("tensorflow")
  const conv = (h: tf.Tensor4D, w: tf.Tensor, useBuiltin: boolean) =>
    useBuiltin ? tf.conv2d(h, w as tf.Tensor4D, 1, "same") : conv2dSame(h, w as tf.Tensor4D)
  const net = (useBuiltin: boolean) => {
    let h: tf.Tensor4D = x
    for (let i = 0; i < 4; i++) {
      h = tf.add(conv(h, params[`c${i}.w`], useBuiltin), params[`c${i}.b`]) as tf.Tensor4D
      if (i < 3) h = tf.relu(h)
    }
    return h
  }
  const flops = 2 * 8 * 16 * 16 * 9 * (3 * 32 + 32 * 32 + 32 * 32 + 32 * 3)
  const adam = AdamW.init(params)
  const step = (useBuiltin: boolean) => () => {
    const { value, grads } = paramGrads(() => tf.mean(tf.square(net(useBuiltin))) as tf.Scalar, params)
    AdamW.step(params, grads, adam, 1e-3, AdamW.defaults)
    value.dataSync()
    tf.dispose([value, ...Object.values(grads)])
  }
  const fwd = time(() => tf.tidy(() => net(false).dataSync()), reps * 3)
  const train = time(step(false), reps * 3)
  const trainBuiltin = builtin ? time(step(true), Math.min(reps, 3), 1) : undefined
  tf.dispose([x, ...Object.values(params)])
  AdamW.dispose(adam)
  return { flops, fwd, train, trainBuiltin }
}

const unet = () => {
  const bench = TrainingBench.make(defaultConfig, batch)
  const flops = Denoiser.flopsPerForward(defaultConfig, batch)
  const x = tf.tensor4d(bench.data.images, [batch, 32, 32, 3])
  const fwd = time(() => tf.tidy(() => Denoiser.eps(bench.model, x, 500, bench.data.prompts).dataSync()), reps)
  const train = time(bench.step, reps)
  x.dispose()
  const params = Denoiser.parameterCount(bench.model)
  bench.dispose()
  return { flops, fwd, train, params }
}

/** Pretraining steps at batch 16 on one thread and with gradient shards over `workers` threads. */
const dataParallel = async (backendName: string, workers: number) => {
  const b = 16
  const bench = TrainingBench.make(defaultConfig, b, 2)
  const { model, schedule, adam, rng, data } = bench
  const one = time(bench.step, Math.max(3, Math.floor(reps / 2)), 1)
  const pool = DataParallel.make(model, workers, backendName)
  const ts: Array<number> = []
  for (let i = 0; i < Math.max(3, Math.floor(reps / 2)) + 1; i++) {
    const t0 = performance.now()
    await trainStepParallel(pool, model, schedule, adam, data, rng, 1e-4, AdamW.defaults)
    if (i > 0) ts.push(performance.now() - t0) // the first step includes the workers' start-up
  }
  await pool.close()
  bench.dispose()
  return { batch: b, workers, one, parallel: median(ts) }
}

const program = Effect.gen(function*() {
  const backend = yield* Backend
  const ref = referenceNet(backend.name)
  const u = unet()
  const workers = Math.min(2, os.availableParallelism())
  const dp = workers > 1 ? yield* Effect.promise(() => dataParallel(backend.name, workers)) : undefined
  const g = (flops: number, ms: number) => (flops / ms / 1e6).toFixed(1)
  const date = new Date().toISOString().slice(0, 10)
  const cpu = os.cpus()[0]?.model ?? "unknown cpu"
  const lines = [
    `Measured ${date} on ${os.cpus().length} x ${cpu}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}, backend **${backend.name}**, median of ${reps} repetitions.`,
    "",
    `Command: \`${write ? `npm run bench -- --write ${write}` : "npm run bench"}\`${process.env.SHARPEN_BACKEND ? ` with SHARPEN_BACKEND=${process.env.SHARPEN_BACKEND}` : ""}`,
    "",
    "| network | batch | GFLOP / forward | forward ms | forward GFLOP/s | NFE/s | train step ms (AdamW) | train GFLOP/s |",
    "|---|---|---|---|---|---|---|---|",
    `| ShapeWorld UNet (${(u.params / 1e6).toFixed(2)} M params) | ${batch} | ${(u.flops / 1e9).toFixed(2)} | ${u.fwd.toFixed(0)} | ${g(u.flops, u.fwd)} | ${(batch / u.fwd * 1000).toFixed(1)} | ${u.train.toFixed(0)} | ${g(3 * u.flops, u.train)} |`,
    `| reference 4-conv net 3-32-32-32-3, 16x16 | 8 | ${(ref.flops / 1e9).toFixed(3)} | ${ref.fwd.toFixed(1)} | ${g(ref.flops, ref.fwd)} | ${(8 / ref.fwd * 1000).toFixed(0)} | ${ref.train.toFixed(1)} | ${g(3 * ref.flops, ref.train)} |`,
    "",
    `Ratio UNet / reference train GFLOP/s: ${((3 * u.flops / u.train) / (3 * ref.flops / ref.train)).toFixed(2)}.`,
    ...(dp !== undefined
      ? ["", `Data-parallel pretraining step (batch ${dp.batch}, AdamW): one thread ${dp.one.toFixed(0)} ms (${(dp.batch / dp.one * 1000).toFixed(1)} images/s), gradient shards over ${dp.workers} threads ${dp.parallel.toFixed(0)} ms (${(dp.batch / dp.parallel * 1000).toFixed(1)} images/s): **${(dp.one / dp.parallel).toFixed(2)}x**.`]
      : []),
    ...(ref.trainBuiltin !== undefined
      ? [`Reference net train step with tfjs's built-in conv gradient on this backend: ${ref.trainBuiltin.toFixed(1)} ms (custom forward-conv gradient: ${ref.train.toFixed(1)} ms, ratio ${(ref.trainBuiltin / ref.train).toFixed(2)}).`]
      : [])
  ]
  const report = lines.join("\n")
  console.log(report)
  if (write !== undefined) {
    // Replace only the generated block, keeping the prose around it.
    const begin = `<!-- bench:${backend.name}:begin -->`
    const end = `<!-- bench:${backend.name}:end -->`
    const old = fs.existsSync(write) ? fs.readFileSync(write, "utf8") : ""
    const block = `${begin}\n${report}\n${end}`
    const i = old.indexOf(begin)
    const j = old.indexOf(end)
    const next = i >= 0 && j > i ? old.slice(0, i) + block + old.slice(j + end.length) : `${old}${old === "" ? "" : "\n"}${block}\n`
    yield* AtomicFile.writeText(write, next)
  }
})

NodeRuntime.runMain(program.pipe(Effect.provide(Backend.make(fromEnv())), Effect.provide(NodeServices.layer)))
