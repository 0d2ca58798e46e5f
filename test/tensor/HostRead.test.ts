import { assert, describe, it } from "@effect/vitest"
import { MathBackendCPU } from "@tensorflow/tfjs-backend-cpu"
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import { readdirSync, readFileSync } from "node:fs"
import { join, relative } from "node:path"
import * as HostRead from "../../src/tensor/HostRead.ts"
import { useCpu, useWasm } from "../helpers.ts"

const SRC = join(import.meta.dirname, "..", "..", "src")

const sources = (dir: string): Array<string> =>
  readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith(".ts") ? [join(dir, e.name)] : []
  )

describe("HostRead", () => {
  it("is the only module in src/ that reads tensors synchronously", () => {
    const offenders = sources(SRC)
      .filter((f) => !f.endsWith(join("tensor", "HostRead.ts")))
      .flatMap((f) =>
        readFileSync(f, "utf8").split("\n").flatMap((line, i) =>
          /\.(dataSync|arraySync|bufferSync)\s*\(/.test(line) ? [`${relative(SRC, f)}:${i + 1}: ${line.trim()}`] : []
        )
      )
    assert.deepStrictEqual(offenders, [], `synchronous reads outside src/tensor/HostRead.ts:\n${offenders.join("\n")}`)
  })

  it.effect("reads values the caller owns on cpu (the backend hands out its own storage)", () =>
    Effect.gen(function*() {
      yield* Effect.promise(useCpu)
      const x = tf.tensor1d([1, 2, 3])
      const a = yield* HostRead.float32(x)
      a[0] = 99
      assert.deepStrictEqual(Array.from(yield* HostRead.float32(x)), [1, 2, 3])
      assert.strictEqual(yield* HostRead.scalar(tf.scalar(4)), 4)
      assert.deepStrictEqual(yield* HostRead.array<Array<Array<number>>>(tf.tensor2d([[1, 2], [3, 4]])), [[1, 2], [3, 4]])
      tf.disposeVariables()
    }))

  it.effect("consume disposes what it made, on success and failure", () =>
    Effect.gen(function*() {
      yield* Effect.promise(useWasm)
      const before = tf.memory().numTensors
      assert.strictEqual(yield* HostRead.consumeScalar(() => tf.sum(tf.ones([3]))), 3)
      yield* Effect.exit(HostRead.consume(() => tf.ones([2]), () => Effect.die("boom")))
      assert.strictEqual(tf.memory().numTensors, before)
    }))

  it("resident reads work on wasm and cpu, and name the caller elsewhere", async () => {
    await useWasm()
    const x = tf.tensor1d([1, 2])
    assert.deepStrictEqual(Array.from(HostRead.resident(x, "test")), [1, 2])
    x.dispose()
    // A backend that is neither: only its name matters to the check.
    tf.registerBackend("device-like", () => new MathBackendCPU())
    await tf.setBackend("device-like")
    assert.throws(() => HostRead.resident(tf.scalar(1), "the fused update"), /the fused update reads a tensor synchronously.*device-like/)
  })
})
