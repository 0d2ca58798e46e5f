/**
 * The reward service: scores a batch of decoded images against their prompts.
 *
 * A reward takes images as `Float32Array`s of 32 x 32 x 3 values (row-major
 * HWC, RGB in [0, 1]; see `src/data/Image.ts`) and one prompt per image, and
 * answers one finite number per image, or fails with a typed `RewardError`.
 * Rewards act on images, never on the model's space: a `Decoder` (Decoder.ts)
 * maps model samples to images first.
 *
 * Every reward built with `Reward.make` (all built-ins, all combinators, all
 * mocks) checks its batch and its answer:
 * - images and prompts of different lengths, an image of the wrong length or
 *   with a non-finite value: `RewardInputError` (naming field and index);
 * - an answer of the wrong length or with a non-finite number:
 *   `RewardProtocolError` (naming `rewards` and the index).
 * An empty batch answers `[]` without calling the reward.
 *
 * Metadata: `name`; `range` [min, max] the reward can take (±Infinity when it
 * is not bounded a priori); `differentiable` (the reward is a differentiable
 * function of the pixels, and `scoreTensor` is given); `relativeCost`, the
 * rough cost per image relative to the exact verifier (= 1), for schedulers
 * deciding how often to call it.
 *
 * Mocks for tests (`Reward.constant`, `Reward.fromFunction`,
 * `Reward.scripted`) are layers; `constantReward`, `functionReward` and
 * `scriptedReward` are the same as service values (for combinators).
 *
 * @since 0.1.0
 */
import type * as tf from "@tensorflow/tfjs-core"
import { Context, Effect, Layer, Schema } from "effect"
import { IMAGE_LENGTH } from "../data/Image.ts"
import { type RewardError, RewardInputError, RewardProtocolError, RewardUnavailable } from "./RewardError.ts"

/**
 * What a reward is: name, range, differentiability, relative cost.
 *
 * @since 0.1.0
 */
export const RewardMetadata = Schema.Struct({
  name: Schema.String,
  /** [min, max] the reward can take; ±Infinity when not bounded a priori. */
  range: Schema.Tuple([Schema.Number, Schema.Number]),
  /** Differentiable in the pixels (and `scoreTensor` is provided). */
  differentiable: Schema.Boolean,
  /** Rough cost per image relative to the exact verifier (= 1). */
  relativeCost: Schema.Number.check(Schema.isGreaterThanOrEqualTo(0))
})
export type RewardMetadata = typeof RewardMetadata.Type

/**
 * A batch scoring function: images (32 x 32 x 3, [0, 1]) and prompts of the
 * same length to one number per image.
 *
 * @since 0.1.0
 */
export type ScoreFn = (
  images: ReadonlyArray<Float32Array>,
  prompts: ReadonlyArray<string>
) => Effect.Effect<ReadonlyArray<number>, RewardError>

/**
 * The reward service's shape.
 *
 * @since 0.1.0
 */
export interface RewardService {
  readonly metadata: RewardMetadata
  /** One finite number per image, or a typed error. */
  readonly score: ScoreFn
  /**
   * Differentiable rewards only: the score as a tensor function of images
   * [B, 32, 32, 3] in [0, 1], [B]. Pure (no checks, no side effects); the
   * caller owns the result.
   */
  readonly scoreTensor?: (images: tf.Tensor4D, prompts: ReadonlyArray<string>) => tf.Tensor1D
}

const finiteImage = (image: Float32Array): boolean => {
  for (let k = 0; k < image.length; k++) if (!Number.isFinite(image[k])) return false
  return true
}

/**
 * Checks a batch against the reward contract (lengths, image size, finite
 * pixels); `undefined` when it is fine.
 *
 * @since 0.1.0
 */
