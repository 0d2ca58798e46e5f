/**
 * UNet model directories: `config.json` (Schema-validated UNetConfig) plus
 * `model.safetensors`, through the shared `ModelDir` loader. Loading checks
 * every tensor against the shapes the config implies and names the file,
 * tensor and shapes on any mismatch; saving is atomic, weights first.
 *
 * @since 0.1.0
 */
import { Effect, Schema } from "effect"
import * as ModelDir from "../io/ModelDir.ts"
import type { StoredTensor } from "../io/Safetensors.ts"
import { paramSpecs } from "./UNet.ts"
import { UNetConfig } from "./UNetConfig.ts"

export { CONFIG_FILE, ModelLoadError, WEIGHTS_FILE } from "../io/ModelDir.ts"

/**
 * A loaded model: its config and named float32 weights.
 *
 * @since 0.1.0
 */
export interface ModelFiles {
  readonly config: UNetConfig
  readonly weights: Record<string, StoredTensor>
  readonly metadata: Record<string, string>
}

/** Decode and validate a config.json text. */
export const decodeConfig = (text: string, file: string): UNetConfig | ModelDir.ModelLoadError =>
  ModelDir.decodeJson(UNetConfig, text, file)

export const specsOf = (config: UNetConfig) => paramSpecs(config.architecture, config.vocabulary.length)

export const load = (dir: string) => ModelDir.load(dir, decodeConfig, specsOf).pipe(Effect.withSpan("Weights.load"))

export const save = (
  dir: string,
  config: UNetConfig,
  weights: Readonly<Record<string, StoredTensor>>,
  metadata: Readonly<Record<string, string>> = {}
) => ModelDir.save(dir, Schema.encodeSync(UNetConfig)(config), weights, metadata)
