/**
 * The ShapeWorld-32 training stream: (image, prompt) pairs rendered on the
 * fly, so nothing but the current batch is ever in memory.
 *
 * Each example draws, in this order and all from the one `Rng`: a category
 * (by weight), a prompt of that category within the split, a scene, and one
 * uniform deciding whether the prompt is dropped to "" (the null prompt for
 * classifier-free guidance). The drop draw happens even when the null
 * fraction is 0, so the same seed gives the same images whatever the
 * fraction. The rendered scene is always returned in `parsed`, also when its
 * prompt was dropped.
 *
 * `nextBatch` is the synchronous hot-path API; `batches` wraps it as an
 * infinite Effect `Stream`. Both advance the given generator: fork it
 * (`rng.fork()`) to read the same data twice.
 *
 * @since 0.1.0
 */
import { Effect, Schema, Stream } from "effect"
import type { Rng } from "../tensor/Random.ts"
import { fromBytes, IMAGE_LENGTH } from "./Image.ts"
import { CATEGORIES, type Category, type ParsedPrompt, sample, type Split } from "./Prompt.ts"
import { render } from "./Render.ts"

/**
 * What to stream.
 *
 * @since 0.1.0
 */
export interface DatasetOptions {
  readonly batchSize: number
  /** "train" for the generator, "full" for reward models. */
  readonly split: Split
  /** Relative category weights; missing categories get 0. Default: all 1. */
  readonly categoryWeights?: Partial<Record<Category, number>>
  /** Fraction of prompts replaced by "" (default 0). */
  readonly nullPromptFraction?: number
}

/**
 * One batch. `images` is B x 32 x 32 x 3 (row-major HWC per image) in
 * [-1, 1]; `prompts[i]` is "" for a null prompt; `parsed[i]` is the prompt
 * image i was rendered from.
 *
 * @since 0.1.0
 */
export interface Batch {
  readonly batchSize: number
  readonly images: Float32Array
  readonly prompts: Array<string>
  readonly parsed: Array<ParsedPrompt>
}

/**
 * Options that cannot describe a dataset.
 *
 * @since 0.1.0
 */
export class DatasetOptionsError extends Schema.TaggedError<DatasetOptionsError>()("DatasetOptionsError", {
  message: Schema.String
}) {}

/** Validated options: weights as a cumulative table in `CATEGORIES` order. */
interface Plan {
  readonly batchSize: number
  readonly split: Split
  readonly cumulative: ReadonlyArray<number>
  readonly nullPromptFraction: number
}

const plan = (opts: DatasetOptions): Plan => {
  const fail = (message: string) => {
    throw new DatasetOptionsError({ message })
  }
  if (!Number.isInteger(opts.batchSize) || opts.batchSize < 1) fail(`batchSize must be a positive integer, got ${opts.batchSize}`)
  if (opts.split !== "train" && opts.split !== "full" && opts.split !== "heldout") fail(`unknown split "${opts.split}"`)
  const nullPromptFraction = opts.nullPromptFraction ?? 0
  if (!(nullPromptFraction >= 0 && nullPromptFraction <= 1)) fail(`nullPromptFraction must lie in [0, 1], got ${nullPromptFraction}`)
  const weights = opts.categoryWeights
  for (const k of Object.keys(weights ?? {})) {
    if (!(CATEGORIES as ReadonlyArray<string>).includes(k)) fail(`unknown category "${k}" in categoryWeights`)
  }
  let total = 0
  const cumulative = CATEGORIES.map((c) => {
    const w = weights === undefined ? 1 : (weights[c] ?? 0)
    if (!(Number.isFinite(w) && w >= 0)) fail(`weight of ${c} must be a finite number >= 0, got ${w}`)
    return (total += w)
  })
  if (total <= 0) fail("categoryWeights must give some category a positive weight")
  return { batchSize: opts.batchSize, split: opts.split, cumulative: cumulative.map((c) => c / total), nullPromptFraction }
}

const pickCategory = (rng: Rng, cumulative: ReadonlyArray<number>): Category => {
  const u = rng.uniform()
  for (let k = 0; k < CATEGORIES.length; k++) if (u < cumulative[k]) return CATEGORIES[k]
  // u < 1 = cumulative[last] up to rounding; fall back to the last weighted category.
  for (let k = CATEGORIES.length - 1; k > 0; k--) if (cumulative[k] > cumulative[k - 1]) return CATEGORIES[k]
  return CATEGORIES[0]
}

/**
 * A category drawn by the weights of `opts` (see `DatasetOptions`).
 *
 * @since 0.1.0
 */
export const sampleCategory = (rng: Rng, categoryWeights?: Partial<Record<Category, number>>): Category =>
  pickCategory(rng, plan({ batchSize: 1, split: "full", categoryWeights }).cumulative)

const batchFromPlan = (rng: Rng, p: Plan): Batch => {
  const images = new Float32Array(p.batchSize * IMAGE_LENGTH)
  const prompts: Array<string> = []
  const parsed: Array<ParsedPrompt> = []
  for (let i = 0; i < p.batchSize; i++) {
    const prompt = sample(rng, pickCategory(rng, p.cumulative), p.split)
    fromBytes(render(prompt, rng), "signed", images, i * IMAGE_LENGTH)
    const drop = rng.uniform() < p.nullPromptFraction
    prompts.push(drop ? "" : prompt.text)
    parsed.push(prompt)
  }
  return { batchSize: p.batchSize, images, prompts, parsed }
}

/**
 * Renders the next batch (synchronous; throws `DatasetOptionsError` for bad
 * options).
 *
 * @since 0.1.0
 */
export const nextBatch = (rng: Rng, opts: DatasetOptions): Batch => batchFromPlan(rng, plan(opts))

/**
 * An infinite stream of batches (take what you need with `Stream.take`).
 * Options are checked once, when the stream starts.
 *
 * @since 0.1.0
 */
export const batches = (rng: Rng, opts: DatasetOptions): Stream.Stream<Batch, DatasetOptionsError> =>
  Stream.unwrap(
    Effect.try({
      try: () => plan(opts),
      catch: (e) => (e instanceof DatasetOptionsError ? e : new DatasetOptionsError({ message: String(e) }))
    }).pipe(Effect.map((p) => Stream.fromEffectRepeat(Effect.sync(() => batchFromPlan(rng, p)))))
  )
