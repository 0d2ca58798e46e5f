/**
 * An exclusive lock on a run directory, so that two processes never train
 * into (or resume) the same run: the file `LOCK` holds the owner's pid, host
 * and start time, created with O_EXCL (atomic on POSIX), and removed when
 * the scope closes (success, failure, interruption). A lock whose owner is
 * no longer running (killed with SIGKILL, a crash of the machine) is stale:
 * it is reported and taken over. A lock of another host cannot be checked
 * and counts as held.
 *
 * @since 0.1.0
 */
import { Effect, FileSystem, Path, Schema } from "effect"
import * as os from "node:os"

export const LOCK = "LOCK"

/**
 * Another live process holds the run directory.
 *
 * @since 0.1.0
 */
export class RunDirectoryLocked extends Schema.TaggedError<RunDirectoryLocked>()("RunDirectoryLocked", {
  path: Schema.String,
  message: Schema.String
}) {}

const Owner = Schema.Struct({ pid: Schema.Int, host: Schema.String, started: Schema.String })
type Owner = typeof Owner.Type

/** Whether a process of this host with that pid exists (EPERM: it does, owned by another user). */
export const isRunning = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"
  }
}

const parse = (text: string): Owner | undefined => {
  try {
    const r = Schema.decodeUnknownResult(Owner)(JSON.parse(text))
    return r._tag === "Success" ? r.success : undefined
  } catch {
    return undefined
  }
}

/**
 * Take the lock of `dir` (which must exist) for the current scope.
 *
 * @since 0.1.0
 */
export const acquire = Effect.fn("RunLock.acquire")(function*(dir: string) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const file = path.join(dir, LOCK)
  const me: Owner = { pid: process.pid, host: os.hostname(), started: new Date().toISOString() }
  const text = JSON.stringify(me) + "\n"
  const create = fs.writeFileString(file, text, { flag: "wx" }).pipe(Effect.as(true), Effect.catch(() => Effect.succeed(false)))
  const take = Effect.gen(function*() {
    // Two attempts: the second after removing a stale lock (a concurrent
    // taker of the same stale lock loses on O_EXCL and then sees a live owner).
    for (let attempt = 0; attempt < 2; attempt++) {
      if (yield* create) return
      const held = yield* fs.readFileString(file).pipe(Effect.option)
      if (held._tag === "None") continue // released in between
      const owner = parse(held.value)
      if (owner !== undefined && (owner.host !== me.host || isRunning(owner.pid))) {
        return yield* new RunDirectoryLocked({
          path: dir,
          message: `in use by process ${owner.pid}${owner.host !== me.host ? ` on ${owner.host}` : ""} (since ${owner.started}); ` +
            `stop it first, or remove ${file} if that process is gone`
        })
      }
      if (owner === undefined) {
        // Empty or torn: being written right now, or left by a crash inside its write.
        const mtime = yield* fs.stat(file).pipe(Effect.map((i) => i.mtime._tag === "Some" ? i.mtime.value.getTime() : 0), Effect.orElseSucceed(() => 0))
        if (Date.now() - mtime < 10_000) return yield* new RunDirectoryLocked({ path: dir, message: `being locked by another process (${file})` })
      }
      if (attempt > 0) break
      yield* Effect.logWarning(
        owner === undefined
          ? `run directory ${dir}: unreadable lock file ${file}, taking it over`
          : `run directory ${dir}: stale lock of process ${owner.pid} (since ${owner.started}, no longer running), taking it over`
      )
      yield* fs.remove(file).pipe(Effect.ignore)
    }
    return yield* new RunDirectoryLocked({ path: dir, message: `cannot create the lock file ${file}` })
  })
  const release = fs.readFileString(file).pipe(
    // Only our own lock: never one a later owner took over.
    Effect.flatMap((t) => (parse(t)?.pid === me.pid ? fs.remove(file) : Effect.void)),
    Effect.ignore
  )
  yield* Effect.acquireRelease(take, () => release)
  return file
})
