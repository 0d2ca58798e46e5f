/**
 * Stage 5: the gradient update of the policy. AdamW with global grad-norm
 * clipping and a learning-rate schedule; its moments and step count are
 * exposed for checkpoints.
 *
 * A non-finite loss or gradient stops the run with `NonFiniteLoss` naming
 * the iteration, before anything is applied.
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Context, Effect, Layer, Schema } from "effect"
import * as ModelDir from "../io/ModelDir.ts"
import type { StoredTensor } from "../io/Safetensors.ts"
import * as Denoiser from "../model/Denoiser.ts"
import type * as PortablePart from "../objective/PortablePart.ts"
import * as GradientJobs from "../objective/GradientJobs.ts"
import type { GenerationError } from "../trajectory/GenerationJobs.ts"
import { paramGrads } from "../tensor/Grad.ts"
import * as HostRead from "../tensor/HostRead.ts"
import * as Scoped from "../tensor/Scoped.ts"
import * as WasmHeap from "../tensor/WasmHeap.ts"
import * as AdamW from "./AdamW.ts"
import * as LrSchedule from "./LrSchedule.ts"

export class NonFiniteLoss extends Schema.TaggedError<NonFiniteLoss>()("NonFiniteLoss", {
  iteration: Schema.Int,
  message: Schema.String
}) {}

export { LrSchedule } from "./LrSchedule.ts"

export const OptimizerConfig = Schema.Struct({
  ...AdamWConfigFields(),
  lr: Schema.Number.check(Schema.isGreaterThan(0)),
  warmupSteps: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  schedule: LrSchedule.LrSchedule,
  totalSteps: Schema.Int.check(Schema.isGreaterThan(0)),
  /** Where the cosine ends (default 0). */
  minLr: Schema.optional(Schema.Number.check(Schema.isGreaterThanOrEqualTo(0)))
})
export type OptimizerConfig = typeof OptimizerConfig.Type

function AdamWConfigFields() {
  return AdamW.AdamWConfig.fields
}

/** Learning rate at a 0-based step: linear warm-up, then constant or cosine to `minLr` (default 0; `LrSchedule.at`). */
export const learningRate = (c: Pick<OptimizerConfig, "lr" | "warmupSteps" | "schedule" | "totalSteps" | "minLr">, step: number): number =>
  LrSchedule.at(c, step)

export type { Loss } from "../objective/Losses.ts"
import type { Loss } from "../objective/Losses.ts"

/**
 * The value of a loss (the sum of its parts), without gradients: the parts'
 * values read at once, summed here in part order.
 */
export const lossValue = (loss: Loss): Effect.Effect<number> =>
  Effect.map(
    HostRead.consumeFloat32(() => {
      // Each part in its own tidy: its graph is freed before the next is built.
      const values = (typeof loss === "function" ? [loss] : loss).map((part) => tf.tidy(part))
      return values.length === 0 ? tf.tensor1d([]) : tf.stack(values)
    }),
    (values) => values.reduce((a, v) => a + v, 0)
  )

/** Summed gradients of a loss's parts, and each part's value (unread, in part order). */
type Accumulated = {
  readonly values: tf.Tensor1D
  readonly grads: Record<string, tf.Tensor>
}

/**
 * Sum the gradients of a loss's parts, one part at a time, keeping their
 * values as tensors: synchronous, so that it runs under `WasmHeap.guard`
 * and beside a pool's worker threads; {@link withValue} reads the values once.
 */
const accumulate = (loss: Loss, params: Readonly<Record<string, tf.Variable>>): Accumulated => {
  const parts = typeof loss === "function" ? [loss] : loss
  const values: Array<tf.Scalar> = []
  const grads: Record<string, tf.Tensor> = {}
  for (const part of parts) {
    const r = paramGrads(part, params)
    values.push(r.value)
    for (const [k, g] of Object.entries(r.grads)) {
      const prev = grads[k]
      if (prev === undefined) grads[k] = g
      else {
        grads[k] = tf.add(prev, g)
        prev.dispose()
        g.dispose()
      }
    }
  }
  const stacked = (values.length === 0 ? tf.tensor1d([]) : tf.stack(values)) as tf.Tensor1D
  tf.dispose(values)
  return { values: stacked, grads }
}

/**
 * The loss value of {@link accumulate}d parts, summed here in part order (as
 * one part at a time did); disposes the values, and the gradients if the
 * read does not finish.
 */
