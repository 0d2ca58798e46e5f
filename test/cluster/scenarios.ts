/**
 * The cluster scenarios every runner storage must pass (SQLite in
 * ClusterJobs.test.ts, PostgreSQL in Postgres.test.ts), and their helpers.
 */
import { NodeServices } from "@effect/platform-node"
import { assert } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Exit, Layer } from "effect"
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as ClusterJobs from "../../src/cluster/ClusterJobs.ts"
import * as Schedule from "../../src/diffusion/Schedule.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import * as Weights from "../../src/model/Weights.ts"
import * as DataParallel from "../../src/parallel/DataParallel.ts"
import { flatten } from "../../src/parallel/DataParallel.ts"
import * as GenerationPool from "../../src/parallel/GenerationPool.ts"
import * as JobHandlers from "../../src/parallel/JobHandlers.ts"
import { Backend } from "../../src/tensor/Backend.ts"
import { Rng } from "../../src/tensor/Random.ts"
import * as Pretrain from "../../src/train/Pretrain.ts"
import * as Generate from "../../src/trajectory/Generate.ts"
import * as Trajectory from "../../src/trajectory/Trajectory.ts"
import * as TrajectoryShards from "../../src/trajectory/TrajectoryShards.ts"
import { continuedPaths, perturbedTiny32, tiny32 } from "../sharpen-helpers.ts"
import { runner } from "./runners.ts"

export const options = continuedPaths
export const prompts = ["a red square", "two blue circles", "a green triangle above a white square"]
export const per = 32 * 32 * 3

export const model = perturbedTiny32

export const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  assert.strictEqual(a.length, b.length)
  let worst = 0
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]))
  return worst
}

export const trajectoryDiff = (a: Trajectory.Trajectories, b: Trajectory.Trajectories) =>
  Effect.gen(function*() {
    const x = yield* TrajectoryShards.toData(a)
    const y = yield* TrajectoryShards.toData(b)
    assert.deepStrictEqual(x.prompts, y.prompts)
    assert.strictEqual(x.nfe, y.nfe)
    return Math.max(
      maxAbsDiff(x.x0, y.x0),
      maxAbsDiff(x.noise, y.noise),
      maxAbsDiff(x.final!, y.final!),
      ...x.steps.flatMap((s, k) => [maxAbsDiff(s.xt, y.steps[k].xt), maxAbsDiff(s.eps, y.steps[k].eps), maxAbsDiff(s.x0, y.steps[k].x0)])
    )
  })

export const storageIn = (prefix: string) => `sqlite:${path.join(fs.mkdtempSync(path.join(os.tmpdir(), prefix)), "runners.db")}`

/** The transport over the runners of `storage`, with its cluster client, for the scope. */
export const connect = (storage: string, o: Omit<ClusterJobs.Options, "storage"> = {}) =>
  Effect.map(connectWith(storage, o), ([transport]) => transport)

/** The transport and the cluster client it runs on. */
export const connectWith = (storage: string, o: Omit<ClusterJobs.Options, "storage"> = {}) =>
  Effect.flatMap(
    Layer.build(ClusterJobs.client(storage)),
    (context) => Effect.map(Effect.provideContext(ClusterJobs.connect(tiny32, { storage, connectTimeout: "90 seconds", ...o }), context), (t) => [t, context] as const)
  )

/** The error an exit failed with (its first `Fail`). */
export const failure = <A, E>(exit: Exit.Exit<A, E>): E | undefined => {
  if (!Exit.isFailure(exit)) return undefined
  const reason = exit.cause.reasons.find((r) => r._tag === "Fail")
  return reason?._tag === "Fail" ? reason.error : undefined
}

/** Gradient parts of `rows` rows each (denoising parts; DPO for the last). */
export const parts = (rng: Rng, sizes: ReadonlyArray<number>) =>
  sizes.map((rows, k) => ({
    x: rng.normals(rows * per),
    target: rng.normals(rows * per),
    t: Array.from({ length: rows }, (_, r) => 150 + 200 * r + 10 * k),
    prompts: Array.from({ length: rows }, (_, r) => prompts[(r + k) % prompts.length]),
    share: 1 / sizes.length
  }))

