import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import * as fsNode from "node:fs"
import * as os from "node:os"
import * as nodePath from "node:path"
import * as Weights from "../../src/model/Weights.ts"
import * as Pretrain from "../../src/train/Pretrain.ts"
import { Backend } from "../../src/tensor/Backend.ts"
import { tiny32 } from "../sharpen-helpers.ts"


const layers = Layer.mergeAll(NodeServices.layer, Backend.layerCpu)

const options = (dir: string, steps: number, resume: boolean): Pretrain.PretrainOptions => ({
  steps,
  batchSize: 2,
  lr: 1e-3,
  warmupSteps: 2,
  emaDecay: 0.9,
  nullPromptFraction: 0.2,
  seed: 11,
  checkpointEvery: 2,
  lrSchedule: "cosine",
  minLr: 1e-4,
  workers: 1,
  maxMinutes: 0,
  runDir: nodePath.join(dir, "run"),
  out: nodePath.join(dir, "model"),
  resume,
  config: tiny32
})

const losses = (dir: string): Array<number> =>
  JSON.parse(fsNode.readFileSync(nodePath.join(dir, "run", "losses.json"), "utf8")).losses

describe("Pretrain", () => {
  it.effect("a resumed run reproduces an uninterrupted one exactly", () =>
    Effect.gen(function*() {
      const a = fsNode.mkdtempSync(nodePath.join(os.tmpdir(), "pre-a-"))
      const b = fsNode.mkdtempSync(nodePath.join(os.tmpdir(), "pre-b-"))
      yield* Effect.scoped(Pretrain.run(options(a, 4, false)))
      yield* Effect.scoped(Pretrain.run(options(b, 2, false)))
      yield* Effect.scoped(Pretrain.run(options(b, 4, true)))
      assert.strictEqual(losses(a).length, 4)
      assert.deepStrictEqual(losses(b), losses(a))
      const ma = yield* Weights.load(nodePath.join(a, "model"))
      const mb = yield* Weights.load(nodePath.join(b, "model"))
      for (const k of Object.keys(ma.weights)) {
        assert.deepStrictEqual(Array.from(mb.weights[k].data), Array.from(ma.weights[k].data), k)
      }
      assert.strictEqual(ma.metadata.trainedSteps, "4")
      assert.isTrue(fsNode.existsSync(nodePath.join(a, "model", "loss.svg")))
    }).pipe(Effect.provide(layers)))

  it.effect("--resume refuses a checkpoint trained with another architecture, naming both", () =>
    Effect.gen(function*() {
      const dir = fsNode.mkdtempSync(nodePath.join(os.tmpdir(), "pre-arch-"))
      yield* Effect.scoped(Pretrain.run(options(dir, 2, false)))
      const wider = { ...tiny32, architecture: { ...tiny32.architecture, baseChannels: tiny32.architecture.baseChannels * 2 } }
      const error = yield* Effect.flip(Effect.scoped(Pretrain.run({ ...options(dir, 4, true), config: wider })))
      assert.strictEqual(error._tag, "ModelLoadError")
      assert.include(error.message, "pass the same --architecture")
      assert.include(error.message, `"baseChannels":${tiny32.architecture.baseChannels * 2}`)
      assert.strictEqual(losses(dir).length, 2) // nothing trained or overwritten
    }).pipe(Effect.provide(layers)))
})

describe("Pretrain.lrAt", () => {
  const o = { lr: 1, minLr: 0.1, warmupSteps: 10, steps: 110, lrSchedule: "cosine" as const }
  it("warms up linearly, then decays by a cosine to minLr", () => {
    assert.approximately(Pretrain.lrAt(o, 0), 0.1, 1e-12)
    assert.approximately(Pretrain.lrAt(o, 9), 1, 1e-12)
    assert.approximately(Pretrain.lrAt(o, 10), 1, 1e-12)
    assert.approximately(Pretrain.lrAt(o, 60), 0.55, 1e-12)
    assert.approximately(Pretrain.lrAt(o, 110), 0.1, 1e-12)
    assert.strictEqual(Pretrain.lrAt({ ...o, lrSchedule: "constant" }, 100), 1)
  })
})

describe("Pretrain with worker threads", () => {
  it.effect("two gradient workers train like one thread (same losses up to float summation order)", () =>
    Effect.gen(function*() {
      const a = fsNode.mkdtempSync(nodePath.join(os.tmpdir(), "pre-w1-"))
      const b = fsNode.mkdtempSync(nodePath.join(os.tmpdir(), "pre-w2-"))
      yield* Effect.scoped(Pretrain.run(options(a, 3, false)))
      yield* Effect.scoped(Pretrain.run({ ...options(b, 3, false), workers: 2 }))
      const la = losses(a)
      const lb = losses(b)
      assert.strictEqual(lb.length, 3)
      la.forEach((l, i) => assert.approximately(lb[i], l, 1e-4 * Math.abs(l), `step ${i + 1}`))
      // Losses after the first step depend on the update: equal losses mean equal updates.
      assert.notStrictEqual(la[1], la[0])
      const mb = yield* Weights.load(nodePath.join(b, "model"))
      assert.strictEqual(mb.metadata.workers, "2")
    }).pipe(Effect.provide(layers)), 120_000)

  it.effect("--architecture overrides default fields and names the file and field it rejects", () =>
    Effect.gen(function*() {
      const dir = fsNode.mkdtempSync(nodePath.join(os.tmpdir(), "arch-"))
      const good = nodePath.join(dir, "good.json")
      fsNode.writeFileSync(good, JSON.stringify({ patchSize: 2, baseChannels: 64 }))
      const config = yield* Pretrain.configWith(good)
      assert.strictEqual(config.architecture.patchSize, 2)
      assert.strictEqual(config.architecture.baseChannels, 64)
      assert.strictEqual(config.architecture.numResBlocks, 1) // untouched default
      const bad = nodePath.join(dir, "bad.json")
      fsNode.writeFileSync(bad, JSON.stringify({ patchSize: 0 }))
      const error = yield* Effect.flip(Pretrain.configWith(bad))
      assert.strictEqual(error._tag, "ModelLoadError")
      assert.strictEqual(error.file, bad)
      assert.include(error.message, "patchSize")
    }).pipe(Effect.provide(layers)))
})
