/**
 * Does the trajectory reward pick the path whose final image is best?
 *
 * RLHF-Diffusion-Sharpening ranks the n paths of a prompt by the reward of
 * the model's x0 estimates along m steps (Eq. 7-8) and trains toward the
 * best. The model is then judged on its final images. This module measures
 * how well the first ranking predicts the second: each path is continued
 * from its last recorded state to clean data (DDIM, eta 0, the same grid and
 * guidance), its final image is scored with the same reward, and the two
 * rankings are compared per prompt.
 *
 * Layouts follow Trajectory.ts and Aggregate.ts: scores `[n][B]` (path i of
 * item b), per-step rewards `perStep[k][i*B + b]`.
 *
 * @since 0.3.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Schema } from "effect"
import * as Ddim from "../diffusion/Ddim.ts"
import { attempt } from "../diffusion/DiffusionError.ts"
import { mean, pearson, spearman } from "../math/Stats.ts"
import * as Denoiser from "../model/Denoiser.ts"
import * as HostRead from "../tensor/HostRead.ts"
import * as Aggregate from "../trajectory/Aggregate.ts"
import type { Trajectories } from "../trajectory/Trajectory.ts"
import * as Wilson from "./Wilson.ts"

/**
 * Inputs of the measurement do not fit together (a trajectory without
 * steps, score tables of different shapes).
 *
 * @since 0.3.0
 */
export class PathAgreementError extends Schema.TaggedError<PathAgreementError>()("PathAgreementError", {
  message: Schema.String
}) {}

/** Path i's scores of every item, `[n][B]` -> item b's column. */
const column = (scores: ReadonlyArray<ReadonlyArray<number>>, b: number) => scores.map((row) => row[b])

const checkShapes = (a: ReadonlyArray<ReadonlyArray<number>>, b: ReadonlyArray<ReadonlyArray<number>>) => {
  if (a.length !== b.length || a.some((row, i) => row.length !== b[i].length)) {
    throw new PathAgreementError({ message: `score tables of shapes [${a.length}][${a[0]?.length}] and [${b.length}][${b[0]?.length}]` })
  }
  if (a.length === 0 || a[0].length === 0) throw new PathAgreementError({ message: "empty score tables" })
}

/**
 * Per item: does the trajectory ranking's best (worst) path have the best
 * (worst) final image, the rank correlation of the two rankings, and the
 * final rewards of the paths the trajectory reward selects.
 *
 * @since 0.3.0
 */
export interface ItemAgreement {
  readonly argmax: ReadonlyArray<boolean>
  readonly argmin: ReadonlyArray<boolean>
  /** Spearman per item (null when either ranking is all ties). */
  readonly spearman: ReadonlyArray<number | null>
  /** Final reward of the path the trajectory reward ranks best / worst. */
  readonly bestFinal: ReadonlyArray<number>
  readonly worstFinal: ReadonlyArray<number>
  /** max - min and mean of the item's final rewards. */
  readonly spread: ReadonlyArray<number>
  readonly meanFinal: ReadonlyArray<number>
  readonly maxFinal: ReadonlyArray<number>
}

export const itemAgreement = (trajectory: ReadonlyArray<ReadonlyArray<number>>, final: ReadonlyArray<ReadonlyArray<number>>): ItemAgreement => {
  checkShapes(trajectory, final)
  const best = Aggregate.argmax(trajectory)
  const worst = Aggregate.argmin(trajectory)
  const finalBest = Aggregate.argmax(final)
  const finalWorst = Aggregate.argmin(final)
  const items = final[0].map((_, b) => b)
  return {
    argmax: items.map((b) => best[b] === finalBest[b]),
    argmin: items.map((b) => worst[b] === finalWorst[b]),
    spearman: items.map((b) => spearman(column(trajectory, b), column(final, b))),
    bestFinal: items.map((b) => final[best[b]][b]),
    worstFinal: items.map((b) => final[worst[b]][b]),
    spread: items.map((b) => final[finalBest[b]][b] - final[finalWorst[b]][b]),
    meanFinal: items.map((b) => column(final, b).reduce((a, v) => a + v, 0) / final.length),
    maxFinal: items.map((b) => final[finalBest[b]][b])
  }
}

/**
 * Pearson correlation of each step's x0-estimate reward with the final
 * reward of the same path: over all rows, and within items (each item's
 * mean removed from both sides first). Selection happens within an item, so
 * the within-item figure is the one that matters for it; the pooled one also
 * contains how prompts differ.
 *
 * @since 0.3.0
 */