const withValue = (a: Accumulated): Effect.Effect<{ value: number; grads: Record<string, tf.Tensor> }> =>
  HostRead.float32(a.values).pipe(
    Effect.map((values) => ({ value: values.reduce((s, v) => s + v, 0), grads: a.grads })),
    Effect.onError(() => Effect.sync(() => Scoped.disposeAll(a.grads))),
    Effect.ensuring(Effect.sync(() => a.values.dispose()))
  )

/** Sum the gradients (and values) of a loss's parts, one part at a time. */
export const accumulatedGrads = (
  loss: Loss,
  params: Readonly<Record<string, tf.Variable>>
): Effect.Effect<{ value: number; grads: Record<string, tf.Tensor> }> => Effect.suspend(() => withValue(accumulate(loss, params)))

/** Parts that can be sent: more than one, or any where this thread computes no share. */
const isPortable = (parts: ReadonlyArray<() => tf.Scalar>, pool: GradientJobs.Jobs): parts is ReadonlyArray<PortablePart.Part & { readonly portable: () => Effect.Effect<PortablePart.PortablePart> }> =>
  parts.length > (pool.computesHere === false ? 0 : 1) && parts.every((p) => (p as PortablePart.Part).portable !== undefined)

/**
 * {@link accumulatedGrads} with the parts split over the pool's threads
 * (contiguous groups of near-equal size): the same parts, the same sum, in
 * another order.
 */
const sharded = (
  pool: GradientJobs.Jobs,
  model: Denoiser.Model,
  parts: ReadonlyArray<PortablePart.Part & { readonly portable: () => Effect.Effect<PortablePart.PortablePart> }>,
  what: string
): Effect.Effect<{ value: number; grads: Record<string, tf.Tensor> }, GenerationError> =>
  Effect.gen(function*() {
    const count = Math.min(pool.threads, parts.length)
    const groups = Array.from({ length: count }, (_, k) => {
      const size = Math.floor(parts.length / count)
      const extra = parts.length % count
      const start = k * size + Math.min(k, extra)
      return parts.slice(start, start + size + (k < extra ? 1 : 0))
    })
    // Where this thread computes no share (a coordinating trainer), every group is a job.
    const local = pool.computesHere !== false
    const portables = yield* Effect.forEach(groups.slice(local ? 1 : 0), (g) => Effect.forEach(g, (p) => p.portable()))
    const { here, remote } = yield* pool.gradients(model, portables, () => {
      if (!local) return undefined
      try {
        return WasmHeap.guard(what, undefined, () => accumulate(groups[0], model.params), Scoped.disposeAll)
      } catch (e) {
        if (e instanceof WasmHeap.WasmHeapExhausted) return e
        throw e
      }
    })
    if (here instanceof WasmHeap.WasmHeapExhausted) return yield* here
    const mine = here === undefined ? { value: 0, grads: {} as Record<string, tf.Tensor> } : yield* withValue(here)
    // Sum into one flat array per parameter; a parameter no part reaches keeps no gradient (as on one thread).
    // One parameter read at a time, as before: at most one extra copy in memory.
    const grads: Record<string, tf.Tensor> = {}
    yield* Effect.gen(function*() {
      let o = 0
      for (const [i, k] of Object.keys(model.params).entries()) {
        const p = model.params[k]
        const g = mine.grads[k]
        if (g !== undefined || remote.some((r) => r.present[i])) {
          const sum = g === undefined ? new Float32Array(p.size) : yield* HostRead.float32(g)
          for (const r of remote) {
            if (!r.present[i]) continue
            for (let j = 0; j < sum.length; j++) sum[j] += r.grads[o + j]
          }
          grads[k] = tf.tensor(sum, p.shape, "float32")
        }
        o += p.size
      }
    }).pipe(
      Effect.onError(() => Effect.sync(() => Scoped.disposeAll(grads))),
      Effect.ensuring(Effect.sync(() => Scoped.disposeAll(mine.grads)))
    )
    return { value: mine.value + remote.reduce((a, r) => a + r.value, 0), grads }
  })

export interface StepResult {
  readonly loss: number
  readonly gradNorm: number
  readonly lr: number
}

export interface OptimizerState {
  readonly step: number
  readonly moments: Record<string, StoredTensor>
}

/**
 * Gradients computed elsewhere (a data-parallel pool, a custom loss): a
 * tensor per parameter (disposed by the update), or one flat array in the
 * key order of the parameters (`AdamW.stepFlat`).
 */
export interface Gradients {
  readonly loss: number
  readonly grads: Record<string, tf.Tensor> | Float32Array
}

