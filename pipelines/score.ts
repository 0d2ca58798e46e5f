/**
 * Score a directory of images with any reward.
 *
 *   npx tsx pipelines/score.ts --reward compositional \
 *     --prompts data/eval/prompts-seen.txt --images out/seen
 *
 *   npx tsx pipelines/score.ts --reward mllm --model gpt-4o \
 *     --api-key-env OPENAI_API_KEY --prompts p.txt --images out/seen
 *
 *   npx tsx pipelines/score.ts --reward http --base-url http://127.0.0.1:8000/score ...
 *
 * Reads IMAGES/0000.png, 0001.png, ... (one per non-empty prompt line, in
 * order; extra files are ignored), prints one JSON line per image
 * `{"index": i, "prompt": "...", "reward": r}` and then a summary line
 * `{"summary": {"reward", "n", "mean", "std", "min", "max", "range", "seconds"}}`
 * (unbounded range ends are null). `--reward` also takes a weighted
 * expression such as `0.7*compositional-dense+0.3*aesthetic`. On failure:
 * one line `error: ...` naming the cause (path, URL, field, index) on
 * stderr, exit code 1. Logs go to stderr, so stdout is only JSON lines.
 */
import { Console, Effect, FileSystem, Logger, Option, Path, Schema } from "effect"
import { Command, Flag } from "effect/cli"
import { PromptFileError } from "../src/io/Inputs.ts"
import * as Main from "../src/cli/Main.ts"
import { fromBytes } from "../src/data/Image.ts"
import * as Png from "../src/data/Png.ts"
import * as Stats from "../src/math/Stats.ts"
import * as Registry from "../src/reward/Registry.ts"
import { Reward } from "../src/reward/Reward.ts"

/**
 * The images directory or one of its files is missing.
 */
class ImagesError extends Schema.TaggedError<ImagesError>()("ImagesError", {
  path: Schema.String,
  message: Schema.String
}) {}

/** Non-empty lines of a prompt file (a trailing "\r" dropped), as Prompt.ts reads them. */
const readPromptLines = Effect.fn("score.readPromptLines")(function*(path: string) {
  const fs = yield* FileSystem.FileSystem
  if (!(yield* fs.exists(path).pipe(Effect.orElseSucceed(() => false)))) {
    return yield* new PromptFileError({ path, message: "prompt file does not exist" })
  }
  const text = yield* fs.readFileString(path).pipe(
    Effect.mapError((e) => new PromptFileError({ path, message: `cannot read: ${e.message.split("\n")[0]}` }))
  )
  const lines = text.split("\n").map((l) => (l.endsWith("\r") ? l.slice(0, -1) : l)).filter((l) => l !== "")
  if (lines.length === 0) return yield* new PromptFileError({ path, message: "prompt file has no prompts (only empty lines)" })
  return lines
})

const readImages = Effect.fn("score.readImages")(function*(dir: string, prompts: ReadonlyArray<string>) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const info = yield* fs.stat(dir).pipe(Effect.option)
  if (Option.isNone(info) || info.value.type !== "Directory") {
    return yield* new ImagesError({ path: dir, message: "images directory does not exist" })
  }
  const images: Array<Float32Array> = []
  for (let i = 0; i < prompts.length; i++) {
    const file = path.join(dir, `${String(i).padStart(4, "0")}.png`)
    if (!(yield* fs.exists(file).pipe(Effect.orElseSucceed(() => false)))) {
      return yield* new ImagesError({
        path: file,
        message: `missing image ${i} for prompt ${JSON.stringify(prompts[i])} (${prompts.length} prompts need 0000.png..${String(prompts.length - 1).padStart(4, "0")}.png)`
      })
    }
    images.push(fromBytes(yield* Png.readPng(file), "unit"))
  }
  return images
})

const summarize = (rewards: ReadonlyArray<number>) => {
  const n = rewards.length
  const { mean, std } = Stats.meanStd(rewards, NaN)
  return { n, mean, std, min: Math.min(...rewards), max: Math.max(...rewards) }
}

const optional = <A>(o: Option.Option<A>): A | undefined => (Option.isSome(o) ? o.value : undefined)

