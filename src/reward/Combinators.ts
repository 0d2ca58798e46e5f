/**
 * Reward combinators: build new rewards from existing ones.
 *
 * - `weightedSum`: sum_i w_i * r_i (terms scored concurrently);
 * - `clamp`: clip to [min, max];
 * - `normalized`: per-prompt normalisation with a DDPO-style `StatTracker`
 *   whose state is a Schema value for checkpoints;
 * - `cached`: memoise by (image hash, prompt), LRU-bounded, deduplicating
 *   repeated pairs within a batch;
 * - `batched`: split big batches into chunks scored with a concurrency limit;
 * - `remote`: per-call timeout, retry with exponential backoff (Effect
 *   `Schedule`) and a rate limit; `withPolicy` applies the same to any single
 *   request effect (the HTTP and MLLM rewards use it per request).
 *
 * Combinators act on service values (`RewardService`); `mapLayer` applies one
 * to the reward a layer provides. Stateful combinators (`cached`, `remote`)
 * return an `Effect` that creates their state.
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Context, Duration, Effect, Layer, Ref, Schedule, Schema, SchemaIssue } from "effect"
import { createHash } from "node:crypto"
import { meanStd } from "../math/Stats.ts"
import { make, Reward, type RewardMetadata, type RewardService } from "./Reward.ts"
import { isRetryable, type RewardError, RewardTimeout } from "./RewardError.ts"

// ---------------------------------------------------------------- weighted sum, clamp

/**
 * One term of a weighted sum.
 *
 * @since 0.1.0
 */
export interface WeightedTerm {
  readonly reward: RewardService
  readonly weight: number
}

const formatWeight = (w: number) => (Number.isInteger(w) ? String(w) : String(Number(w.toPrecision(6))))

/**
 * sum_i w_i * r_i. Range: the sum of each term's range scaled by its weight
 * (flipped for negative weights); differentiable when every term is;
 * relative cost: the sum. Default name "w1*name1+w2*name2...". Terms are
 * scored concurrently (`concurrency`, default all at once).
 *
 * @since 0.1.0
 */
export const weightedSum = (
  terms: ReadonlyArray<WeightedTerm>,
  options: { readonly name?: string; readonly concurrency?: number | "unbounded" } = {}
): RewardService => {
  if (terms.length === 0) throw new RangeError("weightedSum needs at least one term")
  const bad = terms.find((t) => !Number.isFinite(t.weight))
  if (bad !== undefined) throw new RangeError(`weight of ${bad.reward.metadata.name} is ${bad.weight}, not finite`)
  const scaled = (t: WeightedTerm): [number, number] => {
    const [lo, hi] = t.reward.metadata.range
    // 0 * Infinity is NaN: a zero weight contributes exactly 0.
    if (t.weight === 0) return [0, 0]
    return t.weight > 0 ? [t.weight * lo, t.weight * hi] : [t.weight * hi, t.weight * lo]
  }
  const range = terms.map(scaled).reduce<[number, number]>((a, b) => [a[0] + b[0], a[1] + b[1]], [0, 0])
  const differentiable = terms.every((t) => t.reward.metadata.differentiable && t.reward.scoreTensor !== undefined)
  const metadata: RewardMetadata = {
    name: options.name ?? terms.map((t) => (t.weight === 1 ? t.reward.metadata.name : `${formatWeight(t.weight)}*${t.reward.metadata.name}`)).join("+"),
    range,
    differentiable,
    relativeCost: terms.reduce((s, t) => s + t.reward.metadata.relativeCost, 0)
  }
  const concurrency = options.concurrency ?? "unbounded"
  return make(
    metadata,
    (images, prompts) =>
      Effect.forEach(terms, (t) => t.reward.score(images, prompts), { concurrency }).pipe(
        Effect.map((all) => images.map((_, i) => all.reduce((s, r, k) => s + terms[k].weight * r[i], 0)))
      ),
    differentiable
      ? {
        scoreTensor: (images, prompts) =>
          tf.tidy(() => tf.sum(tf.stack(terms.map((t) => tf.mul(t.reward.scoreTensor!(images, prompts), t.weight))), 0) as tf.Tensor1D)
      }
      : {}
  )
}

/**
 * Clips a reward to [min, max].
 *
 * @since 0.1.0
 */
