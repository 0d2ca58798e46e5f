/**
 * The generation and gradient jobs of a sharpening iteration on several
 * threads: `GenerationJobs` and `GradientJobs` over a transport of the job
 * protocol ({@link JobThreads}). The wasm backend runs on one core in Node,
 * and some 95% of an RLHF iteration's network evaluations are generation:
 * the online samples (DDIM 50, CFG 5) and the n paths with their
 * continuation to t = 0. Both are split by batch item over the threads, the
 * main thread counting as one: it computes its shard while each worker
 * thread computes one other on a replica of the policy.
 *
 * Every random draw stays on the run's generator in the main thread, in the
 * one-thread order (the caller draws, the jobs only compute), and eta 0 DDIM
 * is deterministic given its noise, so the result is the one-thread result
 * row for row (tested) and `--resume` is unchanged. A job carries the
 * policy's current weights as one flat array (4.6 MB for the default model:
 * a few ms per call against seconds of generation).
 *
 * The same threads differentiate the image-level objectives' micro-batch
 * parts (`gradients`, used by `Optimizer.step` for parts with a
 * `PortablePart` form) and compute the frozen reference's errors: the update
 * is then one thread's up to the order in which the parts' gradients are
 * summed.
 *
 * @since 0.7.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Context, Effect, Layer, type Scope } from "effect"
import * as Schedule from "../diffusion/Schedule.ts"
import * as Denoiser from "../model/Denoiser.ts"
import * as GradientJobs from "../objective/GradientJobs.ts"
import { usesWorkerThreads } from "../tensor/Backend.ts"
import * as HostRead from "../tensor/HostRead.ts"
import * as GenerationJobs from "../trajectory/GenerationJobs.ts"
import * as TrajectoryShards from "../trajectory/TrajectoryShards.ts"
import { flatten } from "./DataParallel.ts"
import * as JobHandlers from "./JobHandlers.ts"
import type { Init } from "./JobProtocol.ts"
import * as JobThreads from "./JobThreads.ts"

/**
 * Generation and gradient jobs on `threads` threads (see the module
 * comment). The tensors returned belong to the caller.
 *
 * @since 0.7.0
 */
export interface Pool extends GenerationJobs.Jobs, GradientJobs.Jobs {
  readonly threads: number
  /** Worker threads running now (0 once the scope closed). */
  readonly liveThreads: () => number
}

/** The pool of one thread: everything computed here, exactly as before threads existed. */
export const inline: Pool = {
  ...GenerationJobs.inline,
  ...GradientJobs.inline,
  threads: 1,
  liveThreads: () => 0
}

/**
 * The jobs over a transport: each batch split into one shard per thread,
 * the first computed here.
 *
 * @since 0.7.0
 */
