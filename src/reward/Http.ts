/**
 * `http`: a reward computed by any server speaking the project's reward
 * protocol (e.g. a Python process wrapping ImageReward or PickScore; see
 * docs/rewards.md).
 *
 * Protocol: `POST <url>` with `Content-Type: application/json` and body
 *
 *     {"prompts": ["a red square", ...], "images": ["<base64 PNG>", ...]}
 *
 * (images are 32 x 32 RGB PNGs, base64 without a `data:` prefix, in prompt
 * order), answered with status 200 and
 *
 *     {"rewards": [0.73, ...]}
 *
 * one finite number per image, in order. Extra fields are ignored. With
 * `apiKeyEnv`, the request carries `Authorization: Bearer <value of that
 * environment variable>`.
 *
 * Big batches are split into requests of at most `batchSize` images, at most
 * `concurrency` in flight. Each request has a timeout and is retried with
 * exponential backoff when the server is unreachable, times out or answers
 * 408/429/5xx (Combinators.withPolicy); other 4xx fail at once. Failures:
 * `RewardUnavailable` (cannot connect), `RewardTimeout`, `RewardRejected`
 * (status + body excerpt), `RewardProtocolError` (bad JSON, missing
 * `rewards`, wrong length, non-finite entry; names the field and the image
 * index in the whole batch).
 *
 * This module also holds the JSON-over-HTTP plumbing the MLLM grader uses.
 *
 * @since 0.1.0
 */
import { Config, Effect, Layer, Redacted, Schema } from "effect"
import { HttpClient, HttpClientRequest } from "effect/http"
import { encodePng } from "../data/Png.ts"
import { defaultRemotePolicy, makeRateLimiter, withPolicy } from "./Combinators.ts"
import { make as makeReward, Reward, type RewardService } from "./Reward.ts"
import {
  decodeOptions,
  RewardConfigError,
  type RewardError,
  RewardProtocolError,
  RewardRejected,
  RewardUnavailable
} from "./RewardError.ts"

// ---------------------------------------------------------------- shared plumbing

/**
 * One line of at most `max` characters (for error messages).
 *
 * @since 0.1.0
 */
export const excerpt = (text: string, max = 200): string => {
  const line = text.replace(/\s+/g, " ").trim()
  return line.length <= max ? line : `${line.slice(0, max)}...`
}

/** The innermost message of a fetch failure (e.g. "connect ECONNREFUSED 127.0.0.1:9"). */
const rootCause = (e: unknown): string => {
  let cur: unknown = e
  let message = ""
  for (let depth = 0; depth < 6 && cur !== undefined && cur !== null; depth++) {
    if (typeof cur === "object" && "message" in cur && typeof cur.message === "string" && cur.message !== "") {
      message = cur.message
    }
    cur = typeof cur === "object" && "cause" in cur ? cur.cause : undefined
  }
  return message
}

/**
 * Reads an API key from the environment variable `name` (through Effect's
 * `Config`, so tests can provide a `ConfigProvider`).
 *
 * @since 0.1.0
 */
export const readApiKey = (name: string, reward: string): Effect.Effect<Redacted.Redacted<string>, RewardConfigError> =>
  Config.schema(Schema.Redacted(Schema.NonEmptyString), name).pipe(
    Effect.mapError(() =>
      new RewardConfigError({
        reward,
        field: "apiKeyEnv",
        message: `environment variable ${name} (named by apiKeyEnv) is not set or empty`
      })
    )
  )

/**
 * Checks that a URL is absolute http(s).
 *
 * @since 0.1.0
 */
export const checkUrl = (url: string, reward: string, field: string): Effect.Effect<string, RewardConfigError> => {
  try {
    const u = new URL(url)
    if (u.protocol === "http:" || u.protocol === "https:") return Effect.succeed(url)
  } catch {
    // falls through
  }
  return Effect.fail(new RewardConfigError({ reward, field, message: `"${url}" is not an http(s) URL` }))
}

