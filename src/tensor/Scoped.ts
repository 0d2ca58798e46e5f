/**
 * Tensors that outlive one `tf.tidy` belong to an Effect `Scope`: they are
 * created by `acquire*` and disposed by the scope's finalizer, whether the
 * scope closes by success, failure or interruption (Ctrl-C).
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect, type Scope } from "effect"

/** Anything that holds tensors: a tensor, an array or a record of them. */
export type TensorContainer =
  | tf.Tensor
  | ReadonlyArray<TensorContainer>
  | { readonly [k: string]: TensorContainer }

export const disposeAll = (c: TensorContainer): void => {
  if (c instanceof tf.Tensor) {
    if (!c.isDisposed) c.dispose()
  } else if (Array.isArray(c)) {
    for (const x of c) disposeAll(x)
  } else {
    for (const x of Object.values(c)) disposeAll(x as TensorContainer)
  }
}

/**
 * Create tensors (synchronously, typically inside `tf.tidy`) and tie their
 * lifetime to the current scope.
 *
 * @since 0.1.0
 */
export const acquire = <A extends TensorContainer>(make: () => A): Effect.Effect<A, never, Scope.Scope> =>
  Effect.acquireRelease(Effect.sync(make), (a) => Effect.sync(() => disposeAll(a)))

/**
 * Like {@link acquire} with an arbitrary value and a custom disposer (e.g. an
 * optimiser state or a model holding variables).
 */
export const acquireWith = <A>(make: () => A, dispose: (a: A) => void): Effect.Effect<A, never, Scope.Scope> =>
  Effect.acquireRelease(Effect.sync(make), (a) => Effect.sync(() => dispose(a)))

/**
 * The value of `effect`, disposed when the scope closes. Unlike
 * {@link acquireWith}, `effect` itself stays interruptible (waiting for a
 * worker thread must not hold up Ctrl-C); from its result on, the value is
 * owned by the scope.
 *
 * @since 0.5.0
 */
export const acquireFrom = <A, E, R>(effect: Effect.Effect<A, E, R>, dispose: (a: A) => void): Effect.Effect<A, E, R | Scope.Scope> =>
  Effect.uninterruptibleMask((restore) => Effect.tap(restore(effect), (a) => Effect.addFinalizer(() => Effect.sync(() => dispose(a)))))

/**
 * Run `f` on tensors that only live for the duration of `use`, then dispose
 * them: for values handed from one stage to the next.
 */
export const use = <A extends TensorContainer, B, E, R>(
  make: () => A,
  f: (a: A) => Effect.Effect<B, E, R>
): Effect.Effect<B, E, R> => Effect.acquireUseRelease(Effect.sync(make), f, (a) => Effect.sync(() => disposeAll(a)))

/** Live tensor count, for leak assertions and metrics. */
export const liveTensors = (): number => tf.memory().numTensors
