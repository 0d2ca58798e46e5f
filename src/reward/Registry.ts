/**
 * Built-in rewards by name, so pipelines and CLIs pick a reward with a flag:
 *
 * | name                  | definition                                   | range        |
 * |-----------------------|----------------------------------------------|--------------|
 * | `clip`                | learned CLIPScore (Clip.ts)                  | [0, 2.5]     |
 * | `compositional`       | exact verifier, 1 pass / 0 fail              | [0, 1]       |
 * | `compositional-dense` | partial credit (Compositional.ts)            | [0, 1]       |
 * | `compressibility`     | -JPEG kB at quality 95 (DDPO)                | [-inf, 0]    |
 * | `incompressibility`   | +JPEG kB at quality 95 (DDPO)                | [0, inf]     |
 * | `aesthetic`           | ShapeWorld render-quality proxy (Aesthetic.ts) | [0, 1]     |
 * | `mllm`                | Appendix C MLLM grader, overall / 10 (Mllm.ts) | [0, 1]     |
 * | `http`                | any server speaking the protocol (Http.ts)   | as declared  |
 *
 * A reward expression combines them linearly: `clip`,
 * `0.7*compositional-dense+0.3*aesthetic`, `compositional-0.1*compressibility`
 * (terms separated by `+` or `-`, each `[weight*]name`). One `RewardSpec`
 * carries the options of every reward named in it (`baseUrl` is the MLLM's
 * API base or the http reward's endpoint; `model` is the MLLM's model name;
 * `modelDir` is the clip model directory).
 *
 * `Registry.layer(spec)` is the layer a pipeline provides:
 *
 *     program.pipe(Effect.provide(Registry.layer({ reward: "compositional-dense" })))
 *
 * It needs `FileSystem`, `Path` (clip) and an `HttpClient` (mllm, http);
 * `Registry.layerNode` provides the latter with the fetch client. The clip
 * module (and with it the tensor runtime) is only loaded when an expression
 * names `clip`.
 *
 * @since 0.1.0
 */
import { Effect, type FileSystem, Layer, type Path, Result, Schema, type Scope } from "effect"
import { FetchHttpClient, type HttpClient } from "effect/http"
import type { BackendUnavailable } from "../tensor/Backend.ts"
import * as Aesthetic from "./Aesthetic.ts"
import type { ModelLoadError } from "./ClipModel.ts"
import { weightedSum } from "./Combinators.ts"
import * as Compositional from "./Compositional.ts"
import * as Compressibility from "./Compressibility.ts"
import * as Http from "./Http.ts"
import * as Mllm from "./Mllm.ts"
import { Reward, type RewardService } from "./Reward.ts"
import { decodeOptions, RewardConfigError } from "./RewardError.ts"

/**
 * Names of the built-in rewards.
 *
 * @since 0.1.0
 */
export const REWARD_NAMES = [
  "clip",
  "compositional",
  "compositional-dense",
  "compressibility",
  "incompressibility",
  "aesthetic",
  "mllm",
  "http"
] as const
export const RewardName = Schema.Literals(REWARD_NAMES)
export type RewardName = typeof RewardName.Type

const Positive = Schema.Number.check(Schema.isGreaterThan(0))
const NonNegative = Schema.Number.check(Schema.isGreaterThanOrEqualTo(0))
const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))
const NonNegativeInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))

/**
 * A reward expression and the options of the rewards it names (each option
 * is passed to the rewards that use it; absent = that reward's default).
 *
 * @since 0.1.0
 */
export const RewardSpec = Schema.Struct({
  /** A name or weighted expression, e.g. `0.7*compositional-dense+0.3*aesthetic`. */
  reward: Schema.String,
  /** clip: model directory. */
  modelDir: Schema.optionalKey(Schema.String),
  /** mllm: API base URL; http: the endpoint. */
  baseUrl: Schema.optionalKey(Schema.String),
  /** mllm: chat model name. */
  model: Schema.optionalKey(Schema.String),
  /** mllm, http: environment variable holding the API key. */
  apiKeyEnv: Schema.optionalKey(Schema.String),
  /** mllm, http: per-request timeout, ms. */
  timeoutMs: Schema.optionalKey(Positive),
  /** mllm, http: retries of retryable failures. */
  retries: Schema.optionalKey(NonNegativeInt),
  /** mllm, http: requests in flight. */
  concurrency: Schema.optionalKey(PositiveInt),
  /** mllm, http: request starts per second (0 = unlimited). */
  requestsPerSecond: Schema.optionalKey(NonNegative),
  /** http: images per request; clip: images per forward pass. */
  batchSize: Schema.optionalKey(PositiveInt)
})
export type RewardSpec = typeof RewardSpec.Type

/**
 * One term of a reward expression.
 *
 * @since 0.1.0
 */
export interface Term {
  readonly weight: number
  readonly name: RewardName
}

/**
 * Parses a reward expression (`name`, `w*name`, terms joined by `+`/`-`).
 *
 * @since 0.1.0
 */
