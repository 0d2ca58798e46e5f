/**
 * The lab's table (`pipelines/lab.ts`): each row the mean and the **sample**
 * SD (n - 1) over seeds of a method's measures, rendered as markdown. Built
 * from each seed's numbers, so a stored lab.json can be rendered again
 * (`--retable`) without training anything.
 *
 * @since 0.7.0
 */
import * as Stats from "../math/Stats.ts"

/** One seed's measures of a row (as lab.json stores them). */
export interface SeedResult {
  readonly seed: number
  readonly reward: number
  readonly inMode: number
  readonly onRing: number
  readonly trainingNfe: number
  readonly iterations: number
  readonly wallMs: number
}

export interface Row {
  readonly name: string
  readonly reward: number
  readonly rewardStd: number
  readonly inMode: number
  readonly inModeStd: number
  readonly onRing: number
  readonly onRingStd: number
  /** Means over seeds: a run stops at the first iteration past the budget, so seeds differ. */
  readonly trainingNfe: number
  readonly iterations: number
  readonly wallMs: number
  readonly seeds: ReadonlyArray<SeedResult>
}

/**
 * A row from its seeds: means, and sample SDs of the three measures (NaN
 * with one seed).
 *
 * @since 0.7.0
 */
export const summarize = (name: string, results: ReadonlyArray<SeedResult>): Row => {
  const s = (f: (r: SeedResult) => number) => Stats.meanSampleStd(results.map(f), NaN)
  const reward = s((r) => r.reward)
  const inMode = s((r) => r.inMode)
  const onRing = s((r) => r.onRing)
  return {
    name,
    reward: reward.mean,
    rewardStd: reward.std,
    inMode: inMode.mean,
    inModeStd: inMode.std,
    onRing: onRing.mean,
    onRingStd: onRing.std,
    trainingNfe: s((r) => r.trainingNfe).mean,
    iterations: s((r) => r.iterations).mean,
    wallMs: s((r) => r.wallMs).mean,
    seeds: [...results].sort((a, b) => a.seed - b.seed).map((r) => ({
      seed: r.seed,
      reward: r.reward,
      inMode: r.inMode,
      onRing: r.onRing,
      trainingNfe: r.trainingNfe,
      iterations: r.iterations,
      wallMs: r.wallMs
    }))
  }
}

const f3 = (x: number) => x.toFixed(3)
const pct = (x: number) => `${(100 * x).toFixed(1)}%`
/** One seed has no sample SD: its mean alone. */
const spread = (sd: number, f: (x: number) => string) => (Number.isNaN(sd) ? "" : ` ± ${f(sd)}`)

export interface Measures {
  readonly reward: number
  readonly inMode: number
  readonly onRing: number
}

/**
 * The markdown table: the base, each row, and best-of-N at inference when given.
 *
 * @since 0.7.0
 */
export const render = (base: Measures, rows: ReadonlyArray<Row>, best?: Measures & { readonly n: number }): string =>
  [
    `| method | reward | in mode | on ring | training NFE | iterations | wall s |`,
    `|---|---|---|---|---|---|---|`,
    `| base | ${f3(base.reward)} | ${pct(base.inMode)} | ${pct(base.onRing)} | 0 | 0 | 0 |`,
    ...rows.map((r) =>
      `| ${r.name} | ${f3(r.reward)}${spread(r.rewardStd, f3)} | ${pct(r.inMode)}${spread(r.inModeStd, pct)} | ${pct(r.onRing)}${spread(r.onRingStd, pct)} | ${Math.round(r.trainingNfe)} | ${r.iterations.toFixed(0)} | ${(r.wallMs / 1000).toFixed(1)} |`
    ),
    ...(best === undefined ? [] : [`| best-of-${best.n} (inference, ${best.n}x sampling NFE) | ${f3(best.reward)} | ${pct(best.inMode)} | ${pct(best.onRing)} | 0 | 0 | 0 |`])
  ].join("\n")

/** What the header says about the table's numbers. */
export const LEGEND =
  "Mean ± sample SD (n - 1) over seeds; training NFE, iterations and wall time are means over seeds (a run stops at the first iteration past the budget, and an iteration's NFE depends on its drawn start timesteps, so seeds differ: each seed's in lab.json)."
