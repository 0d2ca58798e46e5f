/**
 * Atomic file replacement: write to a temporary sibling, fsync, rename.
 * A crash or Ctrl-C at any point leaves either the old file or the new one,
 * never a torn one (rename is atomic within a directory on POSIX). What a
 * kill leaves is a `<file>.<pid>.<ms>.tmp` sibling: `removeStale` clears
 * them when that directory is next used.
 *
 * @since 0.1.0
 */
import { Effect, FileSystem, Path } from "effect"

/** The temporary name of an atomic write of `file` (see `removeStale`). */
const TMP = /\.\d+\.\d+\.tmp$/

export const writeFile = Effect.fn("AtomicFile.writeFile")(function*(file: string, bytes: Uint8Array) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  yield* fs.makeDirectory(path.dirname(file), { recursive: true })
  const tmp = `${file}.${process.pid}.${Date.now()}.tmp`
  yield* Effect.acquireUseRelease(
    Effect.succeed(tmp),
    (t) =>
      Effect.gen(function*() {
        yield* fs.writeFile(t, bytes)
        // Flush to disk before the rename makes it visible.
        yield* Effect.scoped(Effect.flatMap(fs.open(t, { flag: "r+" }), (h) => h.sync))
        yield* fs.rename(t, file)
      }),
    (t, exit) => (exit._tag === "Failure" ? fs.remove(t).pipe(Effect.ignore) : Effect.void)
  )
})

export const writeText = (file: string, text: string) => writeFile(file, new TextEncoder().encode(text))

/**
 * Remove the temporaries of interrupted atomic writes under `dir`
 * (recursively); the caller must own the directory (e.g. hold its lock), so
 * that no write is in progress. Returns the paths removed.
 *
 * @since 0.1.0
 */
export const removeStale = Effect.fn("AtomicFile.removeStale")(function*(dir: string) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const entries = yield* fs.readDirectory(dir, { recursive: true }).pipe(Effect.orElseSucceed(() => [] as Array<string>))
  const stale = entries.filter((e) => TMP.test(e)).map((e) => path.join(dir, e))
  for (const file of stale) yield* fs.remove(file).pipe(Effect.ignore)
  return stale
})
