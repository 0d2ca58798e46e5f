import { assert } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import "@tensorflow/tfjs-backend-cpu"

export const useCpu = async () => {
  await tf.setBackend("cpu")
  await tf.ready()
}

/** max |a - b| over all elements (does not dispose its arguments). */
export const maxAbsDiff = (a: tf.Tensor, b: tf.Tensor | number): number =>
  tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0])

/** Runs `f`, expects it to throw an instance of `cls`, returns the error. */
export const throwsTyped = <E>(f: () => unknown, cls: abstract new (...args: any) => E): E => {
  try {
    f()
  } catch (e) {
    assert.instanceOf(e, cls as any)
    return e as E
  }
  assert.fail(`expected ${cls.name} to be thrown`)
  throw new Error("unreachable")
}

/** Asserts that `f` leaves no tensor behind besides those it returns (which it must dispose itself). */
export const noLeak = <A>(f: () => A): A => {
  const before = tf.memory().numTensors
  const out = f()
  assert.strictEqual(tf.memory().numTensors, before, "tensor leak")
  return out
}