export const clamp = (reward: RewardService, min: number, max: number): RewardService => {
  if (!(min <= max)) throw new RangeError(`clamp needs min <= max, got [${min}, ${max}]`)
  const [lo, hi] = reward.metadata.range
  const clip = (v: number) => (v < min ? min : v > max ? max : v)
  const metadata: RewardMetadata = { ...reward.metadata, range: [clip(lo), clip(hi)] }
  const scoreTensor = reward.scoreTensor
  return make(
    metadata,
    (images, prompts) => Effect.map(reward.score(images, prompts), (rs) => rs.map(clip)),
    scoreTensor === undefined
      ? {}
      : { scoreTensor: (images, prompts) => tf.tidy(() => tf.clipByValue(scoreTensor(images, prompts), min, max) as tf.Tensor1D) }
  )
}

// ---------------------------------------------------------------- per-prompt normalisation

const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))
const NonNegativeInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))

/**
 * Stat tracker options (DDPO's `per_prompt_stat_tracking`): keep the last
 * `bufferSize` rewards per prompt; normalise with the batch's statistics
 * until a prompt has `minCount` of them.
 *
 * @since 0.1.0
 */
export const StatTrackerOptions = Schema.Struct({
  bufferSize: PositiveInt,
  minCount: NonNegativeInt
})
export type StatTrackerOptions = typeof StatTrackerOptions.Type

/**
 * The tracker's full state (goes into training checkpoints): options and the
 * reward buffer of each prompt, oldest first.
 *
 * @since 0.1.0
 */
export const StatTrackerState = Schema.Struct({
  bufferSize: PositiveInt,
  minCount: NonNegativeInt,
  buffers: Schema.Record(Schema.String, Schema.Array(Schema.Finite))
})
export type StatTrackerState = typeof StatTrackerState.Type

/** DDPO's epsilon added to the standard deviation. */
export const STD_EPSILON = 1e-6

/**
 * Statistics of one prompt's buffer.
 *
 * @since 0.1.0
 */
export interface PromptStats {
  readonly mean: number
  readonly std: number
  readonly count: number
}

/**
 * One tracker update, pure: the advantages of a batch and the new buffers.
 * Exactly DDPO's `PerPromptStatTracker.update`: per unique prompt, append its
 * rewards to its buffer (keeping the last `bufferSize`); if the buffer holds
 * fewer than `minCount`, use the whole batch's mean and (population) std,
 * else the buffer's; advantage = (r - mean) / (std + 1e-6).
 *
 * @since 0.1.0
 */
export const updateState = (
  state: StatTrackerState,
  prompts: ReadonlyArray<string>,
  rewards: ReadonlyArray<number>
): { readonly advantages: ReadonlyArray<number>; readonly state: StatTrackerState } => {
  if (prompts.length !== rewards.length) throw new RangeError(`${prompts.length} prompts but ${rewards.length} rewards`)
  const buffers: Record<string, ReadonlyArray<number>> = { ...state.buffers }
  const advantages = new Array<number>(rewards.length)
  const batch = meanStd(rewards) // { mean: 0, std: 0 } for an empty batch
  const unique = [...new Set(prompts)]
  for (const prompt of unique) {
    const idx = prompts.flatMap((p, i) => (p === prompt ? [i] : []))
    const buffer = [...(buffers[prompt] ?? []), ...idx.map((i) => rewards[i])].slice(-state.bufferSize)
    buffers[prompt] = buffer
    const { mean, std } = buffer.length < state.minCount ? batch : meanStd(buffer)
    for (const i of idx) advantages[i] = (rewards[i] - mean) / (std + STD_EPSILON)
  }
  return { advantages, state: { ...state, buffers } }
}

/**
 * The stat tracker service's shape.
 *
 * @since 0.1.0
 */
export interface StatTrackerService {
  /** Records a batch and answers its advantages. */
  readonly update: (prompts: ReadonlyArray<string>, rewards: ReadonlyArray<number>) => Effect.Effect<ReadonlyArray<number>>
  /** The current state (for a checkpoint). */
  readonly state: Effect.Effect<StatTrackerState>
  /** Replaces the state (from a checkpoint). */
  readonly restore: (state: StatTrackerState) => Effect.Effect<void>
  /** Per-prompt mean, std and count of the buffers. */
  readonly stats: Effect.Effect<Readonly<Record<string, PromptStats>>>
}

