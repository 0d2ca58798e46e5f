/**
 * A throwaway PostgreSQL server for the cluster tests: `initdb` into a temp
 * folder, started on a free loopback port with trust authentication,
 * stopped and removed with the scope. Needs PostgreSQL's server binaries on
 * the PATH (Debian: `apt-get install postgresql`); as root they run as the
 * `postgres` user. `available` says whether they are here.
 */
import { Effect } from "effect"
import { execFileSync, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { freePort } from "../../src/cluster/Runner.ts"

const asRoot = process.getuid?.() === 0

/** The command line of a PostgreSQL binary, as the `postgres` user when this is root. */
const as = (bin: string, args: Array<string>): [string, Array<string>] => (asRoot ? ["runuser", ["-u", "postgres", "--", bin, ...args]] : [bin, args])

const runs = (bin: string, args: Array<string>) => {
  const [cmd, argv] = as(bin, args)
  return spawnSync(cmd, argv, { stdio: "ignore" }).status === 0
}

/** Whether a server can be made here. */
export const available: boolean = runs("initdb", ["--version"]) && runs("pg_ctl", ["--version"])

/** A fresh server; its URL (database `postgres`, user `postgres`). */
export const server = Effect.acquireRelease(
  Effect.gen(function*() {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "cluster-pg-"))
    if (asRoot) execFileSync("chown", ["postgres", dir])
    const port = yield* Effect.orDie(freePort("127.0.0.1"))
    const run = (bin: string, args: Array<string>) => {
      const [cmd, argv] = as(bin, args)
      execFileSync(cmd, argv, { stdio: "ignore", timeout: 60_000 })
    }
    yield* Effect.sync(() => {
      run("initdb", ["-D", `${dir}/data`, "-U", "postgres", "--auth=trust", "-E", "UTF8"])
      run("pg_ctl", ["-D", `${dir}/data`, "-o", `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1`, "-l", `${dir}/log`, "-w", "-t", "60", "start"])
    })
    return { dir, url: `postgres://postgres@127.0.0.1:${port}/postgres` }
  }),
  ({ dir }) =>
    Effect.sync(() => {
      const [cmd, argv] = as("pg_ctl", ["-D", `${dir}/data`, "-m", "immediate", "-w", "-t", "30", "stop"])
      spawnSync(cmd, argv, { stdio: "ignore", timeout: 40_000 })
      fs.rmSync(dir, { recursive: true, force: true })
    })
)
