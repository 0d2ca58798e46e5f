/**
 * Throughput benchmark: the default ShapeWorld UNet and the 4-conv reference
 * net, forward and AdamW train step, on one backend, side by side with
 * PyTorch (bench/torch/) when the system interpreter has it, in one run.
 *
 *   npm run bench                       # auto backend, prints a markdown report
 *   npm run bench -- --write docs/performance.md
 *   npm run bench -- --reps 5           # fewer repetitions
 *   SHARPEN_BACKEND=cpu npm run bench   # (slow) pure-JS backend
 *   npm run bench -- --backend webgpu   # the GPU bench (bench/gpu.ts): batches 8, 32, 128 beside wasm
 *
 * The machine is shared, so absolute times drift with other people's jobs:
 * every series (tfjs on one thread, tfjs data-parallel on two, PyTorch on
 * one and two threads) gets one repetition per round, rounds alternate, and
 * each figure is the median of its series. Ratios are of medians of the
 * same run. FLOPs count 2 per multiply-add of convolutions and matrix
 * products (element-wise ops excluded); a train step counts 3x a forward.
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Exit, Scope } from "effect"
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as Block from "./Block.ts"
import * as GpuBench from "./gpu.ts"
import * as Load from "./Load.ts"
import * as TorchBench from "./TorchBench.ts"
import * as TrainingBench from "./TrainingBench.ts"
import * as Denoiser from "../src/model/Denoiser.ts"
import { initParams, type ParamSpec, spec } from "../src/model/Layers.ts"
import { forward, paramSpecs } from "../src/model/UNet.ts"
import { defaultConfig } from "../src/model/UNetConfig.ts"
import * as AdamW from "../src/optim/AdamW.ts"
import * as DataParallel from "../src/parallel/DataParallel.ts"
import { trainStepParallel } from "../src/train/Pretrain.ts"
import { Backend, type BackendName, fromEnv, isGpu } from "../src/tensor/Backend.ts"
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
const warmup = 2

const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

const timed = (f: () => void): number => {
  const t0 = performance.now()
  f()
  return performance.now() - t0
}

const referenceSpecs: Array<ParamSpec> = [...spec.conv("c0", 3, 3, 32), ...spec.conv("c1", 3, 32, 32), ...spec.conv("c2", 3, 32, 32), ...spec.conv("c3", 3, 32, 3)]

/** The reference net of the foundation issue: 4 convs 3-32-32-32-3 on 16x16x3, batch 8. */
const referenceNet = (backendName: string) => {
  const params: Record<string, tf.Variable> = {}
  for (const [k, v] of Object.entries(initParams(referenceSpecs, Rng.fromSeed(0)))) {
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
  return {
    flops,
    builtin,
    // void: tf.tidy walks what its function returns, a typed array element by element
    forward: () => tf.tidy(() => void net(false).dataSync()),
    train: step(false),
    trainBuiltin: step(true),
    dispose: () => {
      tf.dispose([x, ...Object.values(params)])
      AdamW.dispose(adam)
    }
  }
}

/**
 * The PyTorch UNet is the same network: same parameter names and shapes
 * (checked here, in the TypeScript layout), and the same output for the
 * same weights and input (random weights everywhere, so the zero-initialised
 * convolutions are exercised too). Returns the output difference relative
 * to the output's largest magnitude.
 */
const checkSameNetwork = async (torch: TorchBench.TorchServer, shapes: { unet: Array<[string, Array<number>]>; reference: Array<[string, Array<number>]> }) => {
  const a = defaultConfig.architecture
  const compare = (what: string, ours: ReadonlyArray<ParamSpec>, theirs: Array<[string, Array<number>]>) => {
    const fmt = (n: string, s: ReadonlyArray<number>) => `${n} [${s.join(", ")}]`
    const mine = ours.map((s) => fmt(s.name, s.shape))
    const other = theirs.map(([n, s]) => fmt(n, s))
    const i = mine.findIndex((m, k) => m !== other[k])
    if (i >= 0 || mine.length !== other.length) {
      throw new Error(`${what}: the PyTorch net differs at parameter ${i >= 0 ? i : Math.min(mine.length, other.length)}: ${mine[i] ?? "(none)"} vs ${other[i] ?? "(none)"}`)
    }
  }
  const specs = paramSpecs(a, defaultConfig.vocabulary.length)
  compare("UNet", specs, shapes.unet)
  compare("reference net", referenceSpecs, shapes.reference)
  const b = 2
  const rng = Rng.fromSeed(7)
  // Fan-in scaled, as initParams, but nothing zero or one.
  const values = specs.map((s) => {
    const size = s.shape.reduce((x, y) => x * y, 1)
    return rng.normals(size, s.shape.length === 1 ? 0.5 : Math.sqrt(1 / (size / s.shape[s.shape.length - 1])))
  })
  const x = rng.normals(b * a.imageSize * a.imageSize * a.channels)
  const flat = new Float32Array([...values.flatMap((v) => [...v]), ...x])
  const file = path.join(os.tmpdir(), `bench-unet-check-${process.pid}.f32`)
  fs.writeFileSync(file, Buffer.from(flat.buffer))
  const t = [37, 811]
  const prompts = ["a red square", "two blue circles to the left of a yellow triangle"]
  const ours = tf.tidy(() => {
    const params = Object.fromEntries(specs.map((s, i) => [s.name, tf.tensor(values[i], s.shape as Array<number>)]))
    const inputs = Denoiser.encodeInputs(defaultConfig, tf.tensor4d(x, [b, a.imageSize, a.imageSize, a.channels]), t, prompts)
    return { out: forward(params, a, inputs).dataSync() as Float32Array, tokens: [...inputs.tokens.dataSync()], mask: [...inputs.mask.dataSync()] }
  })
  const theirs = await torch.request<{ out: Array<number> }>({ op: "check", file, batch: b, t, tokens: ours.tokens, mask: ours.mask })
  fs.rmSync(file)
  let diff = 0
  let scale = 0
  ours.out.forEach((v, i) => {
    diff = Math.max(diff, Math.abs(v - theirs.out[i]))
    scale = Math.max(scale, Math.abs(v))
  })
  const rel = diff / scale
  if (!(rel < 1e-3)) throw new Error(`the PyTorch UNet's output differs from ours: max |difference| ${diff} for max |output| ${scale}`)
  return { params: specs.reduce((n, s) => n + s.shape.reduce((x, y) => x * y, 1), 0), rel }
}

const program = Effect.gen(function*() {
  const backend = yield* Backend
  const torchVersion = TorchBench.probe()
  if (torchVersion === undefined) console.error(TorchBench.installHint)
  const torch = torchVersion === undefined ? undefined : TorchBench.start()
  const threads = Math.min(2, os.availableParallelism())

  const ref = referenceNet(backend.name)
  const unet = TrainingBench.make(defaultConfig, batch)
  const flops = Denoiser.flopsPerForward(defaultConfig, batch)
  const x = tf.tensor4d(unet.data.images, [batch, 32, 32, 3])
  const unetForward = () => tf.tidy(() => void Denoiser.eps(unet.model, x, 500, unet.data.prompts).dataSync())
  // Data-parallel training step (what pretraining runs with --workers 2): same model, same batch.
  const poolScope = yield* Scope.make()
  const pool = threads > 1 ? yield* DataParallel.make(unet.model, threads, backend.name).pipe(Scope.provide(poolScope)) : undefined
  const unetParallel = pool === undefined
    ? undefined
    : () => Effect.runPromise(trainStepParallel(pool, unet.model, unet.schedule, unet.adam, unet.data, unet.rng, 1e-4, AdamW.defaults))

  let check: { params: number; rel: number } | undefined
  if (torch !== undefined) {
    const shapes = yield* Effect.promise(() =>
      torch.request<{ unet: Array<[string, Array<number>]>; reference: Array<[string, Array<number>]> }>({
        op: "init",
        arch: defaultConfig.architecture,
        vocabSize: defaultConfig.vocabulary.length,
        batch,
        schedule: defaultConfig.schedule
      })
    )
    check = yield* Effect.promise(() => checkSameNetwork(torch, shapes))
  }
  const load = Load.start(() => [torch?.pid])

  // Series, one sample per round each; the reference net is so short (ms) that it gets 3 per round.
  // Each sample: wall ms and CPU ms of the process (the CPU time of a
  // one-thread run hardly moves with other people's load; see the doc).
  type Sample = { ms: number; cpu: number }
  type Task = { key: string; times: number; run: () => Promise<Sample> }
  const sync = (f: () => unknown) => () => {
    const c0 = process.cpuUsage()
    const ms = timed(() => void f())
    const c = process.cpuUsage(c0)
    return Promise.resolve({ ms, cpu: (c.user + c.system) / 1000 })
  }
  const tasks: Array<Task> = [
    { key: "ref.tfjs.forward", times: 3, run: sync(ref.forward) },
    { key: "ref.tfjs.train", times: 3, run: sync(ref.train) },
    { key: "unet.tfjs.forward", times: 1, run: sync(unetForward) },
    {
      key: "unet.tfjs.train",
      times: 1,
      run: async () => {
        const c0 = process.cpuUsage()
        const t0 = performance.now()
        await unet.step()
        const c = process.cpuUsage(c0)
        return { ms: performance.now() - t0, cpu: (c.user + c.system) / 1000 }
      }
    },
    ...(unetParallel === undefined ? [] : [{
      key: "unet.tfjs2.train",
      times: 1,
      run: async () => {
        const t0 = performance.now()
        await unetParallel()
        return { ms: performance.now() - t0, cpu: NaN }
      }
    }])
  ]
  if (torch !== undefined) {
    for (const net of ["reference", "unet"] as const) {
      for (const mode of ["forward", "train"] as const) {
        for (const n of [1, threads]) {
          const key = `${net === "reference" ? "ref" : "unet"}.torch${n}.${mode}`
          if (tasks.some((t) => t.key === key)) continue
          tasks.push({ key, times: net === "reference" ? 3 : 1, run: () => torch.request<Sample>({ op: "time", net, mode, threads: n }) })
        }
      }
    }
  }
  const series = new Map<string, Array<number>>()
  const cpuSeries = new Map<string, Array<number>>()
  for (let round = 0; round < warmup + reps; round++) {
    for (const task of tasks) {
      for (let k = 0; k < task.times; k++) {
        const { ms, cpu } = yield* Effect.promise(task.run)
        if (round >= warmup) {
          series.set(task.key, [...(series.get(task.key) ?? []), ms])
          cpuSeries.set(task.key, [...(cpuSeries.get(task.key) ?? []), cpu])
        }
        // Let OpenMP's spinning threads go idle before the next timing (see TorchBench).
        if (task.key.includes("torch")) yield* Effect.sleep("20 millis")
      }
    }
  }
  const busy = load?.others()
  const med = (key: string) => {
    const s = series.get(key)
    return s === undefined ? undefined : median(s)
  }
  const medCpu = (key: string) => {
    const s = cpuSeries.get(key)
    return s === undefined ? undefined : median(s)
  }
  const trainBuiltin = ref.builtin ? median(Array.from({ length: 3 }, () => timed(ref.trainBuiltin))) : undefined

  yield* Scope.close(poolScope, Exit.void)
  if (torch !== undefined) yield* Effect.promise(() => torch.close())
  x.dispose()
  const params = Denoiser.parameterCount(unet.model)
  unet.dispose()
  ref.dispose()

  const g = (fl: number, ms: number) => (fl / ms / 1e6).toFixed(1)
  const ms = (v: number | undefined, digits = 0) => (v === undefined ? "-" : v.toFixed(digits))
  const ratio = (a: number | undefined, b: number | undefined) => (a === undefined || b === undefined ? "-" : `${(a / b).toFixed(2)}x`)
  const u = { fwd: med("unet.tfjs.forward")!, train: med("unet.tfjs.train")! }
  const r = { fwd: med("ref.tfjs.forward")!, train: med("ref.tfjs.train")! }
  const date = new Date().toISOString().slice(0, 16).replace("T", " ")
  const cpu = os.cpus()[0]?.model ?? "unknown cpu"
  const options = [...(write !== undefined ? [`--write ${write}`] : []), ...(reps !== 10 ? [`--reps ${reps}`] : []), ...(batch !== 8 ? [`--batch ${batch}`] : [])]
  const command = `\`npm run bench${options.length > 0 ? ` -- ${options.join(" ")}` : ""}\`${process.env.SHARPEN_BACKEND ? ` with SHARPEN_BACKEND=${process.env.SHARPEN_BACKEND}` : ""}`
  const sideBySide = torch === undefined ? [] : (() => {
    const row = (name: string, p: "ref" | "unet", mode: "forward" | "train", digits: number) => {
      const t1 = med(`${p}.tfjs.${mode}`)
      const t2 = med(`${p}.tfjs2.${mode}`)
      const p1 = med(`${p}.torch1.${mode}`)
      const p2 = med(`${p}.torch${threads}.${mode}`)
      return `| ${name} | ${ms(t1, digits)} | ${ms(t2, digits)} | ${ms(p1, digits)} | ${ms(p2, digits)} | ${ratio(t1, p1)} | ${ratio(medCpu(`${p}.tfjs.${mode}`), medCpu(`${p}.torch1.${mode}`))} | ${ratio(t2 ?? t1, p2)} |`
    }
    return [
      "",
      `Side by side with PyTorch ${torchVersion} (CPU, \`command -p python3\`, bench/torch/), same run, rounds interleaved. The PyTorch UNet has the same ${check!.params.toLocaleString("en-US")} parameters, names and shapes as ours (checked) and the same output for the same weights and input (max difference ${check!.rel.toExponential(1)} of the output's range, checked each run); same batch, same AdamW (betas 0.9/0.999, grad norm clipped at 1), v-prediction MSE step.`,
      "",
      `| network, batch ${batch} | tfjs 1 thread ms | tfjs ${threads} threads ms | PyTorch 1 thread ms | PyTorch ${threads} threads ms | tfjs / PyTorch, 1 thread | same, CPU time | tfjs / PyTorch, ${threads} threads |`,
      "|---|---|---|---|---|---|---|---|",
      row("UNet forward", "unet", "forward", 0),
      row("UNet train step", "unet", "train", 0),
      row("reference net forward", "ref", "forward", 1),
      row("reference net train step", "ref", "train", 1),
      "",
      `tfjs on ${threads} threads is the data-parallel step (DataParallel, as \`--workers ${threads}\`); the forward pass and the reference net have no 2-thread tfjs path (generation uses the second core for other prompts instead), so their last ratio is tfjs on one thread against PyTorch on ${threads}. "Same, CPU time" is the one-thread ratio of the processes' CPU time instead of wall time (medians of the same rounds): a one-thread run's CPU time hardly changes when other processes compete for the cores, so it checks the wall-time ratio on a busy machine.`
    ]
  })()
  const lines = [
    `Measured ${date} UTC on ${os.cpus().length} x ${cpu}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}, backend **${backend.name}**, median of ${reps} rounds.` +
    (busy === undefined ? "" : ` Other processes used ${(100 * busy.share).toFixed(0)}% of the machine's CPU during the run (1-min load average ${busy.loadavg.toFixed(2)} at its end, this run included).`),
    "",
    `Command: ${command}`,
    "",
    "| network | batch | GFLOP / forward | forward ms | forward GFLOP/s | NFE/s | train step ms (AdamW) | train GFLOP/s |",
    "|---|---|---|---|---|---|---|---|",
    `| ShapeWorld UNet (${(params / 1e6).toFixed(2)} M params) | ${batch} | ${(flops / 1e9).toFixed(2)} | ${u.fwd.toFixed(0)} | ${g(flops, u.fwd)} | ${(batch / u.fwd * 1000).toFixed(1)} | ${u.train.toFixed(0)} | ${g(3 * flops, u.train)} |`,
    `| reference 4-conv net 3-32-32-32-3, 16x16 | 8 | ${(ref.flops / 1e9).toFixed(3)} | ${r.fwd.toFixed(1)} | ${g(ref.flops, r.fwd)} | ${(8 / r.fwd * 1000).toFixed(0)} | ${r.train.toFixed(1)} | ${g(3 * ref.flops, r.train)} |`,
    "",
    `Ratio UNet / reference train GFLOP/s: ${((3 * flops / u.train) / (3 * ref.flops / r.train)).toFixed(2)}.`,
    ...(med("unet.tfjs2.train") !== undefined
      ? ["", `Data-parallel pretraining step (batch ${batch}, AdamW): one thread ${u.train.toFixed(0)} ms, gradient shards over ${threads} threads ${med("unet.tfjs2.train")!.toFixed(0)} ms: **${(u.train / med("unet.tfjs2.train")!).toFixed(2)}x**.`]
      : []),
    ...(trainBuiltin !== undefined
      ? [`Reference net train step with tfjs's built-in conv gradient on this backend: ${trainBuiltin.toFixed(1)} ms (custom forward-conv gradient: ${r.train.toFixed(1)} ms, ratio ${(trainBuiltin / r.train).toFixed(2)}).`]
      : []),
    ...sideBySide,
    ...(torch === undefined ? ["", TorchBench.installHint] : [])
  ]
  const report = lines.join("\n")
  console.log(report)
  if (write !== undefined) yield* Block.write(write, backend.name, report)
})

const requested = (flag("backend") ?? fromEnv()) as BackendName

// A GPU backend: its own bench (bench/gpu.ts), beside wasm and PyTorch CUDA.
const gpuBench = Effect.gen(function*() {
  const batches = (flag("batches") ?? "8,32,128").split(",").map(Number)
  const options = process.argv.slice(2).join(" ")
  const report = yield* Effect.promise(() =>
    GpuBench.run({ backend: requested, batches, reps: Number(flag("reps") ?? 5), command: `\`npm run bench -- ${options}\`` })
  )
  console.log(report)
  if (write !== undefined) yield* Block.write(write, requested, report)
})

NodeRuntime.runMain(
  (isGpu(requested) ? gpuBench : program.pipe(Effect.provide(Backend.make(requested)))).pipe(Effect.provide(NodeServices.layer))
)
