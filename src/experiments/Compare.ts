/**
 * The paper's comparison (Table 1, Tables 2-3, Fig. 4-6) on ShapeWorld-32,
 * as resumable stages. Every stage writes one JSON file under `out/` and is
 * skipped when that file exists, so an interrupted comparison continues
 * where it stopped (a training stage also resumes from its checkpoint):
 *
 *   train/<method>-s<seed>[-nfe<N>]/  fine-tuning runs (same reward, same iterations
 *                             or, with -nfe<N>, the same budget of training NFE);
 *                             curve/k<k>/ the model at k/K of it (--curve-evals K)
 *   eval/<row>.json           each row on the eval sets (accuracy, clip,
 *                             compressibility, aesthetic, NFE per image)
 *   ablation/n<k>, m<k>       RLHF sharpening with other n / m (Tables 2-3)
 *
 * Fine-tuning methods are the pipeline's layer stacks, named by the lab's
 * one switch (`MethodLayers`) and run by the one `Sharpen.loop`;
 * inference-time methods are `InferenceMethod`s run on the base model.
 *
 * @since 0.2.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Console, Effect, FileSystem, Layer, Path, Schema } from "effect"
import type { ParsedPrompt } from "../data/Prompt.ts"
import * as BestOfN from "../eval/BestOfN.ts"
import * as Evaluate from "../eval/Evaluate.ts"
import * as Generate from "../trajectory/Generate.ts"
import * as InferenceMethod from "../eval/InferenceMethod.ts"
import * as GenerationPool from "../parallel/GenerationPool.ts"
import * as JobThreads from "../parallel/JobThreads.ts"
import * as ParallelGenerate from "../parallel/ParallelGenerate.ts"
import type { DiffusionError } from "../diffusion/DiffusionError.ts"
import type { GenerationError } from "../trajectory/GenerationJobs.ts"
import * as StepSearch from "../eval/StepSearch.ts"
import * as Wilson from "../eval/Wilson.ts"
import * as AtomicFile from "../io/AtomicFile.ts"
import { mean } from "../math/Stats.ts"
import * as Denoiser from "../model/Denoiser.ts"
import * as Weights from "../model/Weights.ts"
import type * as ClipModel from "../reward/ClipModel.ts"
import * as Registry from "../reward/Registry.ts"
import * as CheckpointDir from "../io/CheckpointDir.ts"
import * as RunRecord from "../sharpen/RunRecord.ts"
import { Reward } from "../reward/Reward.ts"
import type { Backend } from "../tensor/Backend.ts"
import * as Scoped from "../tensor/Scoped.ts"
import { Ema } from "../optim/Ema.ts"
import { Metrics, trainingNfe } from "../optim/Metrics.ts"
import * as Sharpen from "../sharpen/Sharpen.ts"
import * as MethodLayers from "./MethodLayers.ts"
import * as MethodSettings from "./MethodSettings.ts"
import type { SharpenConfig } from "../sharpen/SharpenConfig.ts"
import * as SharpenConfigs from "../sharpen/SharpenConfig.ts"
import * as Snapshots from "./Snapshots.ts"

/**
 * The fine-tuning rows of Table 1, in the paper's order, then the rows this
 * project adds (image-level sharpening, RAFT). Names are stage directories:
 * existing ones never change.
 */
export const FINETUNE_METHODS = [
  "standard",
  "diffusion-dpo",
  "ddpo",
  "sft-sharpening",
  "rlhf-sharpening",
  "sft-sharpening-image",
  "rlhf-sharpening-image",
  "raft",
  "nft",
  "group-pairs"
] as const
export const FinetuneMethod = Schema.Literals(FINETUNE_METHODS)
export type FinetuneMethod = typeof FinetuneMethod.Type

