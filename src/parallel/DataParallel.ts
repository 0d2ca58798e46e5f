/**
 * Data-parallel pretraining steps over worker threads. The wasm backend runs
 * on one core in Node, so a step's batch is split into shards: the main
 * thread computes the first shard's gradients while each worker thread
 * (a `PretrainShard` job of the job protocol) computes one other shard's on
 * its own replica.
 * The shard gradients are averaged (weighted by shard size) into the
 * gradient of the whole batch, and the main thread applies the update, so
 * the optimiser state, EMA, checkpoints and `--resume` are exactly those of
 * a single-thread run. Results differ from one thread only by float
 * summation order (tested).
 *
 * Per step a worker receives the current weights and returns its gradients,
 * each one flat Float32Array (4.6 MB for the default model): a few ms
 * against a step of ~1 s.
 *
 * @since 0.2.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect, type Scope } from "effect"
import * as Noise from "../diffusion/Noise.ts"
import * as Schedule from "../diffusion/Schedule.ts"
import * as Denoiser from "../model/Denoiser.ts"
import { forward } from "../model/UNet.ts"
import { usesWorkerThreads } from "../tensor/Backend.ts"
import { paramGrads } from "../tensor/Grad.ts"
import * as HostRead from "../tensor/HostRead.ts"
import * as Scoped from "../tensor/Scoped.ts"
import * as WasmHeap from "../tensor/WasmHeap.ts"
import type { Init } from "./JobProtocol.ts"
import * as JobThreads from "./JobThreads.ts"

/**
 * One shard of a pretraining batch: images in [-1, 1] (B x H x W x C, HWC),
 * prompts ("" = null), timesteps and noise drawn by the main thread.
 *
 * @since 0.2.0
 */
export interface Shard {
  readonly batch: number
  readonly images: Float32Array
  readonly prompts: ReadonlyArray<string>
  readonly t: ReadonlyArray<number>
  readonly noise: Float32Array
}

const keysOf = (params: Readonly<Record<string, tf.Tensor>>) => Object.keys(params)

/**
 * All parameters as one flat array, in the model's parameter order: one
 * concatenation and one read (one wait on a GPU, not one per parameter).
 */
export const flatten = (params: Readonly<Record<string, tf.Tensor>>): Effect.Effect<Float32Array> => {
  const keys = keysOf(params)
  return keys.length === 0
    ? Effect.sync(() => new Float32Array(0))
    : HostRead.consumeFloat32(() => tf.concat(keys.map((k) => tf.reshape(params[k], [-1]))))
}

/** Views of a flat array shaped like `params` (no copies). */
const split = (params: Readonly<Record<string, tf.Tensor>>, flat: Float32Array) => {
  let o = 0
  return keysOf(params).map((k) => {
    const p = params[k]
    const view = flat.subarray(o, o + p.size)
    o += p.size
    return [k, p, view] as const
  })
}

/** Load a flat array (from {@link flatten}) into the variables. */
export const assignFlat = (params: Readonly<Record<string, tf.Variable>>, flat: Float32Array): void => {
  for (const [, p, view] of split(params, flat)) {
    tf.tidy(() => (p as tf.Variable).assign(tf.tensor(view, p.shape, "float32")))
  }
}

/**
 * The denoising MSE of a shard (against the noise, or against v for a
 * v-prediction model) and its parameter gradients (mean over
 * the shard), as tensors owned by the caller.
 *
 * @since 0.2.0
 */
export const lossAndGrads = (model: Denoiser.Model, s: Shard): Effect.Effect<{ loss: number; grads: Record<string, tf.Tensor> }, WasmHeap.WasmHeapExhausted> => {
  const schedule = Schedule.make(model.config.schedule)
  const config = Denoiser.unetConfig(model.config)
  const a = config.architecture
  const shape: [number, number, number, number] = [s.batch, a.imageSize, a.imageSize, a.channels]
  return Effect.flatMap(
    WasmHeap.guarded("pretraining gradients", s.batch, () => paramGrads(() =>
      tf.tidy(() => {
        const x0 = tf.tensor4d(s.images, shape)
        const eps = tf.tensor4d(s.noise, shape)
        const xt = Noise.addNoise(schedule, x0, eps, s.t)
        const inputs = Denoiser.encodeInputs(config, xt, s.t, s.prompts)
        const target = model.config.prediction === "v_prediction" ? Noise.vTarget(schedule, x0, eps, s.t) : eps
        return tf.mean(tf.squaredDifference(forward(model.params, a, inputs), target)) as tf.Scalar
      }), model.params), (r) => tf.dispose([r.value, ...Object.values(r.grads)])),
    ({ grads, value }) =>
      HostRead.scalar(value).pipe(
        Effect.map((loss) => ({ loss, grads })),
        Effect.onError(() => Effect.sync(() => Scoped.disposeAll(grads))),
        Effect.ensuring(Effect.sync(() => value.dispose()))
      )
  )
}

