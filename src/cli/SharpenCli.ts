/**
 * The command line shared by pipelines/sft.ts and pipelines/rlhf.ts:
 * config from defaults <- --config JSON <- flags, the base model, a reward by
 * name, evaluation before and after, and the run's outputs in --out:
 *
 *   out/LOCK            the owner's pid while a process works in out/ (RunLock)
 *   out/run/            checkpoints (atomic, the last keepCheckpoints), metrics.jsonl,
 *                       run.json (what defines the run; checked by --resume)
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
import { Console, Effect, FileSystem, Layer, Logger, Option, Path, Schema } from "effect"
import { Command, Flag } from "effect/cli"
import * as Evaluate from "../eval/Evaluate.ts"
import * as AtomicFile from "../io/AtomicFile.ts"
import * as CheckpointDir from "../io/CheckpointDir.ts"
import * as RunLock from "../io/RunLock.ts"
import * as Denoiser from "../model/Denoiser.ts"
import * as ClipModel from "../reward/ClipModel.ts"
import * as Registry from "../reward/Registry.ts"
import { Backend, BackendName } from "../tensor/Backend.ts"
import * as Scoped from "../tensor/Scoped.ts"
import * as WasmHeap from "../tensor/WasmHeap.ts"
import * as WebGpu from "../tensor/WebGpu.ts"
import * as Report from "../sharpen/Report.ts"
import * as Sharpen from "../sharpen/Sharpen.ts"
import * as SharpenConfig from "../sharpen/SharpenConfig.ts"
import * as SharpenLayers from "../sharpen/SharpenLayers.ts"
import { Metrics, trainingNfe } from "../sharpen/Metrics.ts"
import * as RunRecord from "../sharpen/RunRecord.ts"
import * as Inputs from "../io/Inputs.ts"
import * as RewardFlags from "./RewardFlags.ts"
import { Ema } from "../optim/Ema.ts"

export class RunDirectoryInUse extends Schema.TaggedError<RunDirectoryInUse>()("RunDirectoryInUse", {
  path: Schema.String,
  message: Schema.String
}) {}

/**
 * `--resume` of a directory without a checkpoint (a mistyped --out would
 * otherwise start a new run).
 *
 * @since 0.1.0
 */
export class NothingToResume extends Schema.TaggedError<NothingToResume>()("NothingToResume", {
  path: Schema.String,
  message: Schema.String
}) {}

/** Prompts in each mid-run sample grid (`sampleEvery`): two rows of the grid. */
const GRID_PROMPTS = 16

// Optional so that only flags actually given override --config; the help shows the default.
const camel = (name: string) => name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase()) as keyof SharpenConfig.SharpenConfig
const withDefault = (name: string, description: string) => {
  const key = camel(name)
  const rlhf = SharpenConfig.rlhfDefaults[key]
  return `${description} (default ${JSON.stringify(SharpenConfig.defaults[key])}${rlhf === undefined ? "" : `; rlhf.ts: ${JSON.stringify(rlhf)}`})`
}
const optInt = (name: string, description: string) => Flag.Int(name).pipe(Flag.withDescription(withDefault(name, description)), Flag.optional)
const optNum = (name: string, description: string) => Flag.Finite(name).pipe(Flag.withDescription(withDefault(name, description)), Flag.optional)

