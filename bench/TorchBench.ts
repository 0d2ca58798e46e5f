/**
 * The PyTorch side of `npm run bench`: bench/torch/server.py run by the
 * system interpreter (`command -p python3`, where Debian's python3-torch
 * installs), spoken to over JSON lines so the bench can interleave its own
 * repetitions with PyTorch's in one run. Benchmark only: nothing in the
 * library or the tests needs torch.
 */
import { spawn, spawnSync } from "node:child_process"
import * as path from "node:path"
import * as readline from "node:readline"

const here = path.dirname(new URL(import.meta.url).pathname)

/**
 * The interpreter: `BENCH_PYTHON` if set, else the system one (`command -p`
 * searches the default system PATH; the first python3 on PATH may lack torch).
 */
const python = (): string | undefined => {
  if (process.env.BENCH_PYTHON !== undefined) return process.env.BENCH_PYTHON
  const r = spawnSync("sh", ["-c", "command -p -v python3"], { encoding: "utf8" })
  return r.status === 0 && r.stdout.trim() !== "" ? r.stdout.trim() : undefined
}

export const installHint = [
  "PyTorch is not importable by the system interpreter (`command -p python3`), so the side-by-side table is skipped.",
  "Install it with `sudo apt-get install -y python3-torch` (Debian/Ubuntu), or point BENCH_PYTHON at an interpreter that has torch."
].join("\n")

/** torch's version, or undefined when the interpreter cannot import it. */
export const probe = (): string | undefined => {
  const py = python()
  if (py === undefined) return undefined
  const r = spawnSync(py, ["-c", "import torch; print(torch.__version__)"], { encoding: "utf8" })
  return r.status === 0 ? r.stdout.trim() : undefined
}

export interface TorchServer {
  readonly pid: number | undefined
  readonly request: <A>(req: Record<string, unknown>) => Promise<A>
  readonly close: () => Promise<void>
}

export const start = (): TorchServer => {
  const child = spawn(python() ?? "python3", [path.join(here, "torch", "server.py")], {
    // OpenMP's default wait policy stays: OMP_WAIT_POLICY=PASSIVE took PyTorch's
    // 2-thread UNet step from 263 to 417 ms here. The bench pauses after each
    // request instead, so spinning threads do not overlap the next tfjs timing.
    stdio: ["pipe", "pipe", "inherit"]
  })
  const lines = readline.createInterface({ input: child.stdout })
  const waiting: Array<{ resolve: (v: unknown) => void; reject: (e: Error) => void }> = []
  lines.on("line", (line) => {
    const w = waiting.shift()
    if (w === undefined) return
    const reply = JSON.parse(line) as { error?: string }
    if (reply.error !== undefined) w.reject(new Error(`torch server: ${reply.error}`))
    else w.resolve(reply)
  })
  child.on("exit", (code) => {
    for (const w of waiting.splice(0)) w.reject(new Error(`torch server exited with code ${code}`))
  })
  return {
    pid: child.pid,
    request: <A>(req: Record<string, unknown>) =>
      new Promise<A>((resolve, reject) => {
        waiting.push({ resolve: resolve as (v: unknown) => void, reject })
        child.stdin.write(JSON.stringify(req) + "\n")
      }),
    close: () =>
      new Promise<void>((resolve) => {
        // A server that already exited (a failed request) has nothing to wait for.
        if (child.exitCode !== null || child.signalCode !== null) return resolve()
        child.once("exit", () => resolve())
        child.stdin.end()
      })
  }
}
