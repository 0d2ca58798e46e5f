import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Fiber, Layer } from "effect"
import * as fsNode from "node:fs"
import * as os from "node:os"
import * as nodePath from "node:path"
import * as Safetensors from "../../src/io/Safetensors.ts"
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

/** metrics.jsonl of a run, one record per line. */
const metrics = (dir: string): Array<Record<string, number>> =>
  fsNode.readFileSync(nodePath.join(dir, "run", "metrics.jsonl"), "utf8").split("\n").filter((l) => l !== "").map((l) => JSON.parse(l))

/** What two runs must agree on: every field but the wall time. */
const trained = (rs: ReadonlyArray<Record<string, number>>) => rs.map(({ wallMs: _, ...r }) => r)

/** The tensors of a checkpoint file of the latest checkpoint. */
const latest = (dir: string, file: string) => {
  const run = nodePath.join(dir, "run")
  const ckpt = fsNode.readFileSync(nodePath.join(run, "LATEST"), "utf8").trim()
  const d = Safetensors.decode(new Uint8Array(fsNode.readFileSync(nodePath.join(run, ckpt, file))), file)
  if (d instanceof Safetensors.SafetensorsError) throw new Error(d.message)
  return d.tensors
}

const sameTensors = (a: Record<string, { data: Float32Array }>, b: Record<string, { data: Float32Array }>, what: string) => {
  assert.deepStrictEqual(Object.keys(b).sort(), Object.keys(a).sort(), what)
  for (const k of Object.keys(a)) assert.deepStrictEqual(Array.from(b[k].data), Array.from(a[k].data), `${what}: ${k}`)
}