export class Optimizer extends Context.Service<Optimizer, {
  /** The variables it updates (the policy's, or the model a training builds). */
  readonly params: Readonly<Record<string, tf.Variable>>
  /** Differentiate `loss` (summed over its parts) w.r.t. the policy and apply one update. */
  readonly step: (loss: Loss, iteration: number) => Effect.Effect<StepResult, NonFiniteLoss | GenerationError>
  /** Apply one update with gradients computed elsewhere (nothing applied when the loss is not finite). */
  readonly apply: (g: Gradients, iteration: number) => Effect.Effect<StepResult, NonFiniteLoss>
  /** Step count and moments for a checkpoint, read to the host. */
  readonly state: () => Effect.Effect<OptimizerState>
  /** Restore from a checkpoint; returns the first tensor that does not fit, if any. */
  readonly restore: (s: OptimizerState) => string | undefined
}>()("sharpen/optim/Optimizer") {
  /** AdamW on the policy (`Denoiser`); gradient parts over the `GradientJobs` threads when provided. */
  static readonly adamW = (c: OptimizerConfig) =>
    Layer.effect(
      Optimizer,
      Effect.gen(function*() {
        const { model } = yield* Denoiser.Denoiser
        return yield* make(model.params, c, { model, pool: yield* GradientJobs.current })
      })
    )

  /** AdamW on any variables (a model that is not a `Denoiser`, e.g. the clip reward), on this thread. */
  static readonly adamWOf = (params: Readonly<Record<string, tf.Variable>>, c: OptimizerConfig) => Layer.effect(Optimizer, make(params, c))
}

const checked = (r: StepResult, iteration: number): Effect.Effect<StepResult, NonFiniteLoss> =>
  !Number.isFinite(r.loss) || !Number.isFinite(r.gradNorm)
    ? Effect.fail(new NonFiniteLoss({ iteration, message: `loss ${r.loss}, gradient norm ${r.gradNorm}; nothing was applied` }))
    : Effect.succeed(r)

const make = (
  params: Readonly<Record<string, tf.Variable>>,
  c: OptimizerConfig,
  threads?: { readonly model: Denoiser.Model; readonly pool: GradientJobs.Jobs }
) =>
  Effect.gen(function*() {
    const adam = yield* Scoped.acquireWith(() => AdamW.init(params), AdamW.dispose)
    const step = Effect.fn("Optimizer.step")(function*(loss: Loss, iteration: number) {
      const lr = learningRate(c, adam.step)
      const parts = typeof loss === "function" ? 1 : loss.length
      const what = `the gradients of iteration ${iteration} (${parts} part${parts === 1 ? "" : "s"})`
      const { value: l, grads } = threads !== undefined && (threads.pool.threads > 1 || threads.pool.computesHere === false) && typeof loss !== "function" && isPortable(loss, threads.pool)
        ? yield* sharded(threads.pool, threads.model, loss, what)
        : yield* Effect.flatMap(WasmHeap.guarded(what, undefined, () => accumulate(loss, params), Scoped.disposeAll), withValue)
      const gradNorm = yield* (Number.isFinite(l) ? AdamW.step(params, grads, adam, lr, c) : Effect.succeed(NaN)).pipe(
        Effect.ensuring(Effect.sync(() => Scoped.disposeAll(grads)))
      )
      return yield* checked({ loss: l, gradNorm, lr }, iteration)
    })
    const apply = Effect.fn("Optimizer.apply")(function*(g: Gradients, iteration: number) {
      const lr = learningRate(c, adam.step)
      const ok = Number.isFinite(g.loss)
      const grads = g.grads
      const gradNorm = grads instanceof Float32Array
        ? ok ? AdamW.stepFlat(params, grads, adam, lr, c) : NaN
        : yield* (ok ? AdamW.step(params, grads, adam, lr, c) : Effect.succeed(NaN)).pipe(Effect.ensuring(Effect.sync(() => Scoped.disposeAll(grads))))
      return yield* checked({ loss: g.loss, gradNorm, lr }, iteration)
    })
    return Optimizer.of({
      params,
      step,
      apply,
      state: () =>
        Effect.suspend(() => {
          const step = adam.step
          return Effect.map(AdamW.storedMoments(adam), (moments) => ({ step, moments }))
        }),
      restore: (s) => {
        const bad = ModelDir.assign(adam.m, s.moments, "m.") ?? ModelDir.assign(adam.v, s.moments, "v.")
        if (bad === undefined) adam.step = s.step
        return bad
      }
    })
  })
