/**
 * The command line shared by pipelines/sft.ts and pipelines/rlhf.ts:
 * config from defaults <- --config JSON <- flags, the base model, a reward by
 * name, evaluation before and after, and the run's outputs in --out:
 *
 *   out/LOCK            the owner's pid while a process works in out/ (RunLock)
 *   out/run/            checkpoints (atomic, the last keepCheckpoints), metrics.jsonl,
 *                       run.json (what defines the run; checked by --resume; and,
 *                       informational, the runners of --runners)
 *   out/model/          the sharpened model (loadable by sample.ts)
 *   out/plots/          reward.svg|png, loss.svg|png
 *   out/samples/        before-/after- contact sheets of the eval prompts, and
 *                       iter-<n>- sheets every sampleEvery iterations (first 16 prompts of the first eval set)
 *   out/report.md|json  before/after verifier accuracy and clip score
 *
 * Before anything is written: the output directory is checked (Inputs.
 * writableDirectory), locked, cleared of temporaries of interrupted writes,
 * and the model, the reward and (on --resume) the run's record are checked.
 *
 * @since 0.1.0
 */
import { Console, Effect, FileSystem, Layer, Logger, Option, Path, Result } from "effect"
import { Command, Flag } from "effect/cli"
import * as Denoiser from "../model/Denoiser.ts"
import * as Registry from "../reward/Registry.ts"
import { Backend } from "../tensor/Backend.ts"
import * as WasmHeap from "../tensor/WasmHeap.ts"
import * as WebGpu from "../tensor/WebGpu.ts"
import * as Report from "../sharpen/Report.ts"
import * as Sharpen from "../sharpen/Sharpen.ts"
import * as SharpenConfig from "../sharpen/SharpenConfig.ts"
import * as SharpenLayers from "../sharpen/SharpenLayers.ts"
import { Metrics } from "../optim/Metrics.ts"
import * as RunRecord from "../sharpen/RunRecord.ts"
import * as RewardFlags from "./RewardFlags.ts"
import * as Setup from "./Setup.ts"
import * as RunDirectory from "../sharpen/RunDirectory.ts"
import type { Reward } from "../reward/Reward.ts"
import { Ema } from "../optim/Ema.ts"

export { NothingToResume, RunDirectoryInUse } from "../sharpen/RunDirectory.ts"

const kebab = (key: string) => key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)

// Only flags actually given override --config (Flag.optional); the help shows
// the group, the default and the rlhf.ts value.
const describe = (key: keyof SharpenConfig.SharpenConfig, f: SharpenConfig.Field) => {
  const rlhf = SharpenConfig.rlhfDefaults[key]
  const fallback = SharpenConfig.defaults[key]
  const old = Object.entries(f.aliases ?? {}).map(([was, is]) => `${was} = ${is}`).join(", ")
  return `[${f.group}] ${f.doc} (default ${fallback === undefined ? "by backend" : JSON.stringify(fallback)}${rlhf === undefined ? "" : `; rlhf.ts: ${JSON.stringify(rlhf)}`}${old === "" ? "" : `; deprecated: ${old}`})`
}

/** One flag per setting of `SharpenConfig.fields` (custom ones are below). */
const settingFlags = Object.fromEntries(
  (Object.entries(SharpenConfig.fields) as Array<[keyof SharpenConfig.SharpenConfig, SharpenConfig.Field]>).flatMap(([key, f]) => {
    const name = kebab(key)
    const flag: Flag.Flag<unknown> | undefined = f.flag === "int"
      ? Flag.Int(name)
      : f.flag === "number"
      ? Flag.Finite(name)
      : f.flag === "literal"
      ? Flag.Literals(name, [...(f.schema as unknown as { readonly literals: ReadonlyArray<string> }).literals, ...Object.keys(f.aliases ?? {})])
      : f.flag === "string"
      ? Flag.String(name)
      : undefined
    return flag === undefined ? [] : [[key, flag.pipe(Flag.withDescription(describe(key, f)), Flag.optional)]]
  })
) as Record<string, Flag.Flag<Option.Option<unknown>>>