export const LABELS: Record<FinetuneMethod, string> = {
  "standard": "standard fine-tuning",
  "diffusion-dpo": "Diffusion-DPO",
  "ddpo": "DDPO",
  "sft-sharpening": "SFT Diffusion-Sharpening (paper)",
  "rlhf-sharpening": "RLHF Diffusion-Sharpening (paper)",
  "sft-sharpening-image": "SFT Diffusion-Sharpening (image-level)",
  "rlhf-sharpening-image": "RLHF Diffusion-Sharpening (image-level)",
  "raft": "RAFT",
  "nft": "DiffusionNFT",
  "group-pairs": "group-relative image-level RLHF (all pairs)"
}

/**
 * Each row's algorithm (the lab's wiring, `MethodLayers`) and the settings
 * it starts from. The first five start from the published algorithm
 * (`SharpenConfig.paperVariant`, which also sets the paper's AdamW beta1 0
 * for the baselines), as every earlier comparison did, so their stages and
 * results stay valid; the image-level rows and RAFT start from the
 * library's defaults.
 */
export const METHODS: Record<FinetuneMethod, { readonly algorithm: MethodLayers.Algorithm; readonly base: Partial<SharpenConfig> }> = {
  "standard": { algorithm: "standard", base: SharpenConfigs.paperVariant },
  "diffusion-dpo": { algorithm: "diffusion-dpo", base: SharpenConfigs.paperVariant },
  "ddpo": { algorithm: "ddpo", base: SharpenConfigs.paperVariant },
  "sft-sharpening": { algorithm: "sft", base: SharpenConfigs.paperVariant },
  "rlhf-sharpening": { algorithm: "rlhf", base: SharpenConfigs.paperVariant },
  "sft-sharpening-image": { algorithm: "sft", base: {} },
  "rlhf-sharpening-image": { algorithm: "rlhf", base: {} },
  "raft": { algorithm: "raft", base: {} },
  // The field's group methods (issue #23) on image-level RLHF's stack, at its ShapeWorld recipe.
  "nft": { algorithm: "nft", base: {} },
  "group-pairs": { algorithm: "group", base: {} }
}

const CurvePoint = Schema.Struct({
  iteration: Schema.Int,
  rewardMean: Schema.Number,
  rewardBest: Schema.Number,
  rewardWorst: Schema.Number,
  loss: Schema.Number,
  /** Cumulative training NFE after this iteration (absent in summaries written before it was recorded). */
  trainingNfe: Schema.optionalKey(Schema.Number)
})

/** What a training stage leaves behind (train/<method>-s<seed>/summary.json). */
export const TrainSummary = Schema.Struct({
  method: Schema.String,
  seed: Schema.Int,
  iterations: Schema.Int,
  wallMinutes: Schema.Number,
  /** Sampling NFE (online samples, paths). */
  nfe: Schema.Number,
  /** Sampling plus the objective's model evaluations: what a budget counts (absent in older summaries). */
  trainingNfe: Schema.optionalKey(Schema.Number),
  rewardCalls: Schema.Number,
  curve: Schema.Array(CurvePoint),
  /** Models saved along the run (`--curve-evals`), see Snapshots.ts. */
  snapshots: Schema.optionalKey(Schema.Array(Snapshots.Snapshot))
})
export type TrainSummary = typeof TrainSummary.Type

/**
 * Cumulative training NFE at each curve point: as recorded, or for older
 * summaries the sampling NFE spread evenly over the iterations (constant
 * per iteration for every method here), marked `estimated`.
 */
export const nfeCurve = (s: TrainSummary): { readonly points: ReadonlyArray<number>; readonly estimated: boolean } =>
  s.curve.every((c) => c.trainingNfe !== undefined)
    ? { points: s.curve.map((c) => c.trainingNfe!), estimated: false }
    : { points: s.curve.map((_, i) => (s.nfe * (i + 1)) / Math.max(1, s.curve.length)), estimated: true }

const Row = Schema.Struct({
  category: Schema.String,
  n: Schema.Int,
  accuracy: Schema.Number,
  partial: Schema.Number,
  clip: Schema.NullOr(Schema.Number)
})

