/**
 * A denoiser eps_theta(x_t, t, prompt): a UNet config plus its parameters,
 * and the `Denoiser` service that owns one in a Scope.
 *
 * The functions on {@link Model} are synchronous and tensor-in/tensor-out
 * (call them inside `tf.tidy` or a gradient function); the service adds
 * loading, saving, cloning and lifetime management as Effects.
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Context, Effect, Layer } from "effect"
import * as ModelDir from "../io/ModelDir.ts"
import type { StoredTensor } from "../io/Safetensors.ts"
import { Backend } from "../tensor/Backend.ts"
import { Rng } from "../tensor/Random.ts"
import * as Scoped from "../tensor/Scoped.ts"
import { initParams } from "./Layers.ts"
import { encode } from "./Tokenizer.ts"
import * as Noise from "../diffusion/Noise.ts"
import * as Schedule from "../diffusion/Schedule.ts"
import * as Mlp from "./Mlp.ts"
import { forward } from "./UNet.ts"
import type { UNetConfig } from "./UNetConfig.ts"
import * as Weights from "./Weights.ts"

/**
 * A model directory's config: the ShapeWorld UNet, or the lab's MLP.
 *
 * @since 0.4.0
 */
export type ModelConfig = UNetConfig | Mlp.MlpConfig

/** Whether a config is the UNet's (text-conditioned images). */
export const isUNet = (c: ModelConfig): c is UNetConfig => c.format === "diffusion-sharpening/unet@1"

/**
 * The UNet config of a model, for image-only code (pretraining, FLOP counts);
 * a defect for another architecture.
 */
export const unetConfig = (c: ModelConfig): UNetConfig => {
  if (!isUNet(c)) throw new TypeError(`this needs a UNet model (${c.format} given)`)
  return c
}

/**
 * Shape of one sample in model space, without the batch axis: [H, W, C] for
 * the UNet, [dim] for the MLP. Stages build noise and placeholders from it,
 * so nothing downstream assumes images.
 *
 * @since 0.4.0
 */
export const sampleShape = (c: ModelConfig): Array<number> =>
  isUNet(c) ? [c.architecture.imageSize, c.architecture.imageSize, c.architecture.channels] : [c.architecture.dim]

/**
 * A model in memory. `params` are tf.Variables (trainable or frozen).
 *
 * @since 0.1.0
 */
export interface Model {
  readonly config: ModelConfig
  readonly params: Readonly<Record<string, tf.Variable>>
}

/** A freshly initialised model (seeded). */
export const init = (config: ModelConfig, seed: number, trainable = true): Model => ({
  config,
  params: ModelDir.variables(initParams(Weights.specsOf(config), Rng.fromSeed(seed)), trainable)
})

export const fromStored = (config: ModelConfig, weights: Readonly<Record<string, StoredTensor>>, trainable = true): Model => ({
  config,
  params: ModelDir.fromStored(Weights.specsOf(config), weights, trainable)
})

export const toStored = (m: Model): Effect.Effect<Record<string, StoredTensor>> => ModelDir.toStored(m.params)

/** A copy with its own variables (e.g. the frozen reference for DPO). */
export const clone = (m: Model, trainable = false): Model => {
  const copies: Record<string, tf.Tensor> = {}
  for (const [k, v] of Object.entries(m.params)) copies[k] = v.clone()
  return { config: m.config, params: ModelDir.variables(copies, trainable) }
}

export const dispose = (m: Model): void => ModelDir.disposeParams(m.params)

export const parameterCount = (m: Model | ModelConfig): number => {
  const config = "params" in m ? m.config : m
  return Weights.specsOf(config)
    .reduce((a, s) => a + s.shape.reduce((x, y) => x * y, 1), 0)
}

/** FLOPs (2 per multiply-add) of one forward pass at a batch size. */
export const flopsPerForward = (config: UNetConfig, batch: number): number => {
  const counter = { flops: 0 }
  const m = init(config, 0, false)
  tf.tidy(() => {
    forward(m.params, config.architecture, encodeInputs(config, tf.zeros([batch, config.architecture.imageSize, config.architecture.imageSize, config.architecture.channels]) as tf.Tensor4D, new Array(batch).fill(0), new Array(batch).fill("")), counter)
  })
  dispose(m)
  return counter.flops
}