/**
 * A tracker whose state is held in a `Ref`.
 *
 * @since 0.1.0
 */
export const makeStatTracker = (initial: StatTrackerState | StatTrackerOptions): Effect.Effect<StatTrackerService> =>
  Effect.map(
    Ref.make<StatTrackerState>("buffers" in initial ? initial : { ...initial, buffers: {} }),
    (ref): StatTrackerService => ({
      update: (prompts, rewards) =>
        Ref.modify(ref, (s) => {
          const r = updateState(s, prompts, rewards)
          return [r.advantages, r.state]
        }),
      state: Ref.get(ref),
      restore: (state) => Ref.set(ref, state),
      stats: Effect.map(Ref.get(ref), (s) => {
        const out: Record<string, PromptStats> = {}
        for (const [k, v] of Object.entries(s.buffers)) if (v.length > 0) out[k] = { ...meanStd(v), count: v.length }
        return out
      })
    })
  )

/**
 * The per-prompt stat tracker of a training run.
 *
 * @since 0.1.0
 */
export class StatTracker extends Context.Service<StatTracker, StatTrackerService>()("sharpen/reward/StatTracker") {
  /** A fresh tracker. */
  static readonly layer = (options: StatTrackerOptions): Layer.Layer<StatTracker> =>
    Layer.effect(StatTracker, makeStatTracker(options))
  /** A tracker resumed from checkpointed state. */
  static readonly fromState = (state: StatTrackerState): Layer.Layer<StatTracker> =>
    Layer.effect(StatTracker, makeStatTracker(state))
  /** DDPO's defaults (buffer 16, min count 16). */
  static readonly layerTest: Layer.Layer<StatTracker> = StatTracker.layer({ bufferSize: 16, minCount: 16 })
}

/**
 * Decodes tracker state from unknown JSON (a checkpoint file), with a
 * one-line message on failure.
 *
 * @since 0.1.0
 */
export const decodeStatTrackerState = (json: unknown): StatTrackerState | string => {
  const r = Schema.decodeUnknownResult(StatTrackerState)(json)
  return r._tag === "Success" ? r.success : SchemaIssue.makeFormatterDefault()(r.failure.issue).split("\n").join(" ")
}

/**
 * The reward normalised per prompt: each call records its rewards in the
 * tracker and answers their advantages (so it is stateful: calling it twice
 * on one batch answers differently). Range [-Infinity, Infinity]; not
 * differentiable.
 *
 * @since 0.1.0
 */
export const normalized = (reward: RewardService, tracker: StatTrackerService): RewardService =>
  make(
    { ...reward.metadata, name: `${reward.metadata.name}:normalized`, range: [-Infinity, Infinity], differentiable: false },
    (images, prompts) => Effect.flatMap(reward.score(images, prompts), (rs) => tracker.update(prompts, rs))
  )

// ---------------------------------------------------------------- caching and batching

/**
 * The cache key of an (image, prompt) pair: SHA-256 of the image's float
 * bytes and the prompt.
 *
 * @since 0.1.0
 */
export const imageKey = (image: Float32Array, prompt: string): string =>
  createHash("sha256")
    .update(new Uint8Array(image.buffer, image.byteOffset, image.byteLength))
    .update("\u0000")
    .update(prompt)
    .digest("base64")

/**
 * Memoises a reward by (image hash, prompt), keeping the `maxEntries` most
 * recently used answers (default 10,000). Within a batch, repeated pairs are
 * scored once; only misses reach the reward; failures are not cached.
 *
 * @since 0.1.0
 */
