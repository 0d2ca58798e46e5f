/**
 * Model directories: `config.json` (Schema-validated UNetConfig) plus
 * `model.safetensors`. Saving writes both atomically (weights first, so a
 * config never points at weights that are not there yet); loading checks
 * every tensor against the shapes the config implies and names the file,
 * tensor and shapes on any mismatch.
 *
 * @since 0.1.0
 */
import { Effect, FileSystem, Path, Schema, SchemaIssue } from "effect"
import * as AtomicFile from "../io/AtomicFile.ts"
import * as Safetensors from "../io/Safetensors.ts"
import type { StoredTensor } from "../io/Safetensors.ts"
import { paramSpecs } from "./UNet.ts"
import { UNetConfig } from "./UNetConfig.ts"

/**
 * A model directory could not be loaded.
 *
 * @since 0.1.0
 */
export class ModelLoadError extends Schema.TaggedError<ModelLoadError>()("ModelLoadError", {
  file: Schema.String,
  tensor: Schema.optional(Schema.String),
  message: Schema.String
}) {}

export const CONFIG_FILE = "config.json"
export const WEIGHTS_FILE = "model.safetensors"

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
export const decodeConfig = (text: string, file: string): UNetConfig | ModelLoadError => {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (e) {
    return new ModelLoadError({ file, message: `not valid JSON: ${(e as Error).message}` })
  }
  const r = Schema.decodeUnknownResult(UNetConfig)(json)
  if (r._tag === "Failure") {
    return new ModelLoadError({ file, message: SchemaIssue.makeFormatterDefault()(r.failure.issue) })
  }
  return r.success
}

/** Check weights against the shapes the config implies. */
export const checkWeights = (
  config: UNetConfig,
  weights: Readonly<Record<string, StoredTensor>>,
  file: string
): ModelLoadError | undefined => {
  const specs = paramSpecs(config.architecture, config.vocabulary.length)
  for (const s of specs) {
    const w = weights[s.name]
    if (w === undefined) return new ModelLoadError({ file, tensor: s.name, message: `tensor "${s.name}" is missing` })
    if (w.shape.length !== s.shape.length || w.shape.some((d, i) => d !== s.shape[i])) {
      return new ModelLoadError({
        file,
        tensor: s.name,
        message: `tensor "${s.name}" has shape [${w.shape.join(", ")}], config expects [${s.shape.join(", ")}]`
      })
    }
  }
  const known = new Set(specs.map((s) => s.name))
  const extra = Object.keys(weights).find((k) => !known.has(k))
  if (extra !== undefined) return new ModelLoadError({ file, tensor: extra, message: `tensor "${extra}" is not part of this architecture` })
  return undefined
}

export const load = Effect.fn("Weights.load")(function*(dir: string) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const configFile = path.join(dir, CONFIG_FILE)
  const weightsFile = path.join(dir, WEIGHTS_FILE)
  const fail = (file: string, message: string) => new ModelLoadError({ file, message })
  if (!(yield* fs.exists(dir).pipe(Effect.orElseSucceed(() => false)))) {
    return yield* fail(dir, "model directory does not exist")
  }
  const text = yield* fs.readFileString(configFile).pipe(Effect.mapError(() => fail(configFile, "cannot read config.json")))
  const config = decodeConfig(text, configFile)
  if (config instanceof ModelLoadError) return yield* config
  const bytes = yield* fs.readFile(weightsFile).pipe(Effect.mapError(() => fail(weightsFile, "cannot read model.safetensors")))
  const decoded = Safetensors.decode(bytes, weightsFile)
  if (decoded instanceof Safetensors.SafetensorsError) {
    return yield* new ModelLoadError({ file: weightsFile, tensor: decoded.tensor, message: decoded.message })
  }
  const bad = checkWeights(config, decoded.tensors, weightsFile)
  if (bad !== undefined) return yield* bad
  return { config, weights: decoded.tensors, metadata: decoded.metadata } satisfies ModelFiles
})

export const save = Effect.fn("Weights.save")(function*(
  dir: string,
  config: UNetConfig,
  weights: Readonly<Record<string, StoredTensor>>,
  metadata: Readonly<Record<string, string>> = {}
) {
  const path = yield* Path.Path
  const encodedConfig = Schema.encodeSync(UNetConfig)(config)
  yield* AtomicFile.writeFile(path.join(dir, WEIGHTS_FILE), Safetensors.encode(weights, metadata))
  yield* AtomicFile.writeText(path.join(dir, CONFIG_FILE), JSON.stringify(encodedConfig, null, 2) + "\n")
})
