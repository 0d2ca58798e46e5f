/**
 * The run directory of a sharpening pipeline (`--out`), as one scoped
 * service: what any pipeline file needs around `Sharpen.sft` / `Sharpen.rlhf`
 * to be safe to stop, resume and read (docs/architecture.md, "The run
 * directory"):
 *
 *   out/LOCK            the owner's pid while a process works in out/ (RunLock)
 *   out/config.json     the settings of the latest invocation, grouped, with the preset
 *   out/before.json     the base model's evaluation
 *   out/run/            checkpoints, metrics.jsonl, run.json (checked by --resume)
 *   out/model/ plots/ samples/ report.md report.json
 *
 * Opening it checks `out` (a regular file or an unwritable place: one
 * `OutputError`), locks it for the scope, removes temporaries of interrupted
 * writes, and refuses to start over a previous run or to resume nothing.
 *
 * @since 0.6.0
 */
import { Console, Context, Effect, FileSystem, Layer, Path, Schema } from "effect"
import type * as Evaluate from "../eval/Evaluate.ts"
import * as AtomicFile from "../io/AtomicFile.ts"
import * as CheckpointDir from "../io/CheckpointDir.ts"
import * as Inputs from "../io/Inputs.ts"
import * as RunLock from "../io/RunLock.ts"
import * as Denoiser from "../model/Denoiser.ts"
import type * as JobThreads from "../parallel/JobThreads.ts"
import type * as ClipModel from "../reward/ClipModel.ts"
import type * as Generate from "../trajectory/Generate.ts"
import { type IterationRecord, trainingNfe } from "../optim/Metrics.ts"
import * as Report from "./Report.ts"
import * as RunRecord from "./RunRecord.ts"
import { IterationSampler } from "./Sharpen.ts"

/**
 * `--out` holds a previous run and neither `--resume` nor
 * `--resume-if-present` was given.
 *
 * @since 0.1.0
 */
export class RunDirectoryInUse extends Schema.TaggedError<RunDirectoryInUse>()("RunDirectoryInUse", {
  path: Schema.String,
  message: Schema.String
}) {}

/**
 * `--resume` of a directory without a checkpoint (a mistyped --out would
 * otherwise start a new run).
 *
 * @since 0.1.0
 */
export class NothingToResume extends Schema.TaggedError<NothingToResume>()("NothingToResume", {
  path: Schema.String,
  message: Schema.String
}) {}

export interface Options {
  readonly out: string
  /** Continue the run in `out`; refused when it has no checkpoint. */
  readonly resume: boolean
  /** Continue when `out` has a checkpoint, else start there. */
  readonly resumeIfPresent: boolean
}

/** How the before/after evaluation samples and judges (the same for both). */
export interface Evaluation {
  readonly sets: ReadonlyArray<Evaluate.PromptSet>
  readonly sampler: Generate.SamplerOptions
  readonly clip: ClipModel.Model | undefined
  /**
   * Where the images are sampled: the run's transport of the job protocol
   * when its jobs go to effect/cluster runners (`--runners`; the same
   * images), else absent: worker threads of this process
   * (`ParallelGenerate`).
   */
  readonly transport?: JobThreads.Threads | undefined
}

/** What the report of a finished run says besides the evaluation. */
export interface Outcome {
  /** e.g. "RLHF-Diffusion-Sharpening of models/shapeworld-base with reward clip". */
  readonly title: string
  readonly trained: Denoiser.Model
  readonly iterations: number
  readonly records: ReadonlyArray<IterationRecord>
  /** model/config.json's metadata of the run. */
  readonly metadata: Readonly<Record<string, string>>
  /** Appended to the summary line (memory figures). */
  readonly footnote: string
  /** Extra fields of report.json. */
  readonly json: Readonly<Record<string, unknown>>
}

/** Where an evaluation samples, when not on this process's worker threads. */
const where = (e: Evaluation) =>
  e.transport === undefined ? "" : e.transport.computesHere === false ? ` on ${e.transport.threads} runner(s)` : ` on this process and ${e.transport.threads - 1} runner(s)`

/** Prompts in each mid-run sample grid (`sampleEvery`): two rows of the grid. */
const GRID_PROMPTS = 16

/**
 * Open `options.out` for a run (see the module comment), locked until the
 * caller's scope closes, on every exit path.
 *
 * @since 0.6.0
 */
