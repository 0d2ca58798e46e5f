/**
 * Checked inputs and outputs shared by the CLIs: a non-empty prompt file in
 * the grammar, a writable output directory. Each failure is a typed error
 * naming the path (and line).
 *
 * @since 0.1.0
 */
import { Effect, FileSystem, Path, Schema } from "effect"
import { loadPromptFile, type ParsedPrompt } from "../data/Prompt.ts"

/**
 * A prompt file that cannot be used: unreadable or without prompts.
 *
 * @since 0.1.0
 */
export class PromptFileError extends Schema.TaggedError<PromptFileError>()("PromptFileError", {
  path: Schema.String,
  message: Schema.String
}) {}

/**
 * An output location that cannot be written.
 *
 * @since 0.1.0
 */
export class OutputError extends Schema.TaggedError<OutputError>()("OutputError", {
  path: Schema.String,
  message: Schema.String
}) {}

export const prompts = Effect.fn("Inputs.prompts")(function*(path: string) {
  const fs = yield* FileSystem.FileSystem
  if (!(yield* fs.exists(path).pipe(Effect.orElseSucceed(() => false)))) {
    return yield* new PromptFileError({ path, message: "prompt file does not exist" })
  }
  const parsed: Array<ParsedPrompt> = yield* loadPromptFile(path).pipe(
    Effect.catchTag("PlatformError", (e) => Effect.fail(new PromptFileError({ path, message: `cannot read: ${e.message}` })))
  )
  if (parsed.length === 0) return yield* new PromptFileError({ path, message: "prompt file has no prompts (only empty lines)" })
  return parsed
})

/**
 * Create the directory if needed and prove it is writable with a probe file.
 * Missing levels are created one by one: Node's recursive mkdir never
 * returns for a path under /proc.
 */
export const writableDirectory = Effect.fn("Inputs.writableDirectory")(function*(dir: string) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const fail = (message: string) => new OutputError({ path: dir, message })
  const missing: Array<string> = []
  for (let cur = path.resolve(dir); ; cur = path.dirname(cur)) {
    const info = yield* fs.stat(cur).pipe(Effect.option)
    if (info._tag === "Some") {
      if (info.value.type !== "Directory") {
        return yield* fail(`output directory is not writable (${cur === path.resolve(dir) ? "it" : cur} exists and is not a directory)`)
      }
      break
    }
    missing.unshift(cur)
    if (path.dirname(cur) === cur) break
  }
  const probe = path.join(dir, `.write-probe-${process.pid}`)
  yield* Effect.forEach(missing, (d) => fs.makeDirectory(d).pipe(Effect.catchReason("PlatformError", "AlreadyExists", () => Effect.void)), { discard: true }).pipe(
    Effect.flatMap(() => fs.writeFileString(probe, "")),
    Effect.flatMap(() => fs.remove(probe)),
    Effect.mapError((e) => fail(`output directory is not writable (${e.message.split("\n")[0]})`))
  )
})
