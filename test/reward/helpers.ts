/**
 * A tiny clip config (fast on the cpu backend) for the reward tests.
 */
import { type ClipConfig, defaultConfig } from "../../src/reward/ClipModel.ts"

export const tinyClip: ClipConfig = {
  ...defaultConfig,
  imageChannels: [4, 4, 8, 8],
  groups: 2,
  imageHidden: 16,
  embedDim: 16,
  textDim: 16,
  textLayers: 1,
  textHidden: 32,
  heads: 2
}
