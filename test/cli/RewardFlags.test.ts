import { assert, describe, it } from "@effect/vitest"
import { Option, Result } from "effect"
import * as RewardFlags from "../../src/cli/RewardFlags.ts"
import { ConfigError } from "../../src/sharpen/SharpenConfig.ts"

const none = {
  reward: Option.none(),
  clipModel: Option.none(),
  baseUrl: Option.none(),
  rewardModel: Option.none(),
  apiKeyEnv: Option.none(),
  timeoutMs: Option.none(),
  retries: Option.none(),
  rewardConcurrency: Option.none(),
  requestsPerSecond: Option.none(),
  rewardBatchSize: Option.none()
}

/** The error of a failed decode (a success fails the test). */
const failureOf = <A, E>(r: Result.Result<A, E>): E => (Result.isSuccess(r) ? assert.fail(`expected a failure, got ${JSON.stringify(r.success)}`) : r.failure)

describe("RewardFlags", () => {
  it("defaults <- the config file's reward entry <- flags, every RewardSpec option", () => {
    assert.deepStrictEqual(Result.getOrThrow(RewardFlags.spec(none, undefined)), { reward: "clip", modelDir: "models/shapeworld-clip" })
    assert.deepStrictEqual(Result.getOrThrow(RewardFlags.spec(none, "aesthetic")), { reward: "aesthetic", modelDir: "models/shapeworld-clip" })
    const file = { reward: "mllm", baseUrl: "http://x/v1", model: "m", apiKeyEnv: "KEY", timeoutMs: 5000, retries: 1, concurrency: 2, requestsPerSecond: 3, batchSize: 4 }
    assert.deepStrictEqual(Result.getOrThrow(RewardFlags.spec(none, file)), { ...file, modelDir: "models/shapeworld-clip" })
    const flags = {
      ...none,
      reward: Option.some("http"),
      clipModel: Option.some("c"),
      baseUrl: Option.some("http://y/score"),
      rewardModel: Option.some("n"),
      apiKeyEnv: Option.some("OTHER"),
      timeoutMs: Option.some(100),
      retries: Option.some(0),
      rewardConcurrency: Option.some(8),
      requestsPerSecond: Option.some(0),
      rewardBatchSize: Option.some(16)
    }
    assert.deepStrictEqual(Result.getOrThrow(RewardFlags.spec(flags, file)), {
      reward: "http",
      modelDir: "c",
      baseUrl: "http://y/score",
      model: "n",
      apiKeyEnv: "OTHER",
      timeoutMs: 100,
      retries: 0,
      concurrency: 8,
      requestsPerSecond: 0,
      batchSize: 16
    })
  })

  it("an unknown or invalid option is a ConfigError naming the file and field", () => {
    const unknown = failureOf(RewardFlags.spec(none, { reward: "http", timeout: 5 }, "c.json"))
    assert.instanceOf(unknown, ConfigError)
    assert.strictEqual(unknown.field, "reward.timeout")
    assert.strictEqual(unknown.file, "c.json")
    const invalid = failureOf(RewardFlags.spec({ ...none, retries: Option.some(-1) }, undefined))
    assert.instanceOf(invalid, ConfigError)
    assert.strictEqual(invalid.field, "reward.retries")
    assert.instanceOf(failureOf(RewardFlags.spec(none, 3)), ConfigError)
  })
})
