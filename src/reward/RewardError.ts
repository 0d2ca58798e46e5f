/**
 * Typed reward failures: a reward either answers one finite number per image
 * or fails with one of these, never with a silent zero.
 *
 * Every error names the reward (`reward`, its metadata name) and carries a
 * one-line `message`; location fields (`url`, `field`, `index`) are what the
 * CLIs print after the message (see `src/cli/Main.ts`).
 *
 * - `RewardUnavailable`: the reward cannot be reached (connection refused,
 *   DNS failure, reset), after retries.
 * - `RewardTimeout`: one call took longer than its timeout, after retries.
 * - `RewardRejected`: the server answered HTTP 4xx/5xx (after retries for
 *   429/5xx), with an excerpt of the body.
 * - `RewardProtocolError`: the answer is unusable: bad JSON, a missing or
 *   ill-typed field, the wrong number of rewards, a non-finite reward. `field`
 *   names the offending field (e.g. `rewards`, `overall_score`) and `index`
 *   the image.
 * - `RewardInputError`: the caller passed a bad batch: images and prompts of
 *   different lengths, an image of the wrong size or with non-finite values,
 *   or a prompt the reward cannot read.
 * - `RewardConfigError`: a reward cannot be built from its options (unknown
 *   name, missing URL, API-key variable not set, invalid option values).
 *
 * @since 0.1.0
 */
import { Effect, Schema, SchemaIssue } from "effect"

/**
 * The reward's server cannot be reached (after retries).
 *
 * @since 0.1.0
 */
export class RewardUnavailable extends Schema.TaggedError<RewardUnavailable>()("RewardUnavailable", {
  reward: Schema.String,
  url: Schema.String,
  message: Schema.String
}) {}

/**
 * A reward call exceeded its timeout (after retries).
 *
 * @since 0.1.0
 */
export class RewardTimeout extends Schema.TaggedError<RewardTimeout>()("RewardTimeout", {
  reward: Schema.String,
  url: Schema.optionalKey(Schema.String),
  timeoutMs: Schema.Number,
  message: Schema.String
}) {}

/**
 * The reward's server answered with an HTTP error status (after retries for
 * retryable statuses). `body` is an excerpt of the response body.
 *
 * @since 0.1.0
 */
export class RewardRejected extends Schema.TaggedError<RewardRejected>()("RewardRejected", {
  reward: Schema.String,
  url: Schema.String,
  status: Schema.Int,
  body: Schema.String,
  message: Schema.String
}) {}

/**
 * The reward answered something unusable. `field` names the field (e.g.
 * `rewards`, `body`, `overall_score`), `index` the image when it concerns one.
 *
 * @since 0.1.0
 */
export class RewardProtocolError extends Schema.TaggedError<RewardProtocolError>()("RewardProtocolError", {
  reward: Schema.String,
  url: Schema.optionalKey(Schema.String),
  field: Schema.String,
  index: Schema.optionalKey(Schema.Int),
  message: Schema.String
}) {}

/**
 * The batch given to a reward is malformed (lengths, image size, non-finite
 * pixels, unreadable prompt). `field` is `images` or `prompts`.
 *
 * @since 0.1.0
 */
export class RewardInputError extends Schema.TaggedError<RewardInputError>()("RewardInputError", {
  reward: Schema.String,
  field: Schema.String,
  index: Schema.optionalKey(Schema.Int),
  message: Schema.String
}) {}

/**
 * A reward cannot be built from its options. `field` names the option.
 *
 * @since 0.1.0
 */
export class RewardConfigError extends Schema.TaggedError<RewardConfigError>()("RewardConfigError", {
  reward: Schema.String,
  field: Schema.optionalKey(Schema.String),
  path: Schema.optionalKey(Schema.String),
  message: Schema.String
}) {}

/**
 * Everything `Reward.score` may fail with.
 *
 * @since 0.1.0
 */
export const RewardError = Schema.Union([
  RewardUnavailable,
  RewardTimeout,
  RewardRejected,
  RewardProtocolError,
  RewardInputError
])
export type RewardError =
  | RewardUnavailable
  | RewardTimeout
  | RewardRejected
  | RewardProtocolError
  | RewardInputError

/**
 * Whether an error is worth retrying: unreachable, timed out, or rejected
 * with 408, 429 or 5xx. Protocol and input errors are not (a retry would get
 * the same answer).
 *
 * @since 0.1.0
 */
export const isRetryable = (e: RewardError): boolean =>
  e._tag === "RewardUnavailable" ||
  e._tag === "RewardTimeout" ||
  (e._tag === "RewardRejected" && (e.status === 408 || e.status === 429 || e.status >= 500))

/**
 * Decodes options with a Schema, failing with a one-line `RewardConfigError`.
 *
 * @since 0.1.0
 */
export const decodeOptions = <S extends Schema.Decoder<unknown>>(schema: S, input: unknown, reward: string) =>
  Effect.suspend(() => {
    const r = Schema.decodeUnknownResult(schema)(input)
    if (r._tag === "Success") return Effect.succeed(r.success as S["Type"])
    const message = SchemaIssue.makeFormatterDefault()(r.failure.issue).split("\n").map((l) => l.trim()).join(" ")
    return Effect.fail(new RewardConfigError({ reward, message: `invalid options: ${message}` }))
  })
