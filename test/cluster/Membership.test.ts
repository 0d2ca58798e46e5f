/**
 * Runners joining and leaving a sharpening run (#24 item 3): the split of
 * an iteration is the runners healthy in the storage at its start
 * (`ClusterJobs` refresh), with real runner processes on loopback and
 * SQLite storage in a temp dir. Every random draw stays in the trainer, so
 * a run whose split changes ends at one thread's weights up to the order
 * of float sums.
 */
import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Layer, Option, Scope } from "effect"
import { DatabaseSync } from "node:sqlite"
import { beforeAll } from "vitest"
import * as Setup from "../../src/cli/Setup.ts"
import * as ClusterJobs from "../../src/cluster/ClusterJobs.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import { Metrics } from "../../src/optim/Metrics.ts"
import { flatten } from "../../src/parallel/DataParallel.ts"
import * as JobThreads from "../../src/parallel/JobThreads.ts"
import { Reward } from "../../src/reward/Reward.ts"
import * as Sharpen from "../../src/sharpen/Sharpen.ts"
import * as SharpenLayers from "../../src/sharpen/SharpenLayers.ts"
import { Backend } from "../../src/tensor/Backend.ts"
import { savedTinyModel, smallConfig, tiny32, tmpDir } from "../sharpen-helpers.ts"
import { runner, type RunnerProcess, stop } from "./runners.ts"
import { maxAbsDiff, pretrain, storageIn } from "./scenarios.ts"

// A mock reward: mean brightness of the red channel (as SharpenRunners.test.ts).
const redness = Reward.fromFunction((image: Float32Array) => {
  let s = 0
  for (let k = 0; k < image.length; k += 3) s += image[k]
  return s / (image.length / 3)
}, { name: "redness", range: [0, 1] })

// sampleEvery 1: the test's hook runs between iterations (it draws nothing from the run's RNG).
const config = smallConfig({ iterations: 3, batchSize: 3, sampleEvery: 1 })
const lr = config.lr

/**
 * An RLHF run's metrics, initial and final policy weights: on one thread, or
 * with its jobs over runners (what `--runners STORAGE --runner-count N`
 * builds; the transport kept), with `between(done, transport)` run after
 * each iteration but the last.
 */
const run = (
  model: string,
  cluster?: { readonly jobs: ReturnType<typeof Setup.clusterJobs>["layer"]; readonly between: (done: number, transport: ClusterJobs.Runners) => Effect.Effect<void> }
) => {
  let transport: ClusterJobs.Runners | undefined
  const jobs = cluster?.jobs.pipe(Layer.tap((context) => Effect.sync(() => (transport = Context.get(context, JobThreads.JobThreads) as ClusterJobs.Runners))))
  const wiring = { model, runDir: tmpDir("membership-run-"), reward: redness, backend: Backend.make("wasm"), metrics: Metrics.memory, threads: 1, ...(jobs === undefined ? {} : { jobs }) }
  return Effect.gen(function*() {
    const { model: policy } = yield* Denoiser.Denoiser
    const initial = yield* flatten(policy.params)
    const sampler = Sharpen.IterationSampler.of({ sample: (done) => cluster === undefined || transport === undefined ? Effect.void : cluster.between(done, transport) })
    yield* Sharpen.rlhf(config).pipe(Effect.provideService(Sharpen.IterationSampler, sampler))
    const records = yield* (yield* Metrics).records
    return { records, initial, weights: yield* flatten(policy.params), transport }
  }).pipe(Effect.provide(SharpenLayers.rlhf(config, wiring)), Effect.scoped, Effect.provide(NodeServices.layer))
}

type Outcome = Effect.Success<ReturnType<typeof run>>

/** Metrics of one thread's (iteration 2 on's gradient norm at 1e-3, as SharpenRunners.test.ts), weights within 0.05 lr. */
const sameAsOneThread = (over: Outcome, one: Outcome, what: string) => {
  assert.strictEqual(over.records.length, config.iterations)
  for (const key of ["loss", "rewardMean", "rewardBest", "rewardWorst", "gradNorm", "nfe"] as const) {
    over.records.forEach((r, i) => {
      const tolerance = key === "gradNorm" && i > 0 ? 1e-3 : 1e-5
      assert.approximately(r[key], one.records[i][key], tolerance * (1 + Math.abs(one.records[i][key])), `${what}: ${key} of iteration ${i + 1}`)
    })
  }
  const diff = maxAbsDiff(over.weights, one.weights)
  const wall = (o: Outcome) => o.records.map((r) => (r.wallMs / 1000).toFixed(1)).join(", ")
  console.log(`${what}: max |weights - one thread's| = ${diff.toExponential(2)} (lr ${lr}); training moved them ${maxAbsDiff(one.weights, one.initial).toExponential(2)}; iterations' s ${wall(over)} (one thread ${wall(one)})`)
  assert.isBelow(diff, 0.05 * lr)
}

