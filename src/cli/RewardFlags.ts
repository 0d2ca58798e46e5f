/**
 * The reward of a training CLI (sft.ts, rlhf.ts, compare.ts): every option
 * of `Registry.RewardSpec`, by flag or in the `--config` file's `"reward"`
 * entry (a name or expression, or an object of the spec's fields); a flag
 * given overrides the file, the file the defaults.
 *
 *   --reward, --clip-model, --base-url, --reward-model (mllm model name),
 *   --api-key-env, --timeout-ms, --retries, --reward-concurrency,
 *   --requests-per-second, --reward-batch-size
 *
 * @since 0.1.0
 */
import { Option, Result, Schema, SchemaIssue } from "effect"
import { Flag } from "effect/cli"
import * as Registry from "../reward/Registry.ts"
import { ConfigError } from "../sharpen/SharpenConfig.ts"

export const DEFAULT_REWARD = "clip"
export { DEFAULT_CLIP_MODEL } from "./Setup.ts"
import { DEFAULT_CLIP_MODEL } from "./Setup.ts"

export const flags = {
  reward: Flag.String("reward").pipe(
    Flag.withDescription(`reward name or expression (${Registry.REWARD_NAMES.join(", ")}; e.g. 0.7*compositional-dense+0.3*aesthetic) (default ${DEFAULT_REWARD})`),
    Flag.optional
  ),
  clipModel: Flag.String("clip-model").pipe(Flag.withDescription(`clip model directory, reward and evaluation (default ${DEFAULT_CLIP_MODEL})`), Flag.optional),
  baseUrl: Flag.String("base-url").pipe(Flag.withDescription("mllm: API base URL; http: the reward endpoint"), Flag.optional),
  rewardModel: Flag.String("reward-model").pipe(Flag.withDescription("mllm: chat model name (default gpt-4o)"), Flag.optional),
  apiKeyEnv: Flag.String("api-key-env").pipe(Flag.withDescription("mllm/http: environment variable holding the API key"), Flag.optional),
  timeoutMs: Flag.Finite("timeout-ms").pipe(Flag.withDescription("mllm/http: per-request timeout in ms (default 60000)"), Flag.optional),
  retries: Flag.Int("retries").pipe(Flag.withDescription("mllm/http: retries on unreachable/timeout/429/5xx (default 3)"), Flag.optional),
  rewardConcurrency: Flag.Int("reward-concurrency").pipe(Flag.withDescription("mllm/http: requests in flight"), Flag.optional),
  requestsPerSecond: Flag.Finite("requests-per-second").pipe(Flag.withDescription("mllm/http: rate limit (0 = none)"), Flag.optional),
  rewardBatchSize: Flag.Int("reward-batch-size").pipe(Flag.withDescription("http: images per request; clip: images per forward pass"), Flag.optional)
}

type Flags = { readonly [K in keyof typeof flags]: Option.Option<string | number> }

// Flag name -> RewardSpec field.
const FIELDS: Readonly<Record<keyof typeof flags, keyof Registry.RewardSpec>> = {
  reward: "reward",
  clipModel: "modelDir",
  baseUrl: "baseUrl",
  rewardModel: "model",
  apiKeyEnv: "apiKeyEnv",
  timeoutMs: "timeoutMs",
  retries: "retries",
  rewardConcurrency: "concurrency",
  requestsPerSecond: "requestsPerSecond",
  rewardBatchSize: "batchSize"
}

/**
 * The reward spec from defaults <- the config file's `"reward"` entry (if
 * any) <- flags, validated; an error names the file and the field.
 *
 * @since 0.1.0
 */
export const spec = (f: Flags, fromFile: unknown, file?: string): Result.Result<Registry.RewardSpec, ConfigError> => {
  const merged: Record<string, unknown> = { reward: DEFAULT_REWARD, modelDir: DEFAULT_CLIP_MODEL }
  if (typeof fromFile === "string") merged.reward = fromFile
  else if (fromFile !== null && typeof fromFile === "object" && !Array.isArray(fromFile)) {
    for (const [k, v] of Object.entries(fromFile)) {
      if (!(k in Registry.RewardSpec.fields)) {
        return Result.fail(
          new ConfigError({ file, field: `reward.${k}`, message: `unknown reward option "${k}" (one of ${Object.keys(Registry.RewardSpec.fields).join(", ")})` })
        )
      }
      merged[k] = v
    }
  } else if (fromFile !== undefined) {
    return Result.fail(new ConfigError({ file, field: "reward", message: "\"reward\" must be a reward name or expression, or an object of reward options" }))
  }
  for (const [flag, field] of Object.entries(FIELDS) as Array<[keyof typeof flags, string]>) {
    const v = f[flag]
    if (Option.isSome(v)) merged[field] = v.value
  }
  const r = Schema.decodeUnknownResult(Registry.RewardSpec)(merged)
  if (Result.isSuccess(r)) return Result.succeed(r.success)
  const text = SchemaIssue.makeFormatterDefault()(r.failure.issue)
  const field = /\["?([A-Za-z0-9]+)"?\]/.exec(text)?.[1]
  return Result.fail(new ConfigError({ file, field: field === undefined ? "reward" : `reward.${field}`, message: text.split("\n").join(" ") }))
}