const command = Command.make(
  "score",
  {
    reward: Flag.String("reward").pipe(
      Flag.withDescription(`reward name (${Registry.REWARD_NAMES.join(", ")}) or expression like 0.7*compositional-dense+0.3*aesthetic`)
    ),
    prompts: Flag.String("prompts").pipe(Flag.withDescription("prompt file, one prompt per line")),
    images: Flag.String("images").pipe(Flag.withDescription("directory with 0000.png, 0001.png, ... (one per prompt)")),
    baseUrl: Flag.String("base-url").pipe(Flag.withDescription("mllm: API base URL (default OpenAI); http: the reward endpoint"), Flag.optional),
    model: Flag.String("model").pipe(Flag.withDescription("mllm: chat model name (default gpt-4o)"), Flag.optional),
    apiKeyEnv: Flag.String("api-key-env").pipe(Flag.withDescription("mllm/http: environment variable holding the API key"), Flag.optional),
    clipModel: Flag.String("clip-model").pipe(Flag.withDescription("clip: model directory (default models/shapeworld-clip)"), Flag.optional),
    timeoutMs: Flag.Int("timeout-ms").pipe(Flag.withDescription("mllm/http: per-request timeout in ms"), Flag.optional),
    retries: Flag.Int("retries").pipe(Flag.withDescription("mllm/http: retries on unreachable/timeout/429/5xx"), Flag.optional),
    concurrency: Flag.Int("concurrency").pipe(Flag.withDescription("mllm/http: requests in flight"), Flag.optional),
    requestsPerSecond: Flag.Finite("requests-per-second").pipe(Flag.withDescription("mllm/http: rate limit (0 = none)"), Flag.optional),
    batchSize: Flag.Int("batch-size").pipe(Flag.withDescription("http: images per request; clip: images per forward pass"), Flag.optional),
    backend: Flag.String("backend").pipe(
      Flag.withDescription("clip: tensor backend (auto, tensorflow-gpu, tensorflow, webgpu, wasm, cpu; default SHARPEN_BACKEND or auto)"),
      Flag.optional
    )
  },
  Effect.fn(function*(f) {
    const terms = yield* Effect.fromResult(Registry.parseExpression(f.reward))
    const prompts = yield* readPromptLines(f.prompts)
    const images = yield* readImages(f.images, prompts)
    const spec: Registry.RewardSpec = Object.fromEntries(
      Object.entries({
        reward: f.reward,
        baseUrl: optional(f.baseUrl),
        model: optional(f.model),
        apiKeyEnv: optional(f.apiKeyEnv),
        modelDir: optional(f.clipModel),
        timeoutMs: optional(f.timeoutMs),
        retries: optional(f.retries),
        concurrency: optional(f.concurrency),
        requestsPerSecond: optional(f.requestsPerSecond),
        batchSize: optional(f.batchSize)
      }).filter(([, v]) => v !== undefined)
    ) as Registry.RewardSpec
    const started = Date.now()
    const score = Effect.gen(function*() {
      const reward = yield* Reward
      const rewards = yield* reward.score(images, prompts)
      for (let i = 0; i < rewards.length; i++) {
        yield* Console.log(JSON.stringify({ index: i, prompt: prompts[i], reward: rewards[i] }))
      }
      const [lo, hi] = reward.metadata.range
      yield* Console.log(JSON.stringify({
        summary: {
          reward: reward.metadata.name,
          ...summarize(rewards),
          range: [Number.isFinite(lo) ? lo : null, Number.isFinite(hi) ? hi : null],
          seconds: (Date.now() - started) / 1000
        }
      }))
    }).pipe(Effect.provide(Registry.layerNode(spec)))
    if (!Registry.needsBackend(terms)) return yield* score
    // Only clip needs the tensor runtime; load it on demand (it is slow to import).
    const { Backend } = yield* Effect.promise(() => import("../src/tensor/Backend.ts"))
    const backend = optional(f.backend) ?? (process.env.SHARPEN_BACKEND || "auto")
    return yield* score.pipe(Effect.provide(Backend.make(backend as Parameters<typeof Backend.make>[0])))
  }, (effect) => effect.pipe(Effect.provideService(Logger.LogToStderr, true)))
).pipe(Command.withDescription("Score IMAGES/0000.png, ... against their prompts with a reward; prints JSON lines."))

Main.run(command)
