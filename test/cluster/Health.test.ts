// Runner health from Kubernetes (`--health k8s`, deploy/k8s/runners.yaml):
// off a cluster the Kubernetes API cannot be reached, and effect/cluster's
// RunnerHealth.layerK8s then counts a runner alive, so it serves as with pings.
import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import { beforeAll } from "vitest"
import * as Denoiser from "../../src/model/Denoiser.ts"
import * as GenerationPool from "../../src/parallel/GenerationPool.ts"
import { Rng } from "../../src/tensor/Random.ts"
import { useWasm } from "../helpers.ts"
import { runner } from "./runners.ts"
import { connect, maxAbsDiff, model, per, prompts, storageIn } from "./scenarios.ts"

describe("runner health", () => {
  beforeAll(async () => {
    delete process.env.SHARPEN_CLUSTER_SECRET
    await useWasm()
  })

  it.live("--health k8s: the runner says so, registers, and serves a job with the one-thread result off a Kubernetes cluster", () =>
    Effect.gen(function*() {
      const storage = storageIn("cluster-health-")
      const r = yield* runner(storage, {}, 90_000, "127.0.0.1:0", ["--health", "k8s", "--health-selector", "app=sharpen-runner"])
      assert.include(r.output(), "health k8s")
      const transport = yield* connect(storage)
      assert.strictEqual(transport.runners[0].runner, r.address)
      const m = model()
      const xT = Rng.fromSeed(3).normals(2 * per)
      const one = yield* GenerationPool.inline.sample(m, prompts.slice(0, 2), xT, { steps: 2, cfg: 2 })
      const two = yield* GenerationPool.fromThreads(transport).sample(m, prompts.slice(0, 2), xT, { steps: 2, cfg: 2 })
      assert.isBelow(maxAbsDiff(one.dataSync(), two.dataSync()), 1e-5)
      tf.dispose([one, two])
      Denoiser.dispose(m)
    }).pipe(Effect.scoped), 180_000)
})
