import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as TrainingLoop from "../../src/train/TrainingLoop.ts"
import * as WasmHeap from "../../src/tensor/WasmHeap.ts"

// What tfjs-backend-wasm prints (through console.warn) when XNNPACK cannot
// allocate an operator, and what the module throws when malloc fails. A real
// exhaustion needs a 4 GiB heap, too much for a unit test; bench/batch.ts
// runs one (docs/performance.md).
const xnnReport = "XNN status for xnn_create_convolution2d_nhwc_f32 is not successful. Got status 6. Use -c dbg to see XNN logs."
describe("WasmHeap", () => {
  WasmHeap.hookWarnings()

  it.effect("returns the result when the heap held", () =>
    Effect.sync(() => {
      assert.strictEqual(WasmHeap.guard("work", 8, () => 42), 42)
    }))

  it.effect("an XNNPACK status report becomes WasmHeapExhausted naming the batch and the limit, and the result is released", () =>
    Effect.sync(() => {
      let released = 0
      const e = (() => {
        try {
          WasmHeap.guard("pretraining gradients", 56, () => {
            console.warn(xnnReport) // printed, as tfjs prints it
            return "wrong gradient"
          }, () => released++)
          return undefined
        } catch (err) {
          return err
        }
      })()
      assert.instanceOf(e, WasmHeap.WasmHeapExhausted)
      const h = e as WasmHeap.WasmHeapExhausted
      assert.strictEqual(h.rows, 56)
      assert.strictEqual(h.limitBytes, WasmHeap.heapLimitBytes)
      assert.match(h.message, /batch 56 .*limit 4096 MiB/)
      assert.match(h.detail, /status 6/)
      assert.strictEqual(released, 1)
      // Reports outside a guard are not held against the next one.
      console.warn(xnnReport)
      assert.strictEqual(WasmHeap.guard("next", 1, () => "ok"), "ok")
    }))

  it.effect("a wasm abort becomes WasmHeapExhausted; other errors pass through", () =>
    Effect.gen(function*() {
      const abort = () => {
        // As the module throws it (a WebAssembly.RuntimeError).
        throw Object.assign(new Error("Aborted(). Build with -sASSERTIONS for more info."), { name: "RuntimeError" })
      }
      const failed = yield* Effect.flip(WasmHeap.guarded("sampling", 12, abort))
      assert.strictEqual(failed._tag, "WasmHeapExhausted")
      assert.match(failed.detail, /unusable until the process restarts/)
      const other = new Error("shape mismatch")
      assert.throws(() => WasmHeap.guard("x", 1, () => {
        throw other
      }), /shape mismatch/)
    }))

  it.effect("a training loop fails with the typed error, whether the step throws it, rejects with it, or fails or dies with it", () =>
    Effect.gen(function*() {
      const heap = new WasmHeap.WasmHeapExhausted({ what: "pretraining gradients", rows: 64, heapBytes: 4e9, limitBytes: WasmHeap.heapLimitBytes, detail: "test" })
      for (const step of [() => { throw heap }, () => Promise.reject(heap), () => Effect.fail(heap), () => Effect.die(heap)]) {
        const e = yield* Effect.flip(TrainingLoop.run({
          label: "test",
          total: 3,
          start: 0,
          startWallMs: 0,
          maxMinutes: 0,
          checkpointEvery: 10,
          step,
          checkpoint: () => Effect.void
        }))
        assert.strictEqual(e, heap)
      }
    }))
})