/** Tokenise prompts ("" = null prompt) and bundle the UNet input. */
export const encodeInputs = (config: UNetConfig, x: tf.Tensor4D, t: ReadonlyArray<number>, prompts: ReadonlyArray<string>) => {
  const tok = encode(config.vocabulary, config.architecture.maxTokens, prompts)
  return {
    x,
    t,
    tokens: tf.tensor2d(tok.ids, [tok.batch, tok.maxLen], "int32"),
    mask: tf.tensor2d(tok.mask, [tok.batch, tok.maxLen], "float32")
  }
}

/**
 * Predicted noise for x_t at timesteps t (one per item, or one for all).
 * Throws TokenizeError for prompts outside the vocabulary.
 *
 * @since 0.1.0
 */
export const eps = <T extends tf.Tensor>(m: Model, x: T, t: number | ReadonlyArray<number>, prompts: ReadonlyArray<string>): T =>
  tf.tidy(() => {
    const ts = typeof t === "number" ? new Array(x.shape[0]).fill(t) : t
    const c = m.config
    const out = isUNet(c)
      ? forward(m.params, c.architecture, encodeInputs(c, x as unknown as tf.Tensor4D, ts, prompts))
      : Mlp.forward(m.params, c.architecture, x, ts)
    return (m.config.prediction === "v_prediction" ? Noise.epsFromV(scheduleOf(m.config), x, out, ts) : out) as T
  })

const schedules = new WeakMap<ModelConfig, Schedule.Schedule>()

/** The model's noise schedule (computed once per config object). */
export const scheduleOf = (config: ModelConfig): Schedule.Schedule => {
  let s = schedules.get(config)
  if (s === undefined) {
    s = Schedule.make(config.schedule)
    schedules.set(config, s)
  }
  return s
}

/**
 * Classifier-free guided noise: eps_u + scale * (eps_c - eps_u), with the
 * conditional and null prompts run as one doubled batch.
 *
 * @since 0.1.0
 */
export const guidedEps = <T extends tf.Tensor>(m: Model, x: T, t: number | ReadonlyArray<number>, prompts: ReadonlyArray<string>, scale: number): T =>
  tf.tidy(() => {
    if (scale === 1) return eps(m, x, t, prompts)
    const b = x.shape[0]
    const both = eps(m, tf.concat([x, x], 0), typeof t === "number" ? t : [...t, ...t], [...prompts, ...prompts.map(() => "")])
    const [c, u] = tf.split(both, [b, b], 0)
    return tf.add(u, tf.mul(tf.sub(c, u), scale)) as T
  })

/**
 * The policy model of a run, owned by the layer's scope.
 *
 * @since 0.1.0
 */
export class Denoiser extends Context.Service<Denoiser, {
  readonly model: Model
}>()("sharpen/model/Denoiser") {
  /** Load a model directory; variables are disposed when the layer closes. */
  static readonly fromDir = (dir: string, trainable = true) =>
    Layer.effect(
      Denoiser,
      Effect.gen(function*() {
        yield* Backend // tensors need an initialised backend
        const files = yield* Weights.load(dir)
        const model = yield* Scoped.acquireWith(() => fromStored(files.config, files.weights, trainable), dispose)
        return Denoiser.of({ model })
      })
    )

  /** A seeded, freshly initialised model (tests, pretraining from scratch). */
  static readonly fromInit = (config: ModelConfig, seed: number) =>
    Layer.effect(
      Denoiser,
      Effect.andThen(Effect.service(Backend), Effect.map(Scoped.acquireWith(() => init(config, seed), dispose), (model) => Denoiser.of({ model })))
    )
}

/** A frozen copy owned by the current scope. */
export const cloneScoped = (m: Model) => Scoped.acquireWith(() => clone(m, false), dispose)

export const save = (dir: string, m: Model, metadata: Readonly<Record<string, string>> = {}) =>
  Effect.flatMap(toStored(m), (weights) => Weights.save(dir, m.config, weights, metadata))
