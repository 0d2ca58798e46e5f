import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import { spawnSync } from "node:child_process"
import * as path from "node:path"
import { Backend, BackendUnavailable, installed } from "../../src/tensor/Backend.ts"
import * as WebGpu from "../../src/tensor/WebGpu.ts"
import { tsxLoader } from "../cli-helpers.ts"

const root = path.resolve(import.meta.dirname, "..", "..")

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

  it.effect("auto passes over a software WebGPU adapter (or none) and takes wasm", () =>
    Effect.gen(function*() {
      const found = yield* Effect.promise(WebGpu.probe)
      // A machine with a hardware adapter would rightly take webgpu: nothing to check there.
      if (found._tag === "Found" && !found.adapter.software) return
      const b = yield* Effect.provide(Effect.service(Backend), Backend.make("auto"))
      assert.strictEqual(b.name, "wasm")
    }))

  it("webgpu without a Vulkan driver fails with BackendUnavailable carrying Dawn's reason", () => {
    // No driver: the Vulkan loader is pointed at a file that does not exist.
    const script = "import { initialise } from './src/tensor/Backend.ts'; const r = await initialise('webgpu'); console.log(r.message ?? r.name)"
    const r = spawnSync(process.execPath, ["--import", tsxLoader, "--input-type=module", "-e", script], {
      cwd: root,
      encoding: "utf8",
      env: { ...process.env, VK_DRIVER_FILES: "/nonexistent.json", VK_ICD_FILENAMES: "/nonexistent.json" }
    })
    assert.strictEqual(r.status, 0, r.stderr)
    assert.match(r.stdout, /backend "webgpu" is unavailable \(webgpu: Dawn found no adapter: .*(Vulkan|driver)/i)
  })
})
