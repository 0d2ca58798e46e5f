/**
 * The paper's comparison (Table 1, Tables 2-3, Fig. 4-6) on ShapeWorld-32,
 * as resumable stages. Every stage writes one JSON file under `out/` and is
 * skipped when that file exists, so an interrupted comparison continues
 * where it stopped (a training stage also resumes from its checkpoint):
 *
 *   train/<method>-s<seed>/   fine-tuning runs (same reward, same iterations)
 *   eval/<row>.json           each row on the eval sets (accuracy, clip,
 *                             compressibility, aesthetic, NFE per image)
 *   ablation/n<k>, m<k>       RLHF sharpening with other n / m (Tables 2-3)
 *
 * Fine-tuning methods are the pipeline's layer stacks (SharpenLayers,
 * BaselineLayers) run by the one `Sharpen.loop`; inference-time methods are
 * `InferenceMethod`s run on the base model.
 *
 * @since 0.2.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Console, Effect, FileSystem, Layer, Path, Schema } from "effect"
import type { ParsedPrompt } from "../data/Prompt.ts"
import * as BestOfN from "../eval/BestOfN.ts"
import * as Evaluate from "../eval/Evaluate.ts"
import * as Generate from "../eval/Generate.ts"
import * as InferenceMethod from "../eval/InferenceMethod.ts"
import * as ParallelGenerate from "../eval/ParallelGenerate.ts"
import * as StepSearch from "../eval/StepSearch.ts"
import * as Wilson from "../eval/Wilson.ts"
import * as AtomicFile from "../io/AtomicFile.ts"
import * as Denoiser from "../model/Denoiser.ts"
import * as Weights from "../model/Weights.ts"
import type * as ClipModel from "../reward/ClipModel.ts"
import * as Registry from "../reward/Registry.ts"
import * as CheckpointDir from "../io/CheckpointDir.ts"
import * as RunRecord from "./RunRecord.ts"
import { Reward } from "../reward/Reward.ts"
import type { Backend } from "../tensor/Backend.ts"
import * as Scoped from "../tensor/Scoped.ts"
import * as BaselineLayers from "./BaselineLayers.ts"
import { Metrics } from "./Metrics.ts"
import * as Sharpen from "./Sharpen.ts"
import type { SharpenConfig } from "./SharpenConfig.ts"
import * as SharpenLayers from "./SharpenLayers.ts"

/** The fine-tuning rows of Table 1, in the paper's order. */
export const FINETUNE_METHODS = ["standard", "diffusion-dpo", "ddpo", "sft-sharpening", "rlhf-sharpening"] as const
export const FinetuneMethod = Schema.Literals(FINETUNE_METHODS)
export type FinetuneMethod = typeof FinetuneMethod.Type

export const LABELS: Record<FinetuneMethod, string> = {
  "standard": "standard fine-tuning",
  "diffusion-dpo": "Diffusion-DPO",
  "ddpo": "DDPO",
  "sft-sharpening": "SFT Diffusion-Sharpening",
  "rlhf-sharpening": "RLHF Diffusion-Sharpening"
}

/** What a training stage leaves behind (train/<method>-s<seed>/summary.json). */
export const TrainSummary = Schema.Struct({
  method: Schema.String,
  seed: Schema.Int,
  iterations: Schema.Int,
  wallMinutes: Schema.Number,
  nfe: Schema.Number,
  rewardCalls: Schema.Number,
  curve: Schema.Array(Schema.Struct({
    iteration: Schema.Int,
    rewardMean: Schema.Number,
    rewardBest: Schema.Number,
    rewardWorst: Schema.Number,
    loss: Schema.Number
  }))
})
export type TrainSummary = typeof TrainSummary.Type

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
  readonly threads?: number
}

const mean = (xs: ReadonlyArray<number>) => (xs.length === 0 ? 0 : xs.reduce((a, b) => a + b, 0) / xs.length)

/**
 * Train one fine-tuning method from the base model with `config` into
 * `dir` (run/, model/, summary.json). Resumes an interrupted run.
 *
 * @since 0.2.0
 */