export const cached = (
  reward: RewardService,
  options: { readonly maxEntries?: number } = {}
): Effect.Effect<RewardService> =>
  Effect.sync(() => {
    const maxEntries = options.maxEntries ?? 10_000
    const cache = new Map<string, number>()
    const remember = (k: string, v: number) => {
      cache.delete(k)
      cache.set(k, v)
      while (cache.size > maxEntries) cache.delete(cache.keys().next().value!)
    }
    return make(reward.metadata, (images, prompts) =>
      Effect.suspend(() => {
        const keys = images.map((img, i) => imageKey(img, prompts[i]))
        const missIndex = new Map<string, number>()
        keys.forEach((k, i) => {
          if (!cache.has(k) && !missIndex.has(k)) missIndex.set(k, i)
        })
        const misses = [...missIndex.values()]
        const fill = (fresh: ReadonlyArray<number>) => {
          const got = new Map<string, number>()
          misses.forEach((i, j) => got.set(keys[i], fresh[j]))
          const out = keys.map((k) => {
            const v = got.get(k) ?? cache.get(k)!
            return v
          })
          for (const [k, v] of got) remember(k, v)
          // Refresh recency of hits.
          for (const k of keys) if (!got.has(k) && cache.has(k)) remember(k, cache.get(k)!)
          return out
        }
        if (misses.length === 0) return Effect.succeed(fill([]))
        return Effect.map(reward.score(misses.map((i) => images[i]), misses.map((i) => prompts[i])), fill)
      }))
  })

/**
 * Scores big batches in chunks of at most `batchSize`, at most `concurrency`
 * chunks at a time (default 1), answers in order.
 *
 * @since 0.1.0
 */
export const batched = (
  reward: RewardService,
  options: { readonly batchSize: number; readonly concurrency?: number }
): RewardService => {
  const size = options.batchSize
  if (!(Number.isInteger(size) && size > 0)) throw new RangeError(`batchSize must be a positive integer, got ${size}`)
  return make(reward.metadata, (images, prompts) => {
    const starts = Array.from({ length: Math.ceil(images.length / size) }, (_, k) => k * size)
    return Effect.forEach(
      starts,
      (s) => reward.score(images.slice(s, s + size), prompts.slice(s, s + size)),
      { concurrency: options.concurrency ?? 1 }
    ).pipe(Effect.map((parts) => parts.flat()))
  })
}

// ---------------------------------------------------------------- timeout, retry, rate limit

/**
 * How to call a remote reward: per-attempt timeout, retries with exponential
 * backoff (`backoffMs * 2^k`, capped at `maxBackoffMs`, jittered), and a rate
 * limit (0 = none). Only retryable errors are retried (unreachable, timeout,
 * HTTP 408/429/5xx; see `isRetryable`).
 *
 * @since 0.1.0
 */
export const RemotePolicy = Schema.Struct({
  timeoutMs: Schema.Number.check(Schema.isGreaterThan(0)),
  retries: NonNegativeInt,
  backoffMs: Schema.Number.check(Schema.isGreaterThanOrEqualTo(0)),
  maxBackoffMs: Schema.Number.check(Schema.isGreaterThanOrEqualTo(0)),
  requestsPerSecond: Schema.Number.check(Schema.isGreaterThanOrEqualTo(0))
})
export type RemotePolicy = typeof RemotePolicy.Type

/**
 * 60 s per attempt, 3 retries from 500 ms (capped at 10 s), no rate limit.
 *
 * @since 0.1.0
 */
export const defaultRemotePolicy: RemotePolicy = {
  timeoutMs: 60_000,
  retries: 3,
  backoffMs: 500,
  maxBackoffMs: 10_000,
  requestsPerSecond: 0
}

/**
 * A rate limiter: `take` waits until the caller may start a request.
 *
 * @since 0.1.0
 */
export interface RateLimiter {
  readonly take: Effect.Effect<void>
}

/**
 * Evenly spaced admissions: at most `requestsPerSecond` starts per second
 * (one every 1000 / rps ms, no bursts); 0 means unlimited.
 *
 * @since 0.1.0
 */
export const makeRateLimiter = (requestsPerSecond: number): Effect.Effect<RateLimiter> => {
  if (!(requestsPerSecond > 0)) return Effect.succeed({ take: Effect.void })
  const interval = 1000 / requestsPerSecond
  return Effect.map(Ref.make(0), (next) => ({
    take: Effect.clockWith((clock) =>
      Effect.flatMap(
        Ref.modify(next, (at) => {
          const now = clock.currentTimeMillisUnsafe()
          const start = Math.max(now, at)
          return [start - now, start + interval]
        }),
        (wait) => (wait > 0 ? Effect.sleep(Duration.millis(wait)) : Effect.void)
      )
    )
  }))
}

