/**
 * Worker thread of {@link DataParallel}: owns a replica of the denoiser on
 * its own tfjs backend. For each shard it is sent, it loads the current
 * weights, computes the pretraining loss and gradients, and returns them as
 * one flat array (parameter order of `paramSpecs`). It keeps no optimiser
 * state: the main thread owns the update, so checkpoints and resume are
 * unchanged by the number of workers.
 *
 * @since 0.2.0
 */
import { Effect } from "effect"
import { parentPort, workerData } from "node:worker_threads"
import * as Denoiser from "../model/Denoiser.ts"
import type { UNetConfig } from "../model/UNetConfig.ts"
import { initialise } from "../tensor/Backend.ts"
import * as WasmHeap from "../tensor/WasmHeap.ts"
import * as DataParallel from "./DataParallel.ts"

interface Init {
  readonly backend: "wasm" | "cpu" | "auto" | "tensorflow" | "tensorflow-gpu"
  readonly config: UNetConfig
}

const init = workerData as Init
const ready = initialise(init.backend).then((r) => {
  if ("_tag" in r) throw r
  return Denoiser.init(init.config, 0, true)
})

parentPort!.on("message", (job: DataParallel.ShardJob) => {
  ready.then(async (model) => {
    DataParallel.assignFlat(model.params, job.params)
    const r = await Effect.runPromise(DataParallel.shardGrads(model, job))
    parentPort!.postMessage({ loss: r.loss, grads: r.grads }, [r.grads.buffer as ArrayBuffer])
  }).catch((e: unknown) =>
    parentPort!.postMessage(
      e instanceof WasmHeap.WasmHeapExhausted
        ? { heap: { what: e.what, rows: e.rows, heapBytes: e.heapBytes, limitBytes: e.limitBytes, detail: e.detail } }
        : { error: e instanceof Error ? e.message : String(e) }
    )
  )
})