const sameModels = (a: string, b: string) =>
  Effect.gen(function*() {
    const ma = yield* Weights.load(nodePath.join(a, "model"))
    const mb = yield* Weights.load(nodePath.join(b, "model"))
    sameTensors(ma.weights, mb.weights, "released model")
  })

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

  it.effect("writes metrics.jsonl like a sharpening run's, with a constant tensor count; the checkpoint holds the shared files", () =>
    Effect.gen(function*() {
      const dir = fsNode.mkdtempSync(nodePath.join(os.tmpdir(), "pre-metrics-"))
      yield* Effect.scoped(Pretrain.run(options(dir, 4, false)))
      const rs = metrics(dir)
      assert.deepStrictEqual(rs.map((r) => r.iteration), [1, 2, 3, 4])
      assert.deepStrictEqual(rs.map((r) => r.loss), losses(dir))
      for (const r of rs) {
        for (const key of ["loss", "lr", "gradNorm", "wallMs", "liveTensors"]) assert.isTrue(Number.isFinite(r[key]), `${key} of step ${r.iteration}`)
      }
      // Warm-up over 2 steps, then the cosine: the learning rate the Optimizer used.
      assert.deepStrictEqual(rs.map((r) => r.lr), [0, 1, 2, 3].map((i) => Pretrain.lrAt(options(dir, 4, false), i)))
      // Nothing leaks between steps.
      assert.strictEqual(new Set(rs.map((r) => r.liveTensors)).size, 1, `live tensors ${rs.map((r) => r.liveTensors).join(", ")}`)
      const ckpt = nodePath.join(dir, "run", fsNode.readFileSync(nodePath.join(dir, "run", "LATEST"), "utf8").trim())
      assert.deepStrictEqual(fsNode.readdirSync(ckpt).sort(), ["ema.safetensors", "optimizer.safetensors", "policy.safetensors", "state.json"])
      const state = JSON.parse(fsNode.readFileSync(nodePath.join(ckpt, "state.json"), "utf8"))
      assert.strictEqual(state.format, "diffusion-sharpening/checkpoint@1")
      assert.strictEqual(state.iteration, 4)
      assert.strictEqual(state.optimizerStep, 4)
      assert.deepStrictEqual(trained(state.records), trained(rs))
      // The released model is the average, not the policy.
      const released = yield* Weights.load(nodePath.join(dir, "model"))
      sameTensors(latest(dir, "ema.safetensors"), released.weights, "released = ema")
    }).pipe(Effect.provide(layers)))

  it.effect("a run interrupted mid-way (Ctrl-C, off a checkpoint boundary) and resumed equals an uninterrupted one bit for bit", () =>
    Effect.gen(function*() {
      const a = fsNode.mkdtempSync(nodePath.join(os.tmpdir(), "pre-whole-"))
      const b = fsNode.mkdtempSync(nodePath.join(os.tmpdir(), "pre-stopped-"))
      yield* Effect.scoped(Pretrain.run(options(a, 5, false)))
      const before = tf.memory().numTensors
      // Interrupted once its first step is logged: wherever it is then (between steps, or inside one,
      // whose draws are undone), the checkpoint it writes holds the steps done.
      const fiber = yield* Effect.forkChild(Effect.scoped(Pretrain.run({ ...options(b, 5, false), checkpointEvery: 4 })))
      const logged = () => fsNode.existsSync(nodePath.join(b, "run", "metrics.jsonl")) && metrics(b).length > 0
      while (!logged()) yield* Effect.promise(() => new Promise((r) => setTimeout(r, 10))) // real time, not the test clock
      yield* Fiber.interrupt(fiber)
      const stopped = metrics(b).length
      assert.isBelow(stopped, 5, "interrupted before the end")
      assert.strictEqual(tf.memory().numTensors, before, "an interrupted run frees its tensors")
      yield* Effect.scoped(Pretrain.run(options(b, 5, true)))
      assert.strictEqual(tf.memory().numTensors, before, "a run frees its tensors")
      assert.deepStrictEqual(trained(metrics(b)), trained(metrics(a)))
      assert.deepStrictEqual(losses(b), losses(a))
      yield* sameModels(a, b)
      for (const file of ["policy.safetensors", "optimizer.safetensors", "ema.safetensors"]) sameTensors(latest(a, file), latest(b, file), file)
    }).pipe(Effect.provide(layers)), 120_000)

  it.effect("resumes a checkpoint of the layout before the shared Checkpointer (params, adam, losses) exactly", () =>
    Effect.gen(function*() {
      const a = fsNode.mkdtempSync(nodePath.join(os.tmpdir(), "pre-new-"))
      const b = fsNode.mkdtempSync(nodePath.join(os.tmpdir(), "pre-old-"))
      yield* Effect.scoped(Pretrain.run(options(a, 4, false)))
      yield* Effect.scoped(Pretrain.run(options(b, 2, false)))
      // Rewrite b's checkpoint as the old pretraining wrote it.
      const ckpt = nodePath.join(b, "run", "ckpt-0000002")
      const st = JSON.parse(fsNode.readFileSync(nodePath.join(ckpt, "state.json"), "utf8"))
      fsNode.renameSync(nodePath.join(ckpt, "policy.safetensors"), nodePath.join(ckpt, "params.safetensors"))
      fsNode.renameSync(nodePath.join(ckpt, "optimizer.safetensors"), nodePath.join(ckpt, "adam.safetensors"))
      fsNode.writeFileSync(nodePath.join(ckpt, "state.json"), JSON.stringify({
        step: 2,
        rng: st.rng,
        adamStep: st.optimizerStep,
        wallMs: 100,
        losses: st.records.map((r: { loss: number }) => r.loss),
        options: st.run
      }))
      fsNode.rmSync(nodePath.join(b, "run", "metrics.jsonl"))
      yield* Effect.scoped(Pretrain.run(options(b, 4, true)))
      yield* sameModels(a, b)
      assert.deepStrictEqual(losses(b), losses(a))
      assert.deepStrictEqual(metrics(b).map((r) => r.loss), metrics(a).map((r) => r.loss))
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