/**
 * The retry schedule of a policy.
 *
 * @since 0.1.0
 */
export const retrySchedule = (policy: RemotePolicy) =>
  Schedule.min([Schedule.exponential(Duration.millis(policy.backoffMs)), Schedule.spaced(Duration.millis(policy.maxBackoffMs))]).pipe(
    Schedule.jittered
  )

/**
 * Applies a policy to one request effect: wait for the rate limiter, time
 * out each attempt (`RewardTimeout` naming `reward` and `url`), retry
 * retryable errors with exponential backoff; the last error propagates.
 * Every failed attempt logs a warning line (what failed, retrying or giving
 * up). All of it is interruptible: an interruption aborts the request.
 *
 * @since 0.1.0
 */
export const withPolicy = <A, R>(
  request: Effect.Effect<A, RewardError, R>,
  policy: RemotePolicy,
  context: { readonly reward: string; readonly url?: string; readonly limiter?: RateLimiter }
): Effect.Effect<A, RewardError, R> => {
  const timeout = new RewardTimeout({
    reward: context.reward,
    ...(context.url === undefined ? {} : { url: context.url }),
    timeoutMs: policy.timeoutMs,
    message: `no answer within ${policy.timeoutMs} ms${policy.retries > 0 ? ` (${policy.retries + 1} attempts)` : ""}`
  })
  // The timeout covers the request, not the wait for the rate limiter.
  const attempt = (context.limiter?.take ?? Effect.void).pipe(
    Effect.andThen(
      request.pipe(Effect.timeoutOrElse({ duration: Duration.millis(policy.timeoutMs), orElse: () => Effect.fail(timeout) }))
    )
  )
  // One line per failed attempt (a timeout or a retry), so that a slow or
  // hung server is visible on the progress output, not only after the last try.
  const where = `${context.reward}${context.url === undefined ? "" : ` (${context.url})`}`
  return Effect.suspend(() => {
    // Attempts of this call (the returned effect may run many times).
    let n = 0
    const logged = Effect.suspend(() => {
      const k = ++n
      return attempt.pipe(Effect.tapError((e) => {
        const what = e._tag === "RewardTimeout" ? `no answer within ${policy.timeoutMs} ms` : e.message.split("\n")[0]
        const next = k <= policy.retries && isRetryable(e) ? "retrying" : "giving up"
        return Effect.logWarning(`reward ${where}: attempt ${k} of ${policy.retries + 1}: ${what}; ${next}`)
      }))
    })
    return policy.retries === 0
      ? logged
      : logged.pipe(Effect.retry({ schedule: retrySchedule(policy), times: policy.retries, while: isRetryable }))
  })
}

/**
 * A reward whose every call goes through `withPolicy` (one rate limiter per
 * resulting service).
 *
 * @since 0.1.0
 */
export const remote = (reward: RewardService, policy: RemotePolicy): Effect.Effect<RewardService> =>
  Effect.map(makeRateLimiter(policy.requestsPerSecond), (limiter) =>
    make(reward.metadata, (images, prompts) =>
      withPolicy(reward.score(images, prompts), policy, { reward: reward.metadata.name, limiter })))

// ---------------------------------------------------------------- layers

/**
 * Applies a combinator to the reward a layer provides, e.g.
 * `mapLayer(Registry.layer(spec), (r) => cached(r))`.
 *
 * @since 0.1.0
 */
export const mapLayer = <E, R, E2 = never, R2 = never>(
  base: Layer.Layer<Reward, E, R>,
  f: (reward: RewardService) => RewardService | Effect.Effect<RewardService, E2, R2>
): Layer.Layer<Reward, E | E2, R | R2> =>
  Layer.effect(
    Reward,
    Effect.gen(function*() {
      const reward = yield* Reward
      const out = f(reward)
      return Effect.isEffect(out) ? yield* out : out
    })
  ).pipe(Layer.provide(base))

/**
 * The normalised reward of a layer, using the `StatTracker` in context.
 *
 * @since 0.1.0
 */
export const normalizedLayer = <E, R>(base: Layer.Layer<Reward, E, R>): Layer.Layer<Reward, E, R | StatTracker> =>
  mapLayer(base, (reward) => StatTracker.useSync((tracker) => normalized(reward, tracker)))
