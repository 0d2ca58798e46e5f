/**
 * What defines a sharpening run, recorded in its run directory as
 * `run.json`: the algorithm, every setting, the reward expression and its
 * options, the base model (and the clip model of a clip reward) by content
 * hash, and the library version. A resume compares the current invocation
 * with it and refuses any difference that changes the training, naming
 * each; the settings in `MAY_CHANGE` (and the reward's transport options)
 * may differ, and the record is then rewritten with the new values. Where
 * the jobs ran (`runners`: the runner storage and addresses) is recorded
 * for information and never compared. A
 * value's deprecated spelling (`SharpenConfig.normalise`: `preference:
 * "paper"`, `margin: "paper"` / `"reference-code"` in records made before
 * the rename) equals its current one, so such a run still resumes and its
 * stage is still reused; a record is written with the current spellings.
 *
 * @since 0.1.0
 */
import { Effect, FileSystem, Path, Schema } from "effect"
import * as AtomicFile from "../io/AtomicFile.ts"
import * as ModelDir from "../io/ModelDir.ts"
import * as Registry from "../reward/Registry.ts"
import pkg from "../../package.json" with { type: "json" }
import * as SharpenConfig from "./SharpenConfig.ts"

export const FILE = "run.json"

/** The library version recorded in (and checked against) a run. */
export const VERSION: string = pkg.version

/**
 * Settings that do not change what is trained, so a resume may change them:
 * evaluation sizes, checkpoint cadence and retention, sample grids, and the
 * micro-batch (the same update in parts), the training-NFE budget (a stop,
 * like `iterations`). `iterations` may change too (to extend or shorten a
 * run) unless the learning rate follows a cosine schedule, whose length it
 * sets.
 *
 * @since 0.1.0
 */
export const MAY_CHANGE: ReadonlyArray<string> = ["evalPrompts", "evalSteps", "checkpointEvery", "sampleEvery", "keepCheckpoints", "microBatchRows", "trainingNfe"]

/**
 * Reward options that only say how to reach a remote reward, not what it
 * computes: they may change on resume.
 *
 * @since 0.1.0
 */
export const REWARD_TRANSPORT: ReadonlyArray<string> = ["apiKeyEnv", "timeoutMs", "retries", "concurrency", "requestsPerSecond", "batchSize"]

const Model = Schema.Struct({ path: Schema.String, sha256: Schema.String })

export const RunRecord = Schema.Struct({
  format: Schema.Literal("diffusion-sharpening/run@1"),
  version: Schema.String,
  algorithm: Schema.String,
  /** The preset the settings were resolved from (informational: the settings decide). */
  preset: Schema.optionalKey(Schema.String),
  /** The settings, encoded; fields added by later versions may be absent (then their default). */
  settings: Schema.Record(Schema.String, Schema.Unknown),
  reward: Schema.Record(Schema.String, Schema.Unknown),
  baseModel: Model,
  /** The clip model directory of a reward that names clip. */
  rewardModel: Schema.optionalKey(Model),
  /**
   * Where the iterations' jobs ran, when not on this process's threads
   * (informational: a resume may change it; `differences` ignores it).
   */
  runners: Schema.optionalKey(Schema.Struct({
    /** The runner storage URL, a password in it masked. */
    storage: Schema.String,
    count: Schema.Number,
    addresses: Schema.Array(Schema.String),
    /** This process computed no share (`--coordinate`). */
    coordinate: Schema.optionalKey(Schema.Boolean)
  }))
})
export type RunRecord = typeof RunRecord.Type

/**
 * A resume whose settings, reward or base model differ from the run's.
 *
 * @since 0.1.0
 */
export class RunMismatch extends Schema.TaggedError<RunMismatch>()("RunMismatch", {
  path: Schema.String,
  message: Schema.String
}) {}

/**
 * The record of an invocation (reads and hashes the model directories).
 *
 * @since 0.1.0
 */