/** 2 runners of `storage` give the one-thread results of every job. */
export const jobsEqualOneThread = (storage: string) =>
  Effect.gen(function*() {
      const [a, b] = yield* Effect.all([runner(storage), runner(storage)], { concurrency: "unbounded" })
      const transport = yield* connect(storage, { runners: 2 })
      assert.strictEqual(transport.threads, 3)
      assert.deepStrictEqual(transport.runners.map((r) => r.runner).sort(), [a.address, b.address].sort())
      assert.deepStrictEqual(transport.runners.map((r) => r.backend), ["wasm", "wasm"])
      const pool = GenerationPool.fromThreads(transport)

      const m = model()
      const schedule = Schedule.make(tiny32.schedule)
      const rng = Rng.fromSeed(11)
      const xT = rng.normals(prompts.length * per)
      const draws = Trajectory.draw(rng, schedule.trainSteps, prompts.length, [32, 32, 3], options)
      const before = tf.memory().numTensors

      const one = yield* GenerationPool.inline.sample(m, prompts, xT, { steps: 3, cfg: 2 })
      const three = yield* pool.sample(m, prompts, xT, { steps: 3, cfg: 2 })
      assert.isBelow(maxAbsDiff(one.dataSync(), three.dataSync()), 1e-5)
      const t1 = yield* GenerationPool.inline.trajectories(m, one, prompts, draws, options)
      const t3 = yield* pool.trajectories(m, one, prompts, draws, options)
      assert.isBelow(yield* trajectoryDiff(t1, t3), 1e-5)
      // The comparison can fail: one path's noise changed changes the result.
      const noise = draws.noise.slice()
      noise[noise.length - 1] += 1
      const t4 = yield* pool.trajectories(m, one, prompts, { ...draws, noise }, options)
      assert.isAbove(yield* trajectoryDiff(t1, t4), 1e-3)

      // Reference errors: five row sets dealt over the trainer and the 2 runners.
      const inputs = parts(rng, [2, 1, 3, 2, 1]).map(({ share: _, ...p }) => p)
      const e1 = yield* GenerationPool.inline.errors(m, inputs)
      const e3 = yield* pool.errors(m, inputs)
      e3.forEach((e, k) => assert.isBelow(maxAbsDiff(e, e1[k]), 1e-6, `set ${k}`))

      // Gradients: one group per runner, each equal to the group's gradient computed here.
      const groups = [parts(rng, [2, 1]), parts(rng, [3])]
      const mine = yield* JobHandlers.gradients(m, groups[0])
      const theirs = yield* JobHandlers.gradients(m, groups[1])
      const g = yield* pool.gradients(m, groups, () => "here")
      assert.strictEqual(g.here, "here")
      assert.strictEqual(g.remote.length, 2)
      for (const [k, local] of [mine, theirs].entries()) {
        assert.isBelow(Math.abs(g.remote[k].value - local.value), 1e-5 * Math.max(1, Math.abs(local.value)))
        assert.isBelow(maxAbsDiff(g.remote[k].grads, local.grads), 1e-5)
        assert.deepStrictEqual(g.remote[k].present, local.present)
      }
      // The jobs no sharpening stage sends yet, on runner 2: a pretraining shard and evaluation images.
      const params = yield* flatten(m.params)
      const shard = { batch: 2, images: rng.normals(2 * per), prompts: ["a red square", ""], t: [120, 870], noise: rng.normals(2 * per) }
      const pretrain = yield* transport.call(2, (client) => client.PretrainShard({ params, shard }))
      const pretrainHere = yield* DataParallel.shardGrads(m, shard)
      assert.isBelow(Math.abs(pretrain.loss - pretrainHere.loss), 1e-5)
      assert.isBelow(maxAbsDiff(pretrain.grads, pretrainHere.grads), 1e-5)
      const sampler = { steps: 2, cfg: 2, eta: 0, seed: 5, batchSize: 2 }
      const images = yield* transport.call(2, (client) => client.Images({ params, prompts: prompts.slice(0, 2), firstIndex: 3, sampler }))
      const imagesHere = yield* Generate.generate(m, prompts.slice(0, 2), sampler, undefined, 3)
      images.forEach((x, k) => assert.isBelow(maxAbsDiff(x, imagesHere[k]), 1e-5))
      // Weights changed between calls reach the runners (each job carries them).
      tf.tidy(() => m.params[Object.keys(m.params)[0]].assign(tf.mul(m.params[Object.keys(m.params)[0]], 1.5)))
      const t5 = yield* GenerationPool.inline.trajectories(m, one, prompts, draws, options)
      const t6 = yield* pool.trajectories(m, one, prompts, draws, options)
      assert.isBelow(yield* trajectoryDiff(t5, t6), 1e-5)
      assert.isAbove(yield* trajectoryDiff(t1, t6), 1e-4)
      // The weights went to each runner once per version (two versions); every other job named them by hash.
      assert.deepStrictEqual(transport.weightsSent(), [2, 2])

      for (const t of [t1, t3, t4, t5, t6]) Trajectory.dispose(t)
      tf.dispose([one, three])
      assert.strictEqual(tf.memory().numTensors, before)
      Denoiser.dispose(m)
  }).pipe(Effect.scoped)

