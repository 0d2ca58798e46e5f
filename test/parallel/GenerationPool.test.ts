import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Exit, Fiber, Layer } from "effect"
import { beforeAll } from "vitest"
import * as Schedule from "../../src/diffusion/Schedule.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import * as GenerationPool from "../../src/parallel/GenerationPool.ts"
import { Backend } from "../../src/tensor/Backend.ts"
import { Rng } from "../../src/tensor/Random.ts"
import * as WasmHeap from "../../src/tensor/WasmHeap.ts"
import * as Trajectory from "../../src/trajectory/Trajectory.ts"
import * as TrajectoryShards from "../../src/trajectory/TrajectoryShards.ts"
import { useWasm } from "../helpers.ts"
import { continuedPaths, perturbedTiny32, tiny32 } from "../sharpen-helpers.ts"

const options = continuedPaths
const prompts = ["a red square", "two blue circles", "a green triangle above a white square"]

const model = perturbedTiny32

const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  assert.strictEqual(a.length, b.length)
  let worst = 0
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]))
  return worst
}

/** The largest difference between two trajectories' arrays; their timesteps and NFE must agree. */
const trajectoryDiff = (a: Trajectory.Trajectories, b: Trajectory.Trajectories) =>
  Effect.gen(function*() {
    const x = yield* TrajectoryShards.toData(a)
    const y = yield* TrajectoryShards.toData(b)
    assert.deepStrictEqual(x.prompts, y.prompts)
    assert.strictEqual(x.nfe, y.nfe)
    assert.deepStrictEqual(x.steps.map((s) => s.ts), y.steps.map((s) => s.ts))
    assert.deepStrictEqual(a.steps.map((s) => [s.t, s.ts === undefined]), b.steps.map((s) => [s.t, s.ts === undefined]))
    return Math.max(
      maxAbsDiff(x.x0, y.x0),
      maxAbsDiff(x.noise, y.noise),
      maxAbsDiff(x.final!, y.final!),
      ...x.steps.flatMap((s, k) => [maxAbsDiff(s.xt, y.steps[k].xt), maxAbsDiff(s.eps, y.steps[k].eps), maxAbsDiff(s.x0, y.steps[k].x0)])
    )
  })

/** The path of each item whose final image is reddest: a selection by the final images. */
const reddest = (t: Trajectory.Trajectories) => {
  const data = t.final!.dataSync()
  const per = data.length / (t.n * t.batch)
  const red = (row: number) => {
    let s = 0
    for (let k = 0; k < per; k += 3) s += data[row * per + k]
    return s
  }
  return Array.from({ length: t.batch }, (_, b) => Array.from({ length: t.n }, (_, i) => i).reduce((w, i) => (red(i * t.batch + b) > red(w * t.batch + b) ? i : w), 0))
}

