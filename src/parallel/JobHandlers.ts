/**
 * The computations of the job protocol ({@link JobProtocol}), as plain data
 * in and out. The main thread calls them directly on the policy for its own
 * share of a batch; a worker thread serves them ({@link layer}) on a replica
 * that takes each job's weights first. Either way the same inputs meet the
 * same kernels, so a shard's rows are those of one thread. They compute in
 * steps with a turn of the event loop between them (`Steps.run`, between
 * denoising steps, gradient parts and row sets), so an interruption stops a
 * job at the next step; the steps' math is that of the one-shot functions.
 *
 * @since 0.7.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import { RpcWorker } from "effect/rpc"
import * as Schedule from "../diffusion/Schedule.ts"
import * as Denoiser from "../model/Denoiser.ts"
import * as PortablePart from "../objective/PortablePart.ts"
import { initialise } from "../tensor/Backend.ts"
import { paramGrads } from "../tensor/Grad.ts"
import * as HostRead from "../tensor/HostRead.ts"
import * as Steps from "../tensor/Steps.ts"
import * as WasmHeap from "../tensor/WasmHeap.ts"
import * as Generate from "../trajectory/Generate.ts"
import * as Trajectory from "../trajectory/Trajectory.ts"
import * as TrajectoryShards from "../trajectory/TrajectoryShards.ts"
import * as DataParallel from "./DataParallel.ts"
import { Init, JobFailed, JobRpcs } from "./JobProtocol.ts"

/** Read a tensor made under the heap guard, and dispose it. */
const consume = (x: tf.Tensor): Effect.Effect<Float32Array> => Effect.ensuring(HostRead.float32(x), Effect.sync(() => x.dispose()))

/**
 * Online samples: DDIM (eta 0) from the noise xT ([B, ...sampleShape]).
 *
 * @since 0.7.0
 */
export const sample = (
  model: Denoiser.Model,
  p: { readonly prompts: ReadonlyArray<string>; readonly xT: Float32Array; readonly steps: number; readonly cfg: number }
): Effect.Effect<Float32Array, WasmHeap.WasmHeapExhausted> => {
  const shape = [p.prompts.length, ...Denoiser.sampleShape(model.config)]
  return Effect.acquireUseRelease(
    Effect.sync(() => tf.tensor(p.xT, shape, "float32")),
    (xT) => Effect.flatMap(Steps.run("online samples", p.prompts.length, () => Generate.fromNoiseSteps(model, p.prompts, xT, p), (x) => x.dispose()), consume),
    (xT) => Effect.sync(() => xT.dispose())
  )
}

/**
 * `Trajectory.fromDraws` of a shard of items, as arrays.
 *
 * @since 0.7.0
 */
export const trajectories = (
  model: Denoiser.Model,
  p: { readonly x0: Float32Array; readonly prompts: ReadonlyArray<string>; readonly draws: Trajectory.Draws; readonly options: Trajectory.TrajectoryOptions }
): Effect.Effect<TrajectoryShards.TrajectoryData, WasmHeap.WasmHeapExhausted> => {
  const batch = p.prompts.length
  return Effect.acquireUseRelease(
    Effect.sync(() => tf.tensor(p.x0, [batch, ...Denoiser.sampleShape(model.config)], "float32")),
    (x0) =>
      Effect.acquireUseRelease(
        Steps.run("trajectories", batch * p.options.n, () => Trajectory.fromDrawsSteps(model, Schedule.make(model.config.schedule), x0, p.prompts, p.draws, p.options), Trajectory.dispose),
        TrajectoryShards.toData,
        (t) => Effect.sync(() => Trajectory.dispose(t))
      ),
    (x0) => Effect.sync(() => x0.dispose())
  )
}

/**
 * The summed loss and gradient (flat, parameter order) of loss parts, one
 * part at a time, and which parameters have a gradient.
 *
 * @since 0.7.0
 */