/** {@link lossAndGrads} with the gradients as one flat array in the model's parameter order. */
export const shardGrads = (model: Denoiser.Model, s: Shard): Effect.Effect<{ loss: number; grads: Float32Array }, WasmHeap.WasmHeapExhausted> =>
  Effect.flatMap(lossAndGrads(model, s), (r) => {
    const missing = Object.keys(model.params).filter((k) => r.grads[k] === undefined)
    const flat = missing.length > 0
      ? Effect.die(new Error(`no gradient for ${missing.join(", ")}`))
      : flatten(Object.fromEntries(Object.keys(model.params).map((k) => [k, r.grads[k]])))
    return flat.pipe(
      Effect.map((grads) => ({ loss: r.loss, grads })),
      Effect.ensuring(Effect.sync(() => Scoped.disposeAll(r.grads)))
    )
  })

/**
 * Split a batch into `parts` shards of near-equal size (the first ones one
 * larger), in order.
 *
 * @since 0.2.0
 */
export const shards = (whole: Shard, parts: number): Array<Shard> => {
  const per = whole.images.length / whole.batch
  const out: Array<Shard> = []
  let start = 0
  for (let i = 0; i < parts; i++) {
    const n = Math.floor(whole.batch / parts) + (i < whole.batch % parts ? 1 : 0)
    if (n === 0) continue
    out.push({
      batch: n,
      images: whole.images.subarray(start * per, (start + n) * per),
      prompts: whole.prompts.slice(start, start + n),
      t: whole.t.slice(start, start + n),
      noise: whole.noise.subarray(start * per, (start + n) * per)
    })
    start += n
  }
  return out
}

/**
 * A pool of gradient workers for one model. `workers` counts the main
 * thread: 1 means no threads at all.
 *
 * @since 0.2.0
 */
export interface Pool {
  readonly workers: number
  /**
   * Loss and gradients of the whole batch at the model's current weights:
   * with worker threads one flat array in parameter order (for
   * `AdamW.stepFlat`), without them the gradient tensors (owned by the
   * caller), which stay on the device of a native backend.
   */
  readonly lossAndGrads: (model: Denoiser.Model, whole: Shard) => Effect.Effect<{ loss: number; grads: Float32Array | Record<string, tf.Tensor> }, WasmHeap.WasmHeapExhausted>
}

/**
 * `workers - 1` worker threads of the job protocol (each initialises
 * `backend` and a replica), stopped with the scope.
 *
 * @since 0.2.0
 */
export const make = (model: Denoiser.Model, workers: number, backend: string): Effect.Effect<Pool, never, Scope.Scope> =>
  Effect.map(
    workers > 1 && usesWorkerThreads(backend)
      ? JobThreads.make({ backend: backend as Init["backend"], config: model.config }, workers - 1)
      : Effect.succeed(JobThreads.inline),
    fromThreads
  )

/**
 * The pool over a transport of the job protocol: worker threads, or
 * another process's (effect/cluster runners, `ClusterJobs`); each of its
 * threads but this one computes a shard's `PretrainShard` job.
 *
 * @since 0.8.0
 */
export const fromThreads = (threads: JobThreads.Threads): Pool => ({
  workers: threads.threads,
  lossAndGrads: (m, whole) =>
    Effect.gen(function*() {
      const parts = shards(whole, threads.threads)
      if (parts.length === 1 && threads.computesHere !== false) return yield* lossAndGrads(m, whole)
      const params = yield* flatten(m.params)
      // The main thread's shard runs while the workers run theirs.
      const results = yield* JobThreads.shares(
        threads,
        parts,
        (shard) => (client) => client.PretrainShard({ params, shard }),
        (shard) => shardGrads(m, shard)
      ).pipe(Effect.catchTag("GenerationWorkerFailed", (e) => Effect.die(e)))
      const weights = parts.map((s) => s.batch / whole.batch)
      // Weighted mean over shards on the flat arrays: one pass, no tensor ops
      // (per-parameter tensor ops cost ~1,000 kernel calls a step on wasm).
      const [first, ...others] = results
      const grads = first.grads
      for (let i = 0; i < grads.length; i++) {
        let g = grads[i] * weights[0]
        for (let j = 0; j < others.length; j++) g += others[j].grads[i] * weights[j + 1]
        grads[i] = g
      }
      const loss = first.loss * weights[0] + others.reduce((a, o, i) => a + o.loss * weights[i + 1], 0)
      return { loss, grads }
    })
})
