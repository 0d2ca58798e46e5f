/**
 * Multi-file checkpoints that are atomic as a whole.
 *
 * Each checkpoint is written to its own directory `ckpt-<step>/`; only when
 * every file is on disk does the `LATEST` pointer (itself replaced
 * atomically) move to it, and only then are older checkpoints removed
 * (`keep` of them stay, the new one included). A crash at any moment leaves
 * `LATEST` naming a complete checkpoint; `candidates` also lists the older
 * ones kept, for a reader to fall back on when the latest was damaged after
 * its write.
 *
 * @since 0.1.0
 */
import { Effect, FileSystem, Option, Path, Schema } from "effect"
import type { Variable } from "@tensorflow/tfjs-core"
import * as AtomicFile from "./AtomicFile.ts"
import * as ModelDir from "./ModelDir.ts"
import * as Safetensors from "./Safetensors.ts"

export const LATEST = "LATEST"

/**
 * A checkpoint directory is unreadable or incomplete.
 *
 * @since 0.1.0
 */
export class CheckpointError extends Schema.TaggedError<CheckpointError>()("CheckpointError", {
  path: Schema.String,
  message: Schema.String
}) {}

const name = (step: number) => `ckpt-${String(step).padStart(7, "0")}`

export const save = Effect.fn("CheckpointDir.save")(function*(
  runDir: string,
  step: number,
  files: Readonly<Record<string, Uint8Array>>,
  keep = 1
) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const dir = path.join(runDir, name(step))
  for (const [file, bytes] of Object.entries(files)) yield* AtomicFile.writeFile(path.join(dir, file), bytes)
  yield* AtomicFile.writeText(path.join(runDir, LATEST), name(step) + "\n")
  // Keep the newest `keep - 1` older checkpoints; any of a later step is
  // from an abandoned future (a fallback to an older one) and goes too.
  const others = (yield* fs.readDirectory(runDir)).filter((d) => CKPT.test(d) && d !== name(step)).sort()
  const older = others.filter((d) => d < name(step))
  const drop = [...older.slice(0, Math.max(0, older.length - (keep - 1))), ...others.filter((d) => d > name(step))]
  for (const d of drop) {
    yield* fs.remove(path.join(runDir, d), { recursive: true }).pipe(Effect.ignore)
  }
  return dir
})

const CKPT = /^ckpt-\d+$/

/**
 * A reader of the checkpoint in `runDir/dirName` (nothing is read until asked).
 *
 * @since 0.1.0
 */
export type Reader = ReturnType<typeof reader>

const reader = (fs: FileSystem.FileSystem, path: Path.Path, runDir: string, dirName: string) => {
  const dir = path.join(runDir, dirName)
  const read = (file: string) =>
    fs.readFile(path.join(dir, file)).pipe(
      Effect.mapError(() => new CheckpointError({ path: path.join(dir, file), message: "checkpoint file missing or unreadable" }))
    )
  const readText = (file: string) => Effect.map(read(file), (b) => new TextDecoder().decode(b))
  const readTensors = (file: string) =>
    Effect.flatMap(read(file), (bytes) => {
      const d = Safetensors.decode(bytes, path.join(dir, file))
      return d instanceof Safetensors.SafetensorsError
        ? Effect.fail(new CheckpointError({ path: d.file, message: d.tensor === undefined ? d.message : `${d.tensor}: ${d.message}` }))
        : Effect.succeed(d.tensors)
    })
  /** Assign a checkpoint file's tensors to variables, failing with the file and tensor if one does not fit. */
  const restore = (file: string, target: Readonly<Record<string, Variable>>, prefix = "") =>
    Effect.flatMap(readTensors(file), (tensors) => {
      const bad = ModelDir.assign(target, tensors, prefix)
      return bad === undefined
        ? Effect.void
        : Effect.fail(new CheckpointError({ path: path.join(dir, file), message: `tensor "${bad}" missing or of the wrong size` }))
    })
  /** `state.json` decoded with the run's schema; a mismatch is a typed error naming the file. */
  const readState = <A>(schema: Schema.Decoder<A>) =>
    Effect.flatMap(readText("state.json"), (text) => {
      const file = path.join(dir, "state.json")
      let json: unknown
      try {
        json = JSON.parse(text)
      } catch {
        return Effect.fail(new CheckpointError({ path: file, message: "not valid JSON" }))
      }
      const r = Schema.decodeUnknownResult(schema)(json)
      return r._tag === "Success"
        ? Effect.succeed(r.success)
        : Effect.fail(new CheckpointError({ path: file, message: "does not match the checkpoint format" }))
    })
  return { dir, read, readText, readTensors, restore, readState }
}


/**
 * Every checkpoint a resume may use, best first: the one `LATEST` names,
 * then the other `ckpt-*` directories from the newest. Empty when the run
 * has none.
 *
 * @since 0.1.0
 */
export const candidates = Effect.fn("CheckpointDir.candidates")(function*(runDir: string) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  if (!(yield* fs.exists(runDir).pipe(Effect.orElseSucceed(() => false)))) return []
  const dirs = (yield* fs.readDirectory(runDir).pipe(
    Effect.mapError(() => new CheckpointError({ path: runDir, message: "cannot list the run directory" }))
  )).filter((d) => CKPT.test(d)).sort().reverse()
  const pointer = yield* fs.readFileString(path.join(runDir, LATEST)).pipe(Effect.map((t) => t.trim()), Effect.orElseSucceed(() => ""))
  const names = pointer === "" ? dirs : [pointer, ...dirs.filter((d) => d !== pointer)]
  return names.map((d) => reader(fs, path, runDir, d))
})

/**
 * Restore a run from its newest good checkpoint, the one restore path of
 * every training: `restore` is tried on each candidate, best first; one that
 * fails with a `CheckpointError` (a truncated file, a bad state, a missing
 * tensor) is logged, renamed `<dir>.damaged` when an older one remains, and
 * the next is tried. Any other error stops at once (e.g. a checkpoint of
 * another model). None when the run has no checkpoint; the first error
 * when none is good.
 *
 * @since 0.6.0
 */
export const resume = <A, E, R>(runDir: string, restore: (checkpoint: Reader) => Effect.Effect<A, CheckpointError | E, R>) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const all = yield* candidates(runDir).pipe(Effect.mapError((e) => (e instanceof CheckpointError ? e : new CheckpointError({ path: runDir, message: String(e) }))))
    let first: CheckpointError | undefined
    for (const [k, ck] of all.entries()) {
      const r = yield* Effect.result(restore(ck))
      if (r._tag === "Success") {
        return Option.some({ value: r.success, dir: ck.dir })
      }
      if (!(r.failure instanceof CheckpointError)) return yield* Effect.fail(r.failure as E)
      first ??= r.failure
      // A restore that failed half-way is overwritten by the next candidate's.
      const next = all[k + 1]
      yield* Effect.logWarning(
        `checkpoint ${ck.dir} is damaged (${r.failure.message}: ${r.failure.path})` +
          (next === undefined ? "; no older checkpoint to fall back to" : `; falling back to ${next.dir}`)
      )
      // Set aside (kept for inspection), so it is never a fallback again.
      if (next !== undefined) yield* fs.rename(ck.dir, `${ck.dir}.damaged`).pipe(Effect.ignore)
    }
    if (first !== undefined) return yield* first
    return Option.none<{ readonly value: A; readonly dir: string }>()
  })

