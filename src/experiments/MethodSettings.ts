/**
 * Per-method settings of a comparison (`compare.ts --method-settings FILE`):
 * a JSON object from method name to partial sharpening settings, e.g.
 *
 *   { "raft": { "lr": 3e-5, "$source": "Lab.methods raft (lr sweep)" },
 *     "diffusion-dpo": { "lr": 1e-4, "dpoBeta": 5000 } }
 *
 * so each row can run at its own best setting, stated. Keys beginning with
 * "$" are notes (where a value came from), printed with the table and never
 * trained on. The budget (`iterations`, `trainingNfe`) and the `seed` are
 * the comparison's, the same for every method, and are refused here. Each
 * method's settings are validated when its config is built
 * (`SharpenConfig.decode`), so an unknown or out-of-range setting names the
 * file and the field.
 *
 * @since 0.4.0
 */
import { Effect, FileSystem, Result, Schema, SchemaIssue } from "effect"
import * as GroupRelative from "../objective/GroupRelative.ts"
import * as Nft from "../objective/Nft.ts"
import { ConfigError } from "../sharpen/SharpenConfig.ts"

export interface Entry {
  /** Settings over the method's base and the shared ones. */
  readonly settings: Readonly<Record<string, unknown>>
  /** The "$" keys: where the settings came from. */
  readonly notes: ReadonlyArray<string>
}

export type MethodSettings = Readonly<Record<string, Entry>>

/** Settings that are the comparison's, the same for every method. */
export const SHARED_ONLY: ReadonlyArray<string> = ["iterations", "trainingNfe", "seed"]

/**
 * Decode a parsed file; `methods` are the names allowed as keys.
 *
 * @since 0.4.0
 */
export const decode = (json: unknown, methods: ReadonlyArray<string>, file?: string): Result.Result<MethodSettings, ConfigError> => {
  const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v)
  if (!isObject(json)) {
    return Result.fail(new ConfigError({ file, message: "method settings must be a JSON object from method name to settings" }))
  }
  const out: Record<string, Entry> = {}
  for (const [method, value] of Object.entries(json)) {
    if (method.startsWith("$")) continue
    if (!methods.includes(method)) {
      return Result.fail(new ConfigError({ file, field: method, message: `unknown method "${method}" (one of ${methods.join(", ")})` }))
    }
    if (!isObject(value)) return Result.fail(new ConfigError({ file, field: method, message: `the settings of ${method} must be an object` }))
    const settings: Record<string, unknown> = {}
    const notes: Array<string> = []
    for (const [k, v] of Object.entries(value)) {
      if (k.startsWith("$")) notes.push(String(v))
      else if (SHARED_ONLY.includes(k)) {
        return Result.fail(
          new ConfigError({ file, field: k, message: `${method}: "${k}" is the comparison's (the same for every method), not a per-method setting` })
        )
      } else settings[k] = v
    }
    out[method] = { settings, notes }
  }
  return Result.succeed(out)
}

/**
 * Read and decode a method settings file.
 *
 * @since 0.4.0
 */
export const load = Effect.fn("MethodSettings.load")(function*(file: string, methods: ReadonlyArray<string>) {
  const fs = yield* FileSystem.FileSystem
  const text = yield* fs.readFileString(file)
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (e) {
    return yield* new ConfigError({ file, message: `not JSON: ${e instanceof Error ? e.message : String(e)}` })
  }
  return yield* Effect.fromResult(decode(json, methods, file))
})

/**
 * One line per method with settings: its label, the settings, the notes.
 *
 * @since 0.4.0
 */
export const describe = (settings: MethodSettings, label: (method: string) => string): ReadonlyArray<string> =>
  Object.entries(settings).map(([method, e]) => {
    const values = Object.entries(e.settings).map(([k, v]) => `${k} ${JSON.stringify(v)}`).join(", ")
    return `- **${label(method)}** (\`${method}\`): ${values === "" ? "(none)" : values}${e.notes.length > 0 ? ` (${e.notes.join("; ")})` : ""}`
  })

