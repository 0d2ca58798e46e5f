/**
 * The run settings added for image-level sharpening, on the lab's MLP (fast):
 * the training-NFE budget, gradient accumulation, the weights' EMA (and its
 * checkpoint), and the published variant still running through the loop.
 */
import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { beforeAll } from "vitest"
import * as LabReward from "../../src/lab/LabReward.ts"
import * as Ring from "../../src/lab/Ring.ts"
import * as RingSource from "../../src/lab/RingSource.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import * as Mlp from "../../src/model/Mlp.ts"
import { Ema } from "../../src/optim/Ema.ts"
import { Metrics } from "../../src/optim/Metrics.ts"
import * as Sharpen from "../../src/sharpen/Sharpen.ts"
import * as SharpenConfig from "../../src/sharpen/SharpenConfig.ts"
import * as SharpenLayers from "../../src/sharpen/SharpenLayers.ts"
import { Decoder } from "../../src/reward/Decoder.ts"
import { Backend } from "../../src/tensor/Backend.ts"
import { tmpDir } from "../sharpen-helpers.ts"

const config = (o: Partial<SharpenConfig.SharpenConfig>): SharpenConfig.SharpenConfig => ({
  ...SharpenConfig.defaults,
  iterations: 4,
  batchSize: 4,
  cfg: 1,
  inferenceSteps: 10,
  onlineSteps: 10,
  lr: 1e-3,
  dpoBeta: 50,
  microBatchRows: 0,
  timestep: { kind: "range", min: 200, max: 900 },
  checkpointEvery: 2,
  ...o
})

const run = (algorithm: "sft" | "rlhf", model: string, runDir: string, c: SharpenConfig.SharpenConfig) => {
  const wiring = { model, runDir, reward: LabReward.layer("mode"), backend: Backend.make("wasm"), metrics: Metrics.memory, decoder: Decoder.scaled(Ring.SCALE) }
  // SFT learns from the ring's points; RLHF from its own online samples.
  const layers = algorithm === "sft" ? SharpenLayers.sft(c, { ...wiring, source: RingSource.layer }) : SharpenLayers.rlhf(c, wiring)
  return Effect.gen(function*() {
    const done = yield* Sharpen.loop(c)
    const records = yield* (yield* Metrics).records
    const { model: policy } = yield* Denoiser.Denoiser
    const ema = (yield* Ema).model()
    const flat = (m: Denoiser.Model) => Array.from(tf.tidy(() => tf.concat(Object.keys(m.params).sort().map((k) => tf.reshape(m.params[k], [-1])))).dataSync())
    return { done, records, policy: flat(policy), ema: flat(ema) }
  }).pipe(Effect.provide(layers as never), Effect.scoped, Effect.provide(NodeServices.layer)) as unknown as Effect.Effect<
    { done: number; records: ReadonlyArray<{ nfe: number; lossNfe?: number; liveTensors: number; loss: number }>; policy: Array<number>; ema: Array<number> },
    unknown
  >
}

describe("Sharpen settings", () => {
  let model = ""
  beforeAll(async () => {
    const dir = path.join(tmpDir("mlp-model-"), "model")
    const m = Denoiser.init({ ...Mlp.labConfig, architecture: { dim: 2, hidden: 16, blocks: 1, timeDim: 8 } }, 0)
    tf.tidy(() => {
      for (const v of Object.values(m.params)) v.assign(tf.add(v, tf.randomNormal(v.shape, 0, 0.1, "float32", 1)))
    })
    await Effect.runPromise(Denoiser.save(dir, m).pipe(Effect.provide(NodeServices.layer)))
    Denoiser.dispose(m)
    model = dir
  })

  it.effect("trainingNfe stops the run at the first iteration that reaches the budget", () =>
    Effect.gen(function*() {
      const free = yield* run("rlhf", model, tmpDir("budget-a-"), config({ iterations: 50 }))
      const spent = free.records.map((r) => r.nfe + (r.lossNfe ?? 0))
      const budget = spent[0] + spent[1] + 1
      const capped = yield* run("rlhf", model, tmpDir("budget-b-"), config({ iterations: 50, trainingNfe: budget }))
      assert.strictEqual(capped.done, 3)
      assert.deepStrictEqual(capped.records.map((r) => r.loss), free.records.slice(0, 3).map((r) => r.loss))
    }))

  it.effect("accumulate k: k batches per optimiser step, their NFE summed; nothing leaks", () =>
    Effect.gen(function*() {
      const one = yield* run("sft", model, tmpDir("acc-1-"), config({ iterations: 3 }))
      const two = yield* run("sft", model, tmpDir("acc-2-"), config({ iterations: 3, accumulate: 2 }))
      assert.strictEqual(two.done, 3)
      // Per-prompt start timesteps make the path NFE vary; the objective's is fixed: B per batch.
      for (const r of two.records) assert.strictEqual(r.lossNfe, 2 * 4)
      for (const r of one.records) assert.strictEqual(r.lossNfe, 4)
      assert.isTrue(two.records.every((r) => r.liveTensors === two.records[0].liveTensors))
      assert.notDeepEqual(one.policy, two.policy)
    }))

  it.effect("ema: the average follows shadow <- d shadow + (1 - d) theta, and a resumed run restores it", () =>
    Effect.gen(function*() {
      const dir = tmpDir("ema-")
      const off = yield* run("rlhf", model, tmpDir("ema-off-"), config({ iterations: 1 }))
      const on = yield* run("rlhf", model, tmpDir("ema-on-"), config({ iterations: 1, ema: 0.9 }))
      const files = yield* Effect.promise(() => import("../../src/model/Weights.ts"))
      const base = yield* files.load(model).pipe(Effect.provide(NodeServices.layer))
      const theta0 = Object.keys(base.weights).sort().flatMap((k) => Array.from(base.weights[k].data))
      // Same seed, same update: the policy is the same with or without the average.
      assert.deepStrictEqual(on.policy, off.policy)
      on.ema.forEach((v, i) => assert.isTrue(Math.abs(v - (0.9 * theta0[i] + 0.1 * on.policy[i])) < 1e-6))
      // Checkpointed: 2 iterations in one go equal 1 + resume 1.
      const whole = yield* run("rlhf", model, tmpDir("ema-whole-"), config({ iterations: 2, ema: 0.9, checkpointEvery: 1 }))
      yield* run("rlhf", model, dir, config({ iterations: 1, ema: 0.9, checkpointEvery: 1 }))
      assert.isTrue(fs.readdirSync(dir).some((d) => fs.existsSync(path.join(dir, d, "ema.safetensors"))))
      const resumed = yield* run("rlhf", model, dir, config({ iterations: 2, ema: 0.9, checkpointEvery: 1 }))
      assert.deepStrictEqual(resumed.ema, whole.ema)
      assert.deepStrictEqual(resumed.policy, whole.policy)
    }))

  it.effect("the published variant (SharpenConfig.paperVariant) still runs through the loop for both algorithms", () =>
    Effect.gen(function*() {
      for (const algorithm of ["sft", "rlhf"] as const) {
        const r = yield* run(algorithm, model, tmpDir(`paper-${algorithm}-`), config({ ...SharpenConfig.paperVariant, timestep: { kind: "uniform" }, iterations: 2 }))
        assert.strictEqual(r.done, 2)
        assert.isTrue(r.records.every((x) => Number.isFinite(x.loss)))
      }
    }))
})
