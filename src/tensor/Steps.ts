/**
 * Long tensor computations as a sequence of synchronous steps (a denoising
 * step, a micro-batch), written once as a generator that `yield`s between
 * steps. {@link drain} runs it at once, as a plain function always did;
 * {@link run} runs it as an Effect that gives the event loop a turn after
 * every step, so that an interruption (a trainer's Ctrl-C reaching a
 * runner's job over its socket, a job timeout) lands within one step
 * instead of after the whole computation. Both run the same kernels on the
 * same tensors in the same order, so their results are equal bit for bit.
 *
 * An interrupted computation is abandoned at the step boundary: the error
 * {@link Abandoned} is thrown into the generator there, whose own cleanup
 * (the `catch` that disposes its tensors on a failure) frees what it holds.
 *
 * @since 0.8.0
 */
import { Context, Effect } from "effect"
import * as WasmHeap from "./WasmHeap.ts"

/** A computation of synchronous steps that ends with an `A` (see the module comment). */
export type Steps<A> = Generator<void, A, void>

/**
 * Thrown into an abandoned computation at a step boundary (its cleanup
 * runs); never escapes {@link run}.
 *
 * @since 0.8.0
 */
export class Abandoned extends Error {
  constructor() {
    super("computation abandoned at a step boundary")
  }
}

/**
 * Run the steps at once, synchronously.
 *
 * @since 0.8.0
 */
export const drain = <A>(steps: Steps<A>): A => {
  for (;;) {
    const r = steps.next()
    if (r.done === true) return r.value
  }
}

/** Abandon a computation between steps: its cleanup runs, the error is swallowed. */
const abandon = (steps: Steps<unknown>): void => {
  try {
    steps.throw(new Abandoned())
  } catch {
    // Abandoned (rethrown by its cleanup), or the generator had already ended.
  }
}

/**
 * The longest step so far (ms) of the {@link run}s under this value, when
 * provided: a runner reports it with an interrupted job, as the longest the
 * interrupt can have waited for a step boundary.
 *
 * @since 0.8.0
 */
export const StepWatch = Context.Reference<{ longestMs: number } | undefined>("sharpen/tensor/Steps/StepWatch", { defaultValue: () => undefined })

// A real timer, not only a turn of the scheduler: the socket's bytes reach
// an interrupt through several fibers, each one turn of the event loop, and
// a millisecond lets them all run before the next step. Not the Clock's
// sleep: a test clock must not hold a computation.
const pause = Effect.callback<void>((resume) => {
  const timer = setTimeout(() => resume(Effect.void), 1)
  return Effect.sync(() => clearTimeout(timer))
})

/**
 * Run the steps of `make()` as an Effect, each under the wasm heap guard
 * (`what` and `rows` name the work), with a turn of the event loop between
 * steps; interruptible between steps. `release` frees a result that the
 * guard refuses.
 *
 * @since 0.8.0
 */
export const run = <A>(what: string, rows: number | undefined, make: () => Steps<A>, release?: (a: A) => void): Effect.Effect<A, WasmHeap.WasmHeapExhausted> =>
  Effect.suspend(() => {
    const steps = make()
    const step = Effect.suspend(() => {
      try {
        return Effect.succeed(WasmHeap.guard(what, rows, () => steps.next(), (r) => (r.done === true ? release?.(r.value) : abandon(steps))))
      } catch (e) {
        return e instanceof WasmHeap.WasmHeapExhausted ? Effect.fail(e) : Effect.die(e)
      }
    })
    return Effect.gen(function*() {
      const watch = yield* StepWatch
      for (;;) {
        const started = performance.now()
        const r = yield* step
        if (watch !== undefined) watch.longestMs = Math.max(watch.longestMs, performance.now() - started)
        if (r.done === true) return r.value
        yield* pause
      }
    }).pipe(Effect.onInterrupt(() => Effect.sync(() => abandon(steps))))
  })

/**
 * A turn of the event loop between the units of an Effect's own loop (the
 * micro-batches of a gradient job), as {@link run} gives between steps.
 *
 * @since 0.8.0
 */
export const between: Effect.Effect<void> = pause