export const make = Effect.fn("RunRecord.make")(function*(options: {
  readonly algorithm: string
  readonly config: SharpenConfig.SharpenConfig
  readonly preset?: SharpenConfig.Preset
  /** Settings of the method beyond SharpenConfig's (e.g. an objective's own), recorded beside them. */
  readonly extra?: Readonly<Record<string, unknown>>
  readonly reward: Registry.RewardSpec
  readonly model: string
  /** The runners the jobs go to (informational; the storage URL already masked). */
  readonly runners?: { readonly storage: string; readonly count: number; readonly addresses: ReadonlyArray<string>; readonly coordinate?: boolean | undefined } | undefined
}) {
  const terms = yield* Effect.fromResult(Registry.parseExpression(options.reward.reward))
  const clip = Registry.needsBackend(terms) && options.reward.modelDir !== undefined ? options.reward.modelDir : undefined
  const record: RunRecord = {
    format: "diffusion-sharpening/run@1",
    version: VERSION,
    algorithm: options.algorithm,
    ...(options.preset === undefined ? {} : { preset: options.preset }),
    settings: { ...(Schema.encodeSync(SharpenConfig.SharpenConfig)(options.config) as Record<string, unknown>), ...options.extra },
    reward: { ...options.reward },
    baseModel: { path: options.model, sha256: yield* ModelDir.contentHash(options.model) },
    ...(clip === undefined ? {} : { rewardModel: { path: clip, sha256: yield* ModelDir.contentHash(clip) } }),
    ...(options.runners === undefined ? {} : {
      runners: {
        storage: options.runners.storage,
        count: options.runners.count,
        addresses: [...options.runners.addresses],
        ...(options.runners.coordinate === true ? { coordinate: true } : {})
      }
    })
  }
  return record
})

// Key order differs between decoded and literal values.
const canonical = (v: unknown): string =>
  v === undefined
    ? "(none)"
    : JSON.stringify(v, (_, x) => (x !== null && typeof x === "object" && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => a.localeCompare(b))) : x))

const short = (sha: string) => sha.slice(0, 12)

/**
 * The differences between a run's record and a resume's that change the
 * training, one phrase each (empty: the resume may proceed). `runners` is
 * not compared (the same draws give the same result on any transport).
 *
 * @since 0.1.0
 */
export const differences = (run: RunRecord, now: RunRecord): Array<string> => {
  const out: Array<string> = []
  if (run.version !== now.version) out.push(`library version ${run.version} -> ${now.version}`)
  if (run.algorithm !== now.algorithm) out.push(`algorithm ${run.algorithm} -> ${now.algorithm}`)
  if (run.baseModel.sha256 !== now.baseModel.sha256) {
    out.push(`base model ${run.baseModel.path} (sha256 ${short(run.baseModel.sha256)}) -> ${now.baseModel.path} (sha256 ${short(now.baseModel.sha256)})`)
  }
  const defaults = Schema.encodeSync(SharpenConfig.SharpenConfig)(SharpenConfig.defaults) as Record<string, unknown>
  const before = SharpenConfig.normalise(run.settings)
  const after = SharpenConfig.normalise(now.settings)
  const cosine = before.lrSchedule === "cosine" || after.lrSchedule === "cosine"
  for (const key of new Set([...Object.keys(before), ...Object.keys(after)])) {
    if (MAY_CHANGE.includes(key) || (key === "iterations" && !cosine)) continue
    const was = key in before ? before[key] : defaults[key]
    const is = key in after ? after[key] : defaults[key]
    if (canonical(was) !== canonical(is)) out.push(`${key} ${canonical(was)} -> ${canonical(is)}${key === "iterations" ? " (the cosine learning-rate schedule spans the iterations)" : ""}`)
  }
  const expression = (r: Record<string, unknown>) => String(r.reward ?? "").replace(/\s+/g, "")
  if (expression(run.reward) !== expression(now.reward)) out.push(`reward ${run.reward.reward} -> ${now.reward.reward}`)
  for (const key of new Set([...Object.keys(run.reward), ...Object.keys(now.reward)])) {
    // The clip model counts by content (below), not by path.
    if (key === "reward" || key === "modelDir" || REWARD_TRANSPORT.includes(key)) continue
    if (canonical(run.reward[key]) !== canonical(now.reward[key])) out.push(`reward option ${key} ${canonical(run.reward[key])} -> ${canonical(now.reward[key])}`)
  }
  if (run.rewardModel?.sha256 !== now.rewardModel?.sha256 && run.rewardModel !== undefined && now.rewardModel !== undefined) {
    out.push(`reward model ${run.rewardModel.path} (sha256 ${short(run.rewardModel.sha256)}) -> ${now.rewardModel.path} (sha256 ${short(now.rewardModel.sha256)})`)
  }
  return out
}

