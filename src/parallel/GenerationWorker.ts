/**
 * Worker thread of {@link GenerationPool}: owns a replica of the policy on
 * its own tfjs backend. Each job brings the policy's current weights (one
 * flat array, parameter order) and every random draw, so the thread holds no
 * state of the run: it computes a shard of the online samples or of the
 * trajectories, or the gradients of some loss parts, and returns them as
 * plain arrays.
 *
 * @since 0.5.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import { parentPort, workerData } from "node:worker_threads"
import * as Schedule from "../diffusion/Schedule.ts"
import * as Generate from "../trajectory/Generate.ts"
import * as Denoiser from "../model/Denoiser.ts"
import * as PortablePart from "../objective/PortablePart.ts"
import { initialise } from "../tensor/Backend.ts"
import { paramGrads } from "../tensor/Grad.ts"
import * as HostRead from "../tensor/HostRead.ts"
import * as WasmHeap from "../tensor/WasmHeap.ts"
import * as Trajectory from "../trajectory/Trajectory.ts"
import * as TrajectoryShards from "../trajectory/TrajectoryShards.ts"
import * as DataParallel from "./DataParallel.ts"

export interface Init {
  readonly backend: "wasm" | "cpu" | "auto" | "tensorflow" | "tensorflow-gpu"
  readonly config: Denoiser.ModelConfig
}

/** Online samples of a shard: DDIM from the main thread's noise xT ([batch, ...sampleShape]). */
export interface SampleJob {
  readonly kind: "sample"
  readonly id: number
  readonly params: Float32Array
  readonly prompts: ReadonlyArray<string>
  readonly xT: Float32Array
  readonly steps: number
  readonly cfg: number
}

/** Trajectories of a shard of items from the main thread's draws. */
export interface TrajectoryJob {
  readonly kind: "trajectories"
  readonly id: number
  readonly params: Float32Array
  readonly x0: Float32Array
  readonly prompts: ReadonlyArray<string>
  readonly draws: Trajectory.Draws
  readonly options: Trajectory.TrajectoryOptions
}

/** Summed gradients of loss parts (each `PortablePart.loss`) at the job's weights. */
export interface GradientJob {
  readonly kind: "gradients"
  readonly id: number
  readonly params: Float32Array
  readonly parts: ReadonlyArray<PortablePart.PortablePart>
}

/** Per-row errors of row sets at the job's weights (the frozen reference's, for DPO parts). */
export interface ErrorsJob {
  readonly kind: "errors"
  readonly id: number
  readonly params: Float32Array
  readonly inputs: ReadonlyArray<PortablePart.RowInputs>
}

export type Job = SampleJob | TrajectoryJob | GradientJob | ErrorsJob

export interface Reply {
  readonly id: number
  readonly x0?: Float32Array
  readonly trajectories?: TrajectoryShards.TrajectoryData
  /** Gradients: the parts' summed loss, their summed gradient (flat, parameter order), which parameters have one. */
  readonly value?: number
  readonly grads?: Float32Array
  readonly present?: ReadonlyArray<boolean>
  /** Errors: one array of per-row errors per input. */
  readonly errors?: ReadonlyArray<Float32Array>
  readonly error?: string
  /** The thread's heap ran out (the fields of WasmHeapExhausted). */
  readonly heap?: ConstructorParameters<typeof WasmHeap.WasmHeapExhausted>[0]
}

const init = workerData as Init
const ready = initialise(init.backend).then((r) => {
  if ("_tag" in r) throw r
  // Trainable: gradient jobs differentiate the replica.
  return Denoiser.init(init.config, 0, true)
})

const size = (model: Denoiser.Model) => Object.values(model.params).reduce((a, p) => a + p.size, 0)

/** Read a tensor made under the heap guard, and dispose it. */
const consume = async (x: tf.Tensor): Promise<Float32Array> => {
  try {
    return await HostRead.promise(x)
  } finally {
    x.dispose()
  }
}

