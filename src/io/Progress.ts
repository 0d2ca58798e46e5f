/**
 * A progress bar with ETA and live metrics on a terminal, and plain log lines
 * (every `logEvery` steps) when stderr is not a terminal (CI, nohup, pipes).
 *
 * @since 0.1.0
 */
export interface Progress {
  /** Report completion of step `done` (1-based) with metrics to show. */
  tick(done: number, metrics?: Readonly<Record<string, number | string>>): void
  /** Finish the bar (newline on a terminal). */
  end(): void
}

const fmtTime = (s: number): string => {
  if (!Number.isFinite(s)) return "--:--"
  const h = Math.floor(s / 3600)
  const m = Math.floor((s % 3600) / 60)
  const sec = Math.floor(s % 60)
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${String(sec).padStart(2, "0")}` : `${m}:${String(sec).padStart(2, "0")}`
}

const fmtMetric = (v: number | string): string =>
  typeof v === "string" ? v : Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(2) : v.toFixed(4)

export const make = (options: {
  readonly label: string
  readonly total: number
  readonly start?: number
  readonly logEvery?: number
  readonly stream?: NodeJS.WriteStream
}): Progress => {
  const stream = options.stream ?? process.stderr
  const tty = stream.isTTY === true
  const t0 = performance.now()
  const first = options.start ?? 0
  const logEvery = options.logEvery ?? Math.max(1, Math.round(options.total / 50))
  let last = 0
  // Steps may advance by more than one (a bar over training NFE): a log line
  // whenever `done` enters a new multiple of logEvery.
  let logged = Math.floor(first / logEvery)
  return {
    tick(done, metrics = {}) {
      const elapsed = (performance.now() - t0) / 1000
      const rate = (done - first) / Math.max(elapsed, 1e-9)
      const eta = (options.total - done) / rate
      const m = Object.entries(metrics).map(([k, v]) => `${k}=${fmtMetric(v)}`).join(" ")
      if (tty) {
        const now = performance.now()
        if (now - last < 100 && done < options.total) return
        last = now
        const width = 24
        const filled = Math.round((done / options.total) * width)
        const bar = "█".repeat(filled) + "░".repeat(width - filled)
        stream.write(`\r\x1b[2K${options.label} ${bar} ${done}/${options.total} [${fmtTime(elapsed)}<${fmtTime(eta)}] ${m}`)
      } else if (Math.floor(done / logEvery) > logged || done === options.total) {
        logged = Math.floor(done / logEvery)
        stream.write(`${options.label} ${done}/${options.total} elapsed=${fmtTime(elapsed)} eta=${fmtTime(eta)} ${m}\n`)
      }
    },
    end() {
      if (tty) stream.write("\n")
    }
  }
}
