import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Fiber, Layer } from "effect"
import * as fsNode from "node:fs"
import * as os from "node:os"
import * as nodePath from "node:path"
import { beforeAll } from "vitest"
import { verify } from "../../src/data/Verifier.ts"
import { toBytes } from "../../src/data/Image.ts"
import * as AdamW from "../../src/optim/AdamW.ts"
import { Optimizer } from "../../src/optim/Optimizer.ts"
import * as TrainClip from "../../src/train/TrainClip.ts"
import { contrastiveLoss, lrAt, nextBatch, trainStep } from "../../src/train/TrainClip.ts"
import * as Safetensors from "../../src/io/Safetensors.ts"
import { Backend } from "../../src/tensor/Backend.ts"
import * as Clip from "../../src/reward/ClipModel.ts"
import { Rng } from "../../src/tensor/Random.ts"
import { useCpu } from "../helpers.ts"
import { tinyClip } from "../reward/helpers.ts"

const opts = { batchSize: 8, negatives: 3, pairedFraction: 0.25, noiseStd: 0 }

describe("TrainClip", () => {
  beforeAll(useCpu)

  it("batches: paired items, K negatives per image, exact truth mask; seeded", () => {
    const a = nextBatch(Rng.fromSeed(5), opts)
    const b = nextBatch(Rng.fromSeed(5), opts)
    assert.deepStrictEqual(a.parsed.map((p) => p.text), b.parsed.map((p) => p.text))
    assert.deepStrictEqual(Array.from(a.images), Array.from(b.images))
    assert.strictEqual(a.images.length, 8 * 32 * 32 * 3)
    assert.strictEqual(a.negatives.length, 8 * 3)
    for (let i = 0; i < 8; i++) {
      const image = toBytes(a.images.subarray(i * 3072, (i + 1) * 3072), "signed")
      for (let j = 0; j < 8; j++) {
        // Clean renders (no noise): the mask agrees with the verifier.
        assert.strictEqual(a.truth[i * 8 + j] === 1, i === j || verify(a.parsed[j], image).pass, `${i},${j}`)
      }
      for (let n = 0; n < 3; n++) assert.notStrictEqual(a.negatives[i * 3 + n], a.parsed[i].text)
    }
    // The last quarter are renders of hard negatives of the first items.
    for (let i = 6; i < 8; i++) assert.strictEqual(a.truth[(i - 6) * 8 + i], 0)
  })

  it("learning rate warms up, then decays by cosine to 10%", () => {
    const o = { lr: 1, warmupSteps: 10, steps: 110 }
    assert.approximately(lrAt(o, 0), 0.1, 1e-9)
    assert.approximately(lrAt(o, 9), 1, 1e-9)
    assert.approximately(lrAt(o, 10), 1, 1e-9)
    assert.approximately(lrAt(o, 60), 0.55, 1e-9)
    assert.approximately(lrAt(o, 110), 0.1, 1e-9)
  })

  it.effect("a few steps on one batch reduce the loss and leak no tensors", () =>
    Effect.gen(function*() {
      const m = Clip.init(tinyClip, 0)
      const batch = nextBatch(Rng.fromSeed(2), opts)
      const initial = tf.tidy(() => contrastiveLoss(m.params, tinyClip, batch).dataSync()[0])
      assert.isTrue(Number.isFinite(initial) && initial > 0)
      const counts: Array<number> = []
      let last = initial
      const config = { ...AdamW.defaults, lr: 3e-3, warmupSteps: 0, schedule: "constant" as const, totalSteps: 12 }
      yield* Effect.gen(function*() {
        for (let i = 0; i < 12; i++) {
          const r = yield* trainStep(m, batch, i)
          assert.isTrue(Number.isFinite(r.loss) && Number.isFinite(r.gradNorm))
          last = r.loss
          counts.push(tf.memory().numTensors)
        }
      }).pipe(Effect.provide(Optimizer.adamWOf(m.params, config)))
      assert.isBelow(last, initial - 0.3)
      assert.strictEqual(new Set(counts).size, 1, `tensor count changed: ${counts.join(", ")}`)
      Clip.dispose(m)
    }))
})