export const checkInput = (
  reward: string,
  images: ReadonlyArray<Float32Array>,
  prompts: ReadonlyArray<string>,
  sampleLength: number = IMAGE_LENGTH
): RewardInputError | undefined => {
  if (images.length !== prompts.length) {
    return new RewardInputError({
      reward,
      field: "prompts",
      message: `${images.length} images but ${prompts.length} prompts`
    })
  }
  for (let i = 0; i < images.length; i++) {
    const image = images[i]
    if (!(image instanceof Float32Array) || image.length !== sampleLength) {
      return new RewardInputError({
        reward,
        field: "images",
        index: i,
        message: sampleLength === IMAGE_LENGTH
          ? `image ${i} has ${image?.length ?? 0} values, expected 32x32x3 = ${IMAGE_LENGTH}`
          : `sample ${i} has ${image?.length ?? 0} values, expected ${sampleLength}`
      })
    }
    if (!finiteImage(image)) {
      return new RewardInputError({ reward, field: "images", index: i, message: `image ${i} has a non-finite pixel value` })
    }
  }
  return undefined
}

/**
 * Checks an answer: one finite number per image; `undefined` when it is fine.
 *
 * @since 0.1.0
 */
export const checkOutput = (
  reward: string,
  expected: number,
  rewards: ReadonlyArray<number>,
  url?: string
): RewardProtocolError | undefined => {
  const where = url === undefined ? {} : { url }
  if (rewards.length !== expected) {
    return new RewardProtocolError({
      reward,
      ...where,
      field: "rewards",
      message: `expected ${expected} rewards, got ${rewards.length}`
    })
  }
  for (let i = 0; i < rewards.length; i++) {
    const r = rewards[i]
    if (typeof r !== "number" || !Number.isFinite(r)) {
      return new RewardProtocolError({
        reward,
        ...where,
        field: "rewards",
        index: i,
        message: `reward ${i} is ${typeof r === "number" ? String(r) : JSON.stringify(r)}, not a finite number`
      })
    }
  }
  return undefined
}

/**
 * Builds a reward service from metadata and a batch scoring function; the
 * result checks its input and its answer (see the module comment) and traces
 * each call as `Reward.score`.
 *
 * @since 0.1.0
 */
export const make = (
  metadata: RewardMetadata,
  score: ScoreFn,
  options: {
    readonly scoreTensor?: RewardService["scoreTensor"]
    /** Values per sample (default 32 x 32 x 3: an image); the lab's points have 2. */
    readonly sampleLength?: number
  } = {}
): RewardService => {
  const name = metadata.name
  const checked = Effect.fn("Reward.score")(function*(images: ReadonlyArray<Float32Array>, prompts: ReadonlyArray<string>) {
    yield* Effect.annotateCurrentSpan({ reward: name, batch: images.length })
    const bad = checkInput(name, images, prompts, options.sampleLength)
    if (bad !== undefined) return yield* bad
    if (images.length === 0) return [] as ReadonlyArray<number>
    const rewards = yield* score(images, prompts)
    const wrong = checkOutput(name, images.length, rewards)
    if (wrong !== undefined) return yield* wrong
    return rewards
  })
  return options.scoreTensor === undefined
    ? { metadata, score: checked }
    : { metadata, score: checked, scoreTensor: options.scoreTensor }
}

const mockMetadata = (name: string, overrides: Partial<RewardMetadata>): RewardMetadata => ({
  name,
  range: [-Infinity, Infinity],
  differentiable: false,
  relativeCost: 0,
  ...overrides
})

/**
 * A reward answering `value` for every image (a mock).
 *
 * @since 0.1.0
 */
export const constantReward = (value: number, metadata: Partial<RewardMetadata> = {}): RewardService =>
  make(mockMetadata("constant", { range: [value, value], ...metadata }), (images) => Effect.succeed(images.map(() => value)))

/**
 * A reward computing each image's score with a plain function (a mock, or a
 * quick pure reward). Exceptions thrown by `f` are defects.
 *
 * @since 0.1.0
 */
