/**
 * Multi-file checkpoints that are atomic as a whole.
 *
 * Each checkpoint is written to its own directory `ckpt-<step>/`; only when
 * every file is on disk does the `LATEST` pointer (itself replaced
 * atomically) move to it, and only then are older checkpoints removed. A
 * crash at any moment leaves `LATEST` naming a complete checkpoint.
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
  const old = (yield* fs.readDirectory(runDir)).filter((d) => d.startsWith("ckpt-") && d !== name(step)).sort()
  for (const d of old.slice(0, Math.max(0, old.length - (keep - 1)))) {
    yield* fs.remove(path.join(runDir, d), { recursive: true }).pipe(Effect.ignore)
  }
  return dir
})

/**
 * The latest complete checkpoint, if any: its directory and a reader.
 *
 * @since 0.1.0
 */
export const latest = Effect.fn("CheckpointDir.latest")(function*(runDir: string) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const pointer = path.join(runDir, LATEST)
  if (!(yield* fs.exists(pointer).pipe(Effect.orElseSucceed(() => false)))) return Option.none()
  const dirName = (yield* fs.readFileString(pointer).pipe(
    Effect.mapError(() => new CheckpointError({ path: pointer, message: "cannot read the LATEST pointer" }))
  )).trim()
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
  return Option.some({ dir, read, readText, readTensors, restore, readState })
})