export const open = Effect.fn("RunDirectory.open")(function*(options: Options) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const { out } = options
  const runDir = path.join(out, "run")
  const samplesDir = path.join(out, "samples")
  const nothingToResume = new NothingToResume({
    path: runDir,
    message: "no checkpoint to resume from (is --out right?); pass --resume-if-present to start a new run when there is none"
  })
  // Before creating anything: a mistyped --out of a --resume leaves no directory behind.
  if (options.resume && !(yield* fs.exists(runDir))) return yield* nothingToResume
  // The output directory first (a regular file, /proc/...: one clear error), then its lock.
  yield* Inputs.writableDirectory(out)
  yield* RunLock.acquire(out)
  const stale = yield* AtomicFile.removeStale(out)
  if (stale.length > 0) yield* Console.error(`removed ${stale.length} temporary file(s) of interrupted writes in ${out}`)
  const hasCheckpoint = (yield* CheckpointDir.candidates(runDir)).length > 0
  if (!options.resume && !options.resumeIfPresent && hasCheckpoint) {
    return yield* new RunDirectoryInUse({ path: out, message: "holds a previous run: pass --resume to continue it or choose another --out" })
  }
  if (options.resume && !hasCheckpoint) return yield* nothingToResume

  const services = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
    effect.pipe(Effect.provideService(FileSystem.FileSystem, fs), Effect.provideService(Path.Path, path))

  return {
    out,
    runDir,
    hasCheckpoint,
    /** Check the record against the checkpoint's (`RunMismatch`, nothing written), then write it and config.json; the previous record. */
    begin: (record: RunRecord.RunRecord, settings: unknown) =>
      services(Effect.gen(function*() {
        const previous = yield* RunRecord.check(runDir, record, hasCheckpoint)
        yield* AtomicFile.writeText(path.join(out, "config.json"), JSON.stringify(settings, null, 2) + "\n")
        return previous
      })),
    /** The base model's evaluation, kept in before.json while the model and the evaluation are unchanged. */
    before: (model: Denoiser.Model, e: Evaluation, previous: RunRecord.RunRecord | undefined, record: RunRecord.RunRecord) =>
      services(Effect.gen(function*() {
        const beforeFile = path.join(out, "before.json")
        if ((yield* fs.exists(beforeFile)) && RunRecord.sameEvaluation(previous, record)) {
          return JSON.parse(yield* fs.readFileString(beforeFile)) as Array<Evaluate.SetReport>
        }
        yield* Console.error(`evaluating the base model on ${e.sets.map((s) => `${s.prompts.length} ${s.name}`).join(" + ")} prompts${where(e)} ...`)
        const before = yield* Report.evaluateWithGrids(model, e.sets, e.sampler, e.clip, samplesDir, "before", e.transport)
        yield* AtomicFile.writeText(beforeFile, JSON.stringify(before))
        return before
      })),
    // A grid to look at, not an evaluation: sampling the whole set cost the
    // default run over a minute per grid.
    grids: (model: () => Denoiser.Model, e: Evaluation) => {
      const gridSet = e.sets.slice(0, 1).map((s) => ({ ...s, prompts: s.prompts.slice(0, GRID_PROMPTS) }))
      return IterationSampler.of({
        sample: (iteration) =>
          services(Report.evaluateWithGrids(model(), gridSet, e.sampler, undefined, samplesDir, `iter-${String(iteration).padStart(7, "0")}`, e.transport)).pipe(
            Effect.asVoid,
            Effect.catch((err) => Effect.logWarning(`sample grid of iteration ${iteration} not written: ${err.message}`))
          )
      })
    },
    /** Save the model, plot the curves, evaluate it as before, write the report. */
    finish: (o: Outcome, e: Evaluation, before: ReadonlyArray<Evaluate.SetReport>) =>
      services(Effect.gen(function*() {
        yield* Denoiser.save(path.join(out, "model"), o.trained, o.metadata)
        yield* Report.curves(o.records, path.join(out, "plots"), o.title)
        yield* Console.error(`evaluating the sharpened model${where(e)} ...`)
        const after = yield* Report.evaluateWithGrids(o.trained, e.sets, e.sampler, e.clip, samplesDir, "after", e.transport)
        const table = Report.comparison(before, after)
        // Training NFE as the docs define it (sampling plus the objective's model evaluations).
        const sampling = o.records.reduce((a, r) => a + r.nfe, 0)
        const total = trainingNfe(o.records)
        const calls = o.records.reduce((a, r) => a + r.rewardCalls, 0)
        const wallMin = o.records.reduce((a, r) => a + r.wallMs, 0) / 60_000
        const summary = `${o.title}: ${o.iterations} iterations, ${wallMin.toFixed(1)} min of training, ` +
          `${total} training NFE (${sampling} sampling, ${total - sampling} objective), ${calls} reward calls. ${o.footnote}`
        yield* AtomicFile.writeText(path.join(out, "report.md"), `${summary}\n\n${table}\n`)
        yield* AtomicFile.writeText(path.join(out, "report.json"), JSON.stringify({ ...o.json, iterations: o.iterations, before, after }, null, 2) + "\n")
        yield* Console.log(`\n${summary}\n\n${table}\n\nmodel: ${path.join(out, "model")}  report: ${path.join(out, "report.md")}`)
      }))
  }
})

/**
 * The run directory as a service (its fields: `out`, `runDir`,
 * `hasCheckpoint`; `begin` checks and writes run.json and config.json,
 * `before` evaluates the base model once, `grids` draws grids during
 * training, `finish` saves, evaluates and reports).
 *
 * @since 0.6.0
 */
export class RunDirectory extends Context.Service<RunDirectory, Effect.Success<ReturnType<typeof open>>>()("sharpen/sharpen/RunDirectory") {
  /** {@link open} for the layer's scope. */
  static readonly layer = (options: Options) => Layer.effect(RunDirectory, open(options))
}
