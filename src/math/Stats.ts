/**
 * Summary statistics on plain numbers: mean, mean with population or sample SD, ranks,
 * Pearson and Spearman correlation, paired differences. The lowest layer of
 * src/ (it imports nothing from it), so every other folder may use it.
 *
 * @since 0.3.0
 */

/**
 * Mean, a plain left-to-right sum divided by n (committed figures depend on
 * that order); `empty` for no values (callers differ: 0 or NaN).
 *
 * @since 0.3.0
 */
export const mean = (xs: ArrayLike<number>, empty = 0): number => {
  let s = 0
  for (let i = 0; i < xs.length; i++) s += xs[i]
  return xs.length === 0 ? empty : s / xs.length
}

/**
 * Mean and population standard deviation (divided by n, as DDPO's stat
 * tracker and the reports use it), both summed left to right; `empty` for
 * both when there are no values.
 *
 * @since 0.6.0
 */
export const meanStd = (xs: ArrayLike<number>, empty = 0): { readonly mean: number; readonly std: number } => {
  if (xs.length === 0) return { mean: empty, std: empty }
  const m = mean(xs)
  let s = 0
  for (let i = 0; i < xs.length; i++) s += (xs[i] - m) ** 2
  return { mean: m, std: Math.sqrt(s / xs.length) }
}

/**
 * Mean and sample standard deviation (divided by n - 1: the spread over a
 * few seeds, as the lab's tables report it), summed left to right; the mean
 * as {@link mean}, so switching a table from {@link meanStd} changes only its
 * spread. `empty` for both with no values; the SD is NaN for one value (a
 * sample SD needs two).
 *
 * @since 0.7.0
 */
export const meanSampleStd = (xs: ArrayLike<number>, empty = 0): { readonly mean: number; readonly std: number } => {
  if (xs.length === 0) return { mean: empty, std: empty }
  const m = mean(xs)
  if (xs.length < 2) return { mean: m, std: NaN }
  let s = 0
  for (let i = 0; i < xs.length; i++) s += (xs[i] - m) ** 2
  return { mean: m, std: Math.sqrt(s / (xs.length - 1)) }
}

/** Ranks 1..n, ties sharing their average rank (as Spearman's rho needs). */
export const ranks = (xs: ReadonlyArray<number>): Array<number> => {
  const order = xs.map((_, i) => i).sort((a, b) => xs[a] - xs[b])
  const out = new Array<number>(xs.length)
  for (let i = 0; i < order.length;) {
    let j = i
    while (j + 1 < order.length && xs[order[j + 1]] === xs[order[i]]) j++
    for (let k = i; k <= j; k++) out[order[k]] = (i + j) / 2 + 1
    i = j + 1
  }
  return out
}

/**
 * Pearson correlation; null when either side is constant or has fewer than
 * two values (undefined, not 0). Unequal lengths are a caller's bug.
 */
export const pearson = (xs: ArrayLike<number>, ys: ArrayLike<number>): number | null => {
  if (xs.length !== ys.length) throw new RangeError(`pearson: ${xs.length} vs ${ys.length} values`)
  const n = xs.length
  if (n < 2) return null
  const mx = mean(xs)
  const my = mean(ys)
  let sxy = 0
  let sxx = 0
  let syy = 0
  for (let i = 0; i < n; i++) {
    sxy += (xs[i] - mx) * (ys[i] - my)
    sxx += (xs[i] - mx) ** 2
    syy += (ys[i] - my) ** 2
  }
  return sxx > 0 && syy > 0 ? sxy / Math.sqrt(sxx * syy) : null
}

/** Spearman's rho: Pearson of the (tie-averaged) ranks. */
export const spearman = (xs: ReadonlyArray<number>, ys: ReadonlyArray<number>): number | null => pearson(ranks(xs), ranks(ys))

/**
 * Mean of after - before over paired values (the same prompts and seeds
 * before and after) with the half-width of its normal 95% interval,
 * 1.96 * sd / sqrt(n); `half` is Infinity below two pairs.
 */
export const pairedDifference = (before: ArrayLike<number>, after: ArrayLike<number>): { readonly mean: number; readonly half: number } => {
  if (before.length !== after.length) throw new RangeError(`pairedDifference: ${before.length} vs ${after.length} values`)
  const d = Array.from(before, (b, i) => after[i] - b)
  const m = mean(d)
  if (d.length < 2) return { mean: m, half: Infinity }
  const variance = d.reduce((a, x) => a + (x - m) ** 2, 0) / (d.length - 1)
  return { mean: m, half: 1.96 * Math.sqrt(variance / d.length) }
}

// Two-sided 97.5% quantiles of Student's t, df 1..30.
const T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.16, 2.145, 2.131, 2.12, 2.11, 2.101, 2.093, 2.086, 2.08, 2.074, 2.069, 2.064, 2.06, 2.056, 2.052, 2.048, 2.045, 2.042]

/**
 * Mean of a few values (seeds) with the half-width of its Student-t 95%
 * interval, t(0.975, n - 1) * sample SD / sqrt(n); `half` is Infinity below
 * two values. For a handful of seeds the normal 1.96 would be too narrow
 * (3 seeds: 4.30).
 *
 * @since 0.7.0
 */
export const tInterval95 = (xs: ArrayLike<number>): { readonly mean: number; readonly half: number } => {
  const { mean: m, std } = meanSampleStd(xs)
  if (xs.length < 2) return { mean: m, half: Infinity }
  return { mean: m, half: (t975(xs.length - 1) * std) / Math.sqrt(xs.length) }
}

/**
 * The two-sided 95% quantile of Student's t with `df` degrees of freedom
 * (df 1..30 tabulated; above, the normal 1.96).
 *
 * @since 0.8.0
 */
export const t975 = (df: number): number => (df <= T975.length ? T975[Math.max(1, df) - 1] : 1.96)
