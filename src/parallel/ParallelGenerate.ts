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
 * `onTransport` sends the same jobs over another transport of the job
 * protocol (a sharpening run's effect/cluster runners, `--runners`), this
 * process computing one batch of each round.
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Cause, Effect, Exit } from "effect"
import type { DiffusionError } from "../diffusion/DiffusionError.ts"
import type * as Denoiser from "../model/Denoiser.ts"
import { usesWorkerThreads } from "../tensor/Backend.ts"
import type { GenerationError } from "../trajectory/GenerationJobs.ts"
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

/** The sampler batches of `prompts`, each a job: its prompts and the index of its first. */
const batches = (prompts: ReadonlyArray<string>, batchSize: number) => {
  const jobs: Array<{ readonly prompts: ReadonlyArray<string>; readonly firstIndex: number }> = []
  for (let start = 0; start < prompts.length; start += batchSize) jobs.push({ prompts: prompts.slice(start, start + batchSize), firstIndex: start })
  return jobs
}

/**
 * The images of `prompts` over `transport` (e.g. effect/cluster runners,
 * `ClusterJobs`), in prompt order; `onImages(done)` after each round. The
 * batches are those of the worker threads (one sampler batch per `Images`
 * job, each image from its (seed, index) generator), so the images are
 * theirs. They go in rounds of one batch per thread: this process computes
 * the first of a round (`fanOut` writes the others to their runners
 * before that synchronous work starts), the transport's threads the rest
 * (all of them where it computes nothing here).
 * The threads are read per round; a failed job fails as the transport's
 * jobs fail (`GenerationWorkerFailed`).
 *
 * @since 0.8.0
 */
export const onTransport = (
  transport: JobThreads.Threads,
  model: Denoiser.Model,
  prompts: ReadonlyArray<string>,
  sampler: Generate.SamplerOptions,
  onImages?: (done: number) => void
): Effect.Effect<Array<Float32Array>, GenerationError | DiffusionError> =>
  Effect.gen(function*() {
    const jobs = batches(prompts, sampler.batchSize)
    if ((transport.threads <= 1 || jobs.length <= 1) && transport.computesHere !== false) return yield* Generate.generate(model, prompts, sampler, (done) => onImages?.(done))
    const params = yield* flatten(model.params)
    const results: Array<ReadonlyArray<Float32Array>> = []
    let done = 0
    for (let next = 0; next < jobs.length;) {
      const round = jobs.slice(next, next + Math.max(1, transport.threads))
      const rounds = yield* JobThreads.shares(
        transport,
        round,
        (job) => (client) => client.Images({ ...job, params, sampler }),
        (job) => Generate.generate(model, job.prompts, sampler, undefined, job.firstIndex)
      )
      for (const images of rounds) {
        results.push(images)
        done += images.length
      }
      next += round.length
      onImages?.(done)
    }
    return results.flat()
  })

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
