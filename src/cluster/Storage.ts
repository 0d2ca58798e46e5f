/**
 * Runner storage named by a URL (`--runners`): where runners register and
 * where the cluster's shard locks and messages live, as `effect/cluster`'s
 * SQL runner and message storage. `sqlite:PATH` (one host;
 * `@effect/sql-sqlite-node`, Node's built-in `node:sqlite`) and
 * `postgres://...` (several machines; `@effect/sql-pg`, its own wire
 * protocol, no native code).
 *
 * @since 0.8.0
 */
import { PgClient } from "@effect/sql-pg"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Cause, Duration, Effect, Layer, Redacted, Schema } from "effect"
import type { SqlClient } from "effect/sql"
import * as fs from "node:fs"
import * as path from "node:path"

/**
 * A `--runners` URL that names no storage this build has, or storage that
 * could not be opened.
 *
 * @since 0.8.0
 */
export class StorageUnsupported extends Schema.TaggedError<StorageUnsupported>()("StorageUnsupported", {
  url: Schema.String,
  message: Schema.String
}) {}

export type Storage =
  | { readonly _tag: "Sqlite"; readonly file: string }
  | { readonly _tag: "Postgres"; readonly url: string }

/**
 * Parse a storage URL: `sqlite:PATH` (relative to the working directory,
 * or absolute; `sqlite://PATH` also), `postgres://` or `postgresql://`.
 *
 * @since 0.8.0
 */
export const parse = (url: string): Effect.Effect<Storage, StorageUnsupported> => {
  if (url.startsWith("sqlite:")) {
    const file = url.slice("sqlite:".length).replace(/^\/\//, "")
    return file === ""
      ? Effect.fail(new StorageUnsupported({ url, message: "sqlite: needs a file path, e.g. sqlite:runs/runners.db" }))
      : Effect.succeed({ _tag: "Sqlite", file: path.resolve(file) })
  }
  if (/^postgres(ql)?:\/\//.test(url)) return Effect.succeed({ _tag: "Postgres", url })
  return Effect.fail(new StorageUnsupported({ url, message: "runner storage is sqlite:PATH (one host) or postgres://... (several machines)" }))
}

/** The URL as it may be shown: a password in it is masked. */
export const redact = (url: string): string => url.replace(/(\/\/[^:/@]*:)[^@]*@/, "$1***@")

/**
 * The SQL client of a storage URL. SQLite: the file's folder is made if
 * absent; every process of the cluster (runners and trainer) opens the
 * same file, so it must be on one host's local disk.
 *
 * @since 0.8.0
 */
export const sqlClient = (url: string): Layer.Layer<SqlClient.SqlClient, StorageUnsupported> =>
  Layer.unwrap(Effect.gen(function*() {
    const storage = yield* parse(url)
    if (storage._tag === "Postgres") {
      return PgClient.layer({ url: Redacted.make(storage.url) }).pipe(
        Layer.catchCause((cause): Layer.Layer<SqlClient.SqlClient, StorageUnsupported> =>
          Layer.unwrap(Effect.fail(new StorageUnsupported({ url: redact(url), message: `could not connect: ${Cause.pretty(cause).split("\n")[0]}` }))))
      )
    }
    fs.mkdirSync(path.dirname(storage.file), { recursive: true })
    return SqliteClient.layer({ filename: storage.file, busyTimeout: Duration.seconds(10) }).pipe(
      Layer.catchCause((cause): Layer.Layer<SqlClient.SqlClient, StorageUnsupported> => Layer.unwrap(Effect.fail(new StorageUnsupported({ url, message: `could not open ${storage.file}: ${Cause.pretty(cause).split("\n")[0]}` }))))
    )
  }))