export const functionReward = (
  f: (image: Float32Array, prompt: string, index: number) => number,
  metadata: Partial<RewardMetadata> = {}
): RewardService =>
  make(mockMetadata("function", metadata), (images, prompts) => Effect.sync(() => images.map((img, i) => f(img, prompts[i], i))))

/**
 * Options of `scriptedReward`: fail the first `failures` calls, then answer.
 *
 * @since 0.1.0
 */
export interface ScriptedOptions {
  /** Calls that fail before the reward starts answering. */
  readonly failures: number
  /** The error of failing call `call` (1-based); default `RewardUnavailable`. */
  readonly error?: (call: number) => RewardError
  /** The answer once it answers: a constant or a per-image function (default 1). */
  readonly answer?: number | ((image: Float32Array, prompt: string, index: number) => number)
  /** Observes every call (1-based), failing or not. */
  readonly onCall?: (call: number) => void
  readonly metadata?: Partial<RewardMetadata>
}

/**
 * A reward that fails its first `failures` calls, then answers (a mock for
 * retry and error-path tests). Each value has its own call counter.
 *
 * @since 0.1.0
 */
export const scriptedReward = (options: ScriptedOptions): RewardService => {
  let calls = 0
  const meta = mockMetadata("scripted", options.metadata ?? {})
  const answer = options.answer ?? 1
  const error = options.error ??
    ((call: number) =>
      new RewardUnavailable({ reward: meta.name, url: "scripted:", message: `scripted failure ${call} of ${options.failures}` }))
  return make(meta, (images, prompts) =>
    Effect.suspend(() => {
      calls++
      options.onCall?.(calls)
      if (calls <= options.failures) return Effect.fail(error(calls))
      return Effect.succeed(images.map((img, i) => (typeof answer === "number" ? answer : answer(img, prompts[i], i))))
    }))
}

/**
 * The reward of a pipeline. Provide one with a built-in layer (see
 * Registry.ts), a combinator, `Reward.layer` for your own scoring function,
 * or a mock.
 *
 * @since 0.1.0
 */
export class Reward extends Context.Service<Reward, RewardService>()("sharpen/reward/Reward") {
  /** A reward service value from metadata and a scoring function (checked). */
  static readonly make = make

  /** A layer from metadata and a scoring function (checked). */
  static readonly layer = (
    metadata: RewardMetadata,
    score: ScoreFn,
    options: { readonly scoreTensor?: RewardService["scoreTensor"] } = {}
  ): Layer.Layer<Reward> => Layer.succeed(Reward, make(metadata, score, options))

  /** A layer from an already built service value (e.g. a combinator's result). */
  static readonly layerOf = (service: RewardService): Layer.Layer<Reward> => Layer.succeed(Reward, service)

  /** Mock: `value` for every image. */
  static readonly constant = (value: number, metadata: Partial<RewardMetadata> = {}): Layer.Layer<Reward> =>
    Layer.succeed(Reward, constantReward(value, metadata))

  /** Mock: a per-image function. */
  static readonly fromFunction = (
    f: (image: Float32Array, prompt: string, index: number) => number,
    metadata: Partial<RewardMetadata> = {}
  ): Layer.Layer<Reward> => Layer.succeed(Reward, functionReward(f, metadata))

  /** Mock: fails the first `failures` calls, then answers; fresh counter per build. */
  static readonly scripted = (options: ScriptedOptions): Layer.Layer<Reward> =>
    Layer.sync(Reward, () => scriptedReward(options))

  /** A constant 0.5 reward named "test". */
  static readonly layerTest: Layer.Layer<Reward> = Layer.succeed(Reward, constantReward(0.5, { name: "test" }))

  /** Scores with the reward in context. */
  static readonly score = (
    images: ReadonlyArray<Float32Array>,
    prompts: ReadonlyArray<string>
  ): Effect.Effect<ReadonlyArray<number>, RewardError, Reward> => Reward.use((r) => r.score(images, prompts))
}
