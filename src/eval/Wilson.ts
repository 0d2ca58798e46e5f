/**
 * The Wilson score interval of a binomial proportion: how far an accuracy
 * measured on n prompts can be from the model's true pass rate. Used by the
 * comparison tables, where n is 40-100 prompts and a few points of
 * difference are often noise. Wilson rather than the normal approximation
 * because it stays inside [0, 1] and behaves at 0 and n passes.
 *
 * @since 0.3.0
 */

/**
 * The interval `[low, high]` for `passes` of `n`, at `z` standard errors
 * (1.96: 95%). `n = 0` gives the uninformative `[0, 1]`.
 *
 * @since 0.3.0
 */
export const interval = (passes: number, n: number, z = 1.96): readonly [number, number] => {
  if (n === 0) return [0, 1]
  const p = passes / n
  const z2 = z * z
  const denominator = 1 + z2 / n
  const centre = (p + z2 / (2 * n)) / denominator
  const half = (z / denominator) * Math.sqrt((p * (1 - p)) / n + z2 / (4 * n * n))
  return [Math.max(0, centre - half), Math.min(1, centre + half)]
}

/**
 * An accuracy in percent with its 95% interval: `8.0 [4.1, 15.0]`.
 *
 * @since 0.3.0
 */
export const format = (accuracy: number, n: number): string => {
  const [low, high] = interval(Math.round(accuracy * n), n)
  return `${(100 * accuracy).toFixed(1)} [${(100 * low).toFixed(1)}, ${(100 * high).toFixed(1)}]`
}
