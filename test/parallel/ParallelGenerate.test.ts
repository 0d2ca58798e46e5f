import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { beforeAll } from "vitest"
import * as Generate from "../../src/trajectory/Generate.ts"
import * as ParallelGenerate from "../../src/parallel/ParallelGenerate.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import { useWasm } from "../helpers.ts"
import { tiny32 } from "../sharpen-helpers.ts"

describe("ParallelGenerate", () => {
  beforeAll(useWasm)

  it("gives exactly the serial images, in prompt order, whatever the worker count", async () => {
    const model = Denoiser.init(tiny32, 4)
    const prompts = ["a red square", "two blue circles", "a green triangle above a white square", "a purple circle", "a yellow square"]
    const sampler = { steps: 3, cfg: 3, eta: 0, seed: 9, batchSize: 2 }
    const serial = await Effect.runPromise(Generate.generate(model, prompts, sampler))
    const parallel = await ParallelGenerate.generate(model, prompts, sampler, { workers: 2, backend: "wasm" })
    assert.strictEqual(parallel.length, prompts.length)
    for (let i = 0; i < prompts.length; i++) assert.deepStrictEqual(Array.from(parallel[i]), Array.from(serial[i]), `image ${i}`)
    Denoiser.dispose(model)
  })

  it("stops on abort: no further jobs, the promise rejects before the last image", async () => {
    const model = Denoiser.init(tiny32, 4)
    const prompts = Array.from({ length: 12 }, () => "a red square")
    const controller = new AbortController()
    let seen = 0
    const run = ParallelGenerate.generate(model, prompts, { steps: 3, cfg: 3, eta: 0, seed: 9, batchSize: 1 }, {
      workers: 2,
      backend: "wasm",
      signal: controller.signal,
      onImages: (done) => {
        seen = done
        controller.abort()
      }
    })
    let error: unknown
    await run.catch((e) => (error = e))
    assert.match(String(error), /interrupted/)
    assert.isBelow(seen, prompts.length)
    Denoiser.dispose(model)
  })
})