const flags = {
  model: Setup.modelFlag("base model directory"),
  ...RewardFlags.flags,
  out: Flag.String("out").pipe(Flag.withDescription("output directory"), Flag.optional),
  resume: Flag.Boolean("resume").pipe(Flag.withDescription("continue the run in --out from its latest checkpoint (refused if there is none, or if a setting that changes the training differs)"), Flag.withDefault(false)),
  resumeIfPresent: Flag.Boolean("resume-if-present").pipe(Flag.withDescription("as --resume when --out holds a checkpoint, else start a new run there"), Flag.withDefault(false)),
  config: Flag.String("config").pipe(Flag.withDescription("JSON file of settings, flat or grouped ({\"preset\", \"algorithm\", \"optimizer\", \"evaluation\", \"run\"}), and a \"reward\" entry (docs/architecture.md, docs/rewards.md)"), Flag.optional),
  preset: Flag.Literals("preset", SharpenConfig.Preset.literals).pipe(
    Flag.withDescription("named settings under the file and flags: image-level (default: the variants measured best, rlhf.ts with its ShapeWorld values), paper (the published algorithm: preference between noise draws of one image, x0-estimate reward summed, one start timestep per batch, AdamW beta1 0), lab (the 2-D lab's), defaults (none)"),
    Flag.optional
  ),
  paper: Flag.Boolean("paper").pipe(Flag.withDescription("deprecated: --preset paper"), Flag.withDefault(false)),
  ...settingFlags,
  aggregation: Flag.Literals("aggregation", ["sum", "mean", "last", "final"]).pipe(Flag.withDescription(describe("aggregation", SharpenConfig.fields.aggregation)), Flag.optional),
  timestepRange: Flag.String("timestep-range").pipe(Flag.withDescription(describe("timestep", SharpenConfig.fields.timestep)), Flag.optional),
  backend: Setup.backendFlag,
  ...Setup.runnersFlags(
    "each iteration's jobs (online samples, paths, gradient parts, reference errors) and the evaluation images (before, after, sample grids)",
    "; recorded in run.json (a password masked), where a resume may change it; replaces --threads; config file: {\"run\": {\"runners\": \"sqlite:...\", \"runnerCount\": 2, \"coordinate\": false}}"
  ),
  threads: Flag.Int("threads").pipe(
    Flag.withDescription("threads of each iteration: generation (online samples, paths, continuations) and the image-level objectives' gradient parts, this one included; 1 = no worker threads; the same result up to float summation order (default: one per core, at most 4, or SHARPEN_WORKERS, on wasm and cpu; 1 on a GPU, where threads would fight over the device)"),
    Flag.optional
  )
}

type Flags = Command.Command.Config.Infer<typeof flags>

/** On webgpu: the peak GPU memory (tfjs's buffer pool) and the adapter. */
const gpuSummary = (): string => {
  const gpu = WebGpu.memory()
  return gpu === undefined ? "" : `, peak GPU memory ${Math.round(gpu.allocated / 2 ** 20)} MiB (tfjs's buffers; live tensors at the end ${Math.round(gpu.inUse / 2 ** 20)} MiB)`
}

/**
 * On a terminal the progress bar's line has no newline until the run ends:
 * a log line (a reward retry, a checkpoint fallback) first clears it, and
 * the bar is redrawn at the next iteration.
 */
const barAwareLogger = Logger.make((o) => {
  const time = o.date.toISOString().slice(11, 23)
  const message = Array.isArray(o.message) ? o.message.map(String).join(" ") : String(o.message)
  process.stderr.write(`\r\x1b[2K[${time}] ${o.logLevel.toUpperCase()}: ${message}\n`)
})

const overrides = (f: Flags): Record<string, unknown> => {
  const out: Record<string, unknown> = {}
  if (Option.isSome(f.aggregation)) out.aggregation = { kind: f.aggregation.value }
  if (Option.isSome(f.timestepRange)) {
    const v = f.timestepRange.value.trim()
    const [min, max] = v.split(",").map((s) => Number(s.trim()))
    out.timestep = v === "uniform" || v === "top" ? { kind: v } : { kind: "range", min, max }
  }
  for (const key of Object.keys(settingFlags)) {
    const v = (f as unknown as Record<string, Option.Option<unknown>>)[key]
    if (Option.isSome(v)) out[key] = v.value
  }
  return out
}

const loadConfig = Effect.fn("SharpenCli.loadConfig")(function*(f: Flags, algorithm: "sft" | "rlhf") {
  const fs = yield* FileSystem.FileSystem
  const layers: Array<Record<string, unknown>> = []
  let file: string | undefined
  let rewardEntry: unknown
  let filePreset: SharpenConfig.Preset | undefined
  let runnersEntry: { runners?: string; runnerCount?: number; coordinate?: boolean } = {}
  if (Option.isSome(f.config)) {
    file = f.config.value
    const text = yield* fs.readFileString(file).pipe(Effect.mapError(() => new SharpenConfig.ConfigError({ file, message: "cannot read the config file" })))
    const json = yield* Effect.try({ try: () => JSON.parse(text), catch: (e) => new SharpenConfig.ConfigError({ file, message: `not valid JSON: ${(e as Error).message}` }) })
    if (json === null || typeof json !== "object" || Array.isArray(json)) {
      return yield* new SharpenConfig.ConfigError({ file, message: "the config file must hold a JSON object of settings" })
    }
    // The reward and its options are not settings of the algorithm (RewardFlags).
    const { reward, ...withRunners } = json as Record<string, unknown>
    rewardEntry = reward
    // Nor are the runners (where the jobs run): "run": {"runners", "runnerCount", "coordinate"}, or flat.
    const taken = yield* Effect.fromResult(takeRunners(withRunners, file))
    const rest = taken.rest
    runnersEntry = taken.runners
    const { preset, settings } = yield* Effect.fromResult(SharpenConfig.fromFile(rest, file))
    filePreset = preset
    layers.push(settings)
    for (const line of SharpenConfig.deprecations(settings, file)) yield* Console.error(line)
  }
  layers.push(overrides(f))
  for (const line of SharpenConfig.deprecations(layers[layers.length - 1])) yield* Console.error(line)
  if (f.paper) yield* Console.error("--paper is deprecated: use --preset paper")
  const named = Option.getOrUndefined(f.preset) ?? (f.paper ? "paper" : undefined) ?? filePreset
  const preset = SharpenConfig.presetFor(layers, named)
  const config = yield* Effect.fromResult(SharpenConfig.resolve(algorithm, layers, { preset, file }))
  const reward = yield* Effect.fromResult(RewardFlags.spec(f, rewardEntry, file))
  return { config, reward, preset, runners: runnersEntry }
})

