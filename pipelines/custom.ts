/**
 * A user-written pipeline: RLHF sharpening toward a hand-written reward
 * ("make the objects red"), assembled from the library's layers with one
 * stage swapped. This is the file docs/getting-started.md walks through.
 *
 *   npx tsx pipelines/custom.ts --iterations 4
 *   npx tsx pipelines/custom.ts --iterations 4 --runners sqlite:runs/runners.db --runner-count 2   # jobs on runners (docs/scaling.md)
 */
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import { Console, Effect, Result } from "effect"
import * as Setup from "../src/cli/Setup.ts"
import { Metrics } from "../src/optim/Metrics.ts"
import * as Sharpen from "../src/sharpen/Sharpen.ts"
import * as SharpenConfig from "../src/sharpen/SharpenConfig.ts"
import * as SharpenLayers from "../src/sharpen/SharpenLayers.ts"
import { Reward } from "../src/reward/Reward.ts"
import { Backend } from "../src/tensor/Backend.ts"

// 1. A reward is a function of decoded images ([0,1], 32x32x3) and prompts.
export const redness = Reward.fromFunction((image) => {
  let red = 0
  let ink = 0
  for (let k = 0; k < image.length; k += 3) {
    const [r, g, b] = [image[k], image[k + 1], image[k + 2]]
    if (Math.max(r, g, b) > 0.4) {
      ink += 1
      red += r - Math.max(g, b)
    }
  }
  return ink === 0 ? 0 : red / ink
}, { name: "redness", range: [-1, 1] })

// 2. The run's settings: the paper's defaults, a few overridden.
const arg = (name: string) => process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] : undefined
const iterations = Number(arg("--iterations") ?? 4) || 4
// A setting out of range throws its ConfigError, naming the field.
const config = Result.getOrThrow(SharpenConfig.decode([{ iterations, batchSize: 4, onlineSteps: 20, checkpointEvery: 2 }]))

// 3. The algorithm is a value; the layers decide every stage's implementation.
const program = Effect.gen(function*() {
  const done = yield* Sharpen.rlhf(config)
  const records = yield* (yield* Metrics).records
  yield* Console.log(`${done} iterations; reward ${records[0].rewardMean.toFixed(3)} -> ${records.at(-1)!.rewardMean.toFixed(3)}`)
})

// Optional: the iterations' jobs on effect/cluster runners (pipelines/runner.ts) instead of this process alone.
const storage = arg("--runners")
const jobs = storage === undefined ? {} : { jobs: Setup.clusterJobs({ storage, runners: Number(arg("--runner-count") ?? 1) || 1 }).layer }

const layers = SharpenLayers.rlhf(config, {
  model: "models/shapeworld-base",
  runDir: "out/custom/run",
  reward: redness, // swap the reward stage
  backend: Backend.make("wasm"),
  ...jobs
})

NodeRuntime.runMain(program.pipe(Effect.provide(layers), Effect.scoped, Effect.provide(NodeServices.layer)))