export const parseExpression = (text: string): Result.Result<Array<Term>, RewardConfigError> => {
  const fail = (message: string) => Result.fail(new RewardConfigError({ reward: text, field: "reward", message }))
  const source = text.replace(/\s+/g, "")
  if (source === "") return fail(`empty reward name (one of ${REWARD_NAMES.join(", ")})`)
  // Longest names first, so "compositional-dense" wins over "compositional".
  const names = [...REWARD_NAMES].sort((a, b) => b.length - a.length)
  const terms: Array<Term> = []
  let p = 0
  while (p < source.length) {
    let sign = 1
    if (source[p] === "+" || source[p] === "-") {
      sign = source[p] === "-" ? -1 : 1
      p++
    } else if (terms.length > 0) {
      return fail(`expected "+" or "-" at "${source.slice(p)}"`)
    }
    const w = /^((?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\*/i.exec(source.slice(p))
    const weight = w === null ? 1 : Number(w[1])
    if (w !== null) p += w[0].length
    const name = names.find((n) => source.startsWith(n, p))
    if (name === undefined) {
      const word = /^[^+*]*/.exec(source.slice(p))![0] || source.slice(p)
      return fail(`unknown reward "${word}" (one of ${REWARD_NAMES.join(", ")}; combine as 0.7*a+0.3*b)`)
    }
    p += name.length
    terms.push({ weight: sign * weight, name })
  }
  return Result.succeed(terms)
}

/**
 * Whether an expression names a reward that runs on the tensor backend.
 *
 * @since 0.1.0
 */
export const needsBackend = (terms: ReadonlyArray<Term>): boolean => terms.some((t) => t.name === "clip")

/** Errors of building a registry reward. */
export type BuildError = RewardConfigError | ModelLoadError | BackendUnavailable
/** Services a registry reward may need. */
export type BuildContext = FileSystem.FileSystem | Path.Path | HttpClient.HttpClient

const defined = <T extends object>(o: T): T =>
  Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T

/**
 * Builds one named reward's service.
 *
 * @since 0.1.0
 */
export const makeNamed = (
  name: RewardName,
  spec: Omit<RewardSpec, "reward">
): Effect.Effect<RewardService, BuildError, BuildContext | Scope.Scope> => {
  const remote = defined({
    apiKeyEnv: spec.apiKeyEnv,
    timeoutMs: spec.timeoutMs,
    retries: spec.retries,
    concurrency: spec.concurrency,
    requestsPerSecond: spec.requestsPerSecond
  })
  switch (name) {
    case "clip":
      // Loaded on demand: it pulls in the tensor runtime.
      return Effect.flatMap(Effect.promise(() => import("./Clip.ts")), (Clip) =>
        Clip.make(defined({ modelDir: spec.modelDir, batchSize: spec.batchSize })))
    case "compositional":
      return Effect.sync(() => Compositional.make("exact"))
    case "compositional-dense":
      return Effect.sync(() => Compositional.make("dense"))
    case "compressibility":
    case "incompressibility":
      return Effect.sync(() => Compressibility.make(name))
    case "aesthetic":
      return Effect.sync(() => Aesthetic.make())
    case "mllm":
      return Mllm.make(defined({ ...remote, baseUrl: spec.baseUrl, model: spec.model }))
    case "http":
      if (spec.baseUrl === undefined) {
        return Effect.fail(new RewardConfigError({ reward: "http", field: "baseUrl", message: "the http reward needs a URL (--base-url)" }))
      }
      return Http.make(defined({ ...remote, url: spec.baseUrl, batchSize: spec.batchSize }))
  }
}

/**
 * Builds the reward service of a spec (a single reward, or the weighted sum
 * of an expression's terms).
 *
 * @since 0.1.0
 */
export const make = Effect.fn("Registry.make")(function*(
  input: RewardSpec
): Effect.fn.Return<RewardService, BuildError, BuildContext | Scope.Scope> {
  const spec = yield* decodeOptions(RewardSpec, input, input.reward)
  const terms = yield* Effect.fromResult(parseExpression(spec.reward))
  if (terms.length === 1 && terms[0].weight === 1) return yield* makeNamed(terms[0].name, spec)
  const services = yield* Effect.forEach(terms, (t) => makeNamed(t.name, spec))
  return weightedSum(terms.map((t, i) => ({ reward: services[i], weight: t.weight })), { name: spec.reward.replace(/\s+/g, "") })
})

/**
 * The reward layer of a spec.
 *
 * @since 0.1.0
 */
export const layer = (spec: RewardSpec): Layer.Layer<Reward, BuildError, BuildContext> => Layer.effect(Reward, make(spec))

/**
 * `layer` with the fetch-based `HttpClient` provided (needs `FileSystem` and
 * `Path`, e.g. from `NodeServices.layer`).
 *
 * @since 0.1.0
 */
export const layerNode = (spec: RewardSpec): Layer.Layer<Reward, BuildError, FileSystem.FileSystem | Path.Path> =>
  layer(spec).pipe(Layer.provide(FetchHttpClient.layer))

/**
 * A reward layer plus a guard: `reward + guard`, where the guard is a reward
 * expression (e.g. `aesthetic`, `0.5*aesthetic-0.2*incompressibility`) built
 * as {@link make} builds one. Training ranks and scores paths with the sum, so
 * that a gain the guard does not share (a colour drift, speckle that games a
 * detector) stops being the best path; evaluation keeps the reward alone.
 * An empty guard returns the layer unchanged.
 *
 * @since 0.8.0
 */
export const withGuard = (guard: string) =>
<E, R>(reward: Layer.Layer<Reward, E, R>): Layer.Layer<Reward, E | BuildError, R | FileSystem.FileSystem | Path.Path> =>
  guard.replace(/\s+/g, "") === ""
    ? reward
    : Layer.effect(
      Reward,
      Effect.gen(function*() {
        const primary = yield* Reward
        const extra = yield* make({ reward: guard })
        return weightedSum([{ reward: primary, weight: 1 }, { reward: extra, weight: 1 }], {
          name: `${primary.metadata.name}+guard(${guard.replace(/\s+/g, "")})`
        })
      })
    ).pipe(Layer.provide(Layer.merge(reward, FetchHttpClient.layer)))