/** One evaluated row (eval/<row>.json): every set's table and the extra rewards. */
export const EvalSummary = Schema.Struct({
  row: Schema.String,
  family: Schema.String,
  nfePerImage: Schema.Number,
  sets: Schema.Array(Schema.Struct({
    name: Schema.String,
    rows: Schema.Array(Row),
    reward: Schema.Number,
    compressibility: Schema.Number,
    aesthetic: Schema.Number
  }))
})
export type EvalSummary = typeof EvalSummary.Type

/**
 * Read a stage's JSON if it exists, else run the stage and write it
 * atomically.
 *
 * @since 0.2.0
 */
export const cached = <A, I, E, R>(file: string, schema: Schema.Codec<A, I>, run: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    if (yield* fs.exists(file)) {
      const text = yield* fs.readFileString(file)
      return Schema.decodeUnknownSync(schema)(JSON.parse(text))
    }
    const value = yield* run
    yield* AtomicFile.writeText(file, JSON.stringify(Schema.encodeSync(schema)(value), null, 1) + "\n")
    return value
  })

/** Wiring shared by every training stage. */
export interface TrainWiring {
  readonly model: string
  readonly reward: Layer.Layer<Reward, unknown, FileSystem.FileSystem | Path.Path>
  readonly backend: Layer.Layer<Backend, unknown>
  /** The reward's spec: recorded in each run (run.json) and checked when the stage resumes. */
  readonly rewardSpec?: Registry.RewardSpec
  /**
   * Threads of the generation of the sharpening and RAFT stages (`GenerationPool`;
   * default 1). Diffusion-DPO and DDPO generate on one thread.
   */
  readonly threads?: number | "auto"
  /**
   * The stages' jobs on effect/cluster runners (`--runners`), in place of
   * `threads`: the transport over them (one connection for every stage;
   * the sharpening and RAFT stages' iteration jobs, and the trained
   * models' evaluation images), and who they are, for each stage's
   * run.json. Standard fine-tuning, Diffusion-DPO and DDPO compute here,
   * as with threads.
   */
  readonly runners?: {
    readonly transport: JobThreads.Threads
    readonly used: () => RunRecord.RunRecord["runners"]
  }
}

/** Options of a training stage. */
export interface TrainOptions {
  /** Save this many evenly spaced points of the run (the last is the final model; 0 or 1: none), see Snapshots.ts. */
  readonly snapshots?: number
  /** The settings of the `nft` and `group` objectives (recorded in run.json with the others). */
  readonly objective?: MethodSettings.ObjectiveSettings
}

/**
 * Train one fine-tuning method from the base model with `config` into
 * `dir` (run/, model/, summary.json, curve/ with snapshots). Resumes an
 * interrupted run; a finished stage is reused only if its run record
 * matches what this invocation would train.
 *
 * @since 0.2.0
 */
