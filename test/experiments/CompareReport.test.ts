import { assert, describe, it } from "@effect/vitest"
import type * as Compare from "../../src/experiments/Compare.ts"
import { seedsSection } from "../../src/experiments/CompareReport.ts"

const set = (name: string, reward: number, accuracy: number, colour: number, aesthetic: number) => ({
  name,
  rows: [{ category: "color", n: 10, accuracy: colour, partial: colour, clip: null }, { category: "overall", n: 60, accuracy, partial: accuracy, clip: null }],
  reward,
  compressibility: 0,
  aesthetic
})
const evalOf = (reward: number, accuracy: number): Compare.EvalSummary =>
  ({ row: "r", family: "f", nfePerImage: 100, sets: [set("seen", reward, accuracy, 1, 0.8), set("heldout", reward - 0.1, accuracy / 2, 1, 0.8)] }) as Compare.EvalSummary
const run = (method: Compare.FinetuneMethod, seed: number, reward: number) =>
  ({ method, seed, summary: {} as Compare.TrainSummary, eval: evalOf(reward, 0.2) })

describe("CompareReport.seedsSection", () => {
  it("per seed and over seeds: the reward's change from the base, the t interval, in how many seeds it rose", () => {
    const base = evalOf(2, 0.15)
    const lines = seedsSection([run("diffusion-dpo", 0, 2.1), run("diffusion-dpo", 1, 2.2), run("diffusion-dpo", 2, 1.9), run("raft", 0, 2.5)], base)
    const text = lines.join("\n")
    // RAFT has one seed: no row of its own.
    assert.notInclude(text, "| RAFT |")
    assert.include(text, "| Diffusion-DPO | 1 | +0.200 | +0.200 |")
    // Mean +0.067, sample SD 0.153, t(2) = 4.303: half-width 0.379.
    assert.include(text, "| Diffusion-DPO | mean [95% t] | +0.067 [-0.313, +0.446]")
    assert.include(text, "the reward rose in 2 of 3 seeds on seen, 2 of 3 seeds on heldout")
    assert.deepStrictEqual(seedsSection([run("raft", 0, 2.5)], base), [])
  })
})
