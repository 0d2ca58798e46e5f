/**
 * A loss part that another thread can compute: the image-level, group and
 * DiffusionNFT objectives' micro-batch parts as plain data (the noisy inputs, targets, timesteps and
 * prompts of its rows, and for DPO the reference's errors and the reward
 * margins), so that `Optimizer.step` can differentiate parts on the
 * `GenerationPool`'s threads and sum their gradients. {@link loss} is the
 * part's closure on the main thread row for row: the same inputs, the same
 * kernels, so a part's gradient is the same on any thread, and only the
 * order in which the parts' gradients are summed changes.
 *
 * @since 0.5.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import * as Denoiser from "../model/Denoiser.ts"
import * as HostRead from "../tensor/HostRead.ts"
import type { NoisedSamples } from "../trajectory/NoisedSamples.ts"
import * as GroupLosses from "./GroupLosses.ts"
import * as Losses from "./Losses.ts"

export interface PortablePart {
  /** Noisy inputs x_t of the part's rows, [rows, ...sampleShape] row-major. */
  readonly x: Float32Array
  /** The epsilon target of every row. */
  readonly target: Float32Array
  readonly t: ReadonlyArray<number>
  readonly prompts: ReadonlyArray<string>
  /** The part's share of the batch mean (times 1/accumulate when batches are accumulated). */
  readonly share: number
  /** DPO: rows are [winners; losers]; the reference's errors on them, the margins per pair. */
  readonly dpo?: {
    readonly refW: ReadonlyArray<number>
    readonly refL: ReadonlyArray<number>
    readonly margin: ReadonlyArray<number>
    readonly beta: number
    readonly placement: Losses.MarginPlacement
    readonly winnerSft?: number
  }
  /**
   * Group-relative (pairs or awr): rows are the part's n images of k items,
   * image-major; the weighted pairs of each item and the reference's errors
   * (pairs), or each row's weight (awr); the loss is divided by `batch`.
   */
  readonly group?: {
    readonly pairs?: ReadonlyArray<ReadonlyArray<GroupLosses.WeightedPair & { readonly margin: number }>>
    readonly ref?: ReadonlyArray<number>
    readonly weights?: ReadonlyArray<number>
    readonly beta: number
    readonly placement: Losses.MarginPlacement
    readonly batch: number
  }
  /**
   * DiffusionNFT: the old policy's (and, with a KL, the reference's)
   * prediction on every row, each row's x0 scale and optimality weight;
   * the loss is divided by `count` (all n*B images).
   */
  readonly nft?: {
    readonly old: Float32Array
    readonly ref?: Float32Array
    readonly scale: ReadonlyArray<number>
    readonly r: ReadonlyArray<number>
    readonly beta: number
    readonly clip: number
    readonly kl: number
    readonly count: number
  }
}

/**
 * A loss closure (a part of `Optimizer.Loss`) that may carry its portable
 * form, built only when a pool asks for it (an Effect: it reads tensors).
 *
 * @since 0.5.0
 */
export interface Part {
  (): tf.Scalar
  readonly portable?: () => Effect.Effect<PortablePart>
}

/** Attach the portable form to a part's closure. */
export const withPortable = (part: () => tf.Scalar, portable: () => Effect.Effect<PortablePart>): Part => Object.assign(part, { portable })

/**
 * A part divided by `divisor` (one of `accumulate` batches), keeping its
 * portable form.
 *
 * @since 0.5.0
 */
export const divided = (part: Part, divisor: number): Part => {
  const down = () => tf.tidy(() => tf.div(part(), divisor) as tf.Scalar)
  const portable = part.portable
  return portable === undefined ? down : withPortable(down, () => Effect.map(portable(), (p) => ({ ...p, share: p.share / divisor })))
}

/** The inputs of some rows of noised samples: what a thread needs to evaluate a model on them. */
export type RowInputs = Pick<PortablePart, "x" | "target" | "t" | "prompts">

