/**
 * Real runner processes on loopback for the cluster tests: each is
 * `pipelines/runner.ts` on the wasm backend, started on a free port, and
 * always stopped (SIGTERM, then SIGKILL after 5 s) when its scope closes,
 * or when the test process exits.
 */
import { Effect, Schema } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import * as path from "node:path"

const root = path.resolve(import.meta.dirname, "../..")

const started = new Set<ChildProcess>()
process.once("exit", () => {
  for (const p of started) p.kill("SIGKILL")
})

export class RunnerDidNotStart extends Schema.TaggedError<RunnerDidNotStart>()("RunnerDidNotStart", { message: Schema.String }) {}

export interface RunnerProcess {
  readonly process: ChildProcess
  readonly address: string
  /** Everything it printed so far. */
  readonly output: () => string
}

/** Wait for a process to exit, at most `ms`; whether it did. */
const exited = (p: ChildProcess, ms: number) =>
  Effect.callback<boolean>((resume) => {
    if (p.exitCode !== null || p.signalCode !== null) return resume(Effect.succeed(true))
    const timer = setTimeout(() => resume(Effect.succeed(false)), ms)
    p.once("exit", () => {
      clearTimeout(timer)
      resume(Effect.succeed(true))
    })
  })

/** Stop a runner: SIGTERM, then SIGKILL if it has not exited within 5 s. */
export const stop = (p: ChildProcess) =>
  Effect.gen(function*() {
    if (p.exitCode === null && p.signalCode === null) p.kill("SIGTERM")
    if (!(yield* exited(p, 5_000))) {
      p.kill("SIGKILL")
      yield* exited(p, 5_000)
    }
    started.delete(p)
  })

/**
 * A runner of `storage` (a `--runners` URL) with `env` added to this
 * process's (`SHARPEN_CLUSTER_SECRET` removed unless given), on `listen`,
 * ready once it printed its address (within `timeoutMs`), with `args` added
 * to its command line. Stopped with the scope.
 */
export const runner = (storage: string, env: Record<string, string> = {}, timeoutMs = 90_000, listen = "127.0.0.1:0", args: ReadonlyArray<string> = []) =>
  Effect.acquireRelease(
    Effect.callback<RunnerProcess, RunnerDidNotStart>((resume) => {
      const { SHARPEN_CLUSTER_SECRET: _, ...base } = process.env
      const p = spawn(process.execPath, ["--import", "tsx", "pipelines/runner.ts", "--listen", listen, "--runners", storage, "--backend", "wasm", ...args], {
        cwd: root,
        env: { ...base, ...env, SHARPEN_CHILD: "1" },
        stdio: ["ignore", "pipe", "pipe"]
      })
      started.add(p)
      let out = ""
      let done = false
      const finish = (e: Effect.Effect<RunnerProcess, RunnerDidNotStart>) => {
        if (done) return
        done = true
        clearTimeout(timer)
        resume(e)
      }
      const timer = setTimeout(() => {
        p.kill("SIGKILL")
        finish(Effect.fail(new RunnerDidNotStart({ message: `no address within ${timeoutMs} ms: ${out.slice(-500)}` })))
      }, timeoutMs)
      const read = (chunk: Buffer) => {
        out += chunk.toString()
        const m = /runner listening on (\S+);/.exec(out)
        if (m !== null) finish(Effect.succeed({ process: p, address: m[1], output: () => out }))
      }
      p.stdout!.on("data", read)
      p.stderr!.on("data", read)
      p.once("exit", (code, signal) => finish(Effect.fail(new RunnerDidNotStart({ message: `exited (${code ?? signal}): ${out.slice(-500)}` }))))
    }),
    (r) => stop(r.process)
  )
