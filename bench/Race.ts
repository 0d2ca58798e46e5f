/**
 * Timing helpers shared by the per-layer benches: interleaved repetitions
 * of named functions and their medians.
 */

export const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

/** Interleaved repetitions of named functions (2 warm-up rounds); median wall and CPU ms of each. */
export const race = (fs: Record<string, () => void>, reps: number) => {
  const wall: Record<string, Array<number>> = {}
  const cpu: Record<string, Array<number>> = {}
  for (let r = 0; r < reps + 2; r++) {
    for (const [k, f] of Object.entries(fs)) {
      const c0 = process.cpuUsage()
      const t0 = performance.now()
      f()
      const c = process.cpuUsage(c0)
      if (r < 2) continue
      ;(wall[k] ??= []).push(performance.now() - t0)
      ;(cpu[k] ??= []).push((c.user + c.system) / 1000)
    }
  }
  return Object.fromEntries(Object.keys(fs).map((k) => [k, { wall: median(wall[k]), cpu: median(cpu[k]) }]))
}
