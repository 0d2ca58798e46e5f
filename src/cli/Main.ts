/**
 * Entry point for the project's CLIs: runs a command on Node, and turns any
 * failure into one line on stderr (`error: <what> (<where>)`) with exit code
 * 1 and no stack trace. Ctrl-C (SIGINT) and SIGTERM interrupt the command,
 * whose finalizers run (checkpoints are written and locks released by them),
 * and exit with 130 and 143. Under `npx`, the death of the npx process (a
 * supervisor's SIGTERM or SIGKILL to it alone) stops the command the same
 * way, so that no trainer outlives its wrapper.
 *
 * @since 0.1.0
 */
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import { Cause, Effect, Runtime } from "effect"
import { Command } from "effect/cli"
import { spawn } from "node:child_process"
import * as fs from "node:fs"

/** One line describing a failure: tag, message and location fields. */
export const describeError = (e: unknown): string => {
  if (e === null || typeof e !== "object") return String(e)
  const o = e as Record<string, unknown>
  const tag = typeof o._tag === "string" ? o._tag : e instanceof Error ? e.name : "Error"
  const where = ["file", "path", "url", "line", "tensor", "field", "index", "iteration"]
    .filter((k) => o[k] !== undefined)
    .map((k) => `${k}: ${String(o[k])}`)
  let message = typeof o.message === "string" && o.message !== "" ? o.message : ""
  if (message === "") {
    const fields = Object.entries(o).filter(([k]) => k !== "_tag" && k !== "stack" && !where.some((w) => w.startsWith(k + ":")))
    message = fields.map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" ")
  }
  return `${tag}: ${message.split("\n")[0]}${where.length > 0 ? ` (${where.join(", ")})` : ""}`
}

/**
 * Under `npx tsx`, tsx's parent process relays Ctrl-C to the script and
 * SIGKILLs it unless the script acknowledges within 30 ms, which a process
 * busy in a seconds-long tensor step cannot do: the run would die without
 * its checkpoint. So the script re-runs itself in a child whose event loop
 * may be busy, while this process (idle, so it acknowledges at once)
 * forwards signals and passes the exit code through.
 */
const underTsxRelay = (): boolean =>
  process.env.SHARPEN_CHILD !== "1" && process.execArgv.some((a) => a.includes("tsx") && a.includes("preflight"))

/** The parent pid of a process (Linux /proc; undefined elsewhere or when gone). */
const parentOf = (pid: number): number | undefined => {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8")
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1])
  } catch {
    return undefined
  }
}

const commandOf = (pid: number): string => {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").replace(/\0/g, " ")
  } catch {
    return ""
  }
}

/**
 * The processes between this one and an `npm exec` / `npx` wrapper above it
 * (that wrapper included); empty when there is none (or no /proc). npm
 * exits on SIGTERM without waiting for its child, and a SIGKILL of it
 * reaches nobody: watching these pids is how the run learns it lost its
 * wrapper.
 */
const wrapperChain = (): Array<number> => {
  if (process.env.npm_command !== "exec") return []
  const chain: Array<number> = []
  for (let pid: number | undefined = process.ppid; pid !== undefined && pid > 1 && chain.length < 6; pid = parentOf(pid)) {
    chain.push(pid)
    if (/\bnpm\b|\bnpx\b|npm-cli|npx-cli/.test(commandOf(pid))) return chain
  }
  return []
}

const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"
  }
}

/** Call `lost` once when one of the processes `chain` has exited (polled each second, not keeping the process alive). */
const watchChain = (chain: ReadonlyArray<number>, lost: () => void): void => {
  if (chain.length === 0) return
  const timer = setInterval(() => {
    if (chain.every(isAlive)) return
    clearInterval(timer)
    lost()
  }, 1000)
  timer.unref()
}

const runInChild = (): void => {
  const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
    stdio: "inherit",
    env: { ...process.env, SHARPEN_CHILD: "1" }
  })
  const forward = (signal: NodeJS.Signals) => () => {
    if (child.exitCode === null) child.kill(signal)
  }
  process.on("SIGINT", forward("SIGINT"))
  process.on("SIGTERM", forward("SIGTERM"))
  watchChain(wrapperChain(), forward("SIGTERM"))
  child.on("exit", (code, signal) => process.exit(code ?? (signal === "SIGINT" ? 130 : signal === "SIGTERM" ? 143 : 1)))
}

/** In the relayed child: if the relay above dies (even by SIGKILL), stop as on SIGTERM. */
const watchRelay = (): void => {
  const relay = process.ppid
  const timer = setInterval(() => {
    if (process.ppid === relay) return
    clearInterval(timer)
    process.kill(process.pid, "SIGTERM")
  }, 1000)
  timer.unref()
}

export const run = <Name extends string, Input, E, R>(
  command: Command.Command<Name, Input, {}, E, R>,
  version = "0.1.0"
): void => {
  if (underTsxRelay()) return runInChild()
  if (process.env.SHARPEN_CHILD === "1") watchRelay()
  else watchChain(wrapperChain(), () => process.kill(process.pid, "SIGTERM"))
  let terminated = false
  process.on("SIGTERM", () => {
    terminated = true
  })
  const program = Command.run(command, { version }).pipe(
    Effect.catchCause((cause) => {
      if (Cause.hasInterruptsOnly(cause)) {
        return Effect.sync(() => {
          process.exitCode = terminated ? 143 : 130
        })
      }
      const failure = Cause.findErrorOption(cause)
      // The CLI already printed help and the parse error for these.
      if (failure._tag === "Some" && (failure.value as { _tag?: string })._tag === "ShowHelp") {
        return Effect.sync(() => {
          process.exitCode = 1
        })
      }
      const defect = cause.reasons.find((r) => r._tag === "Die")
      const text = failure._tag === "Some"
        ? describeError(failure.value)
        : defect !== undefined
        ? describeError((defect as { defect: unknown }).defect)
        : Cause.pretty(cause).split("\n")[0]
      return Effect.sync(() => {
        // SHARPEN_DEBUG=1 prints the full cause (stack traces) for bug reports.
        if (process.env.SHARPEN_DEBUG) process.stderr.write(`${Cause.pretty(cause)}\n`)
        process.stderr.write(`error: ${text}\n`)
        process.exitCode = 1
      })
    }),
    Effect.provide(NodeServices.layer)
  )
  NodeRuntime.runMain(program as Effect.Effect<void>, {
    disableErrorReporting: true,
    // An interrupted main fiber exits with 130 whatever the signal; SIGTERM's is 143.
    teardown: (exit, onExit) => Runtime.defaultTeardown(exit, (code) => onExit(code === 130 && terminated ? 143 : code))
  })
}
