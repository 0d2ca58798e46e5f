/**
 * Configuration of a sharpening run, decoded with Schema from a JSON file
 * and/or flags; every field has the paper's default where the paper gives
 * one, and an error names the field and its allowed range.
 *
 * @since 0.1.0
 */
import { Result, Schema, SchemaIssue } from "effect"
import * as Losses from "../objective/Losses.ts"
import * as Registry from "../reward/Registry.ts"
import * as Aggregate from "../trajectory/Aggregate.ts"
import { Estimator, TimestepChoice } from "../trajectory/Trajectory.ts"

const int = (min: number, max: number) => Schema.Int.check(Schema.isGreaterThanOrEqualTo(min), Schema.isLessThanOrEqualTo(max))
const num = (min: number, max: number) => Schema.Finite.check(Schema.isGreaterThanOrEqualTo(min), Schema.isLessThanOrEqualTo(max))

/**
 * The groups of a settings file (`{"algorithm": {...}, "optimizer": {...},
 * "evaluation": {...}, "run": {...}}`) and of `--help`.
 *
 * @since 0.6.0
 */
export const Group = Schema.Literals(["algorithm", "optimizer", "evaluation", "run"])
export type Group = typeof Group.Type

/** How a field is given on the command line: a number, one of its literals, a string, or a flag of its own (`custom`). */
export type FlagKind = "int" | "number" | "literal" | "string" | "custom"

/**
 * One setting, listed once: its schema, group, flag kind and help text.
 * The schema, the file groups, the CLI flags and the resume rules are all
 * derived from {@link fields}.
 */
export interface Field<S extends Schema.Top = Schema.Top> {
  readonly schema: S
  readonly group: Group
  readonly flag: FlagKind
  readonly doc: string
  /** Deprecated spellings of its values, old -> current: read as the current value ({@link normalise}). */
  readonly aliases?: Readonly<Record<string, string>>
}

const field = <S extends Schema.Top>(group: Group, flag: FlagKind, schema: S, doc: string): Field<S> => ({ schema, group, flag, doc })
const literals = <const L extends ReadonlyArray<string>>(group: Group, values: L, doc: string) => field(group, "literal", Schema.Literals(values), doc)
const aliased = <F extends Field>(f: F, aliases: Readonly<Record<string, string>>): F => ({ ...f, aliases })

/**
 * Every setting of a sharpening run. Defaults are in {@link defaults}, the
 * named presets over them in {@link presets}; nothing else holds one.
 *
 * @since 0.6.0
 */