const flags = {
  model: Flag.String("model").pipe(Flag.withDescription("base model directory"), Flag.withDefault("models/shapeworld-base")),
  ...RewardFlags.flags,
  out: Flag.String("out").pipe(Flag.withDescription("output directory"), Flag.optional),
  resume: Flag.Boolean("resume").pipe(Flag.withDescription("continue the run in --out from its latest checkpoint (refused if there is none, or if a setting that changes the training differs)"), Flag.withDefault(false)),
  resumeIfPresent: Flag.Boolean("resume-if-present").pipe(Flag.withDescription("as --resume when --out holds a checkpoint, else start a new run there"), Flag.withDefault(false)),
  config: Flag.String("config").pipe(Flag.withDescription("JSON file of settings and a \"reward\" entry (see docs/architecture.md, docs/rewards.md)"), Flag.optional),
  iterations: optInt("iterations", "optimisation steps"),
  seed: optInt("seed", "seed of data, noise and sampling"),
  batchSize: optInt("batch-size", "prompts per step (paper: 8)"),
  microBatchRows: optInt("micro-batch-rows", "UNet rows per gradient micro-batch (0 = whole batch; same update, less memory; default 24 on wasm and cpu, 0 on a GPU)"),
  n: optInt("n", "trajectories per prompt (paper: 3)"),
  m: optInt("m", "denoising steps per trajectory (paper: 3)"),
  lr: optNum("lr", "learning rate"),
  cfg: optNum("cfg", "classifier-free guidance (paper: 5)"),
  inferenceSteps: optInt("inference-steps", "DDIM grid of the trajectories (paper: 50)"),
  onlineSteps: optInt("online-steps", "RLHF: DDIM steps of the online samples (paper: 50)"),
  dpoBeta: optNum("dpo-beta", "RLHF: DPO beta"),
  margin: Flag.Literals("margin", ["paper", "reference-code"]).pipe(Flag.withDescription(withDefault("margin", "RLHF: reward margin inside (paper) or outside (reference code) the log-sigmoid")), Flag.optional),
  target: Flag.Literals("target", ["consistent", "original"]).pipe(Flag.withDescription(withDefault("target", "epsilon target along a path")), Flag.optional),
  evalPrompts: optInt("eval-prompts", "prompts per eval set for before/after (0 = all)"),
  evalSteps: optInt("eval-steps", "DDIM steps of the before/after evaluation"),
  checkpointEvery: optInt("checkpoint-every", "iterations between checkpoints"),
  paper: Flag.Boolean("paper").pipe(
    Flag.withDescription("the published algorithm: preference between noise draws of one image, x0-estimate reward summed, one start timestep per batch, AdamW beta1 0 (pipelines/configs/paper.json; docs/method.md)"),
    Flag.withDefault(false)
  ),
  preference: Flag.Literals("preference", ["paper", "image"]).pipe(Flag.withDescription(withDefault("preference", "what a preference compares: the paths' own final images (image) or noise draws of one image (paper)")), Flag.optional),
  aggregation: Flag.Literals("aggregation", ["sum", "mean", "last", "final"]).pipe(Flag.withDescription(withDefault("aggregation", "trajectory reward: of the paths' final images (final), or over the x0 estimates (sum: Eq. 8)")), Flag.optional),
  timestepPer: Flag.Literals("timestep-per", ["batch", "prompt"]).pipe(Flag.withDescription(withDefault("timestep-per", "draw the start timestep once per batch or per prompt")), Flag.optional),
  timestepRange: Flag.String("timestep-range").pipe(Flag.withDescription(`start timesteps MIN,MAX on the grid, "uniform" or "top" (default ${JSON.stringify(SharpenConfig.defaults.timestep)})`), Flag.optional),
  start: Flag.Literals("start", ["online-sample", "noise"]).pipe(Flag.withDescription(withDefault("start", "RLHF: paths start from the online sample noised to t, or from pure noise")), Flag.optional),
  beta1: optNum("beta1", "AdamW beta1 (paper: 0)"),
  accumulate: optInt("accumulate", "batches per optimiser step (effective batch = batch-size x accumulate)"),
  stepsPerBatch: optInt("steps-per-batch", "image-level objectives: optimiser steps per generated batch, each with fresh noise and t"),
  minLossTimestep: optInt("min-loss-timestep", "image-level RLHF: lowest timestep of the DPO noise"),
  winnerSft: optNum("winner-sft", "image-level RLHF: weight of the winners' denoising loss added to the DPO loss (0 = pure DPO)"),
  ema: optNum("ema", "EMA decay of the weights evaluated and saved (0 = off)"),
  trainingNfe: optInt("training-nfe", "stop at this training NFE (sampling plus objective; 0 = iterations only)"),
  sampleEvery: optInt("sample-every", "iterations between sample grids (the first 16 prompts of the first eval set) in samples/ (0 = only before and after)"),
  keepCheckpoints: optInt("keep-checkpoints", "checkpoints kept on disk (a damaged latest one falls back to the one before)"),
  backend: Flag.Literals("backend", BackendName.literals).pipe(Flag.withDefault("auto" as const)),
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
  const keys = ["iterations", "seed", "batchSize", "microBatchRows", "n", "m", "lr", "cfg", "inferenceSteps", "onlineSteps", "dpoBeta", "margin", "target", "evalPrompts", "evalSteps", "checkpointEvery", "preference", "timestepPer", "start", "beta1", "accumulate", "stepsPerBatch", "winnerSft", "minLossTimestep", "ema", "trainingNfe", "sampleEvery", "keepCheckpoints"] as const
  const out: Record<string, unknown> = {}
  if (Option.isSome(f.aggregation)) out.aggregation = { kind: f.aggregation.value }
  if (Option.isSome(f.timestepRange)) {
    const v = f.timestepRange.value.trim()
    const [min, max] = v.split(",").map((s) => Number(s.trim()))
    out.timestep = v === "uniform" || v === "top" ? { kind: v } : { kind: "range", min, max }
  }
  for (const k of keys) {
    const v = f[k] as Option.Option<unknown>
    if (Option.isSome(v)) out[k] = v.value
  }
  return out
}