export const fromThreads = (transport: JobThreads.Threads): Pool => {
  if (transport.threads <= 1 && transport.refresh === undefined && transport.computesHere !== false) return inline
  // One share computed here alone, as on one thread (a coordinating transport sends even one away).
  const alone = (shares: number) => shares <= 1 && transport.computesHere !== false
  return {
    // Read per call: a transport's threads may change between iterations (`refresh`).
    get threads() {
      return transport.threads
    },
    liveThreads: transport.liveThreads,
    refresh: transport.refresh,
    get computesHere() {
      return transport.computesHere
    },
    sample: (model, prompts, xT, o) =>
      Effect.gen(function*() {
        const threads = transport.threads
        const per = xT.length / prompts.length
        // Every row costs the same: contiguous shards of near-equal size.
        const count = Math.min(threads, prompts.length)
        const size = Math.floor(prompts.length / count)
        const extra = prompts.length % count
        const parts = Array.from({ length: count }, (_, k) => {
          const start = k * size + Math.min(k, extra)
          return { start, end: start + size + (k < extra ? 1 : 0) }
        })
        if (alone(parts.length)) return yield* inline.sample(model, prompts, xT, o)
        const params = yield* flatten(model.params)
        const job = (s: { start: number; end: number }) => ({ prompts: prompts.slice(s.start, s.end), steps: o.steps, cfg: o.cfg })
        const images = yield* JobThreads.shares(
          transport,
          parts,
          (s) => (client) => client.Sample({ ...job(s), params, xT: xT.slice(s.start * per, s.end * per) }),
          (s) => JobHandlers.sample(model, { ...job(s), xT: xT.subarray(s.start * per, s.end * per) })
        )
        const out = new Float32Array(xT.length)
        images.forEach((a, k) => out.set(a, parts[k].start * per))
        return tf.tensor(out, [prompts.length, ...Denoiser.sampleShape(model.config)], "float32")
      }),
    trajectories: (model, x0, prompts, draws, o) =>
      Effect.gen(function*() {
        const threads = transport.threads
        const schedule = Schedule.make(model.config.schedule)
        const items = TrajectoryShards.partition(draws.itemT0, threads, o, schedule.trainSteps)
        if (alone(items.length)) return yield* inline.trajectories(model, x0, prompts, draws, o)
        const [whole, params] = yield* Effect.all([
          Effect.map(HostRead.float32(x0), (data) => ({ x0: data, prompts, draws })),
          flatten(model.params)
        ], { concurrency: "unbounded" })
        const shards = items.map((its) => TrajectoryShards.shard(whole, its, o.n))
        const data = yield* JobThreads.shares(
          transport,
          shards,
          (s) => (client) => client.Trajectories({ ...s, params, options: o }),
          (s) => JobHandlers.trajectories(model, { ...s, options: o })
        )
        return TrajectoryShards.fromData(TrajectoryShards.merge(data.map((d, k) => ({ items: items[k], data: d })), prompts.length))
      }),
    gradients: (model, groups, here) =>
      Effect.gen(function*() {
        const params = yield* flatten(model.params)
        const [mine, remote] = yield* transport.fanOut(
          groups.map((parts) => (client) => client.Gradients({ params, parts })),
          Effect.sync(here)
        )
        return { here: mine, remote }
      }),
    errors: (model, inputs) =>
      Effect.gen(function*() {
        const threads = transport.threads
        // Set k in share k mod threads (share 0 is this thread's, where it computes one).
        const shards = Array.from({ length: Math.min(threads, inputs.length) }, (_, s) => inputs.flatMap((p, k) => (k % threads === s ? [{ p, k }] : [])))
        if (alone(shards.length)) return yield* inline.errors(model, inputs)
        const params = yield* flatten(model.params)
        const results = yield* JobThreads.shares(
          transport,
          shards,
          (s) => (client) => client.Errors({ params, inputs: s.map((e) => e.p) }),
          (s) => JobHandlers.errors(model, s.map((e) => e.p))
        )
        const out = new Array<Float32Array>(inputs.length)
        results.forEach((arrays, s) => shards[s].forEach((e, j) => (out[e.k] = arrays[j])))
        return out
      })
  }
}

/**
 * `threads` threads for models of `config` on `backend` (the main thread
 * counts as one; on a backend without worker threads, one), stopped with
 * the scope. `worker`: the threads' script (a test may give one that fails).
 *
 * @since 0.7.0
 */
export const make = (
  config: Denoiser.ModelConfig,
  threads: number,
  backend: string,
  worker?: URL
): Effect.Effect<Pool, never, Scope.Scope> =>
  threads <= 1 || !usesWorkerThreads(backend)
    ? Effect.succeed(inline)
    : Effect.map(JobThreads.make({ backend: backend as Init["backend"], config }, threads - 1, worker === undefined ? {} : { worker }), fromThreads)

/**
 * The generation and gradient jobs of a sharpening run: the online samples
 * (`BatchSource.online`), the trajectories (`TrajectoryGenerator.layer`),
 * the image-level gradient parts and reference errors use them when they
 * are provided, else they compute in this thread.
 *
 * @since 0.7.0
 */
export class GenerationPool extends Context.Service<GenerationPool, Pool>()("sharpen/parallel/GenerationPool") {
  /** The jobs over the transport provided (`JobThreads`); provides `GenerationJobs` and `GradientJobs` too. */
  static readonly fromTransport = Layer.effect(
    GenerationPool,
    Effect.gen(function*() {
      return fromThreads(yield* JobThreads.JobThreads)
    })
  ).pipe(Layer.flatMap((context) => {
    const pool = Context.get(context, GenerationPool)
    return Layer.mergeAll(
      Layer.succeed(GenerationPool, pool),
      Layer.succeed(GenerationJobs.GenerationJobs, pool),
      Layer.succeed(GradientJobs.GradientJobs, pool)
    )
  }))

  /**
   * `threads` threads for the policy (the main thread counts as one; 1: no
   * worker threads; `JobThreads.forRun`), released with the layer's scope
   * (no thread outlives the run, also on interruption).
   */
  static readonly layer = (threads: number | "auto") => GenerationPool.fromTransport.pipe(Layer.provide(JobThreads.JobThreads.forRun(threads)))
}
