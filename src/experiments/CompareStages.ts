/**
 * The stages of `pipelines/compare.ts`, each cached in its own JSON under
 * `out/` (a rerun skips what is done): 1. every fine-tuning method and seed,
 * 2. the base model and the inference-time methods on it, the accuracy
 * curves and the reward-hacking summary (Table 1), 3. the ablations of n and
 * m (Tables 2-3).
 *
 * @since 0.6.0
 */
import { Console, Effect, FileSystem, type Layer, Path } from "effect"
import * as nodePath from "node:path"
import * as Png from "../data/Png.ts"
import * as Evaluate from "../eval/Evaluate.ts"
import * as AtomicFile from "../io/AtomicFile.ts"
import type * as ClipModel from "../reward/ClipModel.ts"
import type { Reward } from "../reward/Reward.ts"
import type { SharpenConfig } from "../sharpen/SharpenConfig.ts"
import * as Generate from "../trajectory/Generate.ts"
import * as Compare from "./Compare.ts"
import type { Plan } from "./ComparePlan.ts"
import type * as MethodSettings from "./MethodSettings.ts"

/** What every stage needs. */
export interface Context {
  readonly plan: Plan
  /** The stage directory (`--out`). */
  readonly out: string
  /** The base model directory. */
  readonly model: string
  /** Copy each trained model (first seed) to `<modelsDir>/shapeworld-<method>-<reward>`. */
  readonly modelsDir: string | undefined
  readonly rewardName: string
  readonly reward: Layer.Layer<Reward, unknown, FileSystem.FileSystem | Path.Path>
  readonly wiring: Compare.TrainWiring
  readonly configFor: (method: Compare.FinetuneMethod, seed: number, extra?: Record<string, unknown>) => SharpenConfig
  /** The objective settings of the `nft` and `group` methods. */
  readonly objectiveFor: (method: Compare.FinetuneMethod) => MethodSettings.ObjectiveSettings
  readonly sampler: Generate.SamplerOptions
  readonly sets: ReadonlyArray<Evaluate.PromptSet>
  readonly inferenceSets: ReadonlyArray<Evaluate.PromptSet>
  readonly curveSets: ReadonlyArray<Evaluate.PromptSet>
  readonly clip: ClipModel.Model | undefined
}

export interface Trained {
  readonly method: Compare.FinetuneMethod
  readonly seed: number
  readonly summary: Compare.TrainSummary
  readonly eval: Compare.EvalSummary
}

export interface Ablation {
  readonly axis: "n" | "m"
  readonly value: number
  readonly summary: Compare.TrainSummary
  readonly eval: Compare.EvalSummary
}

/** The files of the reward-hacking summary (beside the evaluations). */
export const hackingFiles = (ctx: Context) => {
  const evalDir = nodePath.join(ctx.out, "eval")
  return { row: ctx.plan.stage("rlhf-sharpening", ctx.plan.seeds[0]), grid: nodePath.join(evalDir, "reward-hacking.png"), file: nodePath.join(evalDir, "reward-hacking.json") }
}

/** A model directory's evaluation on `promptSets` (cached as eval/<row>.json). */
const evalModel = <E = never, R = never>(
  ctx: Context,
  row: string,
  family: string,
  dir: string,
  promptSets = ctx.sets,
  onSet?: (set: Evaluate.PromptSet, images: ReadonlyArray<Float32Array>, report: Evaluate.SetReport) => Effect.Effect<void, E, R>
) =>
  Effect.gen(function*() {
    const path = yield* Path.Path
    return yield* Compare.cached(path.join(ctx.out, "eval", `${row}.json`), Compare.EvalSummary, Effect.scoped(Effect.gen(function*() {
      yield* Console.error(`evaluating ${row} ...`)
      const model = yield* Compare.loadModel(dir)
      return yield* Compare.evaluateRow(row, family, Generate.nfePerImage(ctx.sampler), Compare.samplerGenerator(model, ctx.sampler, ctx.wiring.runners?.transport), promptSets, ctx.clip, onSet)
    })))
  })

