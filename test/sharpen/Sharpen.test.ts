import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Deferred, Effect, Exit, Fiber, Layer } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { beforeAll } from "vitest"
import * as Denoiser from "../../src/model/Denoiser.ts"
import { Objective } from "../../src/objective/Objective.ts"
import { Metrics } from "../../src/optim/Metrics.ts"
import * as Sharpen from "../../src/sharpen/Sharpen.ts"
import * as SharpenLayers from "../../src/sharpen/SharpenLayers.ts"
import { functionReward, Reward } from "../../src/reward/Reward.ts"
import { RewardUnavailable } from "../../src/reward/RewardError.ts"
import { Backend } from "../../src/tensor/Backend.ts"
import { savedTinyModel, smallConfig, tmpDir } from "../sharpen-helpers.ts"

// A mock reward: mean brightness of the red channel (any function of pixels works).
const red = (image: Float32Array) => {
  let s = 0
  for (let k = 0; k < image.length; k += 3) s += image[k]
  return s / (image.length / 3)
}
const redness = Reward.fromFunction(red, { name: "redness", range: [0, 1] })
const rednessService = functionReward(red, { name: "redness", range: [0, 1] })

const strip = (rs: ReadonlyArray<Record<string, unknown>>) => rs.map(({ liveTensors: _l, wallMs: _w, ...rest }) => rest)

const run = (algorithm: "sft" | "rlhf", model: string, runDir: string, config = smallConfig(), reward: Layer.Layer<Reward> = redness, extra?: Layer.Layer<Objective, never, Denoiser.Denoiser>, sampler?: Layer.Layer<Sharpen.IterationSampler>) => {
  const wiring = { model, runDir, reward, backend: Backend.make("wasm"), metrics: Metrics.memory }
  const layers = (algorithm === "sft" ? SharpenLayers.sft : SharpenLayers.rlhf)(config, wiring)
  const program = Effect.gen(function*() {
    const done = yield* (algorithm === "sft" ? Sharpen.sft(config) : Sharpen.rlhf(config))
    return { done, records: yield* (yield* Metrics).records }
  })
  return program.pipe(
    sampler === undefined ? (e) => e : Effect.provide(sampler),
    Effect.provide(extra === undefined ? layers : Layer.provideMerge(extra, layers) as never),
    Effect.scoped,
    Effect.provide(NodeServices.layer)
  ) as Effect.Effect<{ done: number; records: ReadonlyArray<Record<string, number>> }, unknown>
}