export const stepCorrelations = (
  perStep: ReadonlyArray<ReadonlyArray<number>>,
  final: ReadonlyArray<ReadonlyArray<number>>
): Array<{ readonly all: number | null; readonly withinItem: number | null }> => {
  const n = final.length
  const batch = final[0]?.length ?? 0
  const flatFinal = final.flat()
  const centred = (rows: ReadonlyArray<number>) =>
    rows.map((v, r) => {
      const b = r % batch
      let mean = 0
      for (let i = 0; i < n; i++) mean += rows[i * batch + b] / n
      return v - mean
    })
  return perStep.map((row) => {
    if (row.length !== n * batch) throw new PathAgreementError({ message: `a step has ${row.length} rewards for ${n} x ${batch} paths` })
    return { all: pearson(row, flatFinal), withinItem: pearson(centred(row), centred(flatFinal)) }
  })
}

// ---------------------------------------------------------------- report format

/**
 * One prompt's raw numbers: each path's per-step x0-estimate rewards and its
 * final-image reward.
 *
 * @since 0.3.0
 */
export const Item = Schema.Struct({
  prompt: Schema.String,
  /** The trajectory's first timestep (shared by the items of a batch). */
  t0: Schema.Int,
  /** perStep[k][i]: reward of path i's x0 estimate at step k. */
  perStep: Schema.Array(Schema.Array(Schema.Number)),
  /** final[i]: reward of path i's final image (DDIM to t = 0). */
  final: Schema.Array(Schema.Number)
})
export type Item = typeof Item.Type

/**
 * The items of one batch, from the scorer's `perStep[k][i*B + b]` and the
 * final rewards `[n][B]`.
 *
 * @since 0.3.0
 */
export const items = (
  prompts: ReadonlyArray<string>,
  t0: number,
  perStep: ReadonlyArray<ReadonlyArray<number>>,
  final: ReadonlyArray<ReadonlyArray<number>>
): Array<Item> => {
  const batch = prompts.length
  return prompts.map((prompt, b) => ({
    prompt,
    t0,
    perStep: perStep.map((row) => final.map((_, i) => row[i * batch + b])),
    final: final.map((row) => row[b])
  }))
}

/** Items back to the tables: perStep `[m][n*B]`, final `[n][B]`. */
export const tables = (xs: ReadonlyArray<Item>) => {
  const n = xs[0].final.length
  const m = xs[0].perStep.length
  if (xs.some((x) => x.final.length !== n || x.perStep.length !== m || x.perStep.some((r) => r.length !== n))) {
    throw new PathAgreementError({ message: "items with different n or m" })
  }
  const perStep = Array.from({ length: m }, (_, k) => Array.from({ length: n * xs.length }, (_, r) => xs[r % xs.length].perStep[k][Math.floor(r / xs.length)]))
  const final = Array.from({ length: n }, (_, i) => xs.map((x) => x.final[i]))
  return { n, m, perStep, final }
}

const NullableNumber = Schema.NullOr(Schema.Number)

/** A hit rate with its Wilson 95% interval and the rate of a random pick. */
export const Rate = Schema.Struct({
  hits: Schema.Int,
  items: Schema.Int,
  rate: Schema.Number,
  low: Schema.Number,
  high: Schema.Number,
  chance: Schema.Number
})
export type Rate = typeof Rate.Type

const rate = (hits: ReadonlyArray<boolean>, chance: number): Rate => {
  const k = hits.filter((h) => h).length
  const [low, high] = Wilson.interval(k, hits.length)
  return { hits: k, items: hits.length, rate: hits.length === 0 ? 0 : k / hits.length, low, high, chance }
}

/**
 * How one trajectory score (an aggregation of the per-step rewards) ranks
 * the paths against their final images.
 *
 * @since 0.3.0
 */
export const Ranking = Schema.Struct({
  aggregation: Schema.String,
  argmax: Rate,
  argmin: Rate,
  /** Mean per-item Spearman (items where both rankings have no full tie). */
  spearman: NullableNumber,
  spearmanItems: Schema.Int,
  /**
   * Items whose path ranked best by this score has a lower final reward than
   * the path ranked worst: the RLHF objective's preferred/rejected pair is
   * upside down for the final images (a random pick: 50%).
   */
  pairInverted: Rate,
  /** Mean of final(best by this score) - final(worst by this score): 0 for a random pick. */
  bestMinusWorst: Schema.Number,
  /** Mean of |final(best) - final(worst)|. */
  absBestMinusWorst: Schema.Number,
  /** Mean of final(best by this score) - the item's mean final reward: what selecting gains on final images. */
  bestMinusMean: Schema.Number
})
export type Ranking = typeof Ranking.Type

export const StepCorrelation = Schema.Struct({
  step: Schema.Int,
  all: NullableNumber,
  withinItem: NullableNumber
})

