/**
 * Fixtures for the sharpening tests: a tiny 32x32 UNet saved to a temporary
 * model directory, and layers with mock rewards on the cpu backend.
 */
import { NodeServices } from "@effect/platform-node"
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as Denoiser from "../src/model/Denoiser.ts"
import { defaultConfig, type UNetConfig } from "../src/model/UNetConfig.ts"
import * as SharpenConfig from "../src/sharpen/SharpenConfig.ts"
import type * as Trajectory from "../src/trajectory/Trajectory.ts"

export const tiny32: UNetConfig = {
  ...defaultConfig,
  architecture: { ...defaultConfig.architecture, baseChannels: 8, channelMult: [1, 2], attentionResolutions: [16], heads: 2, groups: 4, textDim: 16, textLayers: 1 }
}

/**
 * The tiny model in memory with perturbed weights (so every layer matters):
 * the model of the equality tests of threads, steps and runners.
 */
export const perturbedTiny32 = (): Denoiser.Model => {
  const m = Denoiser.init(tiny32, 4)
  tf.tidy(() => {
    for (const v of Object.values(m.params)) v.assign(tf.add(v, tf.randomNormal(v.shape, 0, 0.02, "float32", 5)))
  })
  return m
}

/** Trajectories of those tests: 3 paths of 2 steps on a DDIM-10 grid, each continued to t = 0. */
export const continuedPaths: Trajectory.TrajectoryOptions = {
  n: 3,
  m: 2,
  inferenceSteps: 10,
  cfg: 2,
  estimator: { kind: "tweedie" },
  timestep: { kind: "range", min: 200, max: 980 },
  perPrompt: true,
  continuation: true
}

export const tmpDir = (prefix: string) => fs.mkdtempSync(path.join(os.tmpdir(), prefix))

/** A saved tiny model whose weights are perturbed (so gradients reach every layer). */
export const savedTinyModel = async (seed = 0): Promise<string> => {
  const dir = path.join(tmpDir("tiny-model-"), "model")
  const m = Denoiser.init(tiny32, seed)
  tf.tidy(() => {
    for (const v of Object.values(m.params)) v.assign(tf.add(v, tf.randomNormal(v.shape, 0, 0.02, "float32", seed + 1)))
  })
  await Effect.runPromise(Denoiser.save(dir, m).pipe(Effect.provide(NodeServices.layer)))
  Denoiser.dispose(m)
  return dir
}

export const smallConfig = (overrides: Partial<SharpenConfig.SharpenConfig> = {}): SharpenConfig.SharpenConfig => ({
  ...SharpenConfig.defaults,
  iterations: 3,
  batchSize: 2,
  n: 3,
  m: 2,
  cfg: 2,
  onlineSteps: 3,
  // A coarse grid: image-level paths run to t = 0 (at most 10 steps each).
  inferenceSteps: 10,
  lr: 1e-3,
  checkpointEvery: 2,
  ...overrides
})