describe("Sharpen", () => {
  let model = ""
  beforeAll(async () => {
    model = await savedTinyModel(3)
  })

  for (const algorithm of ["sft", "rlhf"] as const) {
    it.effect(`${algorithm}: runs, leaks no tensors across iterations, and a seeded run repeats exactly`, () =>
      Effect.gen(function*() {
        const a = yield* run(algorithm, model, tmpDir("run-a-"))
        const b = yield* run(algorithm, model, tmpDir("run-b-"))
        assert.strictEqual(a.done, 3)
        assert.strictEqual(a.records.length, 3)
        const live = a.records.map((r) => r.liveTensors)
        assert.strictEqual(live[1], live[0])
        assert.strictEqual(live[2], live[0])
        for (const r of a.records) {
          assert.isTrue(Number.isFinite(r.loss))
          assert.isAtLeast(r.rewardBest, r.rewardWorst)
          assert.isAbove(r.nfe, 0)
        }
        assert.deepStrictEqual(strip(a.records), strip(b.records))
      }))

    it.effect(`${algorithm}: --resume after a checkpoint reproduces the uninterrupted metrics`, () =>
      Effect.gen(function*() {
        const whole = yield* run(algorithm, model, tmpDir("whole-"), smallConfig({ iterations: 4 }))
        const dir = tmpDir("split-")
        yield* run(algorithm, model, dir, smallConfig({ iterations: 2 }))
        const resumed = yield* run(algorithm, model, dir, smallConfig({ iterations: 4 }))
        assert.strictEqual(resumed.records.length, 4)
        assert.deepStrictEqual(strip(resumed.records), strip(whole.records))
      }))
  }

  it.effect("a non-finite loss stops the run naming the iteration; the last checkpoint stays intact", () =>
    Effect.gen(function*() {
      // Swap the objective stage for one whose loss turns NaN at iteration 3.
      let calls = 0
      const nanAt3 = Layer.effect(Objective, Effect.map(Effect.service(Denoiser.Denoiser), ({ model }) => ({
        name: "nan-at-3",
        prepare: () =>
          Effect.succeed({
            loss: () => tf.mul(tf.sum(model.params["out.b"]), ++calls >= 3 ? NaN : 1) as tf.Scalar,
            stats: {}
          })
      })))
      const dir = tmpDir("nan-")
      const exit = yield* Effect.exit(run("sft", model, dir, smallConfig({ iterations: 4 }), redness, nanAt3))
      assert.isTrue(Exit.isFailure(exit))
      const error = Exit.isFailure(exit) ? (exit.cause.reasons[0] as { error?: { _tag: string; iteration: number } }).error : undefined
      assert.strictEqual(error?._tag, "NonFiniteLoss")
      assert.strictEqual(error?.iteration, 3)
      assert.strictEqual(fs.readFileSync(path.join(dir, "LATEST"), "utf8").trim(), "ckpt-0000002")
      assert.isTrue(fs.existsSync(path.join(dir, "ckpt-0000002", "policy.safetensors")))
    }))

  it.effect("a failing reward stops the run with its typed error; the last checkpoint stays intact", () =>
    Effect.gen(function*() {
      let calls = 0
      // 2 iterations score fine (one call each: the default "final" aggregation
      // scores the paths' final images), then the service goes away.
      const flaky = Reward.layerOf(Reward.make(
        { name: "flaky", range: [0, 1], differentiable: false, relativeCost: 1 },
        (images) =>
          ++calls > 2
            ? Effect.fail(new RewardUnavailable({ reward: "flaky", url: "http://127.0.0.1:9", message: "connection refused" }))
            : Effect.succeed(images.map(() => 0.5))
      ))
      const dir = tmpDir("flaky-")
      const exit = yield* Effect.exit(run("sft", model, dir, smallConfig({ iterations: 4 }), flaky))
      assert.isTrue(Exit.isFailure(exit))
      const error = Exit.isFailure(exit) ? (exit.cause.reasons[0] as { error?: { _tag: string } }).error : undefined
      assert.strictEqual(error?._tag, "RewardUnavailable")
      assert.strictEqual(fs.readFileSync(path.join(dir, "LATEST"), "utf8").trim(), "ckpt-0000002")
    }))

  it.effect("an interruption reaches a hung reward call: the iteration is abandoned, the last update kept, and the resume is exact", () =>
    Effect.gen(function*() {
      const whole = yield* run("rlhf", model, tmpDir("whole-"), smallConfig({ iterations: 4, checkpointEvery: 10 }))
      // 3 iterations score, then the server stops answering (calls per
      // iteration measured first: they depend on the aggregation).
      let calls = 0
      let hangAfter = Infinity
      const hanging = yield* Deferred.make<void>()
      const hung = Reward.layerOf(Reward.make(
        { name: "hung", range: [0, 1], differentiable: false, relativeCost: 1 },
        (images) => {
          if (++calls <= hangAfter) return rednessService.score(images, images.map(() => ""))
          return Effect.andThen(Deferred.succeed(hanging, undefined), Effect.never)
        }
      ))
      yield* run("rlhf", model, tmpDir("probe-"), smallConfig({ iterations: 1 }), hung)
      hangAfter = 3 * calls
      calls = 0
      const dir = tmpDir("hung-")
      const fiber = yield* Effect.forkChild(run("rlhf", model, dir, smallConfig({ iterations: 4, checkpointEvery: 10 }), hung))
      yield* Deferred.await(hanging)
      const started = Date.now()
      yield* Fiber.interrupt(fiber)
      assert.isBelow(Date.now() - started, 5000)
      // Nothing of the abandoned iteration: the checkpoint holds the 3 done.
      assert.strictEqual(fs.readFileSync(path.join(dir, "LATEST"), "utf8").trim(), "ckpt-0000003")
      const resumed = yield* run("rlhf", model, dir, smallConfig({ iterations: 4, checkpointEvery: 10 }))
      assert.strictEqual(resumed.records.length, 4)
      assert.deepStrictEqual(strip(resumed.records), strip(whole.records))
    }), 60_000)

  it.effect("keeps the last keepCheckpoints checkpoints and falls back from a damaged latest one", () =>
    Effect.gen(function*() {
      const whole = yield* run("sft", model, tmpDir("whole-"), smallConfig({ iterations: 4 }))
      const dir = tmpDir("keep-")
      yield* run("sft", model, dir, smallConfig({ iterations: 3, checkpointEvery: 1, keepCheckpoints: 2 }))
      assert.deepStrictEqual(fs.readdirSync(dir).filter((d) => d.startsWith("ckpt-")).sort(), ["ckpt-0000002", "ckpt-0000003"])
      // Damaged after its write: a truncated policy.
      const policy = path.join(dir, "ckpt-0000003", "policy.safetensors")
      fs.truncateSync(policy, 100)
      const resumed = yield* run("sft", model, dir, smallConfig({ iterations: 4 }))
      assert.strictEqual(resumed.records.length, 4)
      assert.deepStrictEqual(strip(resumed.records), strip(whole.records))
      // The damaged one is set aside, the fallback kept.
      assert.deepStrictEqual(fs.readdirSync(dir).filter((d) => d.startsWith("ckpt-")).sort(), ["ckpt-0000002", "ckpt-0000003.damaged", "ckpt-0000004"])
      // LATEST naming nothing, then a bad state.json: each falls back.
      fs.writeFileSync(path.join(dir, "LATEST"), "ckpt-0000099\n")
      fs.writeFileSync(path.join(dir, "ckpt-0000004", "state.json"), "{\"format\": 1")
      const again = yield* run("sft", model, dir, smallConfig({ iterations: 4 }))
      assert.deepStrictEqual(strip(again.records), strip(whole.records))
      // No good checkpoint left: a typed error, not a silent restart.
      for (const d of fs.readdirSync(dir).filter((d) => /^ckpt-\d+$/.test(d))) fs.writeFileSync(path.join(dir, d, "state.json"), "")
      const exit = yield* Effect.exit(run("sft", model, dir, smallConfig({ iterations: 4 })))
      assert.isTrue(Exit.isFailure(exit))
      const error = Exit.isFailure(exit) ? (exit.cause.reasons[0] as { error?: { _tag: string } }).error : undefined
      assert.strictEqual(error?._tag, "CheckpointError")
    }), 60_000)

  it.effect("sampleEvery: the IterationSampler is called after every sampleEvery-th iteration but the last, and changes nothing trained", () =>
    Effect.gen(function*() {
      const plain = yield* run("sft", model, tmpDir("plain-"), smallConfig({ iterations: 5, sampleEvery: 2 }))
      const at: Array<number> = []
      const sampler = Layer.succeed(Sharpen.IterationSampler, { sample: (i: number) => Effect.sync(() => void at.push(i)) })
      const sampled = yield* run("sft", model, tmpDir("sampled-"), smallConfig({ iterations: 5, sampleEvery: 2 }), redness, undefined, sampler)
      assert.deepStrictEqual(at, [2, 4])
      assert.deepStrictEqual(strip(sampled.records), strip(plain.records))
    }), 60_000)
})
