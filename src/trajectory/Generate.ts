/**
 * Text-to-image generation with a denoiser: DDIM with classifier-free
 * guidance, batched, seeded per image.
 *
 * Each image's noise comes from its own generator seeded by (seed, index),
 * so an image does not change with the batch size or with the other prompts
 * in the file. x0 predictions are clipped to [-1, 1] at each step (diffusers'
 * `clip_sample` default for pixel-space DDIM).
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Schema } from "effect"
import * as Ddim from "../diffusion/Ddim.ts"
import { attempt, type DiffusionError } from "../diffusion/DiffusionError.ts"
import * as Schedule from "../diffusion/Schedule.ts"
import * as Denoiser from "../model/Denoiser.ts"
import * as HostRead from "../tensor/HostRead.ts"
import { Rng } from "../tensor/Random.ts"
import * as Steps from "../tensor/Steps.ts"
import type * as WasmHeap from "../tensor/WasmHeap.ts"

export const SamplerOptions = Schema.Struct({
  steps: Schema.Int.check(Schema.isGreaterThan(0), Schema.isLessThanOrEqualTo(1000)),
  cfg: Schema.Number.check(Schema.isGreaterThanOrEqualTo(0)),
  eta: Schema.Number.check(Schema.isGreaterThanOrEqualTo(0)),
  seed: Schema.Int,
  batchSize: Schema.Int.check(Schema.isGreaterThan(0))
})
export type SamplerOptions = typeof SamplerOptions.Type

/** The paper's sampling defaults (DDIM 50 steps, CFG 5, eta 0). */
export const paperDefaults: SamplerOptions = { steps: 50, cfg: 5, eta: 0, seed: 0, batchSize: 16 }

/** Model evaluations per image: one per step, two with guidance. */
export const nfePerImage = (o: Pick<SamplerOptions, "steps" | "cfg">): number => o.steps * (o.cfg === 1 ? 1 : 2)