export const fields = {
  // algorithm: what one iteration computes
  n: field("algorithm", "int", int(2, 64), "trajectories per prompt (paper: 3)"),
  m: field("algorithm", "int", int(1, 64), "denoising steps per trajectory (paper: 3)"),
  inferenceSteps: field("algorithm", "int", int(1, 1000), "DDIM grid of the trajectories (paper: 50)"),
  cfg: field("algorithm", "number", num(0, 50), "classifier-free guidance (paper: 5)"),
  estimator: field("algorithm", "custom", Estimator, "x0 estimate along a path: Tweedie, or the paper's PF-ODE with k steps (settings file only)"),
  aggregation: field("algorithm", "custom", Aggregate.Aggregation, "trajectory reward: of the paths' final images (final), or over the x0 estimates (sum: Eq. 8)"),
  timestep: field("algorithm", "custom", TimestepChoice, "start timesteps on the grid (flag --timestep-range MIN,MAX, \"uniform\" or \"top\")"),
  timestepPer: literals("algorithm", ["batch", "prompt"], "draw the start timestep once per batch (the paper's code) or per prompt"),
  preference: aliased(
    literals(
      "algorithm",
      ["noise", "image"],
      "what a preference compares: the paths' own final images, every path continued to t = 0 (image), or noise draws of one image, every path regressed on the clean image it was noised from (noise: the paper's; docs/method.md)"
    ),
    { paper: "noise" }
  ),
  start: literals("algorithm", ["online-sample", "noise"], "RLHF: paths start from the online sample noised to t (the paper), or from pure noise (no online sample; use a timestep range at the top of the grid)"),
  onlineSteps: field("algorithm", "int", int(1, 1000), "RLHF: DDIM steps of the online samples (paper: 50)"),
  dpoBeta: field("algorithm", "number", num(1e-9, 1e9), "RLHF: DPO beta"),
  margin: aliased(
    field("algorithm", "literal", Losses.MarginPlacement, "RLHF: reward margin inside the log-sigmoid (the paper's Eq. 11) or outside it (its reference code)"),
    { paper: "inside", "reference-code": "outside" }
  ),
  referenceSteps: literals("algorithm", ["all", "first"], "RLHF: the reference's errors on all m steps, or the first (reference code)"),
  target: field("algorithm", "literal", Losses.EpsTarget, "epsilon target along a path (docs/architecture.md)"),
  split: literals("algorithm", ["train", "full"], "which prompts and images train: the generator's training split, or all"),
  stepsPerBatch: field("algorithm", "int", int(1, 1024), "image-level objectives: optimiser steps per generated batch, each with fresh noise and t (docs/method.md)"),
  winnerSft: field("algorithm", "number", num(0, 1e9), "image-level RLHF: weight of the winners' denoising loss added to the DPO loss (0 = pure DPO)"),
  minLossTimestep: field("algorithm", "int", int(0, 999), "image-level RLHF: lowest timestep of the DPO noise (0: U[0, T) as Diffusion-DPO)"),
  guard: field(
    "algorithm",
    "string",
    Schema.String.check(Schema.makeFilter((g: string) => g === "" || Result.isSuccess(Registry.parseExpression(g)) || "\"\" (off) or a reward expression such as 0.5*aesthetic")),
    "reward guard: a reward expression added to the trained reward when paths are ranked and scored (e.g. aesthetic), to hold reward hacking; evaluation still reports the trained reward alone (\"\" = off; docs/rewards.md)"
  ),
  // optimizer: how the update is made
  lr: field("optimizer", "number", num(0, 1), "learning rate (paper: 5e-6 for SDXL)"),
  beta1: field("optimizer", "number", num(0, 0.999999), "AdamW beta1 (paper: 0)"),
  beta2: field("optimizer", "number", num(0, 0.999999), "AdamW beta2 (paper: 0.99)"),
  weightDecay: field("optimizer", "number", num(0, 1), "AdamW weight decay (paper: 0)"),
  maxGradNorm: field("optimizer", "number", num(0, 1e6), "gradient-norm clip"),
  warmupSteps: field("optimizer", "int", int(0, 1_000_000), "learning-rate warm-up steps"),
  lrSchedule: literals("optimizer", ["constant", "cosine"], "learning-rate schedule after warm-up (cosine over `iterations`)"),
  batchSize: field("optimizer", "int", int(1, 1024), "prompts per step (paper: 8)"),
  microBatchRows: field(
    "optimizer",
    "int",
    Schema.optional(int(0, 4096)),
    "UNet rows per gradient micro-batch (0 = whole batch; the same update in parts, less memory; unset: 24 on wasm and cpu, the whole batch on a GPU)"
  ),
  accumulate: field("optimizer", "int", int(1, 1024), "batches per optimiser step (effective batch = batch-size x accumulate)"),
  ema: field("optimizer", "number", num(0, 0.999999), "EMA decay of the weights evaluated and saved (0 = off)"),
  // evaluation: the before/after report and the grids
  evalPrompts: field("evaluation", "int", int(0, 100_000), "prompts per eval set for before/after (0 = all)"),
  evalSteps: field("evaluation", "int", int(1, 1000), "DDIM steps of the before/after evaluation (paper: 50)"),
  sampleEvery: field("evaluation", "int", int(0, 1_000_000), "iterations between sample grids (the first 16 prompts of the first eval set) in samples/ (0 = only before and after)"),
  // run: length, randomness, checkpoints
  iterations: field("run", "int", int(1, 1_000_000), "optimisation steps (one batch each)"),
  trainingNfe: field("run", "int", int(0, Number.MAX_SAFE_INTEGER), "stop at this training NFE (sampling plus objective; 0 = iterations only): a budget compares methods fairly"),
  seed: field("run", "int", Schema.Int, "seed of data, noise and sampling"),
  checkpointEvery: field("run", "int", int(1, 1_000_000), "iterations between checkpoints"),
  keepCheckpoints: field("run", "int", int(1, 1000), "checkpoints kept on disk (a damaged latest one falls back to the one before)")
} as const

type Fields = typeof fields

export const SharpenConfig = Schema.Struct(
  Object.fromEntries(Object.entries(fields).map(([k, f]) => [k, f.schema])) as { readonly [K in keyof Fields]: Fields[K]["schema"] }
)
export type SharpenConfig = typeof SharpenConfig.Type

/** The settings of one group, in the order of {@link fields}. */
export const groupFields = (group: Group): ReadonlyArray<keyof SharpenConfig> =>
  (Object.keys(fields) as Array<keyof SharpenConfig>).filter((k) => fields[k].group === group)

/**
 * Defaults: the paper's (Sec. 4.1, App. A.3) where it gives them, except
 * where the lab measured a better setting (docs/method.md): image-level
 * preferences judged on the paths' final images, the start timestep drawn
 * per prompt from [200, 980], and AdamW beta1 0.9. The published algorithm
 * is the `paper` preset.
 */
