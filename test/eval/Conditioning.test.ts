import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import * as Conditioning from "../../src/eval/Conditioning.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import { Backend } from "../../src/tensor/Backend.ts"
import { tiny32 } from "../sharpen-helpers.ts"


describe("Conditioning.report", () => {
  it.effect("measures the prompt's effect per timestep and leaks nothing", () =>
    Effect.gen(function*() {
      const model = Denoiser.init(tiny32, 3)
      // Zero-initialised output layers would make every output equal: give them weights.
      for (const [k, v] of Object.entries(model.params)) {
        if (k.endsWith(".w")) tf.tidy(() => v.assign(tf.add(v, tf.randomNormal(v.shape, 0, 0.05, "float32", 7))))
      }
      const before = tf.memory().numTensors
      const rows = yield* Conditioning.report(model, 2, 1, [20, 800])
      assert.strictEqual(tf.memory().numTensors, before)
      assert.deepStrictEqual(rows.map((r) => r.t), [20, 800])
      for (const r of rows) {
        assert.isTrue(Number.isFinite(r.epsPrompt) && Number.isFinite(r.x0))
        // A random (untrained) model's output depends on the prompt.
        assert.notStrictEqual(r.epsPrompt, r.epsNull)
        assert.approximately(r.gain, 1 - r.epsPrompt / r.epsNull, 1e-12)
      }
      // x0 from a nearly clean input is far better than from almost pure noise.
      assert.isBelow(rows[0].x0, rows[1].x0)
      assert.include(Conditioning.markdown(rows), "| 800 |")
      Denoiser.dispose(model)
    }).pipe(Effect.provide(Backend.layerCpu)))
})