describe("GenerationPool", () => {
  beforeAll(useWasm)

  it("partition: balanced by path cost, every item once, ascending within a shard", () => {
    // Start timesteps 980, 200, 200, 600 on a grid of stride 100: costs 10, 3, 3, 7 (13 and 10 in the shards).
    const parts = TrajectoryShards.partition([980, 200, 200, 600], 2, options, 1000)
    assert.deepStrictEqual(parts, [[0, 2], [1, 3]])
    // Without continuation every path costs m: 2 and 2.
    assert.deepStrictEqual(TrajectoryShards.partition([980, 200, 200, 600], 2, { ...options, continuation: false }, 1000), [[0, 2], [1, 3]])
    assert.deepStrictEqual(TrajectoryShards.partition([980, 200], 4, options, 1000), [[0], [1]])
    assert.deepStrictEqual(TrajectoryShards.partition([980, 200, 600], 1, options, 1000), [[0, 1, 2]])
  })

  it.effect("2 threads give the one-thread online samples and trajectories (same draws, same selection), and leak no tensors", () =>
    Effect.gen(function*() {
      const m = model()
      const schedule = Schedule.make(tiny32.schedule)
      const pool = yield* GenerationPool.make(tiny32, 2, "wasm")
      assert.strictEqual(pool.threads, 2)
      const rng = Rng.fromSeed(11)
      const xT = rng.normals(prompts.length * 32 * 32 * 3)
      const draws = Trajectory.draw(rng, schedule.trainSteps, prompts.length, [32, 32, 3], options)
      assert.isTrue(new Set(draws.itemT0).size > 1, "the seed should draw different start timesteps (uneven shards)")
      const before = tf.memory().numTensors

      const one = yield* GenerationPool.inline.sample(m, prompts, xT, { steps: 3, cfg: 2 })
      const two = yield* pool.sample(m, prompts, xT, { steps: 3, cfg: 2 })
      assert.isBelow(maxAbsDiff(one.dataSync(), two.dataSync()), 1e-5)
      const t1 = yield* GenerationPool.inline.trajectories(m, one, prompts, draws, options)
      const t2 = yield* pool.trajectories(m, one, prompts, draws, options)
      // On wasm they are identical (0 difference measured); the tolerance is for other backends.
      assert.isBelow(yield* trajectoryDiff(t1, t2), 1e-5)
      assert.deepStrictEqual(reddest(t2), reddest(t1))
      // The comparison can fail: one path's noise changed changes the result.
      const noise = draws.noise.slice()
      noise[noise.length - 1] += 1
      const t3 = yield* pool.trajectories(m, one, prompts, { ...draws, noise }, options)
      assert.isAbove(yield* trajectoryDiff(t1, t3), 1e-3)
      // Weights changed between calls reach the worker (each job carries them).
      tf.tidy(() => m.params[Object.keys(m.params)[0]].assign(tf.mul(m.params[Object.keys(m.params)[0]], 1.5)))
      const t4 = yield* GenerationPool.inline.trajectories(m, one, prompts, draws, options)
      const t5 = yield* pool.trajectories(m, one, prompts, draws, options)
      assert.isBelow(yield* trajectoryDiff(t4, t5), 1e-5)
      assert.isAbove(yield* trajectoryDiff(t1, t5), 1e-4)
      for (const t of [t1, t2, t3, t4, t5]) Trajectory.dispose(t)
      tf.dispose([one, two])
      assert.strictEqual(tf.memory().numTensors, before)
      Denoiser.dispose(m)
    }), 120_000)

  it.effect("errors: row sets dealt over 2 threads give the one-thread errors in the same order, and leak no tensors", () =>
    Effect.gen(function*() {
      const m = model()
      const pool = yield* GenerationPool.make(tiny32, 2, "wasm")
      const rng = Rng.fromSeed(3)
      const per = 32 * 32 * 3
      // Five sets of different sizes: 3 here and 2 on the worker, out of order when merged.
      const inputs = [2, 1, 3, 2, 1].map((rows, k) => ({
        x: rng.normals(rows * per),
        target: rng.normals(rows * per),
        t: Array.from({ length: rows }, (_, r) => 100 + 150 * r + 10 * k),
        prompts: Array.from({ length: rows }, (_, r) => prompts[(r + k) % prompts.length])
      }))
      const before = tf.memory().numTensors
      const one = yield* GenerationPool.inline.errors(m, inputs)
      const two = yield* pool.errors(m, inputs)
      assert.deepStrictEqual(two.map((e) => e.length), [2, 1, 3, 2, 1])
      two.forEach((e, k) => assert.isBelow(maxAbsDiff(e, one[k]), 1e-6, `set ${k}`))
      // The comparison can fail: sets swapped give other errors.
      assert.isAbove(maxAbsDiff(two[0], one[3]), 1e-4)
      assert.strictEqual(tf.memory().numTensors, before)
      Denoiser.dispose(m)
    }), 120_000)

  it.effect("a failed job and a dead thread give GenerationWorkerFailed, not a hang", () =>
    Effect.gen(function*() {
      const m = model()
      const xT = Rng.fromSeed(1).normals(2 * 32 * 32 * 3)
      // A replica of another architecture cannot take these weights: the job fails in the thread.
      const other = yield* GenerationPool.make({ ...tiny32, architecture: { ...tiny32.architecture, baseChannels: 16 } }, 2, "wasm")
      const failed = yield* Effect.flip(other.sample(m, prompts.slice(0, 2), xT, { steps: 2, cfg: 2 }))
      assert.strictEqual(failed._tag, "GenerationWorkerFailed")
      assert.match(failed.message, /weights of \d+ values for a replica of \d+/)
      // A thread that exits mid-job.
      const dying = yield* GenerationPool.make(tiny32, 2, "wasm", new URL("../sharpen/fixtures/DyingWorker.ts", import.meta.url))
      const died = yield* Effect.flip(dying.sample(m, prompts.slice(0, 2), xT, { steps: 2, cfg: 2 }))
      assert.strictEqual(died._tag, "GenerationWorkerFailed")
      assert.match(died.message, /exited \(code 3\)/)
      Denoiser.dispose(m)
    }), 120_000)

  it.effect("a thread whose heap ran out gives WasmHeapExhausted, as typed as on this thread", () =>
    Effect.gen(function*() {
      const m = model()
      const xT = Rng.fromSeed(1).normals(2 * 32 * 32 * 3)
      const heap = yield* GenerationPool.make(tiny32, 2, "wasm", new URL("../sharpen/fixtures/HeapWorker.ts", import.meta.url))
      const failed = yield* Effect.flip(heap.sample(m, prompts.slice(0, 2), xT, { steps: 2, cfg: 2 }))
      assert.instanceOf(failed, WasmHeap.WasmHeapExhausted)
      assert.match(failed.message, /the wasm heap ran out during a job \(worker thread\) at batch 2/)
      Denoiser.dispose(m)
    }), 120_000)

  it.live("interrupting the wait for a thread that does not answer returns at once, leaking no tensors", () =>
    Effect.gen(function*() {
      const m = model()
      const xT = Rng.fromSeed(1).normals(2 * 32 * 32 * 3)
      const silent = yield* GenerationPool.make(tiny32, 2, "wasm", new URL("../sharpen/fixtures/SilentWorker.ts", import.meta.url))
      const before = tf.memory().numTensors
      const fiber = yield* Effect.forkChild(silent.sample(m, prompts.slice(0, 2), xT, { steps: 2, cfg: 2 }))
      yield* Effect.sleep("300 millis")
      assert.isUndefined(fiber.pollUnsafe(), "still waiting for the silent thread")
      const started = Date.now()
      const exit = yield* Fiber.interrupt(fiber).pipe(Effect.flatMap(() => Fiber.await(fiber)))
      assert.isTrue(Exit.hasInterrupts(exit))
      assert.isBelow(Date.now() - started, 1000)
      assert.strictEqual(tf.memory().numTensors, before)
      Denoiser.dispose(m)
    }), 120_000)

  it.live("the layer's scope stops its threads: when it closes, and when the run is interrupted mid-job", () =>
    Effect.gen(function*() {
      const m = model()
      const denoiser = Layer.succeed(Denoiser.Denoiser, Denoiser.Denoiser.of({ model: m }))
      const layer = GenerationPool.GenerationPool.layer(2).pipe(Layer.provide(Layer.merge(denoiser, Backend.make("wasm"))))
      const xT = Rng.fromSeed(1).normals(2 * 32 * 32 * 3)
      const seen: { pool?: GenerationPool.Pool } = {}
      const live = () => seen.pool?.liveThreads()
      const use = (steps: number) =>
        Effect.gen(function*() {
          const pool = yield* GenerationPool.GenerationPool
          seen.pool = pool
          assert.strictEqual(pool.liveThreads(), 1)
          const x = yield* pool.sample(m, prompts.slice(0, 2), xT, { steps, cfg: 2 })
          x.dispose()
        }).pipe(Effect.provide(layer))
      yield* use(2)
      assert.strictEqual(live(), 0)
      seen.pool = undefined
      const fiber = yield* Effect.forkChild(use(2000))
      while (seen.pool === undefined) yield* Effect.sleep("20 millis")
      yield* Effect.sleep("200 millis")
      yield* Fiber.interrupt(fiber)
      assert.strictEqual(live(), 0)
      Denoiser.dispose(m)
    }), 120_000)
})
