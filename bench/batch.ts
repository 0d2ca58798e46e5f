/**
 * Pretraining step time and wasm heap against batch size: each batch size
 * in a fresh process (the wasm heap only grows, so its size after the steps
 * is that batch's peak), one thread, the default UNet, AdamW. Wall and CPU
 * time (the latter hardly moves with other processes' load).
 *
 *   npx tsx bench/batch.ts                      # batches 1,2,4,8,16,32
 *   npx tsx bench/batch.ts --batches 8,48,64    # 64 runs the heap out: WasmHeapExhausted
 */
import { spawnSync } from "node:child_process"
import * as os from "node:os"
import { fileURLToPath } from "node:url"

const args = process.argv.slice(2)
const flag = (name: string) => {
  const i = args.indexOf(`--${name}`)
  return i >= 0 ? args[i + 1] : undefined
}

interface Row {
  readonly batch: number
  readonly stepMs?: number
  readonly cpuMs?: number
  readonly heapMiB?: number
  readonly error?: string
}

const child = async (batch: number): Promise<Row> => {
  const { initialise } = await import("../src/tensor/Backend.ts")
  const WasmHeap = await import("../src/tensor/WasmHeap.ts")
  const TrainingBench = await import("./TrainingBench.ts")
  const { defaultConfig } = await import("../src/model/UNetConfig.ts")
  const r = await initialise("wasm")
  if ("_tag" in r) return { batch, error: r.message }
  const bench = TrainingBench.make(defaultConfig, batch)
  try {
    await bench.step() // warm-up
    const ts: Array<number> = []
    const cpu: Array<number> = []
    for (let i = 0; i < (batch <= 8 ? 5 : batch <= 16 ? 3 : 1); i++) {
      const c0 = process.cpuUsage()
      const t0 = performance.now()
      await bench.step()
      ts.push(performance.now() - t0)
      const c = process.cpuUsage(c0)
      cpu.push((c.user + c.system) / 1000)
    }
    const median = (xs: Array<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
    return { batch, stepMs: median(ts), cpuMs: median(cpu), heapMiB: WasmHeap.heapBytes() / 2 ** 20 }
  } catch (e) {
    return { batch, error: e instanceof WasmHeap.WasmHeapExhausted ? `${e._tag}: ${e.message}` : String(e) }
  }
}

if (flag("child") !== undefined) {
  const row = await child(Number(flag("child")))
  process.stdout.write(`\n@@${JSON.stringify(row)}\n`)
  process.exit(0)
} else {
  const batches = (flag("batches") ?? "1,2,4,8,16,32").split(",").map(Number)
  const self = fileURLToPath(import.meta.url)
  const rows: Array<Row> = []
  const load0 = os.loadavg()[0]
  for (const b of batches) {
    const r = spawnSync(process.execPath, [...process.execArgv, self, "--child", String(b)], { encoding: "utf8", maxBuffer: 1 << 26 })
    const line = r.stdout.split("\n").find((l) => l.startsWith("@@"))
    rows.push(line !== undefined ? JSON.parse(line.slice(2)) as Row : { batch: b, error: `exited with ${r.status}: ${r.stderr.trim().split("\n").slice(-1)[0] ?? ""}` })
  }
  const per = (r: Row) => (r.cpuMs === undefined ? undefined : r.cpuMs / r.batch)
  console.log(`Pretraining step of the default UNet on **wasm**, one thread, each batch in a fresh process (${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC, ${os.cpus().length} x ${os.cpus()[0]?.model ?? "cpu"}; 1-min load average ${load0.toFixed(2)} before, ${os.loadavg()[0].toFixed(2)} after).`)
  console.log("")
  console.log(`Command: \`npx tsx bench/batch.ts${flag("batches") !== undefined ? ` --batches ${flag("batches")}` : ""}\``)
  console.log("")
  console.log("| batch (UNet rows) | step ms (wall) | step ms (CPU time) | CPU ms per row | wasm heap MiB |")
  console.log("|---|---|---|---|---|")
  for (const r of rows) {
    console.log(r.error !== undefined
      ? `| ${r.batch} | ${r.error} | | | |`
      : `| ${r.batch} | ${r.stepMs!.toFixed(0)} | ${r.cpuMs!.toFixed(0)} | ${per(r)!.toFixed(0)} | ${r.heapMiB!.toFixed(0)} |`)
  }
}