export const Summary = Schema.Struct({
  items: Schema.Int,
  n: Schema.Int,
  m: Schema.Int,
  rankings: Schema.Array(Ranking),
  /** Each step's x0-estimate reward against the final reward (Pearson). */
  steps: Schema.Array(StepCorrelation),
  /** Mean over items of max - min of the final rewards: the most any selection could separate. */
  finalSpread: Schema.Number,
  /** Mean of max - mean of the final rewards: what an oracle selection would gain. */
  oracleBestMinusMean: Schema.Number,
  /** Start timesteps drawn (one per batch), with their item counts. */
  t0: Schema.Array(Schema.Struct({ t0: Schema.Int, items: Schema.Int })),
  /** The same rankings on the items with t0 >= threshold (high) and below (low). */
  byT0: Schema.Array(Schema.Struct({
    half: Schema.Literals(["high", "low"]),
    threshold: Schema.Int,
    items: Schema.Int,
    rankings: Schema.Array(Ranking)
  }))
})
export type Summary = typeof Summary.Type


/** The aggregations compared: Eq. 8's sum (what training uses) and the last step alone. */
export const AGGREGATIONS: ReadonlyArray<Aggregate.Aggregation> = [{ kind: "sum" }, { kind: "last" }]

const rankings = (xs: ReadonlyArray<Item>, aggregations: ReadonlyArray<Aggregate.Aggregation>): Array<Ranking> => {
  const t = tables(xs)
  return aggregations.map((how) => {
    const a = itemAgreement(Aggregate.aggregate(t.perStep, t.n, xs.length, how), t.final)
    const rho = a.spearman.filter((r): r is number => r !== null)
    const diff = a.bestFinal.map((v, b) => v - a.worstFinal[b])
    return {
      aggregation: how.kind,
      argmax: rate(a.argmax, 1 / t.n),
      argmin: rate(a.argmin, 1 / t.n),
      pairInverted: rate(diff.map((d) => d < 0), 0.5),
      spearman: rho.length === 0 ? null : mean(rho),
      spearmanItems: rho.length,
      bestMinusWorst: mean(diff),
      absBestMinusWorst: mean(diff.map(Math.abs)),
      bestMinusMean: mean(a.bestFinal.map((v, b) => v - a.meanFinal[b]))
    }
  })
}

/**
 * Every statistic of the report from the items. `threshold` splits the items
 * by start timestep (high: t0 >= threshold); see {@link splitThreshold}.
 *
 * @since 0.3.0
 */
export const summarize = (
  xs: ReadonlyArray<Item>,
  threshold: number,
  aggregations: ReadonlyArray<Aggregate.Aggregation> = AGGREGATIONS
): Summary => {
  if (xs.length === 0) throw new PathAgreementError({ message: "no items to summarise" })
  const t = tables(xs)
  const a = itemAgreement(t.final, t.final)
  const counts = new Map<number, number>()
  for (const x of xs) counts.set(x.t0, (counts.get(x.t0) ?? 0) + 1)
  const halves = (["high", "low"] as const).map((half) => {
    const part = xs.filter((x) => (half === "high") === (x.t0 >= threshold))
    return { half, threshold, items: part.length, rankings: part.length === 0 ? [] : rankings(part, aggregations) }
  })
  return {
    items: xs.length,
    n: t.n,
    m: t.m,
    rankings: rankings(xs, aggregations),
    steps: stepCorrelations(t.perStep, t.final).map((c, step) => ({ step, ...c })),
    finalSpread: mean(a.spread),
    oracleBestMinusMean: mean(a.maxFinal.map((v, b) => v - a.meanFinal[b])),
    t0: [...counts].sort((p, q) => q[0] - p[0]).map(([t0, items]) => ({ t0, items })),
    byT0: halves
  }
}

/**
 * The start timestep splitting the start grid (descending) into a high and a
 * low half: high is `t0 >= threshold`; an odd middle point goes high.
 *
 * @since 0.3.0
 */
export const splitThreshold = (grid: ReadonlyArray<number>): number => {
  const asc = [...grid].sort((a, b) => a - b)
  return asc[Math.floor(asc.length / 2)]
}

// ---------------------------------------------------------------- markdown

const f3 = (v: number | null) => (v === null ? "n/a" : v.toFixed(3))
const pct = (r: Rate) => `${(100 * r.rate).toFixed(1)} [${(100 * r.low).toFixed(1)}, ${(100 * r.high).toFixed(1)}] (${r.hits}/${r.items})`

/**
 * The report's tables as markdown.
 *
 * @since 0.3.0
 */