const run = async (model: Denoiser.Model, job: Job): Promise<{ reply: Reply; transfer: Array<ArrayBuffer> }> => {
  if (job.params.length !== size(model)) throw new RangeError(`weights of ${job.params.length} values for a replica of ${size(model)}`)
  DataParallel.assignFlat(model.params, job.params)
  if (job.kind === "gradients") {
    const keys = Object.keys(model.params)
    let end = 0
    const offsets = keys.map((k) => (end += model.params[k].size) - model.params[k].size)
    const grads = new Float32Array(job.params.length)
    const present = keys.map(() => false)
    let value = 0
    for (const part of job.parts) {
      const r = WasmHeap.guard("loss gradients (worker thread)", part.t.length, () => paramGrads(() => PortablePart.loss(model, part), model.params), (g) => tf.dispose([g.value, ...Object.values(g.grads)]))
      // The part's loss and gradients in one read: [loss, each present gradient in parameter order].
      const has = keys.flatMap((k, i) => (r.grads[k] === undefined ? [] : [i]))
      let data: Float32Array
      try {
        data = await consume(tf.tidy(() => tf.concat([tf.reshape(r.value, [1]), ...has.map((i) => tf.reshape(r.grads[keys[i]], [-1]))])))
      } finally {
        tf.dispose([r.value, ...Object.values(r.grads)])
      }
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
    return { reply: { id: job.id, value, grads, present }, transfer: [grads.buffer as ArrayBuffer] }
  }
  if (job.kind === "errors") {
    const errors: Array<Float32Array> = []
    for (const p of job.inputs) {
      const shape = [p.t.length, ...Denoiser.sampleShape(model.config)]
      // (PortablePart.errorsOf, with the heap guard around the computation)
      errors.push(await consume(WasmHeap.guard("reference errors (worker thread)", p.t.length, () =>
        tf.tidy(() => PortablePart.rowErrors(model, tf.tensor(p.x, shape, "float32"), tf.tensor(p.target, shape, "float32"), p.t, p.prompts)))))
    }
    return { reply: { id: job.id, errors }, transfer: errors.map((e) => e.buffer as ArrayBuffer) }
  }
  const shape = Denoiser.sampleShape(model.config)
  const batch = job.prompts.length
  if (job.kind === "sample") {
    const data = await consume(WasmHeap.guard("online samples (worker thread)", batch, () =>
      tf.tidy(() => Generate.fromNoise(model, job.prompts, tf.tensor(job.xT, [batch, ...shape], "float32"), job))))
    return { reply: { id: job.id, x0: data }, transfer: [data.buffer as ArrayBuffer] }
  }
  const schedule = Schedule.make(model.config.schedule)
  const x0 = tf.tensor(job.x0, [batch, ...shape], "float32")
  let t: Trajectory.Trajectories
  try {
    t = WasmHeap.guard("trajectories (worker thread)", batch * job.options.n, () =>
      Trajectory.fromDraws(model, schedule, x0, job.prompts, job.draws, job.options), Trajectory.dispose)
  } finally {
    x0.dispose()
  }
  let data: TrajectoryShards.TrajectoryData
  try {
    data = await Effect.runPromise(TrajectoryShards.toData(t))
  } finally {
    Trajectory.dispose(t)
  }
  const arrays = [data.x0, data.noise, ...data.steps.flatMap((s) => [s.xt, s.eps, s.x0]), ...(data.final === undefined ? [] : [data.final])]
  return { reply: { id: job.id, trajectories: data }, transfer: arrays.map((a) => a.buffer as ArrayBuffer) }
}

// One job at a time, in arrival order: a job that awaits its reads must not
// see the next job's weights assigned under it.
let queue: Promise<void> = Promise.resolve()

parentPort!.on("message", (job: Job) => {
  queue = queue.then(() =>
    ready.then(async (model) => {
      const { reply, transfer } = await run(model, job)
      parentPort!.postMessage(reply, transfer)
    }).catch((e: unknown) =>
      parentPort!.postMessage(
        e instanceof WasmHeap.WasmHeapExhausted
          ? { id: job.id, heap: { what: e.what, rows: e.rows, heapBytes: e.heapBytes, limitBytes: e.limitBytes, detail: e.detail } }
          : { id: job.id, error: e instanceof Error ? e.message : String(e) }
      )
    )
  )
})
