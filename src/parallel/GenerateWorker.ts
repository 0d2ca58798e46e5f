/**
 * Worker thread for {@link ParallelGenerate}: initialises its own tfjs
 * backend, builds the model from transferred weights, and generates the
 * images of the prompt ranges it is sent.
 *
 * @since 0.1.0
 */
import { Effect } from "effect"
import { parentPort, workerData } from "node:worker_threads"
import type { StoredTensor } from "../io/Safetensors.ts"
import * as Denoiser from "../model/Denoiser.ts"
import type { UNetConfig } from "../model/UNetConfig.ts"
import { initialise } from "../tensor/Backend.ts"
import * as Generate from "../trajectory/Generate.ts"

interface Init {
  readonly backend: "wasm" | "cpu" | "auto" | "tensorflow" | "tensorflow-gpu"
  readonly config: UNetConfig
  readonly weights: Record<string, StoredTensor>
}

export interface Job {
  readonly id: number
  readonly prompts: ReadonlyArray<string>
  readonly firstIndex: number
  readonly sampler: Generate.SamplerOptions
}

const init = workerData as Init
const ready = initialise(init.backend).then((r) => {
  if ("_tag" in r) throw r
  return Denoiser.fromStored(init.config, init.weights, false)
})

parentPort!.on("message", (job: Job) => {
  ready.then(async (model) => {
    const images = await Effect.runPromise(Generate.generate(model, job.prompts, job.sampler, undefined, job.firstIndex))
    parentPort!.postMessage({ id: job.id, images }, images.map((i) => i.buffer as ArrayBuffer))
  }).catch((e: unknown) => parentPort!.postMessage({ id: job.id, error: e instanceof Error ? e.message : String(e) }))
})
