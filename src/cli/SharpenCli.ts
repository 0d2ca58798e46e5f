/**
 * The command line shared by pipelines/sft.ts and pipelines/rlhf.ts:
 * config from defaults <- --config JSON <- flags, the base model, a reward by
 * name, evaluation before and after, and the run's outputs in --out:
 *
 *   out/run/            checkpoints (atomic) and metrics.jsonl
 *   out/model/          the sharpened model (loadable by sample.ts)
 *   out/plots/          reward.svg|png, loss.svg|png
 *   out/samples/        before-/after- contact sheets of the eval prompts
 *   out/report.md|json  before/after verifier accuracy and clip score
 *
 * @since 0.1.0
 */
import { Console, Effect, FileSystem, Layer, Option, Path, Schema } from "effect"
import { Command, Flag } from "effect/cli"
import * as Evaluate from "../eval/Evaluate.ts"
import * as AtomicFile from "../io/AtomicFile.ts"
import * as Denoiser from "../model/Denoiser.ts"
import * as ClipModel from "../reward/ClipModel.ts"
import * as Registry from "../reward/Registry.ts"
import { Backend, BackendName } from "../tensor/Backend.ts"
import * as Scoped from "../tensor/Scoped.ts"
import * as Report from "../pipeline/Report.ts"
import * as Sharpen from "../pipeline/Sharpen.ts"
import * as SharpenConfig from "../pipeline/SharpenConfig.ts"
import * as SharpenLayers from "../pipeline/SharpenLayers.ts"
import { Metrics } from "../pipeline/Metrics.ts"
import { Ema } from "../optim/Ema.ts"

export class RunDirectoryInUse extends Schema.TaggedError<RunDirectoryInUse>()("RunDirectoryInUse", {
  path: Schema.String,
  message: Schema.String
}) {}

// Optional so that only flags actually given override --config; the help shows the default.
const camel = (name: string) => name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase()) as keyof SharpenConfig.SharpenConfig
const withDefault = (name: string, description: string) => `${description} (default ${JSON.stringify(SharpenConfig.defaults[camel(name)])})`
const optInt = (name: string, description: string) => Flag.Int(name).pipe(Flag.withDescription(withDefault(name, description)), Flag.optional)
const optNum = (name: string, description: string) => Flag.Finite(name).pipe(Flag.withDescription(withDefault(name, description)), Flag.optional)

const flags = {
  model: Flag.String("model").pipe(Flag.withDescription("base model directory"), Flag.withDefault("models/shapeworld-base")),
  reward: Flag.String("reward").pipe(Flag.withDescription("reward name or expression (clip, compositional, compositional-dense, aesthetic, mllm, http, ...)"), Flag.withDefault("clip")),
  clipModel: Flag.String("clip-model").pipe(Flag.withDescription("clip model directory (reward and evaluation)"), Flag.withDefault("models/shapeworld-clip")),
  baseUrl: Flag.String("base-url").pipe(Flag.withDescription("mllm / http reward endpoint"), Flag.optional),
  out: Flag.String("out").pipe(Flag.withDescription("output directory"), Flag.optional),
  resume: Flag.Boolean("resume").pipe(Flag.withDescription("continue the run in --out from its latest checkpoint"), Flag.withDefault(false)),
  config: Flag.String("config").pipe(Flag.withDescription("JSON file of settings (see docs/architecture.md)"), Flag.optional),
  iterations: optInt("iterations", "optimisation steps"),
  seed: optInt("seed", "seed of data, noise and sampling"),
  batchSize: optInt("batch-size", "prompts per step (paper: 8)"),
  microBatchRows: optInt("micro-batch-rows", "UNet rows per gradient micro-batch (0 = whole batch; same update, less memory)"),
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
  ema: optNum("ema", "EMA decay of the weights evaluated and saved (0 = off)"),
  trainingNfe: optInt("training-nfe", "stop at this training NFE (sampling plus objective; 0 = iterations only)"),
  backend: Flag.Literals("backend", BackendName.literals).pipe(Flag.withDefault("auto" as const))
}

type Flags = Command.Command.Config.Infer<typeof flags>