export const train = (method: FinetuneMethod, config: SharpenConfig, dir: string, w: TrainWiring) =>
  Effect.gen(function*() {
    const path = yield* Path.Path
    const fs = yield* FileSystem.FileSystem
    yield* fs.makeDirectory(path.join(dir, "run"), { recursive: true })
    const wiring = { model: w.model, runDir: path.join(dir, "run"), reward: w.reward, backend: w.backend, label: method, threads: w.threads ?? 1 }
    const program = Effect.gen(function*() {
      if (w.rewardSpec !== undefined) {
        // A stage resumed with other settings, reward or base model would mix two runs.
        const resuming = (yield* CheckpointDir.candidates(wiring.runDir)).length > 0
        yield* RunRecord.check(wiring.runDir, yield* RunRecord.make({ algorithm: method, config, reward: w.rewardSpec, model: w.model }), resuming)
      }
      const done = yield* Sharpen.loop(config)
      const { model } = yield* Denoiser.Denoiser
      yield* Denoiser.save(path.join(dir, "model"), model, { method, iterations: String(done), base: w.model, seed: String(config.seed) })
      const records = yield* (yield* Metrics).records
      return {
        method,
        seed: config.seed,
        iterations: done,
        wallMinutes: records.reduce((a, r) => a + r.wallMs, 0) / 60_000,
        nfe: records.reduce((a, r) => a + r.nfe, 0),
        rewardCalls: records.reduce((a, r) => a + r.rewardCalls, 0),
        curve: records.map((r) => ({ iteration: r.iteration, rewardMean: r.rewardMean, rewardBest: r.rewardBest, rewardWorst: r.rewardWorst, loss: r.loss }))
      } satisfies TrainSummary
    })
    const run = (() => {
      switch (method) {
        case "standard":
          return program.pipe(Effect.provide(BaselineLayers.standard(config, wiring)))
        case "diffusion-dpo":
          return program.pipe(Effect.provide(BaselineLayers.diffusionDpo(config, wiring)))
        case "ddpo":
          return program.pipe(Effect.provide(BaselineLayers.ddpo(config, wiring)))
        case "sft-sharpening":
          return program.pipe(Effect.provide(SharpenLayers.sft(config, wiring)))
        case "rlhf-sharpening":
          return program.pipe(Effect.provide(SharpenLayers.rlhf(config, wiring)))
      }
    })()
    return yield* cached(path.join(dir, "summary.json"), TrainSummary, Effect.andThen(Console.error(`training ${method} (seed ${config.seed}) in ${dir} ...`), Effect.scoped(run)))
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
      const report = Evaluate.judge(set.name, set.prompts, images, nfePerImage, clip)
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

/** A trained (or the base) model's images with the plain sampler, on all cores. */
export const samplerGenerator = (model: Denoiser.Model, sampler: Generate.SamplerOptions): Generator<never, never> => (prompts) =>
  Effect.promise((signal) => ParallelGenerate.generate(model, prompts, sampler, { backend: tf.getBackend(), signal }))

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

/**
 * Table 1: one line per row, accuracy per set, clip, the other rewards, NFE.
 *
 * @since 0.2.0
 */
export const table1 = (rows: ReadonlyArray<{ readonly label: string; readonly eval: EvalSummary; readonly spread?: ReadonlyArray<number> }>): string => {
  if (rows.length === 0) return ""
  const setNames = rows[0].eval.sets.map((s) => s.name)
  const head = [
    "| method | " + setNames.map((n) => `${n} accuracy % [95% CI]`).join(" | ") + " | clip (seen) | compressibility | aesthetic | NFE / image |",
    "|---|" + setNames.map(() => "---|").join("") + "---|---|---|---|"
  ]
  const lines = rows.map((r) => {
    const accs = r.eval.sets.map((s, i) => {
      const base = Wilson.format(overall(s).accuracy, overall(s).n)
      return r.spread !== undefined && r.spread[i] !== undefined ? `${base} ± ${pct(r.spread[i])} over seeds` : base
    })
    const s0 = r.eval.sets[0]
    const clip = overall(s0).clip
    return `| ${r.label} | ${accs.join(" | ")} | ${clip === null ? "n/a" : clip.toFixed(3)} | ${s0.compressibility.toFixed(3)} | ${s0.aesthetic.toFixed(3)} | ${r.eval.nfePerImage} |`
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

/** Mean and population standard deviation. */
export const meanStd = (xs: ReadonlyArray<number>): { mean: number; std: number } => {
  const m = mean(xs)
  return { mean: m, std: Math.sqrt(mean(xs.map((x) => (x - m) ** 2))) }
}
