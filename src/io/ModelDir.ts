/**
 * Model directories of any network in the project: `config.json` (decoded
 * by the model's own Schema) plus `model.safetensors`, checked tensor by
 * tensor against the shapes the config implies. Loading fails with
 * `ModelLoadError { file, tensor?, message }`; saving is atomic per file,
 * weights before config.
 *
 * Also the parameter-record helpers every model shares (variables from
 * tensors, to and from stored tensors, disposal).
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect, FileSystem, Path, Result, Schema, SchemaIssue } from "effect"
import { createHash } from "node:crypto"
import * as HostRead from "../tensor/HostRead.ts"
import * as AtomicFile from "./AtomicFile.ts"
import * as Safetensors from "./Safetensors.ts"
import type { StoredTensor } from "./Safetensors.ts"

/**
 * Shapes and initialisers, collected while a model describes itself.
 *
 * @since 0.1.0
 */
export interface ParamSpec {
  readonly name: string
  readonly shape: ReadonlyArray<number>
  /** "normal" draws N(0, std^2); "zeros"/"ones" are constant. */
  readonly init: "normal" | "zeros" | "ones"
  readonly std: number
}

export const CONFIG_FILE = "config.json"
export const WEIGHTS_FILE = "model.safetensors"

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

/** Parse JSON and decode it with a config Schema; errors name the file and the field. */
export const decodeJson = <A>(schema: Schema.Decoder<A>, text: string, file: string): Result.Result<A, ModelLoadError> => {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (e) {
    return Result.fail(new ModelLoadError({ file, message: `not valid JSON: ${(e as Error).message}` }))
  }
  const r = Schema.decodeUnknownResult(schema)(json)
  return Result.isFailure(r)
    ? Result.fail(new ModelLoadError({ file, message: SchemaIssue.makeFormatterDefault()(r.failure.issue) }))
    : Result.succeed(r.success)
}

/** Check weights against parameter specs: missing, mis-shaped or extra tensors. */
export const checkWeights = (
  specs: ReadonlyArray<ParamSpec>,
  weights: Readonly<Record<string, StoredTensor>>,
  file: string
): ModelLoadError | undefined => {
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
  // A NaN or Inf weight would only show as a non-finite loss after a whole
  // evaluation; name it at load.
  for (const s of specs) {
    const data = weights[s.name].data
    for (let i = 0; i < data.length; i++) {
      if (!Number.isFinite(data[i])) {
        return new ModelLoadError({ file, tensor: s.name, message: `tensor "${s.name}" holds ${data[i]} at index ${i}: the weights are not finite` })
      }
    }
  }
  return undefined
}

/**
 * Read and check a model directory: `decodeConfig` validates config.json,
 * `specsOf` gives the parameters the config implies.
 *
 * @since 0.1.0
 */
export const load = <C>(
  dir: string,
  decodeConfig: (text: string, file: string) => Result.Result<C, ModelLoadError>,
  specsOf: (config: C) => ReadonlyArray<ParamSpec>
) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const configFile = path.join(dir, CONFIG_FILE)
    const weightsFile = path.join(dir, WEIGHTS_FILE)
    const fail = (file: string, message: string) => new ModelLoadError({ file, message })
    if (!(yield* fs.exists(dir).pipe(Effect.orElseSucceed(() => false)))) {
      return yield* fail(dir, "model directory does not exist")
    }
    const text = yield* fs.readFileString(configFile).pipe(Effect.mapError(() => fail(configFile, "cannot read config.json")))
    const config = yield* Effect.fromResult(decodeConfig(text, configFile))
    const bytes = yield* fs.readFile(weightsFile).pipe(Effect.mapError(() => fail(weightsFile, "cannot read model.safetensors")))
    const decoded = Safetensors.decode(bytes, weightsFile)
    if (decoded instanceof Safetensors.SafetensorsError) {
      return yield* new ModelLoadError({ file: weightsFile, tensor: decoded.tensor, message: decoded.message })
    }
    const bad = checkWeights(specsOf(config), decoded.tensors, weightsFile)
    if (bad !== undefined) return yield* bad
    return { config, weights: decoded.tensors, metadata: decoded.metadata }
  }).pipe(Effect.withSpan("ModelDir.load"))