// Reward hacking: the RLHF-sharpened model's samples the learned reward
// likes and the verifier rejects (first eval set), as numbers and a grid.
// Kept while that model is evaluated, so its images are sampled once.
const keepHacking = (ctx: Context, images: ReadonlyArray<Float32Array>, report: Evaluate.SetReport) =>
  Effect.gen(function*() {
    const files = hackingFiles(ctx)
    const summary = Compare.disagreements(files.row, report, 24)
    yield* AtomicFile.writeFile(files.grid, Png.grid(summary.examples.map((e) => images[e.index]), summary.examples.map((e) => `clip ${e.clip.toFixed(2)} x ${e.prompt}`), 8))
    return yield* Compare.cached(files.file, Compare.HackingSummary, Effect.succeed(summary))
  })

/**
 * Table 1's stages: every method and seed trained and evaluated, the base
 * model and the inference-time methods, the curves, the hacking summary.
 *
 * @since 0.6.0
 */
export const main = (ctx: Context) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const { plan, clip, sets, inferenceSets, curveSets } = ctx
    const hacking = hackingFiles(ctx)
    // 1. Fine-tuning methods, every seed.
    const trained: Array<Trained> = []
    for (const seed of plan.seeds) {
      for (const method of plan.methods) {
        const dir = path.join(ctx.out, "train", plan.stage(method, seed))
        const snapshots = seed === plan.seeds[0] ? plan.curveEvals : 0
        const summary = yield* Compare.train(method, ctx.configFor(method, seed), dir, ctx.wiring, { snapshots, objective: ctx.objectiveFor(method) })
        const keep = plan.stage(method, seed) === hacking.row && clip !== undefined
          ? (set: Evaluate.PromptSet, images: ReadonlyArray<Float32Array>, report: Evaluate.SetReport) =>
            set.name === sets[0].name ? Effect.asVoid(keepHacking(ctx, images, report)) : Effect.void
          : undefined
        const ev = yield* evalModel(ctx, plan.stage(method, seed), "fine-tuning", path.join(dir, "model"), sets, keep)
        trained.push({ method, seed, summary, eval: ev })
      }
    }

    if (ctx.modelsDir !== undefined) {
      for (const t of trained.filter((t) => t.seed === plan.seeds[0])) {
        const to = path.join(ctx.modelsDir, `shapeworld-${t.method}-${ctx.rewardName}`)
        yield* fs.makeDirectory(to, { recursive: true })
        for (const file of yield* fs.readDirectory(path.join(ctx.out, "train", plan.stage(t.method, t.seed), "model"))) {
          yield* fs.copyFile(path.join(ctx.out, "train", plan.stage(t.method, t.seed), "model", file), path.join(to, file))
        }
      }
    }

    // 2. The base model with the plain sampler, and the inference-time methods on it.
    const base = yield* evalModel(ctx, "base", "base", ctx.model)
    const baseSmall = yield* evalModel(ctx, "base-inference-prompts", "base", ctx.model, inferenceSets)
    const inference: Array<Compare.EvalSummary> = []
    for (const m of Compare.inferenceMethods(ctx.sampler, plan.bestOf, plan.stepSearch)) {
      inference.push(yield* Compare.cached(path.join(ctx.out, "eval", `${m.name.replace(/ /g, "-")}.json`), Compare.EvalSummary, Effect.scoped(Effect.gen(function*() {
        yield* Console.error(`evaluating ${m.name} ...`)
        const model = yield* Compare.loadModel(ctx.model)
        return yield* Compare.evaluateRow(m.name, m.family, m.nfePerImage, Compare.methodGenerator(m, model), inferenceSets, clip)
      })).pipe(Effect.provide(ctx.reward))))
    }
    // The sharpened models on the same (smaller) prompt sets, for the reward-vs-NFE plot.
    const sharpenedSmall: Array<{ method: Compare.FinetuneMethod; eval: Compare.EvalSummary }> = []
    for (const [method, family] of [["rlhf-sharpening", "RLHF sharpening"], ["rlhf-sharpening-image", "RLHF sharpening (image-level)"]] as const) {
      if (!plan.methods.includes(method)) continue
      const name = plan.stage(method, plan.seeds[0])
      sharpenedSmall.push({ method, eval: yield* evalModel(ctx, `${name}-inference-prompts`, family, path.join(ctx.out, "train", name, "model"), inferenceSets) })
    }

    // Accuracy against training NFE: each method's snapshots and final model (first
    // seed) and the base model (NFE 0) on the curve prompts.
    const curves: Array<{ method: Compare.FinetuneMethod; points: Array<{ trainingNfe: number; eval: Compare.EvalSummary }> }> = []
    if (plan.curveEvals > 1) {
      const baseCurve = yield* evalModel(ctx, `curve-base-p${plan.curvePrompts}`, "base", ctx.model, curveSets)
      for (const t of trained.filter((t) => t.seed === plan.seeds[0])) {
        const name = plan.stage(t.method, t.seed)
        const points = [{ trainingNfe: 0, eval: baseCurve }]
        for (const s of t.summary.snapshots ?? []) {
          points.push({ trainingNfe: s.trainingNfe, eval: yield* evalModel(ctx, `curve-${name}-k${s.k}-p${plan.curvePrompts}`, "curve", path.join(ctx.out, "train", name, "curve", `k${s.k}`), curveSets) })
        }
        points.push({
          trainingNfe: t.summary.trainingNfe ?? t.summary.nfe,
          eval: yield* evalModel(ctx, `curve-${name}-k${plan.curveEvals}-p${plan.curvePrompts}`, "curve", path.join(ctx.out, "train", name, "model"), curveSets)
        })
        curves.push({ method: t.method, points })
      }
    }

    // The reward-hacking summary, sampled again only when the RLHF row's
    // evaluation was cached by a run that predates it.
    const hackingSummary = plan.methods.includes("rlhf-sharpening") && clip !== undefined
      ? yield* Compare.cached(hacking.file, Compare.HackingSummary, Effect.scoped(Effect.gen(function*() {
        yield* Console.error("reward hacking: clip vs verifier on the RLHF-sharpened samples ...")
        const model = yield* Compare.loadModel(path.join(ctx.out, "train", hacking.row, "model"))
        const set = sets[0]
        const images = yield* Compare.samplerGenerator(model, ctx.sampler, ctx.wiring.runners?.transport)(set.prompts.map((p) => p.text))
        return yield* keepHacking(ctx, images, yield* Evaluate.judge(set.name, set.prompts, images, Generate.nfePerImage(ctx.sampler), clip))
      })))
      : undefined
    return { trained, base, baseSmall, inference, sharpenedSmall, hacking: hackingSummary, curves }
  })

