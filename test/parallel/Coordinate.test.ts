/**
 * A transport that computes no share here (`computesHere: false`, what
 * `ClusterJobs` gives a `--coordinate` trainer): every share of a call is
 * a job, even the only one, and the result is the one-thread result. The
 * jobs run through an in-memory `effect/rpc` client (`RpcTest`) on the
 * protocol's own handlers, so what is counted is what a runner would get.
 */
import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import { RpcTest } from "effect/rpc"
import { beforeAll } from "vitest"
import * as Schedule from "../../src/diffusion/Schedule.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import * as DataParallel from "../../src/parallel/DataParallel.ts"
import * as GenerationPool from "../../src/parallel/GenerationPool.ts"
import * as JobHandlers from "../../src/parallel/JobHandlers.ts"
import { JobRpcs } from "../../src/parallel/JobProtocol.ts"
import * as JobThreads from "../../src/parallel/JobThreads.ts"
import * as Generate from "../../src/trajectory/Generate.ts"
import { Rng } from "../../src/tensor/Random.ts"
import * as Trajectory from "../../src/trajectory/Trajectory.ts"
import * as TrajectoryShards from "../../src/trajectory/TrajectoryShards.ts"
import { useWasm } from "../helpers.ts"
import { continuedPaths, perturbedTiny32, tiny32 } from "../sharpen-helpers.ts"

const prompts = ["a red square", "two blue circles", "a green triangle above a white square"]

const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  assert.strictEqual(a.length, b.length)
  let worst = 0
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]))
  return worst
}

/** The protocol's handlers on `model` itself (the weights a job carries are the same). */
const handlers = (model: Denoiser.Model) =>
  JobRpcs.toLayer(JobRpcs.of({
    Sample: (p) => JobHandlers.sample(model, p),
    Trajectories: (p) => JobHandlers.trajectories(model, p),
    Gradients: (p) => JobHandlers.gradients(model, p.parts),
    Errors: (p) => JobHandlers.errors(model, p.inputs),
    Images: (p) => Effect.orDie(Generate.generate(model, p.prompts, p.sampler, undefined, p.firstIndex)),
    PretrainShard: (p) => DataParallel.shardGrads(model, p.shard)
  }))

/**
 * `workers` remote workers over one in-memory client; `computesHere`: this
 * thread computes a share. Records the jobs of each fan-out and whether a
 * `here` share ran.
 */
const loopback = (model: Denoiser.Model, workers: number, computesHere: boolean) =>
  Effect.gen(function*() {
    const client = yield* RpcTest.makeClient(JobRpcs).pipe(Effect.provide(handlers(model)))
    const sent: Array<number> = []
    let heres = 0
    const transport: JobThreads.Threads = {
      threads: computesHere ? workers + 1 : workers,
      computesHere,
      call: (_thread, job) => Effect.orDie(job(client)),
      fanOut: (remote, here) =>
        Effect.gen(function*() {
          if (remote.length > workers) return yield* Effect.die(new RangeError(`${remote.length} jobs for ${workers} workers`))
          sent.push(remote.length)
          const theirs = yield* Effect.forEach(remote, (job) => Effect.orDie(job(client)))
          const mine = yield* Effect.tap(here, () => Effect.sync(() => heres++))
          return [mine, theirs] as const
        }),
      liveThreads: () => workers
    }
    return { transport, sent, heres: () => heres }
  })

