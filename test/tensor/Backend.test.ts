import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import { Backend, BackendUnavailable, installed } from "../../src/tensor/Backend.ts"

describe("Backend", () => {
  it.effect("loads the cpu backend by name", () =>
    Effect.gen(function*() {
      const b = yield* Backend
      assert.strictEqual(b.name, "cpu")
    }).pipe(Effect.provide(Backend.layerCpu)))

  it.effect("loads wasm by name", () =>
    Effect.gen(function*() {
      const b = yield* Backend
      assert.strictEqual(b.name, "wasm")
    }).pipe(Effect.provide(Backend.make("wasm"))))

  it.effect("fails with BackendUnavailable listing what is installed", () =>
    Effect.gen(function*() {
      // tfjs-node-gpu cannot install on CI (it downloads libtensorflow); where
      // it did install, this test has nothing to check.
      if (installed().includes("tensorflow-gpu")) return
      const exit = yield* Effect.exit(Effect.provide(Effect.service(Backend), Backend.make("tensorflow-gpu")))
      assert.isTrue(Exit.isFailure(exit))
      const error = Exit.isFailure(exit) ? exit.cause.reasons[0] : undefined
      assert.strictEqual(error?._tag, "Fail")
      const e = (error as { error: BackendUnavailable }).error
      assert.instanceOf(e, BackendUnavailable)
      assert.include(e.available, "wasm")
      assert.include(e.available, "cpu")
      assert.match(e.message, /tensorflow-gpu.*available here: .*wasm/)
    }))

  it.effect("rejects unknown names", () =>
    Effect.gen(function*() {
      const exit = yield* Effect.exit(Effect.provide(Effect.service(Backend), Backend.make("tpu" as never)))
      assert.isTrue(Exit.isFailure(exit))
    }))
})
