import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Schema } from "effect"
import { SchemaBinary } from "effect/encoding"
import * as path from "node:path"
import { ClusterJobRpcs, packageVersion } from "../../src/cluster/JobEntity.ts"
import * as Runner from "../../src/cluster/Runner.ts"
import * as Storage from "../../src/cluster/Storage.ts"
import { JobRpcs } from "../../src/parallel/JobProtocol.ts"
import { tiny32 } from "../sharpen-helpers.ts"

const floats = (n: number, k = 1) => Float32Array.from({ length: n }, (_, i) => (i - n / 3) * 0.37 * k)

/** One value of every job's payload and reply (the protocol's Type side). */
const examples: Record<string, { payload: unknown; success: unknown }> = {
  Hello: {
    payload: { config: tiny32, version: packageVersion },
    success: { runner: "127.0.0.1:1", backend: "wasm", device: "CPU", pid: 1, version: packageVersion }
  },
  Sample: { payload: { params: floats(7), prompts: ["a red square"], xT: floats(3), steps: 3, cfg: 2 }, success: floats(3, 2) },
  Trajectories: {
    payload: {
      params: floats(7),
      x0: floats(2),
      prompts: ["a", "b"],
      draws: { itemT0: [200, 980], noise: floats(4) },
      options: { n: 2, m: 1, inferenceSteps: 10, cfg: 2, estimator: { kind: "tweedie" }, timestep: { kind: "range", min: 200, max: 980 }, continuation: true }
    },
    success: { n: 2, batch: 2, prompts: ["a", "b"], sampleShape: [1], x0: floats(2), noise: floats(4), steps: [{ ts: [1, 2], xt: floats(4), eps: floats(4), x0: floats(4) }], final: floats(4), nfe: 6 }
  },
  Gradients: {
    payload: {
      params: floats(7),
      parts: [
        { x: floats(2), target: floats(2), t: [100, 200], prompts: ["a", ""], share: 0.5 },
        { x: floats(4), target: floats(4), t: [1, 2, 3, 4], prompts: ["a", "b", "c", "d"], share: 0.5, dpo: { refW: [1], refL: [2], margin: [0.1], beta: 500, placement: "inside", winnerSft: 0.2 } }
      ]
    },
    success: { value: 1.25, grads: floats(7), present: [true, false] }
  },
  Errors: { payload: { params: floats(7), inputs: [{ x: floats(2), target: floats(2), t: [5], prompts: ["a"] }] }, success: [floats(1), floats(0)] },
  Images: { payload: { params: floats(7), prompts: ["a"], firstIndex: 3, sampler: { steps: 2, cfg: 2, eta: 0, seed: 1, batchSize: 4 } }, success: [floats(12)] },
  PretrainShard: { payload: { params: floats(7), shard: { batch: 1, images: floats(3), prompts: [""], t: [10], noise: floats(3) } }, success: { loss: 0.5, grads: floats(7) } }
}

/** Float arrays compared by value and kind, everything else structurally. */
const same = (a: unknown, b: unknown, at = "$"): void => {
  if (a instanceof Float32Array) {
    assert.instanceOf(b, Float32Array, at)
    assert.deepStrictEqual(Array.from(b as Float32Array), Array.from(a), at)
  } else if (Array.isArray(a)) {
    assert.isTrue(Array.isArray(b), at)
    assert.strictEqual((b as Array<unknown>).length, a.length, at)
    a.forEach((x, i) => same(x, (b as Array<unknown>)[i], `${at}[${i}]`))
  } else if (typeof a === "object" && a !== null) {
    assert.deepStrictEqual(Object.keys(b as object).sort(), Object.keys(a).sort(), at)
    for (const [k, v] of Object.entries(a)) same(v, (b as Record<string, unknown>)[k], `${at}.${k}`)
  } else assert.strictEqual(b, a, at)
}

describe("JobEntity: the job protocol in wire form", () => {
  it("has every job of the worker threads' protocol, and Hello", () => {
    assert.deepStrictEqual([...ClusterJobRpcs.requests.keys()].sort(), [...JobRpcs.requests.keys(), "Hello"].sort())
    assert.deepStrictEqual(Object.keys(examples).sort(), [...ClusterJobRpcs.requests.keys()].sort())
  })

  it("every payload and reply survives the cluster's SchemaBinary codec, float arrays as Float32Arrays", () => {
    for (const [tag, example] of Object.entries(examples)) {
      const rpc = ClusterJobRpcs.requests.get(tag)!
      for (const [which, schema] of [["payload", rpc.payloadSchema], ["success", rpc.successSchema]] as const) {
        const codec = SchemaBinary.toCodec(schema as Schema.Codec<unknown, unknown>)
        const bytes = Schema.encodeUnknownSync(codec)(example[which])
        same(example[which], Schema.decodeUnknownSync(codec)(bytes), `${tag}.${which}`)
      }
    }
  })

  it("the worker threads' own form does not (why the wire form exists): the check can fail", () => {
    const codec = SchemaBinary.toCodec(JobRpcs.requests.get("Sample")!.payloadSchema as Schema.Codec<unknown, unknown>)
    const exit = Effect.runSyncExit(Effect.try(() => Schema.decodeUnknownSync(codec)(Schema.encodeUnknownSync(codec)(examples.Sample.payload))))
    assert.isTrue(Exit.isFailure(exit))
  })
})

describe("runner storage URLs and start-up checks", () => {
  it.effect("sqlite:PATH (relative or absolute), postgres:// named, anything else refused; passwords masked", () =>
    Effect.gen(function*() {
      assert.deepStrictEqual(yield* Storage.parse("sqlite:runs/r.db"), { _tag: "Sqlite", file: path.resolve("runs/r.db") })
      assert.deepStrictEqual(yield* Storage.parse("sqlite:///tmp/r.db"), { _tag: "Sqlite", file: "/tmp/r.db" })
      assert.strictEqual((yield* Storage.parse("postgres://u:p@h/db"))._tag, "Postgres")
      for (const bad of ["mysql://h/db", "sqlite:", "runs/r.db"]) {
        const exit = yield* Effect.exit(Storage.parse(bad))
        assert.isTrue(Exit.isFailure(exit), bad)
      }
      assert.strictEqual(Storage.redact("postgres://user:hunter2@db.example:5432/runners"), "postgres://user:***@db.example:5432/runners")
      assert.strictEqual(Storage.redact("sqlite:runs/r.db"), "sqlite:runs/r.db")
    }))

  it.effect("a runner without a shared secret listens on loopback only; 0.0.0.0 needs --advertise", () =>
    Effect.gen(function*() {
      const storage = "sqlite:/tmp/unused.db"
      const open = yield* Effect.exit(Runner.make({ host: "0.0.0.0", port: 0, storage, secret: undefined }))
      assert.isTrue(Exit.isFailure(open))
      delete process.env.SHARPEN_CLUSTER_SECRET
      const noAdvertise = yield* Effect.exit(Runner.make({ host: "0.0.0.0", port: 9, storage, secret: "s" }))
      assert.isTrue(Exit.isFailure(noAdvertise))
      const ok = yield* Runner.make({ host: "127.0.0.1", port: 9, storage })
      assert.strictEqual(ok.address, "127.0.0.1:9")
      assert.isFalse(ok.secret)
    }))

  it("the secret compares by value", () => {
    assert.isTrue(Runner.secretMatches("abc", "abc"))
    assert.isFalse(Runner.secretMatches("abc", "abd"))
    assert.isFalse(Runner.secretMatches("abc", undefined))
    assert.isFalse(Runner.secretMatches("abc", ""))
  })
})