export type MainResults = Effect.Success<ReturnType<typeof main>>

/**
 * 3. Ablations of n and m (RLHF sharpening, first seed). Given the main
 * stages, the main RLHF run stands in for the point with the same settings.
 *
 * @since 0.6.0
 */
export const ablations = (
  ctx: Context,
  done?: {
    readonly trained: ReadonlyArray<{ method: Compare.FinetuneMethod; seed: number; summary: Compare.TrainSummary }>
    readonly sharpenedSmall: ReadonlyArray<{ method: Compare.FinetuneMethod; eval: Compare.EvalSummary }>
  }
) =>
  Effect.gen(function*() {
    const path = yield* Path.Path
    const { plan } = ctx
    const out: Array<Ablation> = []
    for (const axis of ["n", "m"] as const) {
      for (const value of plan.ablation[axis]) {
        const isDefault = ctx.configFor("rlhf-sharpening", plan.seeds[0])[axis] === value
        // The main RLHF run already is this point (same settings): reuse it.
        if (isDefault && plan.ablationIterations === plan.iterations) {
          const main = done?.trained.find((t) => t.method === "rlhf-sharpening" && t.seed === plan.seeds[0])
          const small = done?.sharpenedSmall.find((s) => s.method === "rlhf-sharpening")
          if (main !== undefined && small !== undefined) {
            out.push({ axis, value, summary: main.summary, eval: small.eval })
          }
          if (done === undefined || main !== undefined) continue
        }
        // n = 3 of Table 2 and m = 3 of Table 3 are the same run: train it once.
        const name = isDefault ? "default" : `${axis}${value}`
        const dir = path.join(ctx.out, "ablation", (plan.ablationIterations === plan.iterations ? name : `${name}-i${plan.ablationIterations}`) + plan.suffix)
        // The micro-batch is a row budget, so m = 8 fits the heap as m = 3 does.
        const summary = yield* Compare.train("rlhf-sharpening", ctx.configFor("rlhf-sharpening", plan.seeds[0], { [axis]: value, iterations: plan.ablationIterations }), dir, ctx.wiring)
        out.push({ axis, value, summary, eval: yield* evalModel(ctx, `ablation-${path.basename(dir)}`, "ablation", path.join(dir, "model"), ctx.inferenceSets) })
      }
    }
    return out
  })
