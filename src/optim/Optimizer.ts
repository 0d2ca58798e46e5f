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
import { Context, Effect, Layer, Option, Schema } from "effect"
import * as ModelDir from "../io/ModelDir.ts"
import type { StoredTensor } from "../io/Safetensors.ts"
import * as Denoiser from "../model/Denoiser.ts"
import type * as PortablePart from "../objective/PortablePart.ts"
import { type GenerationError, GenerationPool, type Pool } from "../pipeline/GenerationPool.ts"
import { paramGrads } from "../tensor/Grad.ts"
import * as Scoped from "../tensor/Scoped.ts"
import * as WasmHeap from "../tensor/WasmHeap.ts"
import * as AdamW from "./AdamW.ts"

export class NonFiniteLoss extends Schema.TaggedError<NonFiniteLoss>()("NonFiniteLoss", {
  iteration: Schema.Int,
  message: Schema.String
}) {}

export const LrSchedule = Schema.Literals(["constant", "cosine"])
export type LrSchedule = typeof LrSchedule.Type

export const OptimizerConfig = Schema.Struct({
  ...AdamWConfigFields(),
  lr: Schema.Number.check(Schema.isGreaterThan(0)),
  warmupSteps: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  schedule: LrSchedule,
  totalSteps: Schema.Int.check(Schema.isGreaterThan(0))
})
export type OptimizerConfig = typeof OptimizerConfig.Type

function AdamWConfigFields() {
  return AdamW.AdamWConfig.fields
}

/** Learning rate at a 0-based step: linear warm-up, then constant or cosine to 0. */
export const learningRate = (c: Pick<OptimizerConfig, "lr" | "warmupSteps" | "schedule" | "totalSteps">, step: number): number => {
  if (c.warmupSteps > 0 && step < c.warmupSteps) return (c.lr * (step + 1)) / c.warmupSteps
  if (c.schedule === "constant") return c.lr
  const progress = Math.min(1, (step - c.warmupSteps) / Math.max(1, c.totalSteps - c.warmupSteps))
  return 0.5 * c.lr * (1 + Math.cos(Math.PI * progress))
}

/**
 * What a step differentiates: one loss closure, or parts whose gradients are
 * summed into one update (gradient accumulation). Each part's graph is freed
 * before the next is built, so a batch too large for memory (the wasm heap)
 * can be split into micro-batches without changing the update.
 */
export type Loss = (() => tf.Scalar) | ReadonlyArray<() => tf.Scalar>

/** The value of a loss (the sum of its parts), without gradients. */
export const lossValue = (loss: Loss): number =>
  (typeof loss === "function" ? [loss] : loss).reduce((a, part) => a + tf.tidy(() => part().dataSync()[0]), 0)