const loadConfig = Effect.fn("SharpenCli.loadConfig")(function*(f: Flags, algorithm: "sft" | "rlhf") {
  const fs = yield* FileSystem.FileSystem
  const layers: Array<Record<string, unknown>> = []
  let file: string | undefined
  let rewardEntry: unknown
  if (Option.isSome(f.config)) {
    file = f.config.value
    const text = yield* fs.readFileString(file).pipe(Effect.mapError(() => new SharpenConfig.ConfigError({ file, message: "cannot read the config file" })))
    const json = yield* Effect.try({ try: () => JSON.parse(text), catch: (e) => new SharpenConfig.ConfigError({ file, message: `not valid JSON: ${(e as Error).message}` }) })
    if (json === null || typeof json !== "object" || Array.isArray(json)) {
      return yield* new SharpenConfig.ConfigError({ file, message: "the config file must hold a JSON object of settings" })
    }
    // The reward and its options are not settings of the algorithm (RewardFlags).
    const { reward, ...settings } = json as Record<string, unknown>
    rewardEntry = reward
    layers.push(settings)
  }
  layers.push(overrides(f))
  const config = yield* Effect.fromResult(SharpenConfig.resolve(algorithm, layers, { paper: f.paper, file }))
  const reward = yield* Effect.fromResult(RewardFlags.spec(f, rewardEntry, file))
  return { config, reward }
})