const options = (dir: string, steps: number, resume: boolean): TrainClip.TrainClipOptions => ({
  steps,
  batchSize: 4,
  negatives: 2,
  pairedFraction: 0.25,
  noiseStd: 0.1,
  lr: 3e-3,
  warmupSteps: 2,
  weightDecay: 0.01,
  seed: 4,
  checkpointEvery: 2,
  maxMinutes: 0,
  runDir: nodePath.join(dir, "run"),
  out: nodePath.join(dir, "model"),
  resume,
  config: tinyClip
})

const metrics = (dir: string): Array<Record<string, number>> =>
  fsNode.readFileSync(nodePath.join(dir, "run", "metrics.jsonl"), "utf8").split("\n").filter((l) => l !== "").map((l) => JSON.parse(l))

const trained = (rs: ReadonlyArray<Record<string, number>>) => rs.map(({ wallMs: _, ...r }) => r)

const weights = (dir: string) => {
  const file = nodePath.join(dir, "model", "model.safetensors")
  const d = Safetensors.decode(new Uint8Array(fsNode.readFileSync(file)), file)
  if (d instanceof Safetensors.SafetensorsError) throw new Error(d.message)
  return Object.fromEntries(Object.entries(d.tensors).map(([k, t]) => [k, Array.from(t.data)]))
}

describe("TrainClip.run", () => {
  const layers = Layer.mergeAll(NodeServices.layer, Backend.layerCpu)

  it.effect("writes metrics.jsonl (accuracy every 10 steps, logit scale) with a constant tensor count; interrupted and resumed, it equals an uninterrupted run", () =>
    Effect.gen(function*() {
      const a = fsNode.mkdtempSync(nodePath.join(os.tmpdir(), "clip-whole-"))
      const b = fsNode.mkdtempSync(nodePath.join(os.tmpdir(), "clip-stopped-"))
      yield* Effect.scoped(TrainClip.run(options(a, 12, false)))
      const rs = metrics(a)
      assert.deepStrictEqual(rs.map((r) => r.iteration), Array.from({ length: 12 }, (_, i) => i + 1))
      assert.deepStrictEqual(rs.flatMap((r) => (r.accuracy === undefined ? [] : [r.iteration])), [1, 11])
      assert.isTrue(rs.every((r) => Number.isFinite(r.logitScale) && Number.isFinite(r.gradNorm)))
      assert.deepStrictEqual(rs.map((r) => r.lr), rs.map((_, i) => lrAt(options(a, 12, false), i)))
      assert.strictEqual(new Set(rs.map((r) => r.liveTensors)).size, 1, `live tensors ${rs.map((r) => r.liveTensors).join(", ")}`)
      const losses = JSON.parse(fsNode.readFileSync(nodePath.join(a, "run", "losses.json"), "utf8"))
      assert.deepStrictEqual(losses.losses, rs.map((r) => r.loss))
      assert.deepStrictEqual(losses.accuracies, [rs[0].accuracy, rs[10].accuracy])

      const before = tf.memory().numTensors
      const fiber = yield* Effect.forkChild(Effect.scoped(TrainClip.run({ ...options(b, 12, false), checkpointEvery: 5 })))
      const logged = () => fsNode.existsSync(nodePath.join(b, "run", "metrics.jsonl")) && metrics(b).length >= 3
      while (!logged()) yield* Effect.promise(() => new Promise((r) => setTimeout(r, 10))) // real time, not the test clock
      yield* Fiber.interrupt(fiber)
      assert.isBelow(metrics(b).length, 12, "interrupted before the end")
      assert.strictEqual(tf.memory().numTensors, before, "an interrupted run frees its tensors")
      yield* Effect.scoped(TrainClip.run(options(b, 12, true)))
      assert.strictEqual(tf.memory().numTensors, before, "a run frees its tensors")
      assert.deepStrictEqual(trained(metrics(b)), trained(rs))
      assert.deepStrictEqual(weights(b), weights(a))
    }).pipe(Effect.provide(layers)), 120_000)
})
