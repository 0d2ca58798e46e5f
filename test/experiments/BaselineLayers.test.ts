import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { beforeAll } from "vitest"
import * as BaselineLayers from "../../src/experiments/BaselineLayers.ts"
import * as MethodLayers from "../../src/experiments/MethodLayers.ts"
import * as Sharpen from "../../src/sharpen/Sharpen.ts"
import type { SharpenConfig } from "../../src/sharpen/SharpenConfig.ts"
import { Reward } from "../../src/reward/Reward.ts"
import { Backend } from "../../src/tensor/Backend.ts"
import { savedTinyModel, smallConfig, tmpDir } from "../sharpen-helpers.ts"

type Baseline = "standard" | "diffusion-dpo" | "ddpo"

// A mock reward: mean brightness of the red channel; counts its calls.
let scored = 0
const redness = Reward.fromFunction((image) => {
  scored += 1
  let s = 0
  for (let k = 0; k < image.length; k += 3) s += image[k]
  return s / (image.length / 3)
}, { name: "redness", range: [0, 1] })

const config = (overrides: Partial<SharpenConfig> = {}) => smallConfig({ iterations: 2, batchSize: 2, n: 2, onlineSteps: 3, cfg: 2, checkpointEvery: 2, ...overrides })

// The comparison's and the lab's wiring of each baseline.
const layersOf = (baseline: Baseline, c: SharpenConfig, wiring: { model: string; runDir: string; reward: Layer.Layer<Reward>; backend: Layer.Layer<Backend, unknown> }) =>
  MethodLayers.layers(baseline, c, wiring)

/** Run a baseline through the sharpening loop; the records as metrics.jsonl has them. */
const run = (baseline: Baseline, model: string, runDir: string, c = config()) =>
  Effect.gen(function*() {
    scored = 0
    const done = yield* Sharpen.loop(c).pipe(
      Effect.provide(layersOf(baseline, c, { model, runDir, reward: redness, backend: Backend.make("wasm") }) as never),
      Effect.scoped,
      Effect.provide(NodeServices.layer)
    ) as Effect.Effect<number, unknown>
    const records = fs.readFileSync(path.join(runDir, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as Record<string, number>)
    return { done, records, scored }
  })

const strip = (rs: ReadonlyArray<Record<string, unknown>>) => rs.map(({ liveTensors: _l, wallMs: _w, ...rest }) => rest)

describe("BaselineLayers", () => {
  let model = ""
  beforeAll(async () => {
    model = await savedTinyModel(5)
  })

  for (const baseline of ["standard", "diffusion-dpo", "ddpo"] as const) {
    it.effect(`${baseline}: 2 iterations through Sharpen.loop write metrics.jsonl with nfe and rewardCalls, train, leak nothing`, () =>
      Effect.gen(function*() {
        const dir = tmpDir(`${baseline}-`)
        const c = config()
        const { done, records, scored } = yield* run(baseline, model, dir, c)
        const cost = BaselineLayers.costPerIteration(baseline, c)
        assert.strictEqual(done, 2)
        assert.strictEqual(records.length, 2)
        assert.deepStrictEqual(records.map((r) => r.iteration), [1, 2])
        for (const r of records) {
          assert.strictEqual(r.nfe, cost.nfe)
          assert.strictEqual(r.rewardCalls, cost.rewardCalls)
          assert.isTrue(Number.isFinite(r.loss))
          assert.isAbove(r.gradNorm, 0)
          assert.isAtLeast(r.rewardBest, r.rewardWorst)
        }
        // The reward saw exactly the images the metrics claim.
        assert.strictEqual(scored, 2 * cost.rewardCalls)
        assert.strictEqual(records[1].liveTensors, records[0].liveTensors)
        assert.isTrue(fs.existsSync(path.join(dir, "ckpt-0000002", "policy.safetensors")))
        // DDPO takes one optimiser step per minibatch (2 by default), the others one per iteration.
        const state = JSON.parse(fs.readFileSync(path.join(dir, "ckpt-0000002", "state.json"), "utf8")) as { optimizerStep: number }
        assert.strictEqual(state.optimizerStep, 2 * (baseline === "ddpo" ? BaselineLayers.ddpoDefaults.minibatches : 1))
        if (baseline === "diffusion-dpo") for (const r of records) assert.isAtLeast(r.rewardMargin, 0)
      }))
  }

  it("NFE and reward calls per iteration at the default settings", () => {
    const c = { batchSize: 8, n: 3, onlineSteps: 50, cfg: 5 }
    assert.deepStrictEqual(BaselineLayers.costPerIteration("standard", c), { nfe: 0, rewardCalls: 0 })
    assert.deepStrictEqual(BaselineLayers.costPerIteration("diffusion-dpo", c), { nfe: 1600, rewardCalls: 16 })
    assert.deepStrictEqual(BaselineLayers.costPerIteration("ddpo", c), { nfe: 2400, rewardCalls: 24 })
  })

  it.effect("ddpo: the stat tracker and RNG are checkpointed; --resume reproduces the uninterrupted metrics", () =>
    Effect.gen(function*() {
      const whole = yield* run("ddpo", model, tmpDir("ddpo-whole-"))
      const dir = tmpDir("ddpo-split-")
      yield* run("ddpo", model, dir, config({ iterations: 1 }))
      const state = JSON.parse(fs.readFileSync(path.join(dir, "ckpt-0000001", "state.json"), "utf8")) as {
        statTracker?: { buffers: Record<string, ReadonlyArray<number>> }
      }
      // Two prompts with n = 2 rewards each (one prompt twice if both draws agree).
      const buffered = Object.values(state.statTracker?.buffers ?? {}).flat()
      assert.strictEqual(buffered.length, 4)
      const resumed = yield* run("ddpo", model, dir, config())
      assert.strictEqual(resumed.records.length, 2)
      assert.deepStrictEqual(strip(resumed.records), strip(whole.records))
    }))
})