/** Sum the gradients (and values) of a loss's parts, one part at a time. */
export const accumulatedGrads = (
  loss: Loss,
  params: Readonly<Record<string, tf.Variable>>
): { value: number; grads: Record<string, tf.Tensor> } => {
  const parts = typeof loss === "function" ? [loss] : loss
  let value = 0
  const grads: Record<string, tf.Tensor> = {}
  for (const part of parts) {
    const r = paramGrads(part, params)
    value += r.value.dataSync()[0]
    r.value.dispose()
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
  return { value, grads }
}

const isPortable = (parts: ReadonlyArray<() => tf.Scalar>): parts is ReadonlyArray<PortablePart.Part & { readonly portable: () => PortablePart.PortablePart }> =>
  parts.length > 1 && parts.every((p) => (p as PortablePart.Part).portable !== undefined)

/**
 * {@link accumulatedGrads} with the parts split over the pool's threads
 * (contiguous groups of near-equal size): the same parts, the same sum, in
 * another order.
 */
const sharded = (
  pool: Pool,
  model: Denoiser.Model,
  parts: ReadonlyArray<PortablePart.Part & { readonly portable: () => PortablePart.PortablePart }>,
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
    const { here, remote } = yield* pool.gradients(model, groups.slice(1).map((g) => g.map((p) => p.portable())), () => {
      try {
        return WasmHeap.guard(what, undefined, () => accumulatedGrads(groups[0], model.params), (r) => Scoped.disposeAll(r.grads))
      } catch (e) {
        if (e instanceof WasmHeap.WasmHeapExhausted) return e
        throw e
      }
    })
    if (here instanceof WasmHeap.WasmHeapExhausted) return yield* here
    // Sum into one flat array per parameter; a parameter no part reaches keeps no gradient (as on one thread).
    const grads: Record<string, tf.Tensor> = {}
    let o = 0
    Object.keys(model.params).forEach((k, i) => {
      const p = model.params[k]
      const mine = here.grads[k]
      if (mine !== undefined || remote.some((r) => r.present[i])) {
        const sum = mine === undefined ? new Float32Array(p.size) : (mine.dataSync() as Float32Array).slice()
        for (const r of remote) {
          if (!r.present[i]) continue
          for (let j = 0; j < sum.length; j++) sum[j] += r.grads[o + j]
        }
        grads[k] = tf.tensor(sum, p.shape, "float32")
      }
      o += p.size
    })
    Scoped.disposeAll(here.grads)
    return { value: here.value + remote.reduce((a, r) => a + r.value, 0), grads }
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

export class Optimizer extends Context.Service<Optimizer, {
  /** Differentiate `loss` (summed over its parts) w.r.t. the policy and apply one update. */
  readonly step: (loss: Loss, iteration: number) => Effect.Effect<StepResult, NonFiniteLoss | GenerationError>
  readonly state: () => OptimizerState
  /** Restore from a checkpoint; returns the first tensor that does not fit, if any. */
  readonly restore: (s: OptimizerState) => string | undefined
}>()("sharpen/optim/Optimizer") {
  static readonly adamW = (c: OptimizerConfig) =>
    Layer.effect(
      Optimizer,
      Effect.gen(function*() {
        const { model } = yield* Denoiser.Denoiser
        const adam = yield* Scoped.acquireWith(() => AdamW.init(model.params), AdamW.dispose)
        const pool = Option.getOrUndefined(yield* Effect.serviceOption(GenerationPool))
        const step = Effect.fn("Optimizer.step")(function*(loss: Loss, iteration: number) {
          const lr = learningRate(c, adam.step)
          const parts = typeof loss === "function" ? 1 : loss.length
          const what = `the gradients of iteration ${iteration} (${parts} part${parts === 1 ? "" : "s"})`
          const { value: l, grads } = pool !== undefined && pool.threads > 1 && typeof loss !== "function" && isPortable(loss)
            ? yield* sharded(pool, model, loss, what)
            : yield* WasmHeap.guarded(what, undefined, () => accumulatedGrads(loss, model.params), (r) => Scoped.disposeAll(r.grads))
          const r = yield* Effect.sync(() => {
            const gradNorm = Number.isFinite(l) ? AdamW.step(model.params, grads, adam, lr, c) : NaN
            Scoped.disposeAll(grads)
            return { loss: l, gradNorm, lr }
          })
          if (!Number.isFinite(r.loss) || !Number.isFinite(r.gradNorm)) {
            return yield* new NonFiniteLoss({ iteration, message: `loss ${r.loss}, gradient norm ${r.gradNorm}; nothing was applied` })
          }
          return r
        })
        return Optimizer.of({
          step,
          state: () => ({ step: adam.step, moments: { ...ModelDir.toStored(adam.m, "m."), ...ModelDir.toStored(adam.v, "v.") } }),
          restore: (s) => {
            const bad = ModelDir.assign(adam.m, s.moments, "m.") ?? ModelDir.assign(adam.v, s.moments, "v.")
            if (bad === undefined) adam.step = s.step
            return bad
          }
        })
      })
    )
}
