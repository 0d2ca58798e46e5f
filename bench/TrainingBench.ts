/**
 * What every bench script times a training step on: a freshly initialised
 * UNet, its AdamW state and one fixed training batch.
 */
import { Effect } from "effect"
import * as Dataset from "../src/data/Dataset.ts"
import * as Schedule from "../src/diffusion/Schedule.ts"
import * as Denoiser from "../src/model/Denoiser.ts"
import type { UNetConfig } from "../src/model/UNetConfig.ts"
import * as AdamW from "../src/optim/AdamW.ts"
import { trainStep } from "../src/train/Pretrain.ts"
import { Rng } from "../src/tensor/Random.ts"

export interface TrainingBench {
  readonly model: Denoiser.Model
  readonly schedule: Schedule.Schedule
  readonly adam: AdamW.AdamWState
  readonly rng: Rng
  readonly data: Dataset.Batch
  /** One AdamW step (lr 1e-4) on the fixed batch (a promise: the step reads its loss). */
  readonly step: () => Promise<void>
  readonly dispose: () => void
}

export const make = (config: UNetConfig, batchSize: number, dataSeed = 1): TrainingBench => {
  const model = Denoiser.init(config, 0)
  const schedule = Schedule.make(config.schedule)
  const adam = AdamW.init(model.params)
  const rng = Rng.fromSeed(dataSeed)
  const data = Dataset.nextBatch(rng, { batchSize, split: "train" })
  return {
    model,
    schedule,
    adam,
    rng,
    data,
    step: () => Effect.runPromise(Effect.asVoid(trainStep(model, schedule, adam, data, rng, 1e-4, AdamW.defaults))),
    dispose: () => {
      AdamW.dispose(adam)
      Denoiser.dispose(model)
    }
  }
}
