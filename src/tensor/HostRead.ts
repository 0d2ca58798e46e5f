/**
 * Reading tensors to the host: the one place in `src/` that does.
 *
 * On a GPU backend a read waits for the device, and tfjs's synchronous
 * forms (`dataSync`, `arraySync`) cannot run under Node on webgpu at all
 * (they go through `OffscreenCanvas`). So every read is an Effect over
 * `data()` / `array()`, which works on every backend.
 *
 * {@link resident} is the one synchronous form, kept for code that must read
 * inside a gradient function or a fused update (a tfjs kernel cannot await):
 * it runs only where tensors live in JS-visible memory (wasm, cpu), where a
 * read is a copy and not a device transfer, and fails with
 * {@link ResidentReadUnsupported} elsewhere.
 *
 * @since 0.2.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Schema } from "effect"
import * as WebGpu from "./WebGpu.ts"

/**
 * A synchronous read was asked of a backend whose tensors live on a device.
 *
 * @since 0.2.0
 */
export class ResidentReadUnsupported extends Schema.TaggedError<ResidentReadUnsupported>()("ResidentReadUnsupported", {
  backend: Schema.String,
  what: Schema.String
}) {
  override get message() {
    return `${this.what} reads a tensor synchronously, which only the wasm and cpu backends allow (this is ${this.backend})`
  }
}

/** Backends whose tensors live in JS-visible memory: a read is a copy (wasm) or free (cpu). */
export const isResident = (): boolean => {
  const b = tf.getBackend()
  return b === "wasm" || b === "cpu"
}

/**
 * The cpu backend hands out a tensor's own storage; every other backend a
 * fresh array. Callers get arrays they own (may write or transfer).
 */
const owned = <A extends tf.TypedArray>(a: A): A => (tf.getBackend() === "cpu" ? a.slice() as A : a)

/** A read is where the GPU's queue is drained: its errors surface here (`WebGpu.GpuValidationError`, a defect). */
const checked = <A>(a: A): A => {
  WebGpu.throwPending()
  return a
}

/**
 * The values of `x`, as an array the caller owns. Promise form, for worker
 * threads and scripts without an Effect runtime.
 *
 * @since 0.2.0
 */
export const promise = async (x: tf.Tensor): Promise<Float32Array> => checked(owned(await x.data<"float32">()))

/**
 * The values of `x` (float32), as an array the caller owns.
 *
 * @since 0.2.0
 */
export const float32 = (x: tf.Tensor): Effect.Effect<Float32Array> => Effect.promise(() => promise(x))

/**
 * The values of `x` in its own dtype (int32, bool), as an array the caller owns.
 *
 * @since 0.2.0
 */
export const values = (x: tf.Tensor): Effect.Effect<tf.TypedArray> => Effect.promise(async () => checked(owned(await x.data())))

/**
 * The first value of `x` (a scalar or loss).
 *
 * @since 0.2.0
 */
export const scalar = (x: tf.Tensor): Effect.Effect<number> => Effect.promise(async () => checked(await x.data())[0]!)

/**
 * `x` as nested arrays.
 *
 * @since 0.2.0
 */
export const array = <A = Array<number>>(x: tf.Tensor): Effect.Effect<A> => Effect.promise(async () => checked(await x.array() as A))

/**
 * Make a tensor (in `tf.tidy`), read it and dispose it, whatever happens.
 *
 * @since 0.2.0
 */
export const consume = <A>(make: () => tf.Tensor, read: (x: tf.Tensor) => Effect.Effect<A>): Effect.Effect<A> =>
  Effect.acquireUseRelease(Effect.sync(() => tf.tidy(make)), read, (x) => Effect.sync(() => x.dispose()))

/** {@link consume} of a scalar: the number. */
export const consumeScalar = (make: () => tf.Tensor): Effect.Effect<number> => consume(make, scalar)

/** {@link consume} of float32 values. */
export const consumeFloat32 = (make: () => tf.Tensor): Effect.Effect<Float32Array> => consume(make, float32)

/**
 * Synchronous read on a JS-resident backend (wasm, cpu), where it is a copy
 * out of JS-visible memory. Throws {@link ResidentReadUnsupported} on any
 * other backend. The array is the caller's on wasm; on cpu it is the tensor's
 * own storage (`copy` makes it the caller's there too).
 *
 * @since 0.2.0
 */
export const resident = (x: tf.Tensor, what: string, copy = false): Float32Array => {
  if (!isResident()) throw new ResidentReadUnsupported({ backend: tf.getBackend(), what })
  const a = x.dataSync() as Float32Array
  return copy && tf.getBackend() === "cpu" ? a.slice() : a
}