export const gradients = (model: Denoiser.Model, parts: ReadonlyArray<PortablePart.PortablePart>) =>
  Effect.gen(function*() {
    const keys = Object.keys(model.params)
    let end = 0
    const offsets = keys.map((k) => (end += model.params[k].size) - model.params[k].size)
    const grads = new Float32Array(end)
    const present = keys.map(() => false)
    let value = 0
    for (const [k, part] of parts.entries()) {
      // A turn of the event loop between parts: an interrupt (a job timeout) lands here.
      if (k > 0) yield* Steps.between
      const r = yield* WasmHeap.guarded("loss gradients", part.t.length, () => paramGrads(() => PortablePart.loss(model, part), model.params), (g) =>
        tf.dispose([g.value, ...Object.values(g.grads)]))
      // The part's loss and gradients in one read: [loss, each present gradient in parameter order].
      const has = keys.flatMap((k, i) => (r.grads[k] === undefined ? [] : [i]))
      const data = yield* HostRead.consumeFloat32(() => tf.concat([tf.reshape(r.value, [1]), ...has.map((i) => tf.reshape(r.grads[keys[i]], [-1]))])).pipe(
        Effect.ensuring(Effect.sync(() => tf.dispose([r.value, ...Object.values(r.grads)])))
      )
      value += data[0]
      let o = 1
      for (const i of has) {
        const at = offsets[i]
        const n = model.params[keys[i]].size
        for (let j = 0; j < n; j++) grads[at + j] += data[o + j]
        present[i] = true
        o += n
      }
    }
    return { value, grads, present }
  })

/**
 * Per-row errors (no gradient) of each row set.
 *
 * @since 0.7.0
 */
export const errors = (model: Denoiser.Model, inputs: ReadonlyArray<PortablePart.RowInputs>): Effect.Effect<Array<Float32Array>, WasmHeap.WasmHeapExhausted> =>
  Effect.forEach(inputs, (p, k) => {
    const shape = [p.t.length, ...Denoiser.sampleShape(model.config)]
    // A turn of the event loop between row sets: an interrupt (Ctrl-C on the trainer) lands here.
    return Effect.flatMap(k > 0 ? Steps.between : Effect.void, () => Effect.flatMap(
      WasmHeap.guarded("reference errors", p.t.length, () =>
        tf.tidy(() => PortablePart.rowErrors(model, tf.tensor(p.x, shape, "float32"), tf.tensor(p.target, shape, "float32"), p.t, p.prompts)), (x) => x.dispose()),
      consume
    ))
  })

const message = (e: unknown) => (e instanceof Error ? e.message : String(e))

/**
 * The job protocol served on a replica of the model named in the thread's
 * initial message: each job's weights are loaded into it first. A job's heap
 * exhaustion stays typed (named as the worker thread's); anything else that
 * goes wrong fails the job with `JobFailed`, so the caller never waits.
 *
 * @since 0.7.0
 */
export const layer = JobRpcs.toLayer(Effect.gen(function*() {
  const init = yield* Effect.orDie(RpcWorker.initialMessage(Init))
  const opened = yield* Effect.promise(() => initialise(init.backend))
  // Trainable: gradient jobs differentiate the replica.
  const replica = "_tag" in opened ? opened : Denoiser.init(init.config, 0, true)
  const size = "_tag" in replica ? 0 : Object.values(replica.params).reduce((a, p) => a + p.size, 0)
  const job = <A, E>(params: Float32Array, f: (model: Denoiser.Model) => Effect.Effect<A, E>): Effect.Effect<A, WasmHeap.WasmHeapExhausted | JobFailed> =>
    Effect.suspend((): Effect.Effect<A, E | JobFailed> => {
      if ("_tag" in replica) return Effect.fail(new JobFailed({ message: replica.message }))
      if (params.length !== size) return Effect.fail(new JobFailed({ message: `weights of ${params.length} values for a replica of ${size}` }))
      DataParallel.assignFlat(replica.params, params)
      return f(replica)
    }).pipe(
      Effect.catchCause((cause) => {
        const e = cause.reasons.find((r) => r._tag === "Fail" || r._tag === "Die")
        const error = e === undefined ? undefined : e._tag === "Fail" ? e.error : e.defect
        return error instanceof WasmHeap.WasmHeapExhausted
          ? Effect.fail(new WasmHeap.WasmHeapExhausted({ ...error, what: `${error.what} (worker thread)` }))
          : e === undefined
          ? Effect.failCause(cause as never)
          : Effect.fail(new JobFailed({ message: message(error) }))
      })
    )
  return JobRpcs.of({
    Sample: (p) => job(p.params, (m) => sample(m, p)),
    Trajectories: (p) => job(p.params, (m) => trajectories(m, p)),
    Gradients: (p) => job(p.params, (m) => gradients(m, p.parts)),
    Errors: (p) => job(p.params, (m) => errors(m, p.inputs)),
    Images: (p) => job(p.params, (m) => Generate.generate(m, p.prompts, p.sampler, undefined, p.firstIndex)),
    PretrainShard: (p) => job(p.params, (m) => DataParallel.shardGrads(m, p.shard))
  })
}))
