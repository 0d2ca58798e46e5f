/**
 * UNet model directories: `config.json` (Schema-validated UNetConfig) plus
 * `model.safetensors`, through the shared `ModelDir` loader. Loading checks
 * every tensor against the shapes the config implies and names the file,
 * tensor and shapes on any mismatch; saving is atomic, weights first.
 *
 * @since 0.1.0
 */
import { Effect, type Result, Schema } from "effect"
import * as ModelDir from "../io/ModelDir.ts"
import type { StoredTensor } from "../io/Safetensors.ts"
import * as Mlp from "./Mlp.ts"
import { paramSpecs } from "./UNet.ts"
import { UNetConfig } from "./UNetConfig.ts"

/** The config of any model directory (UNet or the lab's MLP), by `format`. */
export const AnyConfig = Schema.Union([UNetConfig, Mlp.MlpConfig])
export type AnyConfig = typeof AnyConfig.Type

export { CONFIG_FILE, ModelLoadError, WEIGHTS_FILE } from "../io/ModelDir.ts"

/**
 * A loaded model: its config and named float32 weights.
 *
 * @since 0.1.0
 */
export interface ModelFiles {
  readonly config: AnyConfig
  readonly weights: Record<string, StoredTensor>
  readonly metadata: Record<string, string>
}

/** Decode and validate a config.json text. */
export const decodeConfig = (text: string, file: string): Result.Result<AnyConfig, ModelDir.ModelLoadError> =>
  ModelDir.decodeJson(AnyConfig, text, file)

export const specsOf = (config: AnyConfig) =>
  config.format === "diffusion-sharpening/mlp@1" ? Mlp.paramSpecs(config.architecture) : paramSpecs(config.architecture, config.vocabulary.length)

export const load = (dir: string) => ModelDir.load(dir, decodeConfig, specsOf).pipe(Effect.withSpan("Weights.load"))

export const save = (
  dir: string,
  config: AnyConfig,
  weights: Readonly<Record<string, StoredTensor>>,
  metadata: Readonly<Record<string, string>> = {}
) => ModelDir.save(dir, Schema.encodeSync(AnyConfig)(config), weights, metadata)
