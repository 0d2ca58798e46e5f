/**
 * Stage 3: which trajectory of each item to learn from. SFT uses the best
 * path; RLHF the best (winner) and worst (loser).
 *
 * @since 0.1.0
 */
import { Context, Layer } from "effect"
import * as Aggregate from "./Aggregate.ts"

export interface Selection {
  /** Per batch item, index in [0, n) of the chosen (winning) trajectory. */
  readonly best: ReadonlyArray<number>
  /** Per batch item, the losing trajectory (RLHF). */
  readonly worst: ReadonlyArray<number>
}

export type SelectFn = (scores: ReadonlyArray<ReadonlyArray<number>>) => Selection

export class PathSelector extends Context.Service<PathSelector, { readonly select: SelectFn }>()("sharpen/trajectory/PathSelector") {
  /** argmax for the winner, argmin for the loser (paper, both algorithms). */
  static readonly bestWorst: Layer.Layer<PathSelector> = Layer.succeed(PathSelector, {
    select: (scores) => ({ best: Aggregate.argmax(scores), worst: Aggregate.argmin(scores) })
  })
  /** A user's own rule. */
  static readonly custom = (select: SelectFn): Layer.Layer<PathSelector> => Layer.succeed(PathSelector, { select })
  static readonly layer = PathSelector.bestWorst
  static readonly layerTest = PathSelector.bestWorst
}