/** The generator of image `index` under `seed`. */
export const imageRng = (seed: number, index: number): Rng => Rng.fromSeed((Math.imul(seed, 0x01000193) ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0)

/** Standard-normal noise for a batch, each item from its own generator. */
export const batchNoise = (rngs: ReadonlyArray<Rng>, shape: ReadonlyArray<number>): tf.Tensor => {
  const per = shape.slice(1).reduce((a, b) => a * b, 1)
  const data = new Float32Array(rngs.length * per)
  rngs.forEach((r, i) => data.set(r.normals(per), i * per))
  return tf.tensor(data, shape as Array<number>, "float32")
}

/** Standard-normal noise of any shape from one generator. */
export const normalTensor = (rng: Rng, shape: ReadonlyArray<number>): tf.Tensor =>
  tf.tensor(rng.normals(shape.reduce((a, b) => a * b, 1)), shape as Array<number>, "float32")

/**
 * DDIM (eta 0, x0 clipped to [-1, 1]) from given noise xT with guidance
 * `cfg`: deterministic, and each row depends only on its own noise and
 * prompt, so a batch may be split over threads. Returns model-space samples.
 *
 * @since 0.5.0
 */
export const fromNoise = (model: Denoiser.Model, prompts: ReadonlyArray<string>, xT: tf.Tensor, o: { readonly steps: number; readonly cfg: number }): tf.Tensor =>
  Steps.drain(fromNoiseSteps(model, prompts, xT, o))

/**
 * {@link fromNoise} as steps (one per DDIM step), for a job that must stop
 * between them when interrupted (`Steps.run`).
 *
 * @since 0.8.0
 */
export const fromNoiseSteps = (model: Denoiser.Model, prompts: ReadonlyArray<string>, xT: tf.Tensor, o: { readonly steps: number; readonly cfg: number }): Steps.Steps<tf.Tensor> =>
  Ddim.sampleSteps({
    schedule: Schedule.make(model.config.schedule),
    denoise: (x, t) => Denoiser.guidedEps(model, x, t, prompts, o.cfg),
    xT,
    inferenceSteps: o.steps,
    clipSample: 1
  })

/** Float images in [0, 1], HWC, one per prompt. */
export const toUnitImages = (x: tf.Tensor): Effect.Effect<Array<Float32Array>> =>
  Effect.map(HostRead.consumeFloat32(() => tf.clipByValue(tf.div(tf.add(x, 1), 2), 0, 1)), (data) => {
    const [b, h, w, c] = x.shape
    return Array.from({ length: b }, (_, i) => data.slice(i * h * w * c, (i + 1) * h * w * c))
  })

/**
 * One sampler batch as steps (one per DDIM step): its noise from `rngs`,
 * one generator per image, then DDIM down to clean data (model space; the
 * caller owns the result).
 *
 * @since 0.8.0
 */
export function* batchSteps(model: Denoiser.Model, batch: ReadonlyArray<string>, rngs: ReadonlyArray<Rng>, o: SamplerOptions): Steps.Steps<tf.Tensor> {
  const xT = batchNoise(rngs, [batch.length, ...Denoiser.sampleShape(model.config)])
  try {
    return yield* Ddim.sampleSteps({
      schedule: Schedule.make(model.config.schedule),
      denoise: (x, t) => Denoiser.guidedEps(model, x, t, batch, o.cfg),
      xT,
      inferenceSteps: o.steps,
      eta: o.eta,
      noise: (s) => batchNoise(rngs, s),
      clipSample: 1
    })
  } finally {
    xT.dispose()
  }
}

/** The images of `prompts` in sampler batches, each sampled by `sampleBatch`. */
const inBatches = <E>(sampleBatch: (batch: ReadonlyArray<string>, rngs: ReadonlyArray<Rng>) => Effect.Effect<tf.Tensor, E>) =>
(
  model: Denoiser.Model,
  prompts: ReadonlyArray<string>,
  o: SamplerOptions,
  onBatch?: (done: number, total: number) => void,
  firstIndex = 0
): Effect.Effect<Array<Float32Array>, E> =>
  Effect.gen(function*() {
    const out: Array<Float32Array> = []
    for (let start = 0; start < prompts.length; start += o.batchSize) {
      const batch = prompts.slice(start, start + o.batchSize)
      const rngs = batch.map((_, i) => imageRng(o.seed, firstIndex + start + i))
      // Not an acquire (uninterruptible): a stepped batch must stay interruptible between its steps.
      const images = yield* Effect.uninterruptibleMask((restore) =>
        Effect.flatMap(restore(sampleBatch(batch, rngs)), (x0) => Effect.ensuring(toUnitImages(x0), Effect.sync(() => x0.dispose())))
      )
      out.push(...images)
      onBatch?.(Math.min(start + o.batchSize, prompts.length), prompts.length)
    }
    return out
  })

/**
 * Generate one image per prompt. `onBatch(done, total)` reports progress.
 * Returns [0, 1] float images (HWC).
 *
 * @since 0.1.0
 */
export const generate: (
  model: Denoiser.Model,
  prompts: ReadonlyArray<string>,
  o: SamplerOptions,
  onBatch?: (done: number, total: number) => void,
  firstIndex?: number
) => Effect.Effect<Array<Float32Array>, DiffusionError> = (model, prompts, o, onBatch, firstIndex) =>
  inBatches((batch, rngs) => attempt(() => Steps.drain(batchSteps(model, batch, rngs, o))))(model, prompts, o, onBatch, firstIndex)

/**
 * {@link generate} with a turn of the event loop between DDIM steps, so that
 * an interrupt (a trainer's Ctrl-C reaching a runner's `Images` job) stops
 * it within one step (`Steps.run`); the same images, bit for bit.
 *
 * @since 0.8.0
 */
export const generateStepped = (
  model: Denoiser.Model,
  prompts: ReadonlyArray<string>,
  o: SamplerOptions,
  firstIndex = 0
): Effect.Effect<Array<Float32Array>, WasmHeap.WasmHeapExhausted> =>
  inBatches((batch, rngs) => Steps.run("evaluation images", batch.length, () => batchSteps(model, batch, rngs, o), (x) => x.dispose()))(model, prompts, o, undefined, firstIndex)