export const markdown = (s: Summary): string => {
  const chance = (100 / s.n).toFixed(1)
  const rankingRows = (rs: ReadonlyArray<Ranking>, label = "") =>
    rs.map((r) =>
      `| ${label}${r.aggregation} | ${pct(r.argmax)} | ${pct(r.argmin)} | ${f3(r.spearman)} | ${pct(r.pairInverted)} | ${f3(r.bestMinusWorst)} | ${f3(r.absBestMinusWorst)} | ${f3(r.bestMinusMean)} |`
    )
  return [
    `${s.items} prompts, n = ${s.n} paths, m = ${s.m} scored steps. Rates in % with their Wilson 95% interval; a random pick agrees on argmax or argmin ${chance}% of the time and inverts the best/worst pair 50% of the time. "best" and "worst" are the paths the trajectory score ranks first and last; the rewards are the final images'.`,
    "",
    "| trajectory score | argmax = final argmax | argmin = final argmin | mean Spearman | final(best) < final(worst) | final(best) - final(worst) | abs. | final(best) - mean final |",
    "|---|---|---|---|---|---|---|---|",
    ...rankingRows(s.rankings),
    ...s.byT0.flatMap((h) => rankingRows(h.rankings, `${h.half} t0 (${h.half === "high" ? ">=" : "<"} ${h.threshold}, ${h.items} prompts): `)),
    "",
    `Final rewards among the ${s.n} paths of a prompt: mean spread (max - min) ${s.finalSpread.toFixed(3)}; an oracle pick gains ${s.oracleBestMinusMean.toFixed(3)} over the mean path.`,
    "",
    "| scored step | Pearson with final reward, all rows | within prompts |",
    "|---|---|---|",
    ...s.steps.map((c) => `| ${c.step + 1} of ${s.m} | ${f3(c.all)} | ${f3(c.withinItem)} |`),
    "",
    `Start timesteps t0 (prompts): ${s.t0.map((t) => `${t.t0} (${t.items})`).join(", ")}.`
  ].join("\n")
}

// ---------------------------------------------------------------- continuation

/**
 * Final images of a trajectory's paths and the model evaluations spent.
 *
 * @since 0.3.0
 */
export interface Continuation {
  /** Clean samples in [-1, 1], [n*B, H, W, C], rows as the trajectory's. */
  readonly images: tf.Tensor
  readonly nfe: number
}

/**
 * Continue every path from its last recorded state to clean data: first the
 * DDIM step the trajectory stopped before (reusing the recorded noise
 * prediction), then DDIM (eta 0, x0 clipped to [-1, 1] as everywhere else)
 * over the rest of the grid with the same guidance. Owned by the caller; no
 * other tensor survives the call.
 *
 * @since 0.3.0
 */
export const continueToClean = (
  model: Denoiser.Model,
  trajectories: Trajectories,
  o: { readonly inferenceSteps: number; readonly cfg: number }
): Continuation => {
  const last = trajectories.steps[trajectories.steps.length - 1]
  if (last === undefined) throw new PathAgreementError({ message: "a trajectory without steps cannot be continued" })
  const schedule = Denoiser.scheduleOf(model.config)
  const rows = last.xt.shape[0]
  const prompts = Array.from({ length: rows }, (_, r) => trajectories.prompts[r % trajectories.batch])
  const tPrev = Ddim.prevTimestep(last.t, schedule.trainSteps, o.inferenceSteps)
  const r = Ddim.step({ schedule, eps: last.eps, t: last.t, tPrev, xt: last.xt, eta: 0, clipSample: 1 })
  tf.dispose([r.x0Pred, r.mean])
  if (tPrev < 0) return { images: r.prevSample, nfe: 0 }
  try {
    const grid = Ddim.trajectory(schedule.trainSteps, o.inferenceSteps, tPrev)
    const images = Ddim.sample({
      schedule,
      denoise: (x, t) => Denoiser.guidedEps(model, x, t, prompts, o.cfg),
      xT: r.prevSample,
      inferenceSteps: o.inferenceSteps,
      startTimestep: tPrev,
      clipSample: 1
    })
    return { images, nfe: grid.length * rows * (o.cfg === 1 ? 1 : 2) }
  } finally {
    r.prevSample.dispose()
  }
}

/**
 * {@link continueToClean} with the final images owned by the current scope.
 *
 * @since 0.3.0
 */
export const continuePaths = Effect.fn("PathAgreement.continuePaths")(function*(
  model: Denoiser.Model,
  trajectories: Trajectories,
  o: { readonly inferenceSteps: number; readonly cfg: number }
) {
  if (trajectories.steps.length === 0) {
    return yield* new PathAgreementError({ message: "a trajectory without steps cannot be continued" })
  }
  return yield* Effect.acquireRelease(
    attempt(() => continueToClean(model, trajectories, o)),
    (c) => Effect.sync(() => c.images.dispose())
  )
})

/** Rows of a [N, H, W, C] tensor as flat arrays (what `scoreSamples` takes). */
export const rowsOf = (x: tf.Tensor): Effect.Effect<Array<Float32Array>> =>
  Effect.map(HostRead.float32(x), (data) => {
    const per = x.size / x.shape[0]
    return Array.from({ length: x.shape[0] }, (_, r) => data.slice(r * per, (r + 1) * per))
  })
