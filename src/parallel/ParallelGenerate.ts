/**
 * Generation on several cores. The wasm backend is single-threaded in Node,
 * so sampling many prompts (evaluation) splits them over worker threads,
 * each with its own backend and a copy of the model's weights.
 *
 * Every image's noise is seeded by (seed, index), so the result is identical
 * to `Generate.generate` whatever the number of workers (tested).
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import * as os from "node:os"
import { Worker } from "node:worker_threads"
import * as Denoiser from "../model/Denoiser.ts"
import { usesWorkerThreads } from "../tensor/Backend.ts"
import * as Generate from "../trajectory/Generate.ts"
import type { Job } from "./GenerateWorker.ts"

/** Worker threads to use by default: one per core, at most 4 (memory), from SHARPEN_WORKERS if set. */
export const defaultWorkers = (): number => {
  const env = Number(process.env.SHARPEN_WORKERS)
  return Number.isInteger(env) && env > 0 ? env : Math.max(1, Math.min(4, os.availableParallelism()))
}

/** tsx's loader, so a worker can run TypeScript sources in any host (tsx, vitest). */
export const workerExecArgv = (): Array<string> => {
  try {
    return ["--import", import.meta.resolve("tsx")]
  } catch {
    return []
  }
}

/**
 * Generate one image per prompt on `workers` threads ([0,1] HWC images, in
 * prompt order). With one worker it runs in this thread.
 *
 * @since 0.1.0
 */
export const generate = async (
  model: Denoiser.Model,
  prompts: ReadonlyArray<string>,
  sampler: Generate.SamplerOptions,
  options: {
    readonly workers?: number
    readonly backend?: string
    readonly onImages?: (done: number) => void
    /** Abort (e.g. Effect interruption, Ctrl-C): no new jobs, workers stopped, the promise rejects. */
    readonly signal?: AbortSignal
  } = {}
): Promise<Array<Float32Array>> => {
  // Only the JS backends gain from threads (Backend.usesWorkerThreads).
  const backend = options.backend ?? tf.getBackend()
  const workers = !usesWorkerThreads(backend) ? 1 : Math.min(options.workers ?? defaultWorkers(), Math.ceil(prompts.length / sampler.batchSize))
  if (workers <= 1) {
    return Effect.runPromise(Generate.generate(model, prompts, sampler, (done) => options.onImages?.(done)))
  }
  const weights = await Effect.runPromise(Denoiser.toStored(model))
  const threads = Array.from({ length: workers }, () =>
    new Worker(new URL("./GenerateWorker.ts", import.meta.url), {
      workerData: { backend, config: model.config, weights },
      execArgv: workerExecArgv()
    }))
  // Jobs of one sampler batch each, handed out as workers become free.
  const jobs: Array<Job> = []
  for (let start = 0; start < prompts.length; start += sampler.batchSize) {
    jobs.push({ id: jobs.length, prompts: prompts.slice(start, start + sampler.batchSize), firstIndex: start, sampler })
  }
  const results: Array<Array<Float32Array>> = []
  let next = 0
  let done = 0
  try {
    await Promise.all(threads.map((w) =>
      new Promise<void>((resolve, reject) => {
        const send = () => {
          if (options.signal?.aborted) return reject(new Error("generation interrupted"))
          if (next >= jobs.length) return resolve()
          w.postMessage(jobs[next++])
        }
        options.signal?.addEventListener("abort", () => reject(new Error("generation interrupted")), { once: true })
        w.on("message", (m: { id: number; images?: Array<Float32Array>; error?: string }) => {
          if (m.error !== undefined) return reject(new Error(`generation worker: ${m.error}`))
          results[m.id] = m.images!
          done += m.images!.length
          options.onImages?.(done)
          send()
        })
        w.on("error", reject)
        send()
      })
    ))
  } finally {
    await Promise.all(threads.map((w) => w.terminate()))
  }
  return results.flat()
}
