/**
 * The data-parallel pretraining step (`DataParallel`, `--workers 2`) against
 * the one-thread step on the same model and batch, alone in the process:
 * rounds alternate one step of each (the first 2 rounds are warm-up), and
 * the table gives the medians and their ratio per batch size. `npm run
 * bench` measures the same step interleaved with PyTorch's; this isolates
 * it from PyTorch's threads.
 *
 *   npx tsx bench/data-parallel.ts                   # batches 8 and 16, 10 rounds
 *   npx tsx bench/data-parallel.ts --batches 8 --rounds 6
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Exit, Scope } from "effect"
import * as os from "node:os"
import { defaultConfig } from "../src/model/UNetConfig.ts"
import * as AdamW from "../src/optim/AdamW.ts"
import * as DataParallel from "../src/parallel/DataParallel.ts"
import { trainStepParallel } from "../src/train/Pretrain.ts"
import { Backend, fromEnv } from "../src/tensor/Backend.ts"
import { median } from "./Race.ts"
import * as TrainingBench from "./TrainingBench.ts"

const args = process.argv.slice(2)
const flag = (name: string) => {
  const i = args.indexOf(`--${name}`)
  return i >= 0 ? args[i + 1] : undefined
}
const batches = (flag("batches") ?? "8,16").split(",").map(Number)
const rounds = Number(flag("rounds") ?? 10)

const program = Effect.gen(function*() {
  const backend = yield* Backend
  const load = os.loadavg()[0]
  const rows: Array<string> = []
  for (const batch of batches) {
    const unet = TrainingBench.make(defaultConfig, batch)
    const scope = yield* Scope.make()
    const pool = yield* DataParallel.make(unet.model, 2, backend.name).pipe(Scope.provide(scope))
    const one: Array<number> = []
    const two: Array<number> = []
    for (let r = 0; r < rounds + 2; r++) {
      let t0 = performance.now()
      yield* Effect.promise(() => unet.step())
      const a = performance.now() - t0
      t0 = performance.now()
      yield* trainStepParallel(pool, unet.model, unet.schedule, unet.adam, unet.data, unet.rng, 1e-4, AdamW.defaults)
      const b = performance.now() - t0
      if (r >= 2) {
        one.push(a)
        two.push(b)
      }
    }
    yield* Scope.close(scope, Exit.void)
    unet.dispose()
    rows.push(`| ${batch} | ${median(one).toFixed(0)} | ${median(two).toFixed(0)} | ${(median(one) / median(two)).toFixed(2)}x |`)
  }
  console.log(`Pretraining step (AdamW) of the default UNet on **${backend.name}**, one thread against data-parallel over 2 threads, median of ${rounds} alternating rounds, ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC, ${os.cpus().length} x ${os.cpus()[0]?.model ?? "cpu"}; 1-min load average ${load.toFixed(2)} before, ${os.loadavg()[0].toFixed(2)} after.\n`)
  console.log("Command: `npx tsx bench/data-parallel.ts" + (args.length > 0 ? ` ${args.join(" ")}` : "") + "`\n")
  console.log("| batch | one thread ms | 2 threads ms | speed-up |")
  console.log("|---|---|---|---|")
  for (const r of rows) console.log(r)
}).pipe(Effect.provide(Backend.make(fromEnv())))

NodeRuntime.runMain(program)