/**
 * One JSON POST: connects, reads the whole answer, maps transport failures
 * to `RewardUnavailable`, HTTP >= 400 to `RewardRejected` (with a body
 * excerpt) and unparsable bodies to `RewardProtocolError` (field `body`).
 * No timeout or retry here: wrap with `withPolicy`.
 *
 * @since 0.1.0
 */
export const postJson = (
  client: HttpClient.HttpClient,
  options: {
    readonly reward: string
    readonly url: string
    readonly body: unknown
    readonly apiKey?: Redacted.Redacted<string> | undefined
  }
): Effect.Effect<unknown, RewardError> => {
  const { reward, url } = options
  let request = HttpClientRequest.post(url).pipe(
    HttpClientRequest.acceptJson,
    HttpClientRequest.bodyText(JSON.stringify(options.body), "application/json")
  )
  if (options.apiKey !== undefined) request = HttpClientRequest.bearerToken(request, Redacted.value(options.apiKey))
  const lost = (e: unknown) =>
    new RewardUnavailable({ reward, url, message: `cannot reach ${url}${rootCause(e) ? `: ${rootCause(e)}` : ""}` })
  return client.execute(request).pipe(
    Effect.mapError(lost),
    Effect.flatMap((response) =>
      response.text.pipe(
        Effect.mapError(lost),
        Effect.flatMap((text): Effect.Effect<unknown, RewardError> => {
          if (response.status >= 400) {
            return Effect.fail(
              new RewardRejected({
                reward,
                url,
                status: response.status,
                body: excerpt(text),
                message: `HTTP ${response.status} from ${url}: ${excerpt(text) || "(empty body)"}`
              })
            )
          }
          try {
            return Effect.succeed(JSON.parse(text))
          } catch (e) {
            return Effect.fail(
              new RewardProtocolError({
                reward,
                url,
                field: "body",
                message: `answer is not JSON (${(e as Error).message}): ${excerpt(text, 120)}` +
                  (/\bNaN\b|\bInfinity\b/.test(text) ? " (NaN/Infinity are not JSON: send finite numbers)" : "")
              })
            )
          }
        })
      )
    )
  )
}

// ---------------------------------------------------------------- the http reward

const Int = (min: number) => Schema.Int.check(Schema.isGreaterThanOrEqualTo(min))
const NonNegative = Schema.Number.check(Schema.isGreaterThanOrEqualTo(0))
const withDefault = <S extends Schema.Top>(schema: S, value: S["Encoded"]) =>
  schema.pipe(Schema.withDecodingDefaultKey(Effect.succeed(value)))

/**
 * Options of the `http` reward (defaults in brackets).
 *
 * @since 0.1.0
 */
export const HttpRewardOptions = Schema.Struct({
  /** The endpoint that answers the POST. */
  url: Schema.String,
  /** Metadata name ["http"]. */
  name: withDefault(Schema.String, "http"),
  /** Metadata range [[-Infinity, Infinity]]. */
  range: withDefault(Schema.Tuple([Schema.Number, Schema.Number]), [-Infinity, Infinity]),
  /** Metadata relative cost [50]. */
  relativeCost: withDefault(NonNegative, 50),
  /** Images per request [32]. */
  batchSize: withDefault(Int(1), 32),
  /** Requests in flight [2]. */
  concurrency: withDefault(Int(1), 2),
  /** Environment variable holding a bearer token (none by default). */
  apiKeyEnv: Schema.optionalKey(Schema.String),
  /** Per-request timeout, ms [60000]. */
  timeoutMs: withDefault(Schema.Number.check(Schema.isGreaterThan(0)), defaultRemotePolicy.timeoutMs),
  /** Retries of retryable failures [3]. */
  retries: withDefault(Int(0), defaultRemotePolicy.retries),
  /** First backoff, ms [500]; doubles per retry. */
  backoffMs: withDefault(NonNegative, defaultRemotePolicy.backoffMs),
  /** Backoff cap, ms [10000]. */
  maxBackoffMs: withDefault(NonNegative, defaultRemotePolicy.maxBackoffMs),
  /** Request starts per second, 0 = unlimited [0]. */
  requestsPerSecond: withDefault(NonNegative, 0)
})
export type HttpRewardOptions = typeof HttpRewardOptions.Type
export type HttpRewardInput = typeof HttpRewardOptions.Encoded

