/**
 * The GPU side of `npm run bench`: the default ShapeWorld UNet's forward
 * pass and AdamW training step at several batch sizes on a GPU backend,
 * beside wasm on the same machine (one thread, and the data-parallel step on
 * two threads that pretraining runs), and PyTorch on CUDA where the system
 * interpreter's torch has it. One process, rounds interleaved, medians.
 *
 *   npm run bench -- --backend webgpu                      # batches 8, 32, 128
 *   npm run bench -- --backend webgpu --batches 8 --reps 2 # quick, e.g. on a software adapter
 *   npm run bench -- --backend webgpu --write docs/performance.md
 *
 * A forward pass is one NFE per sample (no guidance); a training step's
 * samples/s is the batch over its wall time. Each timing ends with a host
 * read of the result, so the GPU's queue is drained inside it.
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Exit, Scope } from "effect"
import * as os from "node:os"
import * as Denoiser from "../src/model/Denoiser.ts"
import { defaultConfig } from "../src/model/UNetConfig.ts"
import * as AdamW from "../src/optim/AdamW.ts"
import * as DataParallel from "../src/parallel/DataParallel.ts"
import { trainStepParallel } from "../src/train/Pretrain.ts"
import { BackendUnavailable, type BackendName, initialise } from "../src/tensor/Backend.ts"
import * as HostRead from "../src/tensor/HostRead.ts"
import * as WebGpu from "../src/tensor/WebGpu.ts"
import * as TorchBench from "./TorchBench.ts"
import * as TrainingBench from "./TrainingBench.ts"

export interface Options {
  readonly backend: BackendName
  readonly batches: ReadonlyArray<number>
  readonly reps: number
  readonly command: string
}

type Series = "gpu" | "wasm" | "wasm2" | "torch"
interface Task {
  readonly series: Series
  readonly batch: number
  readonly mode: "forward" | "train"
  readonly run: () => Promise<number>
}

const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

const time = async (f: () => Promise<unknown>): Promise<number> => {
  const t0 = performance.now()
  await f()
  return performance.now() - t0
}

export const run = async (o: Options): Promise<string> => {
  const gpu = await initialise(o.backend)
  if (gpu instanceof BackendUnavailable) throw gpu
  const wasm = await initialise("wasm")
  if (wasm instanceof BackendUnavailable) throw wasm
  const torchVersion = TorchBench.probe()
  const torch = torchVersion === undefined ? undefined : TorchBench.start()
  let torchDevice: string | undefined
  let torchNote: string | undefined
  const a = defaultConfig.architecture

  const tasks: Array<Task> = []
  const cleanup: Array<() => Promise<void> | void> = []
  for (const batch of o.batches) {
    for (const series of ["gpu", "wasm"] as const) {
      const name = series === "gpu" ? gpu.name : "wasm"
      await tf.setBackend(name)
      const bench = TrainingBench.make(defaultConfig, batch)
      const x = tf.tensor4d(bench.data.images, [batch, a.imageSize, a.imageSize, a.channels])
      cleanup.push(async () => {
        await tf.setBackend(name)
        x.dispose()
        bench.dispose()
      })
      const on = (f: () => Promise<unknown>) => async () => {
        await tf.setBackend(name)
        return time(f)
      }
      tasks.push({ series, batch, mode: "forward", run: on(() => HostRead.promise(tf.tidy(() => Denoiser.eps(bench.model, x, 500, bench.data.prompts)))) })
      tasks.push({ series, batch, mode: "train", run: on(bench.step) })
      if (series === "wasm" && os.availableParallelism() >= 2) {
        // The data-parallel step pretraining runs on two threads (--workers 2).
        const scope = await Effect.runPromise(Scope.make())
        const pool = await Effect.runPromise(DataParallel.make(bench.model, 2, "wasm").pipe(Scope.provide(scope)))
        cleanup.unshift(() => Effect.runPromise(Scope.close(scope, Exit.void)))
        tasks.push({
          series: "wasm2",
          batch,
          mode: "train",
          run: on(() => Effect.runPromise(trainStepParallel(pool, bench.model, bench.schedule, bench.adam, bench.data, bench.rng, 1e-4, AdamW.defaults)))
        })
      }
    }
    if (torch !== undefined && torchNote === undefined) {
      // The torch server holds one batch at a time: init is part of the task, outside its timing.
      const init = async () => {
        const r = await torch.request<{ device: string }>({ op: "init", arch: a, vocabSize: defaultConfig.vocabulary.length, batch, schedule: defaultConfig.schedule, device: "cuda" })
        torchDevice = r.device
      }
      const ok = await init().then(() => true, (e: Error) => {
        torchNote = ` PyTorch ${torchVersion} could not run on CUDA here (${e.message.split("\n")[0]}), left out.`
        console.error(torchNote.trim())
        return false
      })
      if (ok) {
        for (const mode of ["forward", "train"] as const) {
          tasks.push({
            series: "torch",
            batch,
            mode,
            run: async () => {
              await init()
              return (await torch.request<{ ms: number }>({ op: "time", net: "unet", mode, threads: 1 })).ms
            }
          })
        }
      }
    }
  }

  const samples = new Map<string, Array<number>>()
  const key = (t: Pick<Task, "series" | "batch" | "mode">) => `${t.series}.${t.batch}.${t.mode}`
  const warmup = 2
  const total = (warmup + o.reps) * tasks.length
  let done = 0
  for (let round = 0; round < warmup + o.reps; round++) {
    for (const t of tasks) {
      const ms = await t.run()
      if (round >= warmup) samples.set(key(t), [...(samples.get(key(t)) ?? []), ms])
      process.stderr.write(`\r${++done}/${total} timings`)
    }
  }
  process.stderr.write("\n")
  await tf.setBackend(gpu.name)
  const gpuMemory = WebGpu.memory()
  for (const c of cleanup) await c()
  await torch?.close()

  const med = (series: Series, batch: number, mode: "forward" | "train") => {
    const s = samples.get(key({ series, batch, mode }))
    return s === undefined ? undefined : median(s)
  }
  const perSec = (batch: number, ms: number | undefined) => (ms === undefined ? "-" : (batch / ms * 1000).toFixed(1))
  const ms = (v: number | undefined) => (v === undefined ? "-" : v < 100 ? v.toFixed(1) : v.toFixed(0))
  const ratio = (a: number | undefined, b: number | undefined) => (a === undefined || b === undefined ? "-" : `${(a / b).toFixed(2)}x`)
  const label: Record<Series, string> = {
    gpu: `tfjs ${gpu.name}${gpu.adapter === undefined ? "" : ` (${gpu.adapter.description || gpu.adapter.device})`}`,
    wasm: "tfjs wasm, 1 thread",
    wasm2: "tfjs wasm, data-parallel on 2 threads",
    torch: `PyTorch ${torchVersion ?? ""} CUDA${torchDevice === undefined ? "" : ` (${torchDevice})`}`
  }
  const date = new Date().toISOString().slice(0, 16).replace("T", " ")
  const lines = [
    `Measured ${date} UTC by ${o.command}: the default ShapeWorld UNet (${Denoiser.parameterCount(defaultConfig).toLocaleString("en-US")} parameters, 32x32), ` +
    `${o.reps} rounds after ${warmup} warm-up, median; ${os.cpus().length} x ${os.cpus()[0]?.model ?? "cpu"}, Node ${process.version}.` +
    (gpu.adapter === undefined ? "" : ` Adapter: ${WebGpu.format(gpu.adapter)}.`) +
    (gpuMemory === undefined ? "" : ` GPU buffers allocated at the end: ${(gpuMemory.allocated / 2 ** 20).toFixed(0)} MiB.`) +
    (torch === undefined ? " PyTorch: not importable by the system interpreter, left out." : torchNote ?? ""),
    "",
    "| batch | runs on | forward ms | forward NFE/s | train step ms | train samples/s |",
    "|---|---|---|---|---|---|"
  ]
  for (const batch of o.batches) {
    for (const s of ["gpu", "wasm", "wasm2", "torch"] as const) {
      const f = med(s, batch, "forward")
      const t = med(s, batch, "train")
      if (f === undefined && t === undefined) continue
      lines.push(`| ${batch} | ${label[s]} | ${ms(f)} | ${perSec(batch, f)} | ${ms(t)} | ${perSec(batch, t)} |`)
    }
  }
  lines.push("", `| batch | train samples/s, ${gpu.name} / wasm data-parallel | ${gpu.name} / wasm 1 thread | forward, ${gpu.name} / wasm | train step ms, ${gpu.name} / PyTorch CUDA |`, "|---|---|---|---|---|")
  for (const batch of o.batches) {
    const g = med("gpu", batch, "train")
    lines.push(`| ${batch} | ${ratio(med("wasm2", batch, "train"), g)} | ${ratio(med("wasm", batch, "train"), g)} | ${ratio(med("wasm", batch, "forward"), med("gpu", batch, "forward"))} | ${ratio(g, med("torch", batch, "train"))} |`)
  }
  return lines.join("\n")
}