const overrides = (f: Flags): Record<string, unknown> => {
  const keys = ["iterations", "seed", "batchSize", "microBatchRows", "n", "m", "lr", "cfg", "inferenceSteps", "onlineSteps", "dpoBeta", "margin", "target", "evalPrompts", "evalSteps", "checkpointEvery", "preference", "timestepPer", "start", "beta1", "accumulate", "ema", "trainingNfe"] as const
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

const loadConfig = Effect.fn("SharpenCli.loadConfig")(function*(f: Flags) {
  const fs = yield* FileSystem.FileSystem
  const layers: Array<Record<string, unknown>> = []
  let file: string | undefined
  if (Option.isSome(f.config)) {
    file = f.config.value
    const text = yield* fs.readFileString(file).pipe(Effect.mapError(() => new SharpenConfig.ConfigError({ file, message: "cannot read the config file" })))
    const json = yield* Effect.try({ try: () => JSON.parse(text), catch: (e) => new SharpenConfig.ConfigError({ file, message: `not valid JSON: ${(e as Error).message}` }) })
    layers.push(json)
  }
  // --paper goes under --config and the flags, so they can still adjust it.
  if (f.paper) layers.unshift(SharpenConfig.paperVariant)
  layers.push(overrides(f))
  const config = SharpenConfig.decode(layers, file)
  if (config instanceof SharpenConfig.ConfigError) return yield* config
  return config
})

export const command = (algorithm: "sft" | "rlhf") =>
  Command.make(
    algorithm,
    flags,
    Effect.fn(function*(f) {
      const fs = yield* FileSystem.FileSystem
      const path = yield* Path.Path
      const config = yield* loadConfig(f)
      const out = Option.getOrElse(f.out, () => path.join("out", algorithm))
      const runDir = path.join(out, "run")
      if (!f.resume && (yield* fs.exists(path.join(runDir, "LATEST")))) {
        return yield* new RunDirectoryInUse({ path: out, message: "holds a previous run: pass --resume to continue it or choose another --out" })
      }
      yield* fs.makeDirectory(runDir, { recursive: true })
      yield* AtomicFile.writeText(path.join(out, "config.json"), JSON.stringify(Schema.encodeSync(SharpenConfig.SharpenConfig)(config), null, 2) + "\n")

      const backend = Backend.make(process.env.SHARPEN_BACKEND ? (process.env.SHARPEN_BACKEND as BackendName) : f.backend)
      const reward = Registry.layerNode({
        reward: f.reward,
        modelDir: f.clipModel,
        ...(Option.isSome(f.baseUrl) ? { baseUrl: f.baseUrl.value } : {})
      }).pipe(Layer.provide(backend))
      const layers = (algorithm === "sft" ? SharpenLayers.sft : SharpenLayers.rlhf)(config, { model: f.model, runDir, reward, backend, label: algorithm })

      const sets = yield* Report.loadEvalSets(config.evalPrompts)
      const sampler = { steps: config.evalSteps, cfg: config.cfg, eta: 0, seed: config.seed + 1_000_003, batchSize: 16 }
      const samplesDir = path.join(out, "samples")

      const program = Effect.gen(function*() {
        const { model } = yield* Denoiser.Denoiser
        const hasClip = yield* fs.exists(f.clipModel)
        const clip = hasClip
          ? yield* Effect.flatMap(ClipModel.loadFiles(f.clipModel), (c) => Scoped.acquireWith(() => ClipModel.fromStored(c.config, c.weights, false), ClipModel.dispose))
          : undefined
        // Before: the base model, evaluated once (kept across --resume).
        const beforeFile = path.join(out, "before.json")
        let before: Array<Evaluate.SetReport>
        if (yield* fs.exists(beforeFile)) {
          before = JSON.parse(yield* fs.readFileString(beforeFile))
        } else {
          yield* Console.error(`evaluating the base model on ${sets.map((s) => `${s.prompts.length} ${s.name}`).join(" + ")} prompts ...`)
          before = yield* Report.evaluateWithGrids(model, sets, sampler, clip, samplesDir, "before")
          yield* AtomicFile.writeText(beforeFile, JSON.stringify(before))
        }
        const done = yield* (algorithm === "sft" ? Sharpen.sft(config) : Sharpen.rlhf(config))
        const records = yield* (yield* Metrics).records
        // The weight average when the run keeps one (--ema), else the policy.
        const trained = (yield* Ema).model()
        yield* Denoiser.save(path.join(out, "model"), trained, { algorithm, iterations: String(done), reward: f.reward, base: f.model, preference: config.preference })
        yield* Report.curves(records, path.join(out, "plots"), `${algorithm.toUpperCase()}-Diffusion-Sharpening, reward ${f.reward}`)
        yield* Console.error("evaluating the sharpened model ...")
        const after = yield* Report.evaluateWithGrids(trained, sets, sampler, clip, samplesDir, "after")
        const table = Report.comparison(before, after)
        const totalNfe = records.reduce((a, r) => a + r.nfe, 0)
        const totalCalls = records.reduce((a, r) => a + r.rewardCalls, 0)
        const wallMin = records.reduce((a, r) => a + r.wallMs, 0) / 60_000
        const summary = `${algorithm.toUpperCase()}-Diffusion-Sharpening of ${f.model} with reward ${f.reward}: ${done} iterations, ` +
          `${wallMin.toFixed(1)} min of training, ${totalNfe} training NFE, ${totalCalls} reward calls.`
        yield* AtomicFile.writeText(path.join(out, "report.md"), `${summary}\n\n${table}\n`)
        yield* AtomicFile.writeText(path.join(out, "report.json"), JSON.stringify({ config, model: f.model, reward: f.reward, iterations: done, before, after }, null, 2) + "\n")
        yield* Console.log(`\n${summary}\n\n${table}\n\nmodel: ${path.join(out, "model")}  report: ${path.join(out, "report.md")}`)
      })
      yield* program.pipe(Effect.provide(layers), Effect.scoped)
    })
  ).pipe(
    Command.withDescription(
      algorithm === "sft"
        ? "SFT-Diffusion-Sharpening: n paths from each data image, continued to t = 0; the denoising loss on the best path's final image (default, image-level; measured best on the lab, docs/method.md). --paper: the published Eq. 9 along the best path."
        : "RLHF-Diffusion-Sharpening: n paths from each online sample, continued to t = 0; reward-modulated Diffusion-DPO between the best and worst paths' final images against the frozen base (default, image-level; measured best on the lab, docs/method.md). --paper: the published Eq. 11 between noise draws of one image."
    )
  )