export const defaults: SharpenConfig = {
  iterations: 12,
  batchSize: 8,
  n: 3,
  m: 3,
  inferenceSteps: 50,
  cfg: 5,
  estimator: { kind: "tweedie" },
  aggregation: { kind: "final" },
  timestep: { kind: "range", min: 200, max: 980 },
  lr: 2e-5,
  beta1: 0.9,
  beta2: 0.99,
  weightDecay: 0,
  maxGradNorm: 1,
  warmupSteps: 0,
  lrSchedule: "constant",
  dpoBeta: 5000,
  margin: "inside",
  referenceSteps: "all",
  target: "consistent",
  onlineSteps: 50,
  split: "train",
  seed: 0,
  checkpointEvery: 5,
  sampleEvery: 10,
  evalPrompts: 24,
  evalSteps: 50,
  preference: "image",
  timestepPer: "prompt",
  start: "online-sample",
  accumulate: 1,
  stepsPerBatch: 1,
  winnerSft: 0,
  minLossTimestep: 0,
  guard: "",
  ema: 0,
  trainingNfe: 0,
  keepCheckpoints: 2
}

/**
 * Named settings over {@link defaults}, per algorithm (docs/architecture.md,
 * "Settings and presets"):
 * - `image-level` (the default of sft.ts and rlhf.ts): the image-level
 *   variants; RLHF adds the values measured best on ShapeWorld and a run
 *   sized to about 10 minutes on two cores (docs/results.md);
 * - `paper`: Algorithms 1-2 as the paper and its code have them;
 * - `lab`: the 2-D lab's MLP on ring points (`pipelines/lab.ts`);
 * - `defaults`: the defaults alone.
 *
 * @since 0.6.0
 */
export const Preset = Schema.Literals(["image-level", "paper", "lab", "defaults"])
export type Preset = typeof Preset.Type

export type Algorithm = "sft" | "rlhf"

export const presets: { readonly [P in Preset]: { readonly [A in Algorithm]: Partial<SharpenConfig> } } = {
  "image-level": {
    sft: {},
    rlhf: { iterations: 26, sampleEvery: 0, lr: 5e-5, dpoBeta: 500, stepsPerBatch: 4, inferenceSteps: 20, onlineSteps: 20, evalSteps: 20, evalPrompts: 48 }
  },
  paper: {
    sft: { preference: "noise", aggregation: { kind: "sum" }, timestep: { kind: "uniform" }, timestepPer: "batch", beta1: 0 },
    rlhf: { preference: "noise", aggregation: { kind: "sum" }, timestep: { kind: "uniform" }, timestepPer: "batch", beta1: 0 }
  },
  lab: {
    sft: { batchSize: 8, n: 3, m: 3, cfg: 1, inferenceSteps: 50, onlineSteps: 50, dpoBeta: 5, microBatchRows: 0, iterations: 100_000, checkpointEvery: 100_000 },
    rlhf: { batchSize: 8, n: 3, m: 3, cfg: 1, inferenceSteps: 50, onlineSteps: 50, dpoBeta: 5, microBatchRows: 0, iterations: 100_000, checkpointEvery: 100_000 }
  },
  defaults: { sft: {}, rlhf: {} }
}

/** What rlhf.ts runs by default over {@link defaults}: the `image-level` preset's RLHF settings. */
export const rlhfDefaults: Partial<SharpenConfig> = presets["image-level"].rlhf

/** The published algorithm over the defaults: the `paper` preset. */
export const paperVariant: Partial<SharpenConfig> = presets.paper.rlhf

/**
 * A configuration value is missing or out of range.
 *
 * @since 0.1.0
 */
export class ConfigError extends Schema.TaggedError<ConfigError>()("ConfigError", {
  file: Schema.optional(Schema.String),
  field: Schema.optional(Schema.String),
  message: Schema.String
}) {}

/**
 * One layer of settings from a file: flat (`{"lr": 1e-5}`) or grouped
 * (`{"optimizer": {"lr": 1e-5}}`), with an optional `preset`. A setting in
 * the wrong group, or a group that is not an object, names itself.
 *
 * @since 0.6.0
 */
export const fromFile = (
  json: Record<string, unknown>,
  file?: string
): Result.Result<{ readonly preset?: Preset; readonly settings: Record<string, unknown> }, ConfigError> => {
  const settings: Record<string, unknown> = {}
  let preset: Preset | undefined
  for (const [k, v] of Object.entries(json)) {
    if (k.startsWith("$")) continue
    if (k === "preset") {
      if (!Schema.is(Preset)(v)) return Result.fail(new ConfigError({ file, field: "preset", message: `unknown preset ${JSON.stringify(v)} (${Preset.literals.join(", ")})` }))
      preset = v
    } else if (Schema.is(Group)(k)) {
      if (v === null || typeof v !== "object" || Array.isArray(v)) return Result.fail(new ConfigError({ file, field: k, message: `"${k}" must be an object of settings` }))
      for (const [name, value] of Object.entries(v)) {
        if (name.startsWith("$")) continue
        const f = (fields as Record<string, Field>)[name]
        if (f === undefined) return Result.fail(new ConfigError({ file, field: `${k}.${name}`, message: `unknown setting "${k}.${name}"` }))
        if (f.group !== k) return Result.fail(new ConfigError({ file, field: `${k}.${name}`, message: `"${name}" belongs in "${f.group}", not "${k}"` }))
        settings[name] = value
      }
    } else settings[k] = v
  }
  return Result.succeed({ preset, settings })
}

