/**
 * The job protocol of every worker thread: one `RpcGroup` of Schema-typed
 * requests for the work that a run spreads over threads. Online samples
 * and trajectory shards (`GenerationJobs`), the objective's gradient parts
 * and the frozen reference's errors (`GradientJobs`), evaluation images
 * (`ParallelGenerate`) and data-parallel pretraining shards
 * (`DataParallel`). A request carries the model's current weights (one flat
 * array, parameter order) and every random draw, so a thread holds no state
 * of the run: the draws stay in the main thread, in the one-thread order
 * (evaluation images draw from a generator seeded by (seed, image index),
 * the same on any thread).
 *
 * Float arrays travel as typed arrays through structured clone, never as
 * JSON: a request's arrays are copied (the caller keeps them, and the
 * weights go to every thread), a reply's are transferred (the worker made
 * them for the caller).
 *
 * @since 0.7.0
 */
import { Schema } from "effect"
import { Rpc, RpcGroup } from "effect/rpc"
import { Transferable } from "effect/workers"
import * as Losses from "../objective/Losses.ts"
import * as Weights from "../model/Weights.ts"
import { BackendName } from "../tensor/Backend.ts"
import * as WasmHeap from "../tensor/WasmHeap.ts"
import * as Generate from "../trajectory/Generate.ts"
import * as Trajectory from "../trajectory/Trajectory.ts"

const Float32 = Schema.declare((u): u is Float32Array => u instanceof Float32Array, { expected: "Float32Array" })

/** A float array that is copied to the receiver (the sender keeps using it). */
export const Floats = Transferable.schema(Float32, () => [])

/** A float array whose buffer moves to the receiver (the sender gives it up). */
export const MovedFloats = Transferable.schema(Float32, (a) => [a.buffer])

const Numbers = Schema.Array(Schema.Number)
const Strings = Schema.Array(Schema.String)

/**
 * What a worker thread starts with (the protocol's initial message): the
 * backend it opens and the config of its model replica.
 */
export const Init = Schema.Struct({
  backend: BackendName,
  config: Weights.AnyConfig
})
export type Init = typeof Init.Type

/**
 * A job failed in its thread (an error other than the heap: a replica that
 * cannot take the weights, a bug). The transport names the thread.
 *
 * @since 0.7.0
 */
export class JobFailed extends Schema.TaggedError<JobFailed>()("JobFailed", {
  message: Schema.String
}) {}

const JobError = Schema.Union([WasmHeap.WasmHeapExhausted, JobFailed])

export const TrajectoryOptions = Schema.Struct({
  n: Schema.Int,
  m: Schema.Int,
  inferenceSteps: Schema.Int,
  cfg: Schema.Number,
  estimator: Trajectory.Estimator,
  timestep: Trajectory.TimestepChoice,
  perPrompt: Schema.optionalKey(Schema.Boolean),
  continuation: Schema.optionalKey(Schema.Boolean)
})

export const Draws = Schema.Struct({ itemT0: Numbers, noise: Floats })

/** `TrajectoryShards.TrajectoryData`, as a reply (its arrays move). */
export const TrajectoryData = Schema.Struct({
  n: Schema.Int,
  batch: Schema.Int,
  prompts: Strings,
  sampleShape: Numbers,
  x0: MovedFloats,
  noise: MovedFloats,
  steps: Schema.Array(Schema.Struct({ ts: Numbers, xt: MovedFloats, eps: MovedFloats, x0: MovedFloats })),
  final: Schema.optionalKey(MovedFloats),
  nfe: Schema.Number
})

export const RowInputs = Schema.Struct({ x: Floats, target: Floats, t: Numbers, prompts: Strings })

/** `PortablePart.PortablePart`. */
export const PortablePart = Schema.Struct({
  x: Floats,
  target: Floats,
  t: Numbers,
  prompts: Strings,
  share: Schema.Number,
  dpo: Schema.optionalKey(Schema.Struct({
    refW: Numbers,
    refL: Numbers,
    margin: Numbers,
    beta: Schema.Number,
    placement: Losses.MarginPlacement,
    winnerSft: Schema.optionalKey(Schema.Number)
  })),
  group: Schema.optionalKey(Schema.Struct({
    pairs: Schema.optionalKey(Schema.Array(Schema.Array(Schema.Struct({ w: Schema.Int, l: Schema.Int, weight: Schema.Number, margin: Schema.Number })))),
    ref: Schema.optionalKey(Numbers),
    weights: Schema.optionalKey(Numbers),
    beta: Schema.Number,
    placement: Losses.MarginPlacement,
    batch: Schema.Number
  })),
  nft: Schema.optionalKey(Schema.Struct({
    old: Floats,
    ref: Schema.optionalKey(Floats),
    scale: Numbers,
    r: Numbers,
    beta: Schema.Number,
    clip: Schema.Number,
    kl: Schema.Number,
    count: Schema.Number
  }))
})

/** `DataParallel.Shard`: a pretraining batch's images, prompts, timesteps and noise. */
export const Shard = Schema.Struct({
  batch: Schema.Int,
  images: Floats,
  prompts: Strings,
  t: Numbers,
  noise: Floats
})

/** Online samples of a shard: DDIM (eta 0) from the main thread's noise xT. */
export const Sample = Rpc.make("Sample", {
  payload: { params: Floats, prompts: Strings, xT: Floats, steps: Schema.Int, cfg: Schema.Number },
  success: MovedFloats,
  error: JobError
})

/** Trajectories (`Trajectory.fromDraws`) of a shard of items from the main thread's draws. */
export const Trajectories = Rpc.make("Trajectories", {
  payload: { params: Floats, x0: Floats, prompts: Strings, draws: Draws, options: TrajectoryOptions },
  success: TrajectoryData,
  error: JobError
})

/** Summed loss and gradient (flat, parameter order) of loss parts, and which parameters have one. */
export const Gradients = Rpc.make("Gradients", {
  payload: { params: Floats, parts: Schema.Array(PortablePart) },
  success: Schema.Struct({ value: Schema.Number, grads: MovedFloats, present: Schema.Array(Schema.Boolean) }),
  error: JobError
})

/** Per-row errors (no gradient) of row sets: the frozen reference's errors of DPO parts. */
export const Errors = Rpc.make("Errors", {
  payload: { params: Floats, inputs: Schema.Array(RowInputs) },
  success: Schema.Array(MovedFloats),
  error: JobError
})

/** Evaluation images ([0, 1], HWC) of prompts `firstIndex...`, each from its (seed, index) generator. */
export const Images = Rpc.make("Images", {
  payload: { params: Floats, prompts: Strings, firstIndex: Schema.Int, sampler: Generate.SamplerOptions },
  success: Schema.Array(MovedFloats),
  error: JobError
})

/** The pretraining loss of a shard and its mean gradient (flat, parameter order). */
export const PretrainShard = Rpc.make("PretrainShard", {
  payload: { params: Floats, shard: Shard },
  success: Schema.Struct({ loss: Schema.Number, grads: MovedFloats }),
  error: JobError
})

/**
 * Every job a worker thread serves.
 *
 * @since 0.7.0
 */
export class JobRpcs extends RpcGroup.make(Sample, Trajectories, Gradients, Errors, Images, PretrainShard) {}
