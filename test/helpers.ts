/**
 * Shared test fixtures: a tiny UNet config (fast on the cpu backend) and
 * backend setup.
 */
import "@tensorflow/tfjs"
import * as tf from "@tensorflow/tfjs-core"
import { defaultConfig, type UNetConfig } from "../src/model/UNetConfig.ts"

export const tinyConfig: UNetConfig = {
  ...defaultConfig,
  architecture: {
    ...defaultConfig.architecture,
    imageSize: 8,
    baseChannels: 8,
    channelMult: [1, 2],
    attentionResolutions: [4],
    heads: 2,
    groups: 4,
    textDim: 16,
    textLayers: 1
  }
}

export const useCpu = async () => {
  await tf.setBackend("cpu")
  await tf.ready()
}

/** The embedded default backend: much faster than cpu for conv nets. */
export const useWasm = async () => {
  await import("@tensorflow/tfjs-backend-wasm")
  await tf.setBackend("wasm")
  await tf.ready()
}