describe("a transport that computes nothing here (--coordinate)", () => {
  beforeAll(useWasm)

  it.effect("JobThreads.shares: every share is a job, in share order; with one share too", () =>
    Effect.gen(function*() {
      const m = perturbedTiny32()
      const away = yield* loopback(m, 3, false)
      const job = (k: number): JobThreads.Job<number> => () => Effect.succeed(10 * k)
      const here = (k: number) => Effect.succeed(-k)
      assert.deepStrictEqual(yield* JobThreads.shares(away.transport, [1, 2, 3], job, here), [10, 20, 30])
      assert.deepStrictEqual(yield* JobThreads.shares(away.transport, [4], job, here), [40])
      // A transport that computes here keeps share 0, and a lone share, here.
      const local = yield* loopback(m, 2, true)
      assert.deepStrictEqual(yield* JobThreads.shares(local.transport, [1, 2, 3], job, here), [-1, 20, 30])
      assert.deepStrictEqual(yield* JobThreads.shares(local.transport, [4], job, here), [-4])
      assert.deepStrictEqual(local.sent, [2])
      Denoiser.dispose(m)
    }).pipe(Effect.scoped))

  it.effect("generation and reference errors over 2 workers, or 1, that compute every share: the one-thread results, and no tensor leaks", () =>
    Effect.gen(function*() {
      const m = perturbedTiny32()
      const schedule = Schedule.make(tiny32.schedule)
      const rng = Rng.fromSeed(11)
      const xT = rng.normals(prompts.length * 32 * 32 * 3)
      const draws = Trajectory.draw(rng, schedule.trainSteps, prompts.length, [32, 32, 3], continuedPaths)
      const per = 32 * 32 * 3
      const inputs = [2, 1, 3].map((rows, k) => ({
        x: rng.normals(rows * per),
        target: rng.normals(rows * per),
        t: Array.from({ length: rows }, (_, r) => 100 + 150 * r + 10 * k),
        prompts: Array.from({ length: rows }, (_, r) => prompts[(r + k) % prompts.length])
      }))
      const before = tf.memory().numTensors
      const one = yield* GenerationPool.inline.sample(m, prompts, xT, { steps: 3, cfg: 2 })
      const t1 = yield* GenerationPool.inline.trajectories(m, one, prompts, draws, continuedPaths)
      const e1 = yield* GenerationPool.inline.errors(m, inputs)
      const x1 = yield* TrajectoryShards.toData(t1)
      for (const workers of [2, 1]) {
        const away = yield* loopback(m, workers, false)
        const pool = GenerationPool.fromThreads(away.transport)
        assert.strictEqual(pool.threads, workers)
        assert.isFalse(pool.computesHere)
        const two = yield* pool.sample(m, prompts, xT, { steps: 3, cfg: 2 })
        const t2 = yield* pool.trajectories(m, one, prompts, draws, continuedPaths)
        const e2 = yield* pool.errors(m, inputs)
        // One job per worker in each call (sample, trajectories, errors); no share here.
        assert.deepStrictEqual(away.sent, [workers, workers, workers], `${workers} worker(s)`)
        assert.strictEqual(away.heres(), 3)
        assert.isBelow(maxAbsDiff(two.dataSync(), one.dataSync()), 1e-5)
        const x2 = yield* TrajectoryShards.toData(t2)
        assert.isBelow(maxAbsDiff(x2.final!, x1.final!), 1e-5)
        assert.isBelow(maxAbsDiff(x2.x0, x1.x0), 1e-5)
        e2.forEach((e, k) => assert.isBelow(maxAbsDiff(e, e1[k]), 1e-6, `errors of set ${k}`))
        // The comparison can fail: another set's errors differ.
        assert.isAbove(maxAbsDiff(e2[0].slice(0, 1), e1[2].slice(0, 1)), 1e-4)
        Trajectory.dispose(t2)
        two.dispose()
      }
      // The same transport computing here sends one job fewer per call.
      const local = yield* loopback(m, 1, true)
      const three = yield* GenerationPool.fromThreads(local.transport).sample(m, prompts, xT, { steps: 3, cfg: 2 })
      assert.deepStrictEqual(local.sent, [1])
      three.dispose()
      Trajectory.dispose(t1)
      one.dispose()
      assert.strictEqual(tf.memory().numTensors, before)
      Denoiser.dispose(m)
    }).pipe(Effect.scoped), 120_000)
})
