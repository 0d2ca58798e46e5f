import { assert, describe, it } from "@effect/vitest"
import * as LrSchedule from "../../src/optim/LrSchedule.ts"
import { learningRate } from "../../src/optim/Optimizer.ts"
import * as Pretrain from "../../src/train/Pretrain.ts"
import * as TrainClip from "../../src/train/TrainClip.ts"

describe("LrSchedule.at", () => {
  const o: LrSchedule.Options = { lr: 1, warmupSteps: 10, schedule: "cosine", totalSteps: 110 }

  it("warms up linearly, then follows the cosine to minLr (default 0), or stays constant", () => {
    assert.strictEqual(LrSchedule.at(o, 0), 0.1)
    assert.strictEqual(LrSchedule.at(o, 9), 1)
    assert.strictEqual(LrSchedule.at(o, 10), 1)
    assert.approximately(LrSchedule.at(o, 60), 0.5, 1e-12)
    assert.approximately(LrSchedule.at(o, 110), 0, 1e-12)
    assert.approximately(LrSchedule.at(o, 500), 0, 1e-12)
    assert.approximately(LrSchedule.at({ ...o, minLr: 0.2 }, 60), 0.6, 1e-12)
    assert.approximately(LrSchedule.at({ ...o, minLr: 0.2 }, 110), 0.2, 1e-12)
    assert.strictEqual(LrSchedule.at({ ...o, schedule: "constant" }, 60), 1)
  })

  it("is the one schedule of sharpening, pretraining and the clip reward", () => {
    for (const step of [0, 5, 10, 37, 60, 99, 110]) {
      assert.strictEqual(learningRate(o, step), LrSchedule.at(o, step))
      assert.strictEqual(
        Pretrain.lrAt({ lr: 1, minLr: 0.05, warmupSteps: 10, steps: 110, lrSchedule: "cosine" }, step),
        LrSchedule.at({ ...o, minLr: 0.05 }, step)
      )
      assert.strictEqual(TrainClip.lrAt({ lr: 1, warmupSteps: 10, steps: 110 }, step), LrSchedule.at({ ...o, minLr: 0.1 }, step))
    }
  })
})
