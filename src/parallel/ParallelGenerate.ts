/**
 * Generation on several cores. The wasm backend is single-threaded in Node,
 * so sampling many prompts (evaluation) splits them over worker threads of
 * the job protocol (`Images` jobs of one sampler batch each, handed out as
 * threads become free), each with its own backend and a replica that takes
 * the model's weights with the job.
 *
 * Every image's noise is seeded by (seed, index), so the result is identical
 * to `Generate.generate` whatever the number of workers (tested).
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Cause, Effect, Exit } from "effect"
import type * as Denoiser from "../model/Denoiser.ts"
import { usesWorkerThreads } from "../tensor/Backend.ts"
import * as Generate from "../trajectory/Generate.ts"
import { flatten } from "./DataParallel.ts"
import type { Init } from "./JobProtocol.ts"
import * as JobThreads from "./JobThreads.ts"

export { defaultWorkers, workerExecArgv } from "./JobThreads.ts"

/**
 * The images of `prompts` on `workers` worker threads, in prompt order;
 * `onImages(done)` after each batch.
 *
 * @since 0.7.0
 */
export const onThreads = (
  model: Denoiser.Model,
  prompts: ReadonlyArray<string>,
  sampler: Generate.SamplerOptions,
  workers: number,
  backend: string,
  onImages?: (done: number) => void
) =>
  Effect.gen(function*() {
    const threads = yield* JobThreads.make({ backend: backend as Init["backend"], config: model.config }, workers)
    const params = yield* flatten(model.params)
    const jobs: Array<{ readonly prompts: ReadonlyArray<string>; readonly firstIndex: number }> = []
    for (let start = 0; start < prompts.length; start += sampler.batchSize) {
      jobs.push({ prompts: prompts.slice(start, start + sampler.batchSize), firstIndex: start })
    }
    const results: Array<ReadonlyArray<Float32Array>> = []
    let next = 0
    let done = 0
    // Each thread takes the next batch as it becomes free.
    yield* Effect.forEach(Array.from({ length: threads.threads - 1 }, (_, i) => i + 1), (thread) =>
      Effect.whileLoop({
        while: () => next < jobs.length,
        body: () => {
          const k = next++
          return Effect.map(threads.call(thread, (client) => client.Images({ ...jobs[k], params, sampler })), (images) => ({ k, images }))
        },
        step: ({ images, k }) => {
          results[k] = images
          done += images.length
          onImages?.(done)
        }
      }), { concurrency: "unbounded", discard: true })
    return results.flat()
  }).pipe(Effect.scoped)

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
  const workers = !usesWorkerThreads(backend) ? 1 : Math.min(options.workers ?? JobThreads.defaultWorkers(), Math.ceil(prompts.length / sampler.batchSize))
  if (workers <= 1) {
    return Effect.runPromise(Generate.generate(model, prompts, sampler, (done) => options.onImages?.(done)))
  }
  const exit = await Effect.runPromiseExit(onThreads(model, prompts, sampler, workers, backend, options.onImages), { signal: options.signal })
  if (Exit.isSuccess(exit)) return exit.value
  throw Cause.hasInterruptsOnly(exit.cause) ? new Error("generation interrupted") : Cause.squash(exit.cause)
}