export const command = (algorithm: "sft" | "rlhf") =>
  Command.make(
    algorithm,
    flags,
    Effect.fn(function*(f) {
      const fs = yield* FileSystem.FileSystem
      const path = yield* Path.Path
      const { config, reward: rewardSpec } = yield* loadConfig(f, algorithm)
      const out = Option.getOrElse(f.out, () => path.join("out", algorithm))
      const runDir = path.join(out, "run")
      const nothingToResume = new NothingToResume({
        path: runDir,
        message: "no checkpoint to resume from (is --out right?); pass --resume-if-present to start a new run when there is none"
      })
      // Before creating anything: a mistyped --out of a --resume leaves no directory behind.
      if (f.resume && !(yield* fs.exists(runDir))) return yield* nothingToResume
      // The output directory first (a regular file, /proc/...: one clear error), then its lock.
      yield* Inputs.writableDirectory(out)
      yield* RunLock.acquire(out)
      const stale = yield* AtomicFile.removeStale(out)
      if (stale.length > 0) yield* Console.error(`removed ${stale.length} temporary file(s) of interrupted writes in ${out}`)
      const hasCheckpoint = (yield* CheckpointDir.candidates(runDir)).length > 0
      if (!f.resume && !f.resumeIfPresent && hasCheckpoint) {
        return yield* new RunDirectoryInUse({ path: out, message: "holds a previous run: pass --resume to continue it or choose another --out" })
      }
      if (f.resume && !hasCheckpoint) return yield* nothingToResume

      const threads = Option.getOrElse(f.threads, () => "auto" as const)
      if (threads !== "auto" && threads < 1) return yield* new SharpenConfig.ConfigError({ field: "threads", message: `--threads must be at least 1, got ${threads}` })
      const backend = Backend.fromFlag(f.backend)
      const reward = Registry.layerNode(rewardSpec).pipe(Layer.provide(backend))
      const layers = (algorithm === "sft" ? SharpenLayers.sft : SharpenLayers.rlhf)(config, { model: f.model, runDir, reward, backend, label: algorithm, threads })
      const clipModel = rewardSpec.modelDir ?? RewardFlags.DEFAULT_CLIP_MODEL

      const sets = yield* Report.loadEvalSets(config.evalPrompts)
      const sampler = { steps: config.evalSteps, cfg: config.cfg, eta: 0, seed: config.seed + 1_000_003, batchSize: 16 }
      const samplesDir = path.join(out, "samples")

      // Runs once the layers are built: the model and the reward are valid.
      const program = Effect.gen(function*() {
        const { model } = yield* Denoiser.Denoiser
        const record = yield* RunRecord.make({ algorithm, config, reward: rewardSpec, model: f.model })
        const previous = yield* RunRecord.check(runDir, record, hasCheckpoint)
        yield* AtomicFile.writeText(path.join(out, "config.json"), JSON.stringify(Schema.encodeSync(SharpenConfig.SharpenConfig)(config), null, 2) + "\n")
        const hasClip = yield* fs.exists(clipModel)
        const clip = hasClip
          ? yield* Effect.flatMap(ClipModel.loadFiles(clipModel), (c) => Scoped.acquireWith(() => ClipModel.fromStored(c.config, c.weights, false), ClipModel.dispose))
          : undefined
        // Before: the base model, evaluated once (kept across --resume while
        // the model and the evaluation settings are those it was made with).
        const beforeFile = path.join(out, "before.json")
        let before: Array<Evaluate.SetReport>
        if ((yield* fs.exists(beforeFile)) && RunRecord.sameEvaluation(previous, record)) {
          before = JSON.parse(yield* fs.readFileString(beforeFile))
        } else {
          yield* Console.error(`evaluating the base model on ${sets.map((s) => `${s.prompts.length} ${s.name}`).join(" + ")} prompts ...`)
          before = yield* Report.evaluateWithGrids(model, sets, sampler, clip, samplesDir, "before")
          yield* AtomicFile.writeText(beforeFile, JSON.stringify(before))
        }
        // Grids during training (sampleEvery): the first GRID_PROMPTS prompts of
        // the first eval set, their own seeds, of the model that would be saved
        // (the weight average with --ema). A grid to look at, not an evaluation:
        // sampling the whole set cost the default run over a minute per grid.
        const ema = yield* Ema
        const gridSet = sets.slice(0, 1).map((s) => ({ ...s, prompts: s.prompts.slice(0, GRID_PROMPTS) }))
        const grids = Sharpen.IterationSampler.of({
          sample: (iteration) =>
            Report.evaluateWithGrids(ema.model(), gridSet, sampler, undefined, samplesDir, `iter-${String(iteration).padStart(7, "0")}`).pipe(
              Effect.catch((e) => Effect.logWarning(`sample grid of iteration ${iteration} not written: ${e.message}`)),
              Effect.provideService(FileSystem.FileSystem, fs),
              Effect.provideService(Path.Path, path)
            )
        })
        const done = yield* (algorithm === "sft" ? Sharpen.sft(config) : Sharpen.rlhf(config)).pipe(Effect.provideService(Sharpen.IterationSampler, grids))
        const records = yield* (yield* Metrics).records
        // The weight average when the run keeps one (--ema), else the policy.
        const trained = (yield* Ema).model()
        yield* Denoiser.save(path.join(out, "model"), trained, { algorithm, iterations: String(done), reward: rewardSpec.reward, base: f.model, preference: config.preference })
        yield* Report.curves(records, path.join(out, "plots"), `${algorithm.toUpperCase()}-Diffusion-Sharpening, reward ${rewardSpec.reward}`)
        yield* Console.error("evaluating the sharpened model ...")
        const after = yield* Report.evaluateWithGrids(trained, sets, sampler, clip, samplesDir, "after")
        const table = Report.comparison(before, after)
        // Training NFE as the docs define it (sampling plus the objective's model evaluations).
        const sampling = records.reduce((a, r) => a + r.nfe, 0)
        const totalNfe = trainingNfe(records)
        const totalCalls = records.reduce((a, r) => a + r.rewardCalls, 0)
        const wallMin = records.reduce((a, r) => a + r.wallMs, 0) / 60_000
        const summary = `${algorithm.toUpperCase()}-Diffusion-Sharpening of ${f.model} with reward ${rewardSpec.reward}: ${done} iterations, ` +
          `${wallMin.toFixed(1)} min of training, ${totalNfe} training NFE (${sampling} sampling, ${totalNfe - sampling} objective), ${totalCalls} reward calls. ` +
          // Memory of the whole run (docs/performance.md): the process's peak RSS, worker threads included, and this thread's wasm heap.
          `Peak resident memory ${Math.round(process.resourceUsage().maxRSS / 1024)} MiB, wasm heap ${Math.round(WasmHeap.heapBytes() / 2 ** 20)} MiB` +
          gpuSummary() + "."
        yield* AtomicFile.writeText(path.join(out, "report.md"), `${summary}\n\n${table}\n`)
        yield* AtomicFile.writeText(path.join(out, "report.json"), JSON.stringify({ config, model: f.model, reward: rewardSpec.reward, iterations: done, before, after }, null, 2) + "\n")
        yield* Console.log(`\n${summary}\n\n${table}\n\nmodel: ${path.join(out, "model")}  report: ${path.join(out, "report.md")}`)
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
        ? "SFT-Diffusion-Sharpening: n paths from each data image, continued to t = 0; the denoising loss on the best path's final image (default, image-level; measured best on the lab, docs/method.md). --paper: the published Eq. 9 along the best path."
        : "RLHF-Diffusion-Sharpening: n paths from each online sample, continued to t = 0; reward-modulated Diffusion-DPO between the best and worst paths' final images against the frozen base (default, image-level; measured best on the lab, docs/method.md). --paper: the published Eq. 11 between noise draws of one image."
    )
  )