/**
 * The identity of a model directory: sha256 of its config.json and
 * model.safetensors (hex), whatever the directory is called.
 *
 * @since 0.1.0
 */
export const contentHash = Effect.fn("ModelDir.contentHash")(function*(dir: string) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const hash = createHash("sha256")
  for (const name of [CONFIG_FILE, WEIGHTS_FILE]) {
    const file = path.join(dir, name)
    const bytes = yield* fs.readFile(file).pipe(Effect.mapError(() => new ModelLoadError({ file, message: `cannot read ${name}` })))
    hash.update(name).update(bytes)
  }
  return hash.digest("hex")
})

/** Write weights, then config, each atomically. */
export const save = Effect.fn("ModelDir.save")(function*(
  dir: string,
  configJson: unknown,
  weights: Readonly<Record<string, StoredTensor>>,
  metadata: Readonly<Record<string, string>> = {}
) {
  const path = yield* Path.Path
  yield* AtomicFile.writeFile(path.join(dir, WEIGHTS_FILE), Safetensors.encode(weights, metadata))
  yield* AtomicFile.writeText(path.join(dir, CONFIG_FILE), JSON.stringify(configJson, null, 2) + "\n")
})

// ---------------------------------------------------------------- parameter records

/** Variables from tensors (the tensors are consumed). */
export const variables = (tensors: Record<string, tf.Tensor>, trainable: boolean): Record<string, tf.Variable> => {
  const out: Record<string, tf.Variable> = {}
  for (const [k, t] of Object.entries(tensors)) {
    out[k] = tf.variable(t, trainable)
    t.dispose()
  }
  return out
}

/** Variables for every spec, from stored weights (checked beforehand). */
export const fromStored = (
  specs: ReadonlyArray<ParamSpec>,
  weights: Readonly<Record<string, StoredTensor>>,
  trainable: boolean
): Record<string, tf.Variable> => {
  const tensors: Record<string, tf.Tensor> = {}
  for (const s of specs) {
    const w = weights[s.name]
    if (w === undefined) throw new Error(`missing tensor "${s.name}"`)
    tensors[s.name] = tf.tensor(w.data, w.shape as Array<number>, "float32")
  }
  return variables(tensors, trainable)
}

/**
 * Copy tensors out (keys optionally prefixed, e.g. "m." for optimiser
 * moments). The reads are issued together (one wait on a GPU, not one per
 * tensor); each tensor gets its own array, as workers and files take them.
 */
export const toStored = (params: Readonly<Record<string, tf.Tensor>>, prefix = ""): Effect.Effect<Record<string, StoredTensor>> =>
  Effect.map(
    Effect.forEach(Object.entries(params), ([k, v]) => Effect.map(HostRead.float32(v), (data) => [prefix + k, { shape: v.shape, data }] as const), {
      concurrency: "unbounded"
    }),
    Object.fromEntries
  )

/**
 * Assign stored values to variables in place (keys optionally prefixed);
 * returns the first name that is missing or of the wrong size, or undefined.
 */
export const assign = (
  target: Readonly<Record<string, tf.Variable>>,
  from: Readonly<Record<string, StoredTensor>>,
  prefix = ""
): string | undefined => {
  for (const [k, v] of Object.entries(target)) {
    const s = from[prefix + k]
    if (s === undefined || s.data.length !== v.size) return prefix + k
    tf.tidy(() => v.assign(tf.tensor(s.data, v.shape)))
  }
  return undefined
}

export const disposeParams = (params: Readonly<Record<string, tf.Tensor>>): void => {
  for (const v of Object.values(params)) v.dispose()
}
