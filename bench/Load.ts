/**
 * How busy the rest of the machine was while a bench ran: the CPU time of
 * every process (/proc/stat) minus this process's and its helpers', as a
 * share of all cores. The machine is shared, so every figure carries it.
 */
import * as fs from "node:fs"
import * as os from "node:os"

/** Clock ticks of /proc (USER_HZ, 100 on Linux). */
const HZ = 100

const busyTicks = (): number => {
  const cpu = fs.readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number)
  // user nice system idle iowait irq softirq steal
  return cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6] + (cpu[7] ?? 0)
}

const processTicks = (pid: number | "self"): number => {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8")
    // Fields after the parenthesised name; utime and stime are the 14th and 15th of the line.
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return Number(rest[11]) + Number(rest[12])
  } catch {
    return 0
  }
}

export interface LoadMeter {
  /** Share (0-1) of all cores used by other processes since the meter started, and the 1-min load average now. */
  readonly others: () => { share: number; loadavg: number }
}

export const start = (helpers: () => ReadonlyArray<number | undefined>): LoadMeter | undefined => {
  if (!fs.existsSync("/proc/stat")) return undefined
  const ours = () => processTicks("self") + helpers().reduce<number>((a, pid) => a + (pid === undefined ? 0 : processTicks(pid)), 0)
  const t0 = performance.now()
  const busy0 = busyTicks()
  const ours0 = ours()
  return {
    others: () => {
      const elapsed = (performance.now() - t0) / 1000 * HZ * os.cpus().length
      const share = Math.max(0, (busyTicks() - busy0) - (ours() - ours0)) / elapsed
      return { share, loadavg: os.loadavg()[0] }
    }
  }
}