/** The inputs of `rows` of noised samples (as `NoisedSamples.rowErrors` reads them), in arrays the caller owns. */
export const samplesRows = (s: NoisedSamples, rows: ReadonlyArray<number>): Effect.Effect<RowInputs> => {
  const take = (x: tf.Tensor) => HostRead.consumeFloat32(() => tf.gather(x, tf.tensor1d(rows as Array<number>, "int32")))
  return Effect.map(
    Effect.all([take(s.steps[0].xt), take(s.noise)], { concurrency: "unbounded" }),
    ([x, target]) => ({ x, target, t: rows.map((r) => s.timesteps[r]), prompts: rows.map((r) => s.prompts[r % s.batch]) })
  )
}

/**
 * The micro-batch budget in rows when `threads` threads share the parts: at
 * most a thread's share of the batch per part, so that there is a part for
 * every thread (one thread: the budget unchanged, so are its numbers).
 *
 * @since 0.5.0
 */
export const rowsForThreads = (rows: number, batch: number, rowsPerItem: number, threads: number): number => {
  if (threads <= 1) return rows
  const share = Math.ceil(batch / threads) * rowsPerItem
  return rows <= 0 ? share : Math.min(rows, share)
}

/** Per-row mean squared error of the model's noise prediction against the target. */
export const rowErrors = (model: Denoiser.Model, x: tf.Tensor, target: tf.Tensor, t: ReadonlyArray<number>, prompts: ReadonlyArray<string>): tf.Tensor1D =>
  tf.tidy(() => tf.mean(tf.reshape(tf.squaredDifference(Denoiser.eps(model, x, t, prompts), target), [t.length, -1]), 1) as tf.Tensor1D)

/**
 * The per-row errors of `model` on the rows (no gradient): the frozen
 * reference's errors of a DPO part, computed on any thread, in an array the
 * caller owns (it may be transferred).
 *
 * @since 0.6.0
 */
export const errorsOf = (model: Denoiser.Model, p: RowInputs): Effect.Effect<Float32Array> =>
  HostRead.consumeFloat32(() => {
    const shape = [p.t.length, ...Denoiser.sampleShape(model.config)]
    return rowErrors(model, tf.tensor(p.x, shape, "float32"), tf.tensor(p.target, shape, "float32"), p.t, p.prompts)
  })

/**
 * The part's loss under `model` (differentiate it with `paramGrads`).
 *
 * @since 0.5.0
 */
export const loss = (model: Denoiser.Model, p: PortablePart): tf.Scalar =>
  tf.tidy(() => {
    const shape = [p.t.length, ...Denoiser.sampleShape(model.config)]
    const x = tf.tensor(p.x, shape, "float32")
    const target = tf.tensor(p.target, shape, "float32")
    // The group forms' parts carry share 1 (times 1/accumulate): the same numbers as their closures when it is 1.
    const shared = (loss: tf.Scalar) => (p.share === 1 ? loss : tf.mul(loss, p.share) as tf.Scalar)
    if (p.nft !== undefined) {
      const f = p.nft
      const eps = Denoiser.eps(model, x, p.t, p.prompts)
      const policy = tf.sum(GroupLosses.nftRowLosses(eps, tf.tensor(f.old, shape, "float32"), target, f.scale, f.r, f.beta, f.clip))
      const kl = f.ref === undefined ? tf.scalar(0) : tf.mul(tf.sum(tf.mean(tf.reshape(tf.squaredDifference(eps, tf.tensor(f.ref, shape, "float32")), [p.t.length, -1]), 1)), f.kl)
      return shared(tf.div(tf.add(policy, kl), f.count) as tf.Scalar)
    }
    const errors = rowErrors(model, x, target, p.t, p.prompts)
    if (p.group !== undefined) {
      const g = p.group
      return shared(
        g.pairs !== undefined
          ? GroupLosses.pairsPart(errors, tf.tensor1d((g.ref ?? []) as Array<number>), g.pairs, g.beta, g.placement, g.batch)
          : GroupLosses.awrPart(errors, g.weights ?? [], g.batch)
      )
    }
    if (p.dpo === undefined) return tf.mul(tf.mean(errors), p.share) as tf.Scalar
    const reference = { w: tf.tensor1d(p.dpo.refW as Array<number>), l: tf.tensor1d(p.dpo.refL as Array<number>) }
    return Losses.dpoPart(errors, reference, p.dpo.margin, p.dpo.beta, p.dpo.placement, p.share, p.dpo.winnerSft ?? 0)
  })
