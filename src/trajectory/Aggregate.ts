/**
 * Trajectory-level reward (paper Eq. 8) and path selection, as pure
 * functions on plain numbers.
 *
 * `perStep[k][r]` is the reward of step k's x0 estimate in row r = i*B + b.
 *
 * @since 0.1.0
 */
import { Schema } from "effect"

export const Aggregation = Schema.Union([
  /** Eq. 8: sum over the trajectory's steps. */
  Schema.Struct({ kind: Schema.Literal("sum") }),
  /** The reference code: mean over steps (same argmax as sum). */
  Schema.Struct({ kind: Schema.Literal("mean") }),
  /** Only the last step's estimate. */
  Schema.Struct({ kind: Schema.Literal("last") }),
  /**
   * The reward of each path's final image (needs paths continued to t = 0,
   * `continuation`); the scorer then scores the finals only.
   */
  Schema.Struct({ kind: Schema.Literal("final") }),
  /** sum_k gamma^(m-1-k) R_k: later (cleaner) estimates weigh more. */
  Schema.Struct({ kind: Schema.Literal("discounted"), gamma: Schema.Number.check(Schema.isGreaterThan(0), Schema.isLessThanOrEqualTo(1)) })
])
export type Aggregation = typeof Aggregation.Type

/**
 * Aggregate per-step rewards into trajectory rewards `[n][B]`.
 *
 * @since 0.1.0
 */
export const aggregate = (perStep: ReadonlyArray<ReadonlyArray<number>>, n: number, batch: number, how: Aggregation): Array<Array<number>> => {
  const m = perStep.length
  const weight = (k: number) => {
    switch (how.kind) {
      case "sum":
        return 1
      case "mean":
        return 1 / m
      case "last":
      case "final":
        return k === m - 1 ? 1 : 0
      case "discounted":
        return how.gamma ** (m - 1 - k)
    }
  }
  return Array.from({ length: n }, (_, i) =>
    Array.from({ length: batch }, (_, b) => perStep.reduce((acc, row, k) => acc + weight(k) * row[i * batch + b], 0)))
}

/** Per batch item, the trajectory with the highest (first on ties) score. */
export const argmax = (scores: ReadonlyArray<ReadonlyArray<number>>): Array<number> =>
  scores[0].map((_, b) => scores.reduce((best, row, i) => (row[b] > scores[best][b] ? i : best), 0))

/** Per batch item, the trajectory with the lowest (first on ties) score. */
export const argmin = (scores: ReadonlyArray<ReadonlyArray<number>>): Array<number> =>
  scores[0].map((_, b) => scores.reduce((worst, row, i) => (row[b] < scores[worst][b] ? i : worst), 0))
