/**
 * The lab's acceptance tests (docs/method.md): on the committed base model
 * (models/lab-ring), the default image-level RLHF and SFT sharpening raise
 * the mean reward at least 1.5x over the base in each of 3 seeds while at
 * least 90% of samples stay on the ring. Negative controls show the tests
 * can fail: the same runs with the preference flipped, and the published
 * objectives (whose target is the shared start image), do not pass.
 */
import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Lab from "../../src/lab/Lab.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import * as Weights from "../../src/model/Weights.ts"
import { Backend } from "../../src/tensor/Backend.ts"
import * as Scoped from "../../src/tensor/Scoped.ts"
import * as Aggregate from "../../src/trajectory/Aggregate.ts"
import { PathSelector } from "../../src/trajectory/PathSelector.ts"

const MODEL = "models/lab-ring"
const backend = Backend.make("wasm")
const method = (name: string) => Lab.methods.find((m) => m.name === name)!
const flipped = PathSelector.custom((scores) => ({ best: Aggregate.argmin(scores), worst: Aggregate.argmax(scores) }))

const baseReward = Effect.gen(function*() {
  const files = yield* Weights.load(MODEL)
  const model = yield* Scoped.acquireWith(() => Denoiser.fromStored(files.config, files.weights, false), Denoiser.dispose)
  return yield* Lab.base(model, "mode", 4000)
}).pipe(Effect.provide(backend), Effect.scoped, Effect.provide(NodeServices.layer))

const runOf = (name: string, seed: number, extra: Partial<Lab.RunOptions> = {}) =>
  Lab.run(method(name), { modelDir: MODEL, reward: "mode", seed, budget: Lab.LAB_BUDGET, evalSamples: 4000, backend, overrides: { iterations: Lab.LAB_MAX_ITERATIONS }, ...extra }).pipe(
    Effect.provide(NodeServices.layer)
  )

const passes = (r: { reward: number; onRing: number }, base: number) => r.reward >= 1.5 * base && r.onRing >= 0.9

describe("Lab", () => {
  for (const name of ["rlhf-image", "sft-image"]) {
    it.effect(`${name}: >= 1.5x the base reward in 3 of 3 seeds with >= 90% on the ring; flipped, it fails`, () =>
      Effect.gen(function*() {
        const base = yield* baseReward
        for (const seed of [0, 1, 2]) {
          const r = yield* runOf(name, seed)
          assert.isTrue(passes(r, base.reward), `seed ${seed}: reward ${r.reward.toFixed(3)} (base ${base.reward.toFixed(3)}), on ring ${r.onRing.toFixed(3)}`)
          // Live tensors are back where they started: the run's scope released everything.
          assert.isTrue(r.records.every((x) => x.liveTensors === r.records[0].liveTensors), `live tensors ${r.records.map((x) => x.liveTensors).join(",")}`)
        }
        const bad = yield* runOf(name, 0, { selector: flipped })
        assert.isFalse(passes(bad, base.reward), `flipped preference passed: reward ${bad.reward.toFixed(3)}`)
        assert.isTrue(bad.reward < base.reward, `flipped preference should lower the reward: ${bad.reward.toFixed(3)} vs ${base.reward.toFixed(3)}`)
      }), 300_000)
  }

  it.effect("the published objectives (target: the shared start image) do not pass", () =>
    Effect.gen(function*() {
      const base = yield* baseReward
      for (const name of ["rlhf-paper", "sft-paper"]) {
        const r = yield* runOf(name, 0)
        assert.isFalse(passes(r, base.reward), `${name} passed: reward ${r.reward.toFixed(3)}, on ring ${r.onRing.toFixed(3)}`)
      }
    }), 300_000)

  it.effect("a run is reproducible: same seed, same numbers", () =>
    Effect.gen(function*() {
      const a = yield* runOf("rlhf-image", 4, { budget: 8000 })
      const b = yield* runOf("rlhf-image", 4, { budget: 8000 })
      assert.deepStrictEqual([a.reward, a.inMode, a.onRing, a.trainingNfe, a.iterations], [b.reward, b.inMode, b.onRing, b.trainingNfe, b.iterations])
      assert.deepStrictEqual(a.records.map((r) => r.loss), b.records.map((r) => r.loss))
    }), 120_000)
})