/** Whether the storage lists `address` as a healthy runner (read directly, as any client could). */
const registered = (storage: string, address: string): boolean => {
  const db = new DatabaseSync(storage.slice("sqlite:".length), { readOnly: true })
  try {
    const rows = db.prepare("SELECT address, healthy FROM cluster_runners").all() as Array<{ address: unknown; healthy: unknown }>
    return rows.some((r) => String(r.address) === address && Number(r.healthy) === 1)
  } catch {
    return false
  } finally {
    db.close()
  }
}

/** What `--runners STORAGE --runner-count N [--coordinate]` builds (`Setup.clusterJobs`), and who was used. */
const clusterJobs = (storage: string, runners: number, coordinate = false) =>
  Effect.map(
    Setup.runnersOptions({ runners: Option.some(storage), runnerCount: Option.some(runners), connectTimeout: Option.some(90), jobTimeout: Option.none(), coordinate }),
    (options) => Setup.clusterJobs(options!)
  )

/** Wait (at most `ms`) until `ok`; whether it came. */
const until = (ok: () => boolean, ms: number, every = 50) =>
  Effect.gen(function*() {
    const end = Date.now() + ms
    while (!ok()) {
      if (Date.now() > end) return false
      yield* Effect.sleep(`${every} millis`)
    }
    return true
  })