/**
 * A config file's runner entries (`"run": {"runners": "sqlite:...",
 * "runnerCount": 2, "coordinate": false}`, or flat), taken out of its
 * settings: they say where the jobs run, not what is trained (`--runners`,
 * `--runner-count`, `--coordinate`).
 */
const takeRunners = (
  json: Record<string, unknown>,
  file: string
): Result.Result<{ rest: Record<string, unknown>; runners: { runners?: string; runnerCount?: number; coordinate?: boolean } }, SharpenConfig.ConfigError> => {
  const rest = { ...json }
  const found: Record<string, unknown> = {}
  const take = (from: Record<string, unknown>, prefix: string) => {
    for (const key of ["runners", "runnerCount", "coordinate"]) {
      if (key in from) {
        found[key] = from[key]
        found[`${key}@`] = prefix + key
        delete from[key]
      }
    }
  }
  take(rest, "")
  if (rest.run !== null && typeof rest.run === "object" && !Array.isArray(rest.run)) {
    const run = { ...(rest.run as Record<string, unknown>) }
    take(run, "run.")
    rest.run = run
  }
  if (found.runners !== undefined && typeof found.runners !== "string") {
    return Result.fail(new SharpenConfig.ConfigError({ file, field: String(found["runners@"]), message: "the runner storage is a string: sqlite:PATH or postgres://..." }))
  }
  if (found.runnerCount !== undefined && !(Number.isInteger(found.runnerCount) && (found.runnerCount as number) >= 1)) {
    return Result.fail(new SharpenConfig.ConfigError({ file, field: String(found["runnerCount@"]), message: "the runner count is a whole number of at least 1" }))
  }
  if (found.coordinate !== undefined && typeof found.coordinate !== "boolean") {
    return Result.fail(new SharpenConfig.ConfigError({ file, field: String(found["coordinate@"]), message: "coordinate is true or false" }))
  }
  return Result.succeed({
    rest,
    runners: {
      ...(found.runners === undefined ? {} : { runners: found.runners as string }),
      ...(found.runnerCount === undefined ? {} : { runnerCount: found.runnerCount as number }),
      ...(found.coordinate === undefined ? {} : { coordinate: found.coordinate as boolean })
    }
  })
}

/**
 * What a pipeline file chooses: the algorithm (`Sharpen.sft` or
 * `Sharpen.rlhf`) and the layers of its stages, given the settings and the
 * run's wiring (model, reward, backend, threads, run directory).
 *
 * @since 0.6.0
 */
export interface Pipeline<E, R> {
  readonly algorithm: "sft" | "rlhf"
  readonly run: (config: SharpenConfig.SharpenConfig) => Effect.Effect<number, E, R>
  readonly layers: (config: SharpenConfig.SharpenConfig, wiring: SharpenLayers.Wiring<unknown, never>) => Layer.Layer<
    Exclude<R, Sharpen.IterationSampler> | Denoiser.Denoiser | Metrics | Ema,
    unknown,
    FileSystem.FileSystem | Path.Path
  >
}

/**
 * The command line of a sharpening pipeline file: settings from the preset,
 * `--config` and flags, the reward from its flags, the run directory
 * (`RunDirectory`), the base model's evaluation, `pipeline.run` on
 * `pipeline.layers`, then the model, curves, evaluation and report.
 *
 * @since 0.6.0
 */
