import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as fsNode from "node:fs"
import * as os from "node:os"
import * as nodePath from "node:path"
import { beforeAll } from "vitest"
import * as AtomicFile from "../../src/io/AtomicFile.ts"
import * as Safetensors from "../../src/io/Safetensors.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import * as Weights from "../../src/model/Weights.ts"
import { tinyConfig, useCpu } from "../helpers.ts"

const tmp = () => fsNode.mkdtempSync(nodePath.join(os.tmpdir(), "weights-"))

const loadError = (dir: string) =>
  Weights.load(dir).pipe(Effect.flip, Effect.provide(NodeServices.layer))

describe("Weights", () => {
  beforeAll(useCpu)

  it.effect("save then load gives back identical weights and config", () =>
    Effect.gen(function*() {
      const dir = tmp()
      const m = Denoiser.init(tinyConfig, 4)
      yield* Denoiser.save(dir, m, { note: "test" })
      const files = yield* Weights.load(dir)
      assert.deepStrictEqual(files.config, tinyConfig)
      assert.strictEqual(files.metadata.note, "test")
      const back = Denoiser.fromStored(files.config, files.weights)
      for (const [k, v] of Object.entries(m.params)) {
        assert.deepStrictEqual(Array.from(back.params[k].dataSync()), Array.from(v.dataSync()), k)
      }
      // No temporary files are left next to the model.
      assert.deepStrictEqual(fsNode.readdirSync(dir).sort(), ["config.json", "model.safetensors"])
      Denoiser.dispose(m)
      Denoiser.dispose(back)
    }).pipe(Effect.provide(NodeServices.layer)))

  it.effect("a missing directory names the path", () =>
    Effect.gen(function*() {
      const e = yield* loadError("/nonexistent/model")
      assert.strictEqual(e.file, "/nonexistent/model")
      assert.match(e.message, /does not exist/)
    }))

  it.effect("a truncated weights file names the file and the tensor", () =>
    Effect.gen(function*() {
      const dir = tmp()
      const m = Denoiser.init(tinyConfig, 0)
      yield* Denoiser.save(dir, m).pipe(Effect.provide(NodeServices.layer))
      Denoiser.dispose(m)
      const file = nodePath.join(dir, "model.safetensors")
      const bytes = fsNode.readFileSync(file)
      fsNode.writeFileSync(file, bytes.subarray(0, bytes.length - 100))
      const e = yield* loadError(dir)
      assert.strictEqual(e.file, file)
      assert.isDefined(e.tensor)
      assert.match(e.message, /truncated/)
    }))

  it.effect("a tensor of the wrong shape names both shapes", () =>
    Effect.gen(function*() {
      const dir = tmp()
      const m = Denoiser.init(tinyConfig, 0)
      const stored = yield* Denoiser.toStored(m)
      Denoiser.dispose(m)
      stored["in.w"] = { shape: [3, 3, 3, 7], data: new Float32Array(3 * 3 * 3 * 7) }
      yield* Weights.save(dir, tinyConfig, stored).pipe(Effect.provide(NodeServices.layer))
      const e = yield* loadError(dir)
      assert.strictEqual(e.tensor, "in.w")
      assert.match(e.message, /\[3, 3, 3, 7\].*\[3, 3, 3, 8\]/)
    }))

  it.effect("a missing tensor and a bad config field are named", () =>
    Effect.gen(function*() {
      const dir = tmp()
      const m = Denoiser.init(tinyConfig, 0)
      const stored = yield* Denoiser.toStored(m)
      Denoiser.dispose(m)
      delete stored["out.b"]
      yield* Weights.save(dir, tinyConfig, stored).pipe(Effect.provide(NodeServices.layer))
      const e1 = yield* loadError(dir)
      assert.strictEqual(e1.tensor, "out.b")
      const cfg = JSON.parse(fsNode.readFileSync(nodePath.join(dir, "config.json"), "utf8"))
      cfg.architecture.baseChannels = -4
      fsNode.writeFileSync(nodePath.join(dir, "config.json"), JSON.stringify(cfg))
      const e2 = yield* loadError(dir)
      assert.match(e2.file, /config\.json$/)
      assert.match(e2.message, /baseChannels/)
    }))

  it("safetensors header is 8-byte aligned and readable by the reference layout", () => {
    const bytes = Safetensors.encode({ b: { shape: [2], data: new Float32Array([1, 2]) }, a: { shape: [1, 1], data: new Float32Array([3]) } })
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true))
    assert.strictEqual((8 + n) % 8, 0)
    const header = JSON.parse(Buffer.from(bytes.subarray(8, 8 + n)).toString())
    assert.deepStrictEqual(header.a, { dtype: "F32", shape: [1, 1], data_offsets: [0, 4] })
    assert.deepStrictEqual(header.b, { dtype: "F32", shape: [2], data_offsets: [4, 12] })
    const back = Safetensors.decode(bytes, "x")
    assert.notInstanceOf(back, Safetensors.SafetensorsError)
  })

  it.effect("a failed atomic write leaves the target as it was and no temporary file", () =>
    Effect.gen(function*() {
      const dir = tmp()
      // rename() cannot replace a non-empty directory: the write fails at its last step.
      const target = nodePath.join(dir, "model.safetensors")
      fsNode.mkdirSync(target)
      fsNode.writeFileSync(nodePath.join(target, "keep"), "old")
      const exit = yield* Effect.exit(AtomicFile.writeText(target, "new"))
      assert.strictEqual(exit._tag, "Failure")
      assert.strictEqual(fsNode.readFileSync(nodePath.join(target, "keep"), "utf8"), "old")
      assert.deepStrictEqual(fsNode.readdirSync(dir), ["model.safetensors"])
    }).pipe(Effect.provide(NodeServices.layer)))

  it.effect("weights holding NaN or Inf are rejected at load, naming the tensor", () =>
    Effect.gen(function*() {
      for (const bad of [NaN, Infinity]) {
        const dir = tmp()
        const m = Denoiser.init(tinyConfig, 4)
        const stored = yield* Denoiser.toStored(m)
        const name = Object.keys(stored)[3]
        const data = Float32Array.from(stored[name].data)
        data[1] = bad
        yield* Weights.save(dir, m.config, { ...stored, [name]: { ...stored[name], data } })
        Denoiser.dispose(m)
        const e = yield* loadError(dir)
        assert.strictEqual(e._tag, "ModelLoadError")
        assert.strictEqual(e.tensor, name)
        assert.include(e.message, `holds ${bad} at index 1`)
      }
    }).pipe(Effect.provide(NodeServices.layer)))
})
