// The test shown in docs/getting-started.md, kept runnable.
import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { beforeAll } from "vitest"
import { Metrics } from "../../src/optim/Metrics.ts"
import * as Sharpen from "../../src/sharpen/Sharpen.ts"
import * as SharpenLayers from "../../src/sharpen/SharpenLayers.ts"
import { Reward } from "../../src/reward/Reward.ts"
import { Backend } from "../../src/tensor/Backend.ts"
import { savedTinyModel, smallConfig, tmpDir } from "../sharpen-helpers.ts"

describe("getting started", () => {
  let tinyModelDir = ""
  beforeAll(async () => {
    tinyModelDir = await savedTinyModel()
  })

  it.effect("sharpening toward a constant reward runs and leaks nothing", () =>
    Effect.gen(function*() {
      const config = smallConfig({ iterations: 2 })
      const layers = SharpenLayers.sft(config, {
        model: tinyModelDir,
        runDir: tmpDir("run-"),
        reward: Reward.constant(1),
        backend: Backend.make("wasm"),
        metrics: Metrics.memory
      })
      const records = yield* Effect.gen(function*() {
        yield* Sharpen.sft(config)
        return yield* (yield* Metrics).records
      }).pipe(Effect.provide(layers), Effect.scoped)
      assert.strictEqual(records.length, 2)
      assert.strictEqual(records[0].liveTensors, records[1].liveTensors)
    }).pipe(Effect.provide(NodeServices.layer)))
})