export const train = (method: FinetuneMethod, config: SharpenConfig, dir: string, w: TrainWiring, options: TrainOptions = {}) =>
  Effect.gen(function*() {
    const path = yield* Path.Path
    const fs = yield* FileSystem.FileSystem
    yield* fs.makeDirectory(path.join(dir, "run"), { recursive: true })
    // The runners take the threads' place (the pool over their transport, which outlives the stage).
    const jobs = w.runners === undefined ? {} : { jobs: GenerationPool.GenerationPool.fromTransport.pipe(Layer.provide(Layer.succeed(JobThreads.JobThreads, w.runners.transport))) }
    const wiring = { model: w.model, runDir: path.join(dir, "run"), reward: w.reward, backend: w.backend, label: method, threads: w.threads ?? 1, ...jobs }
    const snapshots = options.snapshots ?? 0
    const curveDir = path.join(dir, "curve")
    const algorithm = METHODS[method].algorithm
    // The objective's own settings count as settings only for the methods that use them.
    const objective = algorithm === "nft" || algorithm === "group" ? options.objective ?? MethodSettings.objectiveDefaults : undefined
    const record = w.rewardSpec === undefined ? undefined : RunRecord.make({ algorithm: method, config, reward: w.rewardSpec, model: w.model, extra: objective, runners: w.runners?.used() })
    const program = Effect.gen(function*() {
      if (record !== undefined) {
        // A stage resumed with other settings, reward or base model would mix two runs.
        const resuming = (yield* CheckpointDir.candidates(wiring.runDir)).length > 0
        yield* RunRecord.check(wiring.runDir, yield* record, resuming)
      }
      const loop = Sharpen.loop(config)
      const done = yield* (snapshots > 1
        ? Effect.flatMap(Snapshots.sampler(curveDir, snapshots, config), (s) => Effect.provideService(loop, Sharpen.IterationSampler, s))
        : loop)
      // Runners that joined during the stage: its run.json names every runner used (as sharpen's CLI does).
      const used = w.runners?.used()
      if (record !== undefined && used !== undefined) yield* RunRecord.write(wiring.runDir, { ...(yield* record), runners: used })
      // The weight average when the run keeps one (`ema`), else the policy.
      const model = (yield* Ema).model()
      yield* Denoiser.save(path.join(dir, "model"), model, { method, iterations: String(done), base: w.model, seed: String(config.seed) })
      const records = yield* (yield* Metrics).records
      let cumulative = 0
      return {
        method,
        seed: config.seed,
        iterations: done,
        wallMinutes: records.reduce((a, r) => a + r.wallMs, 0) / 60_000,
        nfe: records.reduce((a, r) => a + r.nfe, 0),
        trainingNfe: trainingNfe(records),
        rewardCalls: records.reduce((a, r) => a + r.rewardCalls, 0),
        curve: records.map((r) => ({
          iteration: r.iteration,
          rewardMean: r.rewardMean,
          rewardBest: r.rewardBest,
          rewardWorst: r.rewardWorst,
          loss: r.loss,
          trainingNfe: (cumulative += r.nfe + (r.lossNfe ?? 0))
        })),
        ...(snapshots > 1 ? { snapshots: yield* Snapshots.list(curveDir, snapshots) } : {})
      } satisfies TrainSummary
    })
    const run = program.pipe(Effect.provide(MethodLayers.layers(algorithm, config, wiring, undefined, objective)))
    const file = path.join(dir, "summary.json")
    // A finished stage must not stand for other settings (e.g. a changed --method-settings entry).
    if (record !== undefined && (yield* fs.exists(file))) yield* RunRecord.verify(wiring.runDir, yield* record)
    return yield* cached(file, TrainSummary, Effect.andThen(Console.error(`training ${method} (seed ${config.seed}) in ${dir} ...`), Effect.scoped(run)))
  })

/** A model directory as a scoped, frozen model. */
export const loadModel = (dir: string) =>
  Effect.flatMap(Weights.load(dir), (f) => Scoped.acquireWith(() => Denoiser.fromStored(f.config, f.weights, false), Denoiser.dispose))

/**
 * Mean scores of images under a named reward (compressibility, aesthetic).
 *
 * @since 0.2.0
 */
export const meanScore = (reward: string, images: ReadonlyArray<Float32Array>, prompts: ReadonlyArray<string>) =>
  Reward.score(images, prompts).pipe(Effect.map(mean), Effect.provide(Registry.layerNode({ reward })))

/** Where the learned reward and the exact verifier disagree on one row's samples. */
export const HackingSummary = Schema.Struct({
  row: Schema.String,
  set: Schema.String,
  n: Schema.Int,
  passes: Schema.Int,
  /** Verifier failures scored above the median clip score of the passes. */
  failsAbovePassMedian: Schema.Int,
  medianClipPass: Schema.NullOr(Schema.Number),
  medianClipFail: Schema.NullOr(Schema.Number),
  /** The failures the learned reward likes most, best first (the grid's order). */
  examples: Schema.Array(Schema.Struct({ index: Schema.Int, prompt: Schema.String, clip: Schema.Number }))
})
export type HackingSummary = typeof HackingSummary.Type