/**
 * Record a run in `runDir`: on a resume, first check the invocation against
 * the run's record (a run without one, from before records existed, is
 * accepted with a warning); then write the record. Returns the previous
 * record, if there was a readable one.
 *
 * @since 0.1.0
 */
export const check = Effect.fn("RunRecord.check")(function*(runDir: string, now: RunRecord, resuming: boolean) {
  const path = yield* Path.Path
  const file = path.join(runDir, FILE)
  const previous = yield* read(runDir)
  if (previous === "unreadable" && resuming) {
    return yield* new RunMismatch({ path: file, message: "the run's record is unreadable or not in the run record format" })
  }
  if (resuming && previous !== undefined && previous !== "unreadable") yield* refuseDifferences(file, previous, now)
  else if (resuming) {
    yield* Effect.logWarning(`${file} is missing (a run from an older version): resuming without checking the settings`)
  }
  yield* AtomicFile.writeText(file, JSON.stringify(now, null, 2) + "\n")
  return previous === "unreadable" ? undefined : previous
})

/**
 * Write a run's record again, unchecked (the runners used, once runners
 * joined during the run).
 *
 * @since 0.8.0
 */
export const write = Effect.fn("RunRecord.write")(function*(runDir: string, record: RunRecord) {
  const path = yield* Path.Path
  yield* AtomicFile.writeText(path.join(runDir, FILE), JSON.stringify(record, null, 2) + "\n")
})

/** A run's record: absent, unreadable, or the record. */
const read = Effect.fn("RunRecord.read")(function*(runDir: string) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const file = path.join(runDir, FILE)
  if (!(yield* fs.exists(file))) return undefined
  const text = yield* fs.readFileString(file).pipe(Effect.orElseSucceed(() => ""))
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    json = undefined
  }
  const run = Schema.decodeUnknownResult(RunRecord)(json)
  return run._tag === "Success" ? run.success : "unreadable" as const
})

const refuseDifferences = (file: string, previous: RunRecord, now: RunRecord) => {
  const diff = differences(previous, now)
  return diff.length === 0 ? Effect.void : Effect.fail(
    new RunMismatch({
      path: file,
      message: `cannot resume: this invocation differs from the run in what it trains: ${diff.join("; ")}. ` +
        `Resume with the run's settings, or choose another --out`
    })
  )
}

/**
 * Check a finished run's record against an invocation that would reuse its
 * results, without writing anything: a difference in what it trains is a
 * `RunMismatch` (a finished stage must not stand for other settings). A run
 * without a record (from before records existed) is accepted.
 *
 * @since 0.4.0
 */
export const verify = Effect.fn("RunRecord.verify")(function*(runDir: string, now: RunRecord) {
  const path = yield* Path.Path
  const file = path.join(runDir, FILE)
  const previous = yield* read(runDir)
  if (previous === "unreadable") return yield* new RunMismatch({ path: file, message: "the run's record is unreadable or not in the run record format" })
  if (previous !== undefined) yield* refuseDifferences(file, previous, now)
})

/**
 * Whether an evaluation of the base model made for run `a` holds for run
 * `b`: the same model content and evaluation settings.
 *
 * @since 0.1.0
 */
export const sameEvaluation = (a: RunRecord | undefined, b: RunRecord): boolean =>
  a !== undefined && a.baseModel.sha256 === b.baseModel.sha256 &&
  ["evalPrompts", "evalSteps", "cfg", "seed"].every((k) => canonical(a.settings[k]) === canonical(b.settings[k]))