describe("runners joining and leaving a run (SQLite storage, runner processes on loopback)", () => {
  let model = ""
  let one: Outcome | undefined
  // One thread's run, the reference of both tests (computed once).
  const oneThread = Effect.suspend(() => one !== undefined ? Effect.succeed(one) : Effect.map(run(model), (r) => (one = r)))
  beforeAll(async () => {
    delete process.env.SHARPEN_CLUSTER_SECRET
    model = await savedTinyModel(3)
  })

  it.live("a runner started during the run is used from the next iteration (Hello first), one that refuses the Hello is reported and not used, and the run ends at one thread's weights", () =>
    Effect.gen(function*() {
      const storage = storageIn("membership-join-")
      const scope = yield* Effect.scope
      const a = yield* runner(storage)
      let b: RunnerProcess | undefined
      let refusing: RunnerProcess | undefined
      let registeredAfter = 0
      const cluster = yield* clusterJobs(storage, 1)
      const over = yield* run(model, {
        jobs: cluster.layer,
        between: (done, transport) =>
          done !== 1 ? Effect.void : Effect.gen(function*() {
            assert.deepStrictEqual(transport.runners.map((r) => r.runner), [a.address])
            assert.strictEqual(transport.threads, 2)
            // Two more runners come up after iteration 1: first one requiring a secret this trainer
            // does not have, which takes shards, then another; the next iteration starts as soon as
            // the storage lists the second, while the trainer's view of the shards may still send
            // its Hello to the refusing one (which must not count as the new runner refusing).
            const started = Date.now()
            refusing = yield* runner(storage, { SHARPEN_CLUSTER_SECRET: "not-the-trainers" }).pipe(Scope.provide(scope), Effect.orDie)
            assert.isTrue(yield* until(() => registered(storage, refusing!.address), 60_000), `runner ${refusing.address} not healthy in the storage within 60 s`)
            yield* Effect.sleep("3 seconds")
            b = yield* runner(storage).pipe(Scope.provide(scope), Effect.orDie)
            const listed = yield* until(() => registered(storage, b!.address), 60_000)
            registeredAfter = (Date.now() - started) / 1000
            assert.isTrue(listed, `runner ${b.address} not healthy in the storage within 60 s`)
          })
      })
      const t = over.transport!
      assert.isDefined(b)
      assert.isDefined(refusing)
      console.log(`runners ${b!.address} and ${refusing!.address} (refusing) up and in the storage ${registeredAfter.toFixed(1)} s after iteration 1; changes: ${JSON.stringify(t.changes())}; jobs answered: ${JSON.stringify([...t.jobsDone()])}`)
      // Used from iteration 2, the first after it registered: Hello first, then jobs.
      assert.deepStrictEqual(t.changes().filter((c) => c.change === "joined").map((c) => [c.runner, c.iteration]), [[b!.address, 2]])
      assert.include(b!.output(), "a trainer said Hello")
      assert.isAbove(t.jobsDone().get(b!.address) ?? 0, 0)
      assert.isAbove(t.jobsDone().get(a.address) ?? 0, 0)
      assert.strictEqual(t.threads, 3)
      assert.deepStrictEqual(t.runners.map((r) => r.runner).sort(), [a.address, b!.address].sort())
      // The refusing runner: reported once, with its reason, never used.
      const refusals = t.changes().filter((c) => c.change === "refused")
      assert.deepStrictEqual(refusals.map((c) => [c.runner, c.iteration]), [[refusing!.address, 2]])
      assert.include(refusals[0].detail, "shared secret")
      assert.isUndefined(t.jobsDone().get(refusing!.address))
      assert.notInclude(refusing!.output(), "a trainer said Hello")
      // Every runner used is named (what run.json records), the refusing one not.
      assert.deepStrictEqual(t.used.map((r) => r.runner), [a.address, b!.address])
      assert.deepStrictEqual(cluster.used()?.addresses, [a.address, b!.address])
      assert.strictEqual(cluster.used()?.count, 2)
      sameAsOneThread(over, yield* oneThread, "1 runner, then 2 from iteration 2")
      // The comparison can fail: training moved the weights by far more than the tolerance.
      assert.isAbove(maxAbsDiff(over.weights, over.initial), 20 * 0.05 * lr)
    }).pipe(Effect.scoped), 600_000)

  it.live("kill -9 of a runner with a job of the run in flight: its job goes to the other, it leaves the split at the next iteration, the run ends at one thread's weights", () =>
    Effect.gen(function*() {
      const storage = storageIn("membership-kill-")
      const [a, b] = yield* Effect.all([runner(storage), runner(storage)], { concurrency: "unbounded" })
      let killedAt = 0
      let inFlightAtKill = 0
      const over = yield* run(model, {
        jobs: (yield* clusterJobs(storage, 2)).layer,
        between: (done, transport) =>
          done !== 1 ? Effect.void : Effect.gen(function*() {
            assert.strictEqual(transport.threads, 3)
            // Stop the victim now and kill it once a job of iteration 2 is out to it: the job is
            // in its socket, unanswered, when it dies.
            b.process.kill("SIGSTOP")
            yield* Effect.forkDetach(Effect.gen(function*() {
              const out = yield* until(() => (transport.inFlight().get(b.address) ?? 0) > 0, 120_000, 20)
              inFlightAtKill = transport.inFlight().get(b.address) ?? 0
              yield* Effect.sleep("1 second")
              killedAt = Date.now()
              b.process.kill("SIGKILL")
              if (!out) console.log("no job reached the victim within 120 s")
            }))
          })
      })
      const t = over.transport!
      console.log(`victim ${b.address} killed with ${inFlightAtKill} job(s) in flight; changes: ${JSON.stringify(t.changes())}; jobs answered: ${JSON.stringify([...t.jobsDone()])}`)
      assert.isAbove(killedAt, 0)
      assert.isAbove(inFlightAtKill, 0)
      assert.strictEqual(b.process.signalCode, "SIGKILL")
      // It left at iteration 3, the first after its heartbeat lapsed; the survivor took its jobs.
      assert.deepStrictEqual(t.changes().map((c) => [c.runner, c.change, c.iteration]), [[b.address, "left", 3]])
      assert.deepStrictEqual(t.runners.map((r) => r.runner), [a.address])
      assert.strictEqual(t.threads, 2)
      assert.deepStrictEqual(t.used.map((r) => r.runner).sort(), [a.address, b.address].sort())
      sameAsOneThread(over, yield* oneThread, "2 runners, one killed in iteration 2")
    }).pipe(Effect.scoped), 600_000)

  it.live("--coordinate: 2 runners compute every share (the batch in 2, this process none); when both stop, this process computes alone; the run ends at one thread's weights", () =>
    Effect.gen(function*() {
      const storage = storageIn("membership-coordinate-")
      const [a, b] = yield* Effect.all([runner(storage), runner(storage)], { concurrency: "unbounded" })
      let answeredIn1: ReadonlyArray<number> = []
      const cluster = yield* clusterJobs(storage, 2, true)
      const over = yield* run(model, {
        jobs: cluster.layer,
        between: (done, transport) =>
          done !== 1 ? Effect.void : Effect.gen(function*() {
            // Iteration 1: two shares, both on runners.
            assert.strictEqual(transport.threads, 2)
            assert.isFalse(transport.computesHere)
            answeredIn1 = [a, b].map((r) => transport.jobsDone().get(r.address) ?? 0)
            // Both stop cleanly (deregistered): the next iteration has no runner.
            yield* Effect.all([stop(a.process), stop(b.process)], { concurrency: "unbounded" })
            assert.isTrue(yield* until(() => !registered(storage, a.address) && !registered(storage, b.address), 60_000), "runners still listed 60 s after they stopped")
          })
      })
      const t = over.transport!
      console.log(`coordinating: jobs answered in iteration 1 ${JSON.stringify(answeredIn1)}; changes: ${JSON.stringify(t.changes())}`)
      // Each fan-out of iteration 1 gave one job to each runner.
      assert.isAbove(answeredIn1[0], 0)
      assert.strictEqual(answeredIn1[0], answeredIn1[1])
      assert.deepStrictEqual(t.changes().map((c) => [c.runner, c.change, c.iteration]).sort(), [[a.address, "left", 2], [b.address, "left", 2]].sort())
      assert.strictEqual(t.threads, 1)
      assert.isTrue(t.computesHere)
      assert.strictEqual(cluster.used()?.coordinate, true)
      sameAsOneThread(over, yield* oneThread, "coordinating over 2 runners, then alone")
      assert.isAbove(maxAbsDiff(over.weights, over.initial), 20 * 0.05 * lr)
    }).pipe(Effect.scoped), 600_000)

  it.live("pretraining over runners: a runner started during the run joins at the next step (pretrain.ts refreshes the runners before each step), and the losses are one thread's", () =>
    Effect.gen(function*() {
      const storage = storageIn("membership-pretrain-")
      const scope = yield* Effect.scope
      const a = yield* runner(storage)
      let b: RunnerProcess | undefined
      let transport: ClusterJobs.Runners | undefined
      // What pretrain.ts --runners builds, with a hook before step 3's refresh: a second runner
      // comes up, and the step waits until the storage lists it.
      const options = yield* Setup.runnersOptions({ runners: Option.some(storage), runnerCount: Option.some(1), connectTimeout: Option.some(90), jobTimeout: Option.none() })
      const cluster = Setup.clusterTransport(tiny32, options!)
      const hooked = Layer.effect(
        JobThreads.JobThreads,
        Effect.gen(function*() {
          const t = yield* JobThreads.JobThreads
          transport = t as ClusterJobs.Runners
          const hook = Effect.gen(function*() {
            b = yield* runner(storage).pipe(Scope.provide(scope), Effect.orDie)
            assert.isTrue(yield* until(() => registered(storage, b!.address), 60_000), "the second runner not in the storage within 60 s")
          })
          return {
            get threads() {
              return t.threads
            },
            get computesHere() {
              return t.computesHere
            },
            call: t.call,
            fanOut: t.fanOut,
            liveThreads: t.liveThreads,
            refresh: (step: number) => Effect.andThen(step === 3 ? hook : Effect.void, t.refresh!(step))
          } satisfies JobThreads.Threads
        })
      ).pipe(Layer.provide(cluster.layer))
      const one = yield* pretrain(1, 5)
      const over = yield* pretrain(1, 5).pipe(Effect.provide(hooked))
      const t = transport!
      console.log(`pretraining: changes ${JSON.stringify(t.changes())}; jobs answered ${JSON.stringify([...t.jobsDone()])}`)
      assert.deepStrictEqual(t.changes().map((c) => [c.runner, c.change, c.iteration]), [[b!.address, "joined", 3]])
      assert.isAbove(t.jobsDone().get(b!.address) ?? 0, 0)
      assert.isAbove(t.jobsDone().get(a.address) ?? 0, 0)
      assert.strictEqual(t.threads, 3)
      // As test/train/Pretrain.test.ts: the losses of one thread up to float summation order.
      one.losses.forEach((l, i) => assert.approximately(over.losses[i], l, 1e-4 * Math.abs(l), `step ${i + 1}`))
      assert.notStrictEqual(one.losses[1], one.losses[0])
    }).pipe(Effect.scoped), 600_000)
})