/**
 * Settings of the objectives that are methods of their own rather than
 * sharpening settings (`MethodLayers`' `nft` and `group`): kept here, not in
 * SharpenConfig, so a sharpening run's settings stay what they were. A
 * method's settings object may mix them with sharpening settings;
 * {@link splitObjective} separates the two.
 *
 * @since 0.7.0
 */
export const ObjectiveSettings = Schema.Struct({
  /** DiffusionNFT: mixing factor beta of the implicit policies. */
  nftBeta: Nft.NftOptions.fields.beta,
  /** DiffusionNFT: advantages clipped to [-c, c]. */
  nftAdvClip: Nft.NftOptions.fields.advClip,
  /** DiffusionNFT: weight of the KL to the frozen reference. */
  nftKl: Nft.NftOptions.fields.kl,
  /** DiffusionNFT: the old policy's decay (0: the weights that sampled the batch). */
  nftOldDecay: Nft.NftOptions.fields.oldDecay,
  /** DiffusionNFT: the adaptive loss on the x0 error (the paper's) or on the eps error. */
  nftWeighting: Nft.NftWeighting,
  /** DiffusionNFT: forward noise per image (the paper's) or shared by a prompt's images. */
  nftNoise: Nft.NftNoise,
  /** Group-relative objective: all pairs in the DPO form, or advantage-weighted regression. */
  groupForm: GroupRelative.GroupForm,
  /** Group-relative objective: the DPO beta (pairs) or the softmax temperature (awr). */
  groupBeta: GroupRelative.GroupOptions.fields.beta
})
export type ObjectiveSettings = typeof ObjectiveSettings.Type

/**
 * Defaults, as the library's other defaults: the paper's values (Nft.defaults)
 * except where the lab measured better (docs/method.md): DiffusionNFT's noise
 * shared by a prompt's images, its adaptive loss on the eps error and beta
 * 0.1; the pairs form at the lab's DPO beta 5.
 */
export const objectiveDefaults: ObjectiveSettings = {
  nftBeta: 0.1,
  nftAdvClip: Nft.defaults.advClip,
  nftKl: Nft.defaults.kl,
  nftOldDecay: Nft.defaults.oldDecay,
  nftWeighting: "eps",
  nftNoise: "prompt",
  groupForm: "pairs",
  groupBeta: 5
}

/** The keys of {@link ObjectiveSettings}. */
export const OBJECTIVE_KEYS: ReadonlyArray<string> = Object.keys(ObjectiveSettings.fields)

/**
 * A settings object split into its sharpening settings and its objective
 * settings (the keys of {@link ObjectiveSettings}).
 *
 * @since 0.7.0
 */
export const splitObjective = (settings: Readonly<Record<string, unknown>>): {
  readonly config: Record<string, unknown>
  readonly objective: Record<string, unknown>
} => {
  const config: Record<string, unknown> = {}
  const objective: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(settings)) (OBJECTIVE_KEYS.includes(k) ? objective : config)[k] = v
  return { config, objective }
}

/**
 * Objective settings over {@link objectiveDefaults}, validated; an error names the field.
 *
 * @since 0.7.0
 */
export const decodeObjective = (partial: Readonly<Record<string, unknown>>, file?: string): Result.Result<ObjectiveSettings, ConfigError> => {
  const unknown = Object.keys(partial).find((k) => !OBJECTIVE_KEYS.includes(k))
  if (unknown !== undefined) return Result.fail(new ConfigError({ file, field: unknown, message: `unknown objective setting "${unknown}"` }))
  const r = Schema.decodeUnknownResult(ObjectiveSettings)({ ...objectiveDefaults, ...partial })
  if (Result.isSuccess(r)) return Result.succeed(r.success)
  const text = SchemaIssue.makeFormatterDefault()(r.failure.issue)
  return Result.fail(new ConfigError({ file, field: /\["?([A-Za-z0-9]+)"?\]/.exec(text)?.[1], message: text.split("\n").join(" ") }))
}
