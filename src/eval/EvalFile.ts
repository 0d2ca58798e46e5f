/**
 * The JSON report `pipelines/evaluate.ts` writes, read back so that two
 * models' evaluations can be compared prompt by prompt. A comparison is only
 * fair when both used the same prompts in the same order and the same
 * sampler (steps, guidance, eta, seed: the same initial noise per prompt);
 * {@link paired} checks that and names the first difference.
 *
 * @since 0.5.0
 */
import { Effect, FileSystem, Schema } from "effect"
import { Category } from "../data/Prompt.ts"
import type * as Evaluate from "./Evaluate.ts"

const Row = Schema.Struct({
  category: Schema.Union([Category, Schema.Literal("overall")]),
  n: Schema.Int,
  accuracy: Schema.Finite,
  partial: Schema.Finite,
  clip: Schema.NullOr(Schema.Finite)
})

const SetReport = Schema.Struct({
  name: Schema.String,
  rows: Schema.Array(Row),
  nfePerImage: Schema.Finite,
  samples: Schema.Array(Schema.Struct({
    prompt: Schema.String,
    category: Category,
    pass: Schema.Boolean,
    partial: Schema.Boolean,
    clip: Schema.NullOr(Schema.Finite),
    /** Scores under other named rewards (`evaluate.ts --rewards aesthetic`). */
    rewards: Schema.optionalKey(Schema.Record(Schema.String, Schema.Finite))
  }))
})

export const Sampler = Schema.Struct({
  steps: Schema.Int,
  cfg: Schema.Finite,
  eta: Schema.Finite,
  seed: Schema.Int,
  batchSize: Schema.Int
})
export type Sampler = typeof Sampler.Type

export const EvalFile = Schema.Struct({
  model: Schema.String,
  clip: Schema.NullOr(Schema.String),
  sampler: Sampler,
  reports: Schema.Array(SetReport)
})
export type EvalFile = typeof EvalFile.Type

/**
 * An evaluation report that cannot be read, or cannot be paired with another.
 *
 * @since 0.5.0
 */
export class EvalFileError extends Schema.TaggedError<EvalFileError>()("EvalFileError", {
  file: Schema.String,
  message: Schema.String
}) {}

/**
 * Read and validate a report written by `pipelines/evaluate.ts`.
 *
 * @since 0.5.0
 */
export const read = Effect.fn("EvalFile.read")(function*(file: string) {
  const fs = yield* FileSystem.FileSystem
  const text = yield* fs.readFileString(file).pipe(Effect.mapError((e) => new EvalFileError({ file, message: `cannot read: ${e.message}` })))
  const json = yield* Effect.try({ try: () => JSON.parse(text) as unknown, catch: (e) => new EvalFileError({ file, message: `not valid JSON: ${(e as Error).message}` }) })
  const r = Schema.decodeUnknownResult(EvalFile)(json)
  if (r._tag === "Failure") return yield* new EvalFileError({ file, message: `not an evaluation report: ${String(r.failure).split("\n").join(" ")}` })
  return r.success
})

/** What an evaluation is about to run: its sampler and each set's prompts in order. */
export interface Plan {
  readonly sampler: Sampler
  readonly sets: ReadonlyArray<{ readonly name: string; readonly prompts: ReadonlyArray<string> }>
}

/**
 * Why `before` cannot be compared prompt by prompt with the evaluation
 * `after` plans, or undefined when it can: same sets, prompts in the same
 * order, same sampler (the seed fixes each prompt's initial noise).
 *
 * @since 0.5.0
 */
export const unpairable = (before: { readonly sampler: Sampler; readonly reports: ReadonlyArray<Evaluate.SetReport> }, after: Plan): string | undefined => {
  for (const key of ["steps", "cfg", "eta", "seed"] as const) {
    if (before.sampler[key] !== after.sampler[key]) return `sampler ${key} ${before.sampler[key]} there, ${after.sampler[key]} here`
  }
  if (before.reports.length !== after.sets.length) return `${before.reports.length} prompt sets there, ${after.sets.length} here`
  for (let s = 0; s < before.reports.length; s++) {
    const [b, a] = [before.reports[s], after.sets[s]]
    if (b.name !== a.name) return `set ${s + 1} is ${b.name} there, ${a.name} here`
    if (b.samples.length !== a.prompts.length) return `${b.name}: ${b.samples.length} prompts there, ${a.prompts.length} here`
    const i = b.samples.findIndex((x, k) => x.prompt !== a.prompts[k])
    if (i >= 0) return `${b.name} line ${i + 1}: "${b.samples[i].prompt}" there, "${a.prompts[i]}" here`
  }
  return undefined
}
