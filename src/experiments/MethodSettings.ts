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
import { Effect, FileSystem, Result } from "effect"
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