/** kill -9 of a runner of `storage` with a job in flight: the job is sent again to the other, the result unchanged. */
export const killNineResends = (storage: string) =>
  Effect.gen(function*() {
      const [a, b] = yield* Effect.all([runner(storage), runner(storage)], { concurrency: "unbounded" })
      const transport = yield* connect(storage, { runners: 2 })
      const pool = GenerationPool.fromThreads(transport)
      const victim = transport.runners[0].runner === a.address ? a : b
      const m = model()
      const schedule = Schedule.make(tiny32.schedule)
      const rng = Rng.fromSeed(7)
      const x0 = tf.tensor(rng.normals(prompts.length * per), [prompts.length, 32, 32, 3])
      const draws = Trajectory.draw(rng, schedule.trainSteps, prompts.length, [32, 32, 3], options)
      const one = yield* GenerationPool.inline.trajectories(m, x0, prompts, draws, options)
      // The victim is stopped before the job is sent (so the job is in flight, unanswered) and
      // killed 2 s later by a process of its own (this thread is busy with its shard meanwhile).
      victim.process.kill("SIGSTOP")
      const killer = spawn("sh", ["-c", `sleep 2; kill -9 ${victim.process.pid}`], { stdio: "ignore" })
      const start = Date.now()
      const three = yield* pool.trajectories(m, x0, prompts, draws, options).pipe(Effect.timeout("120 seconds"))
      const took = Date.now() - start
      yield* Effect.promise(() => new Promise((resolve) => (killer.exitCode !== null ? resolve(null) : killer.once("exit", resolve))))
      assert.isNotNull(victim.process.signalCode ?? victim.process.exitCode, "the victim was killed")
      assert.isAbove(took, 2_000, "the result came after the kill")
      console.log(`kill -9 test: the iteration's trajectories took ${(took / 1000).toFixed(1)} s with the kill at 2 s`)
      assert.isBelow(yield* trajectoryDiff(one, three), 1e-5)
      // The next job goes to the survivor too.
      const again = yield* pool.trajectories(m, x0, prompts, draws, options).pipe(Effect.timeout("120 seconds"))
      assert.isBelow(yield* trajectoryDiff(one, again), 1e-5)
      for (const t of [one, three, again]) Trajectory.dispose(t)
      x0.dispose()
      Denoiser.dispose(m)
  }).pipe(Effect.scoped)

/**
 * A tiny pretraining of `steps` steps (as test/train/Pretrain.test.ts), on
 * `workers` threads or over the transport provided; its losses and
 * released weights.
 */
export const pretrain = (workers: number, steps = 3) =>
  Effect.gen(function*() {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "runners-pretrain-"))
    const o: Pretrain.PretrainOptions = {
      steps,
      batchSize: 3,
      lr: 1e-3,
      warmupSteps: 2,
      emaDecay: 0.9,
      nullPromptFraction: 0.2,
      seed: 11,
      checkpointEvery: 2,
      lrSchedule: "cosine",
      minLr: 1e-4,
      workers,
      maxMinutes: 0,
      runDir: path.join(dir, "run"),
      out: path.join(dir, "model"),
      resume: false,
      config: tiny32
    }
    yield* Effect.scoped(Pretrain.run(o))
    const losses: Array<number> = JSON.parse(fs.readFileSync(path.join(dir, "run", "losses.json"), "utf8")).losses
    const files = yield* Weights.load(o.out)
    const names = Object.keys(files.weights).sort()
    const weights = new Float32Array(names.reduce((a, k) => a + files.weights[k].data.length, 0))
    let at = 0
    for (const k of names) {
      weights.set(files.weights[k].data, at)
      at += files.weights[k].data.length
    }
    return { losses, weights, workers: files.metadata.workers }
  }).pipe(Effect.provide(Backend.make("wasm")), Effect.provide(NodeServices.layer))