const median = (xs: ReadonlyArray<number>): number | null => {
  if (xs.length === 0) return null
  const s = [...xs].sort((a, b) => a - b)
  const h = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? s[h] : (s[h - 1] + s[h]) / 2
}

/**
 * Reward hacking in numbers: the verifier failures a learned reward scores
 * as high as a typical pass, and the `top` failures it likes most.
 *
 * @since 0.2.0
 */
export const disagreements = (row: string, report: Evaluate.SetReport, top: number): HackingSummary => {
  const scored = report.samples.map((s, index) => ({ ...s, index, clip: s.clip ?? 0 }))
  const pass = scored.filter((s) => s.pass)
  const fail = scored.filter((s) => !s.pass)
  const medPass = median(pass.map((s) => s.clip))
  return {
    row,
    set: report.name,
    n: scored.length,
    passes: pass.length,
    failsAbovePassMedian: medPass === null ? 0 : fail.filter((s) => s.clip >= medPass).length,
    medianClipPass: medPass,
    medianClipFail: median(fail.map((s) => s.clip)),
    examples: [...fail].sort((a, b) => b.clip - a.clip).slice(0, top).map((s) => ({ index: s.index, prompt: s.prompt, clip: s.clip }))
  }
}

/** How a row makes its images for a prompt list. */
export type Generator<E, R> = (prompts: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<Float32Array>, E, R>

/**
 * Evaluate one row on every set: verifier accuracy per category, clip score
 * (if `clip`), the training reward's mean, compressibility and aesthetic.
 *
 * @since 0.2.0
 */
export const evaluateRow = <E, R, E2 = never, R2 = never>(
  row: string,
  family: string,
  nfePerImage: number,
  generate: Generator<E, R>,
  sets: ReadonlyArray<Evaluate.PromptSet>,
  clip: ClipModel.Model | undefined,
  /** Sees each set's images and report, e.g. to keep examples without sampling again. */
  onSet: (set: Evaluate.PromptSet, images: ReadonlyArray<Float32Array>, report: Evaluate.SetReport) => Effect.Effect<void, E2, R2> = () => Effect.void
) =>
  Effect.gen(function*() {
    const out: Array<EvalSummary["sets"][number]> = []
    for (const set of sets) {
      const texts = set.prompts.map((p: ParsedPrompt) => p.text)
      const images = yield* generate(texts)
      const report = yield* Evaluate.judge(set.name, set.prompts, images, nfePerImage, clip)
      yield* onSet(set, images, report)
      out.push({
        name: set.name,
        rows: report.rows.map((r) => ({ ...r })),
        reward: mean(yield* Reward.score(images, texts)),
        compressibility: yield* meanScore("compressibility", images, texts),
        aesthetic: yield* meanScore("aesthetic", images, texts)
      })
    }
    return { row, family, nfePerImage, sets: out } satisfies EvalSummary
  })

/**
 * A trained (or the base) model's images with the plain sampler, on all
 * cores, or over `transport` when given (the runners of `--runners`; the
 * same images).
 */
export const samplerGenerator = (model: Denoiser.Model, sampler: Generate.SamplerOptions, transport?: JobThreads.Threads): Generator<GenerationError | DiffusionError, never> => (prompts) =>
  transport === undefined
    ? Effect.promise((signal) => ParallelGenerate.generate(model, prompts, sampler, { backend: tf.getBackend(), signal }))
    : ParallelGenerate.onTransport(transport, model, prompts, sampler)

/** An inference-time method's images on the base model. */
export const methodGenerator = <E, R>(m: InferenceMethod.InferenceMethod<E, R>, model: Denoiser.Model): Generator<E, R> => (prompts) =>
  Effect.map(m.generate(model, prompts), (r) => r.images)

/**
 * The inference-time rows: best-of-N for each N, and the step search at
 * each budget (K search points x B branches).
 *
 * @since 0.2.0
 */
export const inferenceMethods = (
  sampler: Generate.SamplerOptions,
  bestOf: ReadonlyArray<number>,
  stepSearch: ReadonlyArray<{ readonly points: number; readonly branches: number }>
) => [
  ...bestOf.map((n) => BestOfN.method({ sampler, n })),
  ...stepSearch.map((s) => StepSearch.method({ sampler, searchPoints: s.points, branches: s.branches }))
]

// ---------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------

const pct = (v: number) => `${(100 * v).toFixed(1)}`

/** A set's overall row. */
export const overall = (s: EvalSummary["sets"][number]) => s.rows.find((r) => r.category === "overall")!

/** A fine-tuned row's training: NFE spent (undefined: not recorded) and iterations run. */
export interface Training {
  readonly nfe: number | undefined
  readonly iterations: number
}

/** A summary's training columns. */
export const trainingOf = (s: TrainSummary): Training => ({ nfe: s.trainingNfe, iterations: s.iterations })

/**
 * Table 1: one line per row, accuracy per set, clip, the other rewards, NFE;
 * with `training` columns (training NFE spent, iterations run) when any row
 * has them (a row without is untrained: 0).
 *
 * @since 0.2.0
 */
export const table1 = (
  rows: ReadonlyArray<{ readonly label: string; readonly eval: EvalSummary; readonly spread?: ReadonlyArray<number>; readonly training?: Training }>
): string => {
  if (rows.length === 0) return ""
  const setNames = rows[0].eval.sets.map((s) => s.name)
  const withTraining = rows.some((r) => r.training !== undefined)
  const head = [
    "| method | " + setNames.map((n) => `${n} accuracy % [95% CI]`).join(" | ") + " | clip (seen) | compressibility | aesthetic | NFE / image |" +
    (withTraining ? " training NFE | iterations |" : ""),
    "|---|" + setNames.map(() => "---|").join("") + "---|---|---|---|" + (withTraining ? "---|---|" : "")
  ]
  const lines = rows.map((r) => {
    const accs = r.eval.sets.map((s, i) => {
      const base = Wilson.format(overall(s).accuracy, overall(s).n)
      return r.spread !== undefined && r.spread[i] !== undefined ? `${base} ± ${pct(r.spread[i])} over seeds` : base
    })
    const s0 = r.eval.sets[0]
    const clip = overall(s0).clip
    const training = !withTraining ? "" : r.training === undefined ? " 0 | 0 |" : ` ${r.training.nfe ?? "n/a"} | ${r.training.iterations} |`
    return `| ${r.label} | ${accs.join(" | ")} | ${clip === null ? "n/a" : clip.toFixed(3)} | ${s0.compressibility.toFixed(3)} | ${s0.aesthetic.toFixed(3)} | ${r.eval.nfePerImage} |${training}`
  })
  return [...head, ...lines].join("\n")
}

/**
 * Per-category accuracy of each row on one set.
 *
 * @since 0.2.0
 */
export const categoryTable = (set: number, rows: ReadonlyArray<{ readonly label: string; readonly eval: EvalSummary }>): string => {
  if (rows.length === 0) return ""
  const cats = rows[0].eval.sets[set].rows.map((r) => r.category)
  return [
    `| ${rows[0].eval.sets[set].name} | ${cats.map((c) => (c === "overall" ? "**overall**" : c)).join(" | ")} |`,
    `|---|${cats.map(() => "---|").join("")}`,
    ...rows.map((r) => `| ${r.label} | ${r.eval.sets[set].rows.map((c) => pct(c.accuracy)).join(" | ")} |`)
  ].join("\n")
}