export const command = <E, R>(pipeline: Pipeline<E, R>) => {
  const algorithm = pipeline.algorithm
  return Command.make(
    algorithm,
    flags,
    Effect.fn(function*(f) {
      const fs = yield* FileSystem.FileSystem
      const path = yield* Path.Path
      const { config, reward: rewardSpec, preset, runners: runnersEntry } = yield* loadConfig(f, algorithm)
      const runnersOptions = yield* Setup.runnersOptions(f, runnersEntry)
      if (runnersOptions !== undefined && Option.isSome(f.threads)) {
        return yield* new SharpenConfig.ConfigError({ field: "threads", message: "--threads and --runners: the runners take the place of the worker threads (this process computes one share, or none with --coordinate); give one of them" })
      }
      const out = Option.getOrElse(f.out, () => path.join("out", algorithm))
      const run = yield* RunDirectory.open({ out, resume: f.resume, resumeIfPresent: f.resumeIfPresent })

      const threads = Option.getOrElse(f.threads, () => "auto" as const)
      if (threads !== "auto" && threads < 1) return yield* new SharpenConfig.ConfigError({ field: "threads", message: `--threads must be at least 1, got ${threads}` })
      const backend = Backend.fromFlag(f.backend)
      const reward = Registry.layerNode(rewardSpec).pipe(Layer.provide(backend)) as Layer.Layer<Reward, unknown>
      const cluster = runnersOptions === undefined ? undefined : Setup.clusterJobs(runnersOptions)
      const layers = pipeline.layers(config, { model: f.model, runDir: run.runDir, reward, backend, label: algorithm, threads, ...(cluster === undefined ? {} : { jobs: cluster.layer }) })
      const clipModel = rewardSpec.modelDir ?? RewardFlags.DEFAULT_CLIP_MODEL
      const sets = yield* Report.loadEvalSets(config.evalPrompts)

      // Runs once the layers are built: the model and the reward are valid.
      const program = Effect.gen(function*() {
        const { model } = yield* Denoiser.Denoiser
        const record = yield* RunRecord.make({ algorithm, config, preset, reward: rewardSpec, model: f.model, runners: cluster?.used() })
        const previous = yield* run.begin(record, SharpenConfig.toFile(config, preset))
        const clip = (yield* fs.exists(clipModel)) ? yield* Setup.clip(clipModel) : undefined
        // With --runners the evaluation images go to the runners too (the same images as threads give).
        const evaluation: RunDirectory.Evaluation = { sets, sampler: { steps: config.evalSteps, cfg: config.cfg, eta: 0, seed: config.seed + 1_000_003, batchSize: 16 }, clip, transport: cluster?.transport() }
        const before = yield* run.before(model, evaluation, previous, record)
        // Grids and the saved model: the weight average when the run keeps one (--ema), else the policy.
        const ema = yield* Ema
        const done = yield* pipeline.run(config).pipe(Effect.provideService(Sharpen.IterationSampler, run.grids(() => ema.model(), evaluation)))
        // Runners that joined during the run: run.json names every runner used.
        const runners = cluster?.used()
        if (runners !== undefined && runners.count !== record.runners?.count) yield* RunRecord.write(run.runDir, { ...record, runners: { ...runners, addresses: [...runners.addresses] } })
        yield* run.finish({
          title: `${algorithm.toUpperCase()}-Diffusion-Sharpening of ${f.model} with reward ${rewardSpec.reward}`,
          trained: ema.model(),
          iterations: done,
          records: yield* (yield* Metrics).records,
          metadata: { algorithm, iterations: String(done), reward: rewardSpec.reward, base: f.model, preference: config.preference },
          // Memory of the whole run (docs/performance.md): the process's peak RSS, worker threads included, and this thread's wasm heap.
          footnote: `Peak resident memory ${Math.round(process.resourceUsage().maxRSS / 1024)} MiB, wasm heap ${Math.round(WasmHeap.heapBytes() / 2 ** 20)} MiB` + gpuSummary() + ".",
          json: { config, model: f.model, reward: rewardSpec.reward }
        }, evaluation, before)
      })
      yield* program.pipe(Effect.provide(layers), Effect.scoped)
    },
    // Logs (resume, fallbacks, reward retries) go with the progress output to stderr.
    (effect) =>
      effect.pipe(
        Effect.scoped,
        Effect.provideService(Logger.LogToStderr, true),
        process.stderr.isTTY === true ? Effect.provide(Logger.layer([barAwareLogger])) : (e) => e
      ))
  ).pipe(
    Command.withDescription(
      algorithm === "sft"
        ? "SFT-Diffusion-Sharpening: n paths from each data image, continued to t = 0; the denoising loss on the best path's final image (default, image-level; measured best on the lab, docs/method.md). --preset paper: the published Eq. 9 along the best path."
        : "RLHF-Diffusion-Sharpening: n paths from each online sample, continued to t = 0; reward-modulated Diffusion-DPO between the best and worst paths' final images against the frozen base (default, image-level; measured best on the lab, docs/method.md). --preset paper: the published Eq. 11 between noise draws of one image."
    )
  )
}