/**
 * The wire format of the answer (extra fields ignored; entries are checked
 * one by one so that errors name the index).
 *
 * @since 0.1.0
 */
export const HttpRewardResponse = Schema.Struct({ rewards: Schema.Array(Schema.Unknown) })

/**
 * The request body for a batch.
 *
 * @since 0.1.0
 */
export const requestBody = (images: ReadonlyArray<Float32Array>, prompts: ReadonlyArray<string>) => ({
  prompts,
  images: images.map((img) => encodePng(img).toString("base64"))
})

/**
 * Checks a decoded answer for `n` images starting at `offset` in the batch.
 *
 * @since 0.1.0
 */
export const decodeRewards = (
  json: unknown,
  n: number,
  offset: number,
  context: { readonly reward: string; readonly url: string }
): Effect.Effect<ReadonlyArray<number>, RewardProtocolError> => {
  const fail = (message: string, index?: number) =>
    Effect.fail(
      new RewardProtocolError({ ...context, field: "rewards", ...(index === undefined ? {} : { index }), message })
    )
  const r = Schema.decodeUnknownResult(HttpRewardResponse)(json)
  if (r._tag === "Failure") {
    return fail(`answer has no "rewards" array: ${excerpt(JSON.stringify(json) ?? String(json), 120)}`)
  }
  const rewards = r.success.rewards
  if (rewards.length !== n) return fail(`expected ${n} rewards, got ${rewards.length}`)
  for (let i = 0; i < n; i++) {
    const v = rewards[i]
    if (typeof v !== "number" || !Number.isFinite(v)) {
      return fail(`rewards[${i}] of this request (image ${offset + i}) is ${JSON.stringify(v)}, not a finite number`, offset + i)
    }
  }
  return Effect.succeed(rewards as ReadonlyArray<number>)
}

/**
 * The `http` reward service (needs an `HttpClient`, e.g.
 * `FetchHttpClient.layer`).
 *
 * @since 0.1.0
 */
export const make = Effect.fn("Http.make")(function*(
  input: HttpRewardInput
): Effect.fn.Return<RewardService, RewardConfigError, HttpClient.HttpClient> {
  const o = yield* decodeOptions(HttpRewardOptions, input, "http")
  const url = yield* checkUrl(o.url, o.name, "url")
  const apiKey = o.apiKeyEnv === undefined ? undefined : yield* readApiKey(o.apiKeyEnv, o.name)
  const client = yield* HttpClient.HttpClient
  const limiter = yield* makeRateLimiter(o.requestsPerSecond)
  const context = { reward: o.name, url }
  const request = (images: ReadonlyArray<Float32Array>, prompts: ReadonlyArray<string>, offset: number) =>
    withPolicy(
      Effect.flatMap(
        postJson(client, { ...context, body: requestBody(images, prompts), apiKey }),
        (json) => decodeRewards(json, images.length, offset, context)
      ),
      o,
      { ...context, limiter }
    )
  return makeReward(
    { name: o.name, range: o.range, differentiable: false, relativeCost: o.relativeCost },
    (images, prompts) => {
      const starts = Array.from({ length: Math.ceil(images.length / o.batchSize) }, (_, k) => k * o.batchSize)
      return Effect.forEach(
        starts,
        (s) => request(images.slice(s, s + o.batchSize), prompts.slice(s, s + o.batchSize), s),
        { concurrency: o.concurrency }
      ).pipe(Effect.map((parts) => parts.flat()))
    }
  )
})

/**
 * The `http` reward as a layer.
 *
 * @since 0.1.0
 */
export const layer = (input: HttpRewardInput): Layer.Layer<Reward, RewardConfigError, HttpClient.HttpClient> =>
  Layer.effect(Reward, make(input))

