/**
 * What a job costs beyond its computation: milliseconds per fan-out of
 * `GenerationPool.sample` on 2 threads with the default model's weights
 * (4.6 MB with every job) and almost no work (1 prompt per thread, 1 DDIM
 * step without guidance), and the same call on one thread for scale. Run
 * in two trees, the difference of their 2-thread figures is that of their
 * transports: the weights copied, the messages encoded, posted and
 * decoded, the reply transferred. A sharpening iteration makes about a
 * dozen such fan-outs in some 15 s.
 *
 * Written to run in trees before and after the job protocol (issue #22),
 * whose `GenerationPool.make` differ (a pool, or a scoped Effect of one):
 *
 *   npx tsx bench/job-overhead.ts [--calls 40]
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Exit, Scope } from "effect"
import * as os from "node:os"
import * as Denoiser from "../src/model/Denoiser.ts"
import { defaultConfig } from "../src/model/UNetConfig.ts"
import * as GenerationPool from "../src/parallel/GenerationPool.ts"
import { initialise } from "../src/tensor/Backend.ts"
import { Rng } from "../src/tensor/Random.ts"

const args = process.argv.slice(2)
const i = args.indexOf("--calls")
const calls = i >= 0 ? Number(args[i + 1]) : 40

const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}

type Pool = GenerationPool.Pool & { readonly close?: () => Promise<void> }

const main = async () => {
  const opened = await initialise("wasm")
  if ("_tag" in opened) throw opened
  const model = Denoiser.init(defaultConfig, 0)
  const scope = await Effect.runPromise(Scope.make())
  // Before the protocol: a pool; after: a scoped Effect of one.
  const made: unknown = (GenerationPool.make as (...a: Array<unknown>) => unknown)(defaultConfig, 2, "wasm")
  const pool = (Effect.isEffect(made) ? await Effect.runPromise((made as Effect.Effect<Pool, never, Scope.Scope>).pipe(Scope.provide(scope))) : made) as Pool
  const prompts = ["a red square", "two blue circles"]
  const xT = Rng.fromSeed(1).normals(prompts.length * 32 * 32 * 3)
  const time = async (jobs: { sample: Pool["sample"] }, n: number) => {
    const ms: Array<number> = []
    for (let k = 0; k < n; k++) {
      const t0 = performance.now()
      const x = await Effect.runPromise(jobs.sample(model, prompts, xT, { steps: 1, cfg: 1 }))
      ms.push(performance.now() - t0)
      x.dispose()
    }
    return ms
  }
  // Warm-up: the worker's start, the first job's compilation.
  await time(pool, 3)
  await time(GenerationPool.inline, 3)
  const two: Array<number> = []
  const one: Array<number> = []
  for (let r = 0; r < calls; r++) {
    two.push(...await time(pool, 1))
    one.push(...await time(GenerationPool.inline, 1))
  }
  console.log(
    `fan-out of sample (1 prompt per thread, 1 DDIM step, ${(Denoiser.parameterCount(defaultConfig) * 4 / 2 ** 20).toFixed(1)} MiB of weights), median of ${calls}: ` +
      `2 threads ${median(two).toFixed(1)} ms, 1 thread (both prompts here) ${median(one).toFixed(1)} ms; ` +
      `1-min load average ${os.loadavg()[0].toFixed(2)}; tensors ${tf.memory().numTensors}`
  )
  if (pool.close !== undefined) await pool.close()
  await Effect.runPromise(Scope.close(scope, Exit.void))
  Denoiser.dispose(model)
}

main().then(() => process.exit(0), (e) => {
  console.error(e)
  process.exit(1)
})