/**
 * Settings as a grouped file (`config.json`, `run.json`): the preset and
 * every resolved value under its group.
 *
 * @since 0.6.0
 */
export const toFile = (config: SharpenConfig, preset?: Preset): Record<string, unknown> => {
  const encoded = Schema.encodeSync(SharpenConfig)(config) as Record<string, unknown>
  const out: Record<string, unknown> = preset === undefined ? {} : { preset }
  for (const group of Group.literals) {
    out[group] = Object.fromEntries(groupFields(group).filter((k) => encoded[k] !== undefined).map((k) => [k, encoded[k]]))
  }
  return out
}

/**
 * A layer of settings with each deprecated spelling of a value (a field's
 * `aliases`: `preference: "paper"`, `margin: "paper"` / `"reference-code"`)
 * replaced by the current one (`"noise"`, `"inside"` / `"outside"`).
 *
 * @since 0.7.0
 */
export const normalise = (layer: Readonly<Record<string, unknown>>): Record<string, unknown> =>
  Object.fromEntries(Object.entries(layer).map(([k, v]) => [k, current(k, v) ?? v]))

/** The current spelling of a deprecated value of setting `key`, if `v` is one. */
const current = (key: string, v: unknown): string | undefined => {
  const aliases = Object.hasOwn(fields, key) ? (fields as Record<string, Field>)[key].aliases : undefined
  return typeof v === "string" && aliases !== undefined && Object.hasOwn(aliases, v) ? aliases[v] : undefined
}

/**
 * One line per deprecated spelling in a layer of settings, naming the file
 * (or, without one, the flag) and the current spelling.
 *
 * @since 0.7.0
 */
export const deprecations = (layer: Readonly<Record<string, unknown>>, file?: string): Array<string> =>
  Object.entries(layer).flatMap(([k, v]) => {
    const now = current(k, v)
    if (now === undefined) return []
    const flag = `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`
    return [file === undefined
      ? `${flag} ${v} is deprecated: use ${flag} ${now} (the same setting)`
      : `${file}: "${k}": ${JSON.stringify(v)} is deprecated: use ${JSON.stringify(now)} (the same setting)`]
  })

/** Merge layers of partial settings over the defaults (deprecated spellings read as the current ones) and validate. */
export const decode = (layers: ReadonlyArray<Record<string, unknown>>, file?: string): Result.Result<SharpenConfig, ConfigError> => {
  const merged: Record<string, unknown> = { ...defaults }
  for (const l of layers) for (const [k, v] of Object.entries(normalise(l))) if (v !== undefined) merged[k] = v
  const unknown = Object.keys(merged).find((k) => !(k in SharpenConfig.fields))
  if (unknown !== undefined) return Result.fail(new ConfigError({ file, field: unknown, message: `unknown setting "${unknown}"` }))
  const r = Schema.decodeUnknownResult(SharpenConfig)(merged)
  if (Result.isSuccess(r)) return Result.succeed(r.success)
  const text = SchemaIssue.makeFormatterDefault()(r.failure.issue)
  const field = /\["?([A-Za-z0-9]+)"?\]/.exec(text)?.[1]
  return Result.fail(new ConfigError({ file, field, message: text.split("\n").join(" ") }))
}

/**
 * The preset a pipeline runs when none is named: `image-level`, except when
 * a layer asks for the published preference (`noise`, or its old spelling
 * `paper`) without naming a preset; that run keeps the plain defaults under
 * it (as before presets existed), since
 * the image-level RLHF values were measured for image-level preferences.
 *
 * @since 0.6.0
 */
export const presetFor = (layers: ReadonlyArray<Record<string, unknown>>, named?: Preset): Preset =>
  named ?? (layers.some((l) => normalise(l).preference === "noise") ? "defaults" : "image-level")

/**
 * A pipeline's settings: the preset's (default `presetFor`) under the given
 * layers (config file, then flags).
 *
 * @since 0.5.0
 */
export const resolve = (
  algorithm: Algorithm,
  layers: ReadonlyArray<Record<string, unknown>>,
  o: { readonly preset?: Preset; readonly file?: string } = {}
): Result.Result<SharpenConfig, ConfigError> => decode([presets[presetFor(layers, o.preset)][algorithm], ...layers], o.file)
