import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Exit, Layer } from "effect"
import { beforeAll } from "vitest"
import * as ClusterJobs from "../../src/cluster/ClusterJobs.ts"
import { JobEntity, secretHeader } from "../../src/cluster/JobEntity.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import * as GenerationPool from "../../src/parallel/GenerationPool.ts"
import * as GradientJobs from "../../src/objective/GradientJobs.ts"
import { Rng } from "../../src/tensor/Random.ts"
import * as GenerationJobs from "../../src/trajectory/GenerationJobs.ts"
import { useWasm } from "../helpers.ts"
import { tiny32 } from "../sharpen-helpers.ts"
import { runner } from "./runners.ts"

import { connect, connectWith, failure, jobsEqualOneThread, killNineResends, maxAbsDiff, model, per, prompts, storageIn } from "./scenarios.ts"

describe("jobs on effect/cluster runners (2 runner processes on loopback, SQLite storage)", () => {
  beforeAll(async () => {
    // The trainer's secret is given per test, never taken from this process's environment.
    delete process.env.SHARPEN_CLUSTER_SECRET
    await useWasm()
  })

  it.live("give the one-thread online samples, trajectories, reference errors and gradients (and pretraining shards, evaluation images)", () =>
    jobsEqualOneThread(storageIn("cluster-jobs-")), 240_000)

  it.live("no runner in the storage: ClusterUnavailable naming the storage, within the connect timeout", () =>
    Effect.gen(function*() {
      const storage = storageIn("cluster-none-")
      const start = Date.now()
      const exit = yield* Effect.exit(connect(storage, { connectTimeout: "2 seconds" }))
      assert.isTrue(Exit.isFailure(exit))
      const error = Exit.isFailure(exit) ? exit.cause.reasons.find((r) => r._tag === "Fail") : undefined
      assert.strictEqual(error?._tag === "Fail" ? (error.error as { _tag: string })._tag : undefined, "ClusterUnavailable")
      assert.include(String((error as { error: { storage: string } }).error.storage), "runners.db")
      assert.isBelow(Date.now() - start, 15_000)
    }).pipe(Effect.scoped), 60_000)

  it.live("a runner with a shared secret refuses a trainer without it or with another (typed), and serves one with it; the secret is never printed; another package version is refused; SIGTERM stops it", () =>
    Effect.gen(function*() {
      const storage = storageIn("cluster-secret-")
      const secret = "s3cret-" + Math.random().toString(36).slice(2)
      const r = yield* runner(storage, { SHARPEN_CLUSTER_SECRET: secret })
      for (const given of [undefined, secret + "x"]) {
        const refused = failure(yield* Effect.exit(Effect.scoped(connect(storage, given === undefined ? { connectTimeout: "60 seconds" } : { secret: given, connectTimeout: "60 seconds" }))))
        assert.strictEqual(refused?._tag, "RunnerRefused", String(refused))
        if (refused?._tag === "RunnerRefused") {
          assert.strictEqual(refused.runner, r.address)
          assert.include(refused.reason, "shared secret")
          assert.notInclude(JSON.stringify(refused), secret)
        }
      }
      // With the secret: served.
      const [transport, context] = yield* connectWith(storage, { secret })
      assert.strictEqual(transport.runners[0].runner, r.address)
      const pool = GenerationPool.fromThreads(transport)
      const m = model()
      const xT = Rng.fromSeed(2).normals(2 * per)
      const one = yield* GenerationPool.inline.sample(m, prompts.slice(0, 2), xT, { steps: 2, cfg: 2 })
      const two = yield* pool.sample(m, prompts.slice(0, 2), xT, { steps: 2, cfg: 2 })
      assert.isBelow(maxAbsDiff(one.dataSync(), two.dataSync()), 1e-5)
      tf.dispose([one, two])
      // A job without the secret, to the same runner: refused (JobFailed), not computed.
      const params = new Float32Array(Object.values(m.params).reduce((a, p) => a + p.size, 0))
      const bare = (yield* Effect.provideContext(JobEntity.client, context))(transport.entities[0])
      const job = failure(yield* Effect.exit(bare.Sample({ params, prompts: ["a red square"], xT: xT.slice(0, per), steps: 2, cfg: 2 })))
      assert.strictEqual(job?._tag, "JobFailed")
      assert.include((job as { message: string }).message, "refused")
      // A trainer of another package version: refused, naming both versions.
      const other = failure(yield* Effect.exit(bare.Hello({ config: tiny32, version: "0.0.0-other" }, { headers: { [secretHeader]: secret } })))
      assert.strictEqual(other?._tag, "RunnerRefused")
      assert.include((other as { reason: string }).reason, "0.0.0-other")
      Denoiser.dispose(m)
      // SIGTERM stops the runner cleanly (it unregisters, Main.run's exit code 143), within 10 s.
      const stopped = Date.now()
      r.process.kill("SIGTERM")
      const code = yield* Effect.callback<number | null>((resume) => {
        if (r.process.exitCode !== null) return resume(Effect.succeed(r.process.exitCode))
        r.process.once("exit", (c) => resume(Effect.succeed(c)))
      }).pipe(Effect.timeout("10 seconds"))
      assert.strictEqual(code, 143)
      assert.isBelow(Date.now() - stopped, 10_000)
      assert.include(r.output(), `runner ${r.address} stopping`)
      assert.notInclude(r.output(), secret)
    }).pipe(Effect.scoped), 180_000)

  it.live("kill -9 of a runner with a job in flight: the job is sent again to the other runner, and the result is unchanged", () =>
    killNineResends(storageIn("cluster-kill-")), 300_000)

  it.live("a hung runner (SIGSTOP) is dropped after the job timeout and reported; its job goes to the other runner, the result unchanged", () =>
    Effect.gen(function*() {
      const storage = storageIn("cluster-hung-")
      const [a, b] = yield* Effect.all([runner(storage), runner(storage)], { concurrency: "unbounded" })
      const transport = yield* connect(storage, { runners: 2, jobTimeout: "5 seconds" })
      const pool = GenerationPool.fromThreads(transport)
      const hung = transport.runners[0].runner === a.address ? a : b
      yield* Effect.addFinalizer(() => Effect.sync(() => hung.process.kill("SIGCONT")))
      const m = model()
      const xT = Rng.fromSeed(3).normals(prompts.length * per)
      const one = yield* GenerationPool.inline.sample(m, prompts, xT, { steps: 3, cfg: 2 })
      hung.process.kill("SIGSTOP")
      const start = Date.now()
      const three = yield* pool.sample(m, prompts, xT, { steps: 3, cfg: 2 }).pipe(Effect.timeout("120 seconds"))
      const took = Date.now() - start
      assert.isBelow(maxAbsDiff(one.dataSync(), three.dataSync()), 1e-5)
      assert.isAtLeast(took, 5_000, "the hung runner's job waited for the timeout")
      assert.deepStrictEqual(transport.dropped(), [hung.address])
      // The next call does not wait for it again.
      const start2 = Date.now()
      const again = yield* pool.sample(m, prompts, xT, { steps: 3, cfg: 2 }).pipe(Effect.timeout("120 seconds"))
      assert.isBelow(maxAbsDiff(one.dataSync(), again.dataSync()), 1e-5)
      console.log(`hung-runner test: ${(took / 1000).toFixed(1)} s with a 5 s job timeout, then ${((Date.now() - start2) / 1000).toFixed(1)} s`)
      tf.dispose([one, three, again])
      Denoiser.dispose(m)
    }).pipe(Effect.scoped), 240_000)

  it.live("a runner that comes back at its address after kill -9 gets its jobs again: the trainer says Hello to it, the result unchanged", () =>
    Effect.gen(function*() {
      const storage = storageIn("cluster-back-")
      const [a, b] = yield* Effect.all([runner(storage), runner(storage)], { concurrency: "unbounded" })
      const [transport, context] = yield* connectWith(storage, { runners: 2 })
      const pool = GenerationPool.fromThreads(transport)
      const victim = transport.runners[0].runner === a.address ? a : b
      const m = model()
      const xT = Rng.fromSeed(4).normals(prompts.length * per)
      const one = yield* GenerationPool.inline.sample(m, prompts, xT, { steps: 3, cfg: 2 })
      victim.process.kill("SIGKILL")
      const back = yield* runner(storage, {}, 90_000, victim.address)
      // Wait (at most 60 s) until the victim's entity id reaches the new process: a bare job finds no model there.
      const bare = (yield* Effect.provideContext(JobEntity.client, context))(transport.entities[0])
      const until = Date.now() + 60_000
      let reached = false
      while (!reached && Date.now() < until) {
        const e = failure(yield* Effect.exit(bare.Sample({ params: new Float32Array(1), prompts: ["a"], xT: new Float32Array(per), steps: 1, cfg: 1 }).pipe(Effect.timeout("10 seconds"))))
        reached = e?._tag === "JobFailed" && (e as { message: string }).message.includes(`${victim.address} has no model`)
        if (!reached) yield* Effect.sleep("500 millis")
      }
      assert.isTrue(reached, "the victim's shards went back to its address")
      const three = yield* pool.sample(m, prompts, xT, { steps: 3, cfg: 2 }).pipe(Effect.timeout("120 seconds"))
      assert.isBelow(maxAbsDiff(one.dataSync(), three.dataSync()), 1e-5)
      assert.include(back.output(), "a trainer said Hello")
      tf.dispose([one, three])
      Denoiser.dispose(m)
    }).pipe(Effect.scoped), 300_000)

  it.live("ClusterJobs.layer provides GenerationJobs and GradientJobs over the runners (for the Denoiser's model) and names them", () =>
    Effect.gen(function*() {
      const storage = storageIn("cluster-layer-")
      const r = yield* runner(storage)
      const m = model()
      const xT = Rng.fromSeed(6).normals(2 * per)
      const one = yield* GenerationPool.inline.sample(m, prompts.slice(0, 2), xT, { steps: 2, cfg: 2 })
      yield* Effect.gen(function*() {
        const jobs = yield* GenerationJobs.GenerationJobs
        const gradients = yield* GradientJobs.GradientJobs
        const runners = yield* ClusterJobs.ClusterRunners
        assert.deepStrictEqual(runners.map((x) => x.runner), [r.address])
        assert.strictEqual(jobs.threads, 2)
        assert.strictEqual(gradients.threads, 2)
        const two = yield* jobs.sample(m, prompts.slice(0, 2), xT, { steps: 2, cfg: 2 })
        assert.isBelow(maxAbsDiff(one.dataSync(), two.dataSync()), 1e-5)
        two.dispose()
      }).pipe(Effect.provide(ClusterJobs.layer({ storage, connectTimeout: "90 seconds" }).pipe(Layer.provide(Layer.succeed(Denoiser.Denoiser, Denoiser.Denoiser.of({ model: m }))))))
      one.dispose()
      Denoiser.dispose(m)
    }).pipe(Effect.scoped), 180_000)
})
