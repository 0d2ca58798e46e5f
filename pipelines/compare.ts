/**
 * The paper's comparison on ShapeWorld-32 (issue #6): every fine-tuning
 * method trained from the base model with the same reward and the same
 * iterations, or the same budget of training NFE (--training-nfe),
 * the inference-time methods on the base model, all evaluated on both eval
 * sets; ablations of n and m; tables and plots written to --results.
 *
 *   npx tsx pipelines/compare.ts --quick --out out/compare-quick        # smoke run, minutes
 *   npx tsx pipelines/compare.ts --iterations 40 --results docs/results.md
 *   npx tsx pipelines/compare.ts --ablations --seeds 0,1,2 ...          # resumable: rerun to continue
 *   npx tsx pipelines/compare.ts --training-nfe 60000 --method-settings pipelines/configs/compare-lab.json --curve-evals 4
 *
 * Every stage writes its JSON under --out and is skipped when it exists.
 */
import { Console, Effect, FileSystem, Layer, Logger, Option, Path, Result, Schema } from "effect"
import { Command, Flag } from "effect/cli"
import * as Main from "../src/cli/Main.ts"
import * as Png from "../src/data/Png.ts"
import * as Evaluate from "../src/eval/Evaluate.ts"
import * as Generate from "../src/trajectory/Generate.ts"
import * as Plot from "../src/eval/Plot.ts"
import * as Wilson from "../src/eval/Wilson.ts"
import * as AtomicFile from "../src/io/AtomicFile.ts"
import * as Stats from "../src/math/Stats.ts"
import * as RunLock from "../src/io/RunLock.ts"
import * as Inputs from "../src/io/Inputs.ts"
import * as RewardFlags from "../src/cli/RewardFlags.ts"
import * as ClipModel from "../src/reward/ClipModel.ts"
import * as Registry from "../src/reward/Registry.ts"
import * as Compare from "../src/experiments/Compare.ts"
import * as MethodSettings from "../src/experiments/MethodSettings.ts"
import * as Report from "../src/sharpen/Report.ts"
import * as SharpenConfig from "../src/sharpen/SharpenConfig.ts"
import { Backend, BackendName } from "../src/tensor/Backend.ts"
import * as Scoped from "../src/tensor/Scoped.ts"

const ints = (text: string) => text.split(",").filter((s) => s.trim() !== "").map((s) => Number(s.trim()))

const command = Command.make(
  "compare",
  {
    model: Flag.String("model").pipe(Flag.withDescription("base model directory"), Flag.withDefault("models/shapeworld-base")),
    // The reward every method optimises, and its options (also the config file's "reward" entry).
    ...RewardFlags.flags,
    out: Flag.String("out").pipe(Flag.withDescription("stage directory (resumable)"), Flag.withDefault("out/compare")),
    results: Flag.String("results").pipe(Flag.withDescription("markdown file to write (its compare block, see --block, is replaced; a file without one gets it appended)"), Flag.optional),
    block: Flag.String("block").pipe(
      Flag.withDescription("name of the results block to replace: <!-- compare-<name>:begin --> ... end, and plots in img/compare-<name> (default: the <!-- compare:begin --> block, img/compare)"),
      Flag.optional
    ),
    plots: Flag.String("plots").pipe(Flag.withDescription("directory of the plots and grids (default: img/compare[-<block>] beside --results, else <out>/plots)"), Flag.optional),
    modelsDir: Flag.String("models-dir").pipe(Flag.withDescription("also copy each trained model (first seed) to <dir>/shapeworld-<method>-<reward>"), Flag.optional),
    config: Flag.String("config").pipe(Flag.withDescription("JSON file of sharpening settings shared by every method (and a \"reward\" entry)"), Flag.optional),
    iterations: Flag.Int("iterations").pipe(
      Flag.withDescription("iterations of every fine-tuning method (default 40); with --training-nfe, the cap (default 300, the lab's)"),
      Flag.optional
    ),
    trainingNfe: Flag.Int("training-nfe").pipe(
      Flag.withDescription(
        "give every fine-tuning method this budget of training NFE (sampling plus objective) instead of one iteration count; stages go to <method>-s<seed>-nfe<N> (0 = iterations only)"
      ),
      Flag.withDefault(0)
    ),
    methodSettings: Flag.String("method-settings").pipe(
      Flag.withDescription("JSON file: method -> its own settings over the shared ones (e.g. lr, dpoBeta, stepsPerBatch; \"$\" keys are notes), e.g. pipelines/configs/compare-lab.json"),
      Flag.optional
    ),
    curveEvals: Flag.Int("curve-evals").pipe(
      Flag.withDescription("evaluate K evenly spaced points of each method's training (first seed; the last is the final model) on --curve-prompts prompts, for accuracy vs training NFE (0 = none)"),
      Flag.withDefault(0)
    ),
    curvePrompts: Flag.Int("curve-prompts").pipe(Flag.withDescription("prompts per eval set of each --curve-evals point"), Flag.withDefault(24)),
    lr: Flag.Finite("lr").pipe(Flag.withDescription("learning rate of every fine-tuning method (a --method-settings entry overrides it)"), Flag.withDefault(1e-4)),
    seeds: Flag.String("seeds").pipe(Flag.withDescription("comma-separated seeds of the fine-tuning runs"), Flag.withDefault("0")),
    methods: Flag.String("methods").pipe(Flag.withDescription(`comma-separated subset of ${Compare.FINETUNE_METHODS.join(",")}`), Flag.withDefault(Compare.FINETUNE_METHODS.join(","))),
    evalPrompts: Flag.Int("eval-prompts").pipe(Flag.withDescription("prompts per eval set for the fine-tuned rows (0 = all)"), Flag.withDefault(0)),
    inferencePrompts: Flag.Int("inference-prompts").pipe(Flag.withDescription("prompts per eval set for the inference-time rows (they cost N times more)"), Flag.withDefault(40)),
    evalSteps: Flag.Int("eval-steps").pipe(Flag.withDescription("DDIM steps of every evaluation"), Flag.withDefault(50)),
    bestOf: Flag.String("best-of").pipe(Flag.withDescription("N of the best-of-N rows (\"\" = none)"), Flag.withDefault("2,4")),
    stepSearch: Flag.String("step-search").pipe(Flag.withDescription("KxB budgets of the step-search rows (\"\" = none)"), Flag.withDefault("5x2,5x4")),
    ablations: Flag.Boolean("ablations").pipe(Flag.withDescription("also train RLHF sharpening at other n and m (Tables 2-3)"), Flag.withDefault(false)),
    ablationN: Flag.String("ablation-n").pipe(Flag.withDescription("values of n (>= 2: RLHF needs a best and a worst path)"), Flag.withDefault("2,3,4,8")),
    ablationIterations: Flag.Int("ablation-iterations").pipe(Flag.withDescription("iterations of each ablation run (default: --iterations; then the main RLHF run is the n = 3, m = 3 point)"), Flag.optional),
    ablationM: Flag.String("ablation-m").pipe(Flag.withDescription("values of m"), Flag.withDefault("1,2,3,4,8")),
    onlyAblations: Flag.Boolean("only-ablations").pipe(
      Flag.withDescription("run only the ablation stages, e.g. in a second process beside the main run (wasm trains on one core); a later full run reuses them and writes the tables"),
      Flag.withDefault(false)
    ),
    quick: Flag.Boolean("quick").pipe(Flag.withDescription("tiny smoke run (2 iterations, or --training-nfe's budget; few prompts and steps)"), Flag.withDefault(false)),
    backend: Flag.Literals("backend", BackendName.literals).pipe(Flag.withDefault("auto" as const)),
    threads: Flag.Int("threads").pipe(
      Flag.withDescription("threads of the sharpening and RAFT stages (generation and image-level gradient parts), this one included (1 beside another training process; the result is the same; default: one per core, at most 4, or SHARPEN_WORKERS, on wasm and cpu; 1 on a GPU)"),
      Flag.optional
    )
  },
  Effect.fn(function*(f) {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const q = f.quick
    const budget = f.trainingNfe
    const settings = {
      iterations: Option.getOrElse(f.iterations, () => budget > 0 ? 300 : q ? 2 : 40),
      evalPrompts: q ? 3 : f.evalPrompts,
      inferencePrompts: q ? 2 : f.inferencePrompts,
      evalSteps: q ? 4 : f.evalSteps,
      bestOf: q ? [2] : ints(f.bestOf),
      stepSearch: (q ? "1x2" : f.stepSearch).split(",").filter((s) => s.trim() !== "").map((s) => {
        const [points, branches] = s.split("x").map(Number)
        return { points, branches }
      }),
      ablation: { n: q ? [2, 3] : ints(f.ablationN), m: q ? [1, 2] : ints(f.ablationM) },
      ablationIterations: Option.getOrElse(f.ablationIterations, () => Option.getOrElse(f.iterations, () => budget > 0 ? 300 : q ? 2 : 40)),
      seeds: ints(f.seeds),
      curveEvals: f.curveEvals,
      curvePrompts: q ? 2 : f.curvePrompts
    }
    // Stages of a budget run are their own (a finished stage of another budget is not reused).
    const suffix = budget > 0 ? `-nfe${budget}` : ""
    const stage = (method: Compare.FinetuneMethod, seed: number) => `${method}-s${seed}${suffix}`
    // Outputs first, then the lock: one compare per --out.
    yield* Inputs.writableDirectory(f.out)
    yield* RunLock.acquire(f.out)
    const stale = yield* AtomicFile.removeStale(f.out)
    if (stale.length > 0) yield* Console.error(`removed ${stale.length} temporary file(s) of interrupted writes in ${f.out}`)
    const { reward: rewardEntry, ...shared }: Record<string, unknown> = Option.isSome(f.config) ? JSON.parse(yield* fs.readFileString(f.config.value)) : {}
    const rewardSpec = yield* Effect.fromResult(RewardFlags.spec(f, rewardEntry, Option.getOrUndefined(f.config)))
    const quickConfig = q ? { batchSize: 2, n: 2, m: 2, onlineSteps: 4, inferenceSteps: 10, evalSteps: 4, evalPrompts: 2 } : {}
    const perMethod = Option.isSome(f.methodSettings) ? yield* MethodSettings.load(f.methodSettings.value, Compare.FINETUNE_METHODS) : {}
    const configOf = (method: Compare.FinetuneMethod, seed: number, extra: Record<string, unknown> = {}) => {
      // Each method's base (the published algorithm for the paper's rows, as in docs/results.md's
      // tables), the shared settings, then its own; the budget and seed are the same for all.
      const own = perMethod[method]?.settings ?? {}
      const stop = { iterations: settings.iterations, seed, checkpointEvery: 5, trainingNfe: budget, ...(settings.curveEvals > 1 ? { sampleEvery: 1 } : {}) }
      const file = Object.keys(own).length > 0 ? Option.getOrUndefined(f.methodSettings) : Option.getOrUndefined(f.config)
      return SharpenConfig.decode([Compare.METHODS[method].base, shared, { lr: f.lr }, own, quickConfig, stop, extra], file)
    }
    const configFor = (method: Compare.FinetuneMethod, seed: number, extra: Record<string, unknown> = {}) => {
      const c = configOf(method, seed, extra)
      if (Result.isFailure(c)) throw c.failure
      return c.success
    }
    const methods = f.methods.split(",").map((m) => Schema.decodeUnknownSync(Compare.FinetuneMethod)(m.trim()))
    // Every method's settings are checked before anything trains.
    for (const m of methods) yield* Effect.fromResult(configOf(m, settings.seeds[0]))
    const backend = Backend.fromFlag(f.backend)
    const clipModel = rewardSpec.modelDir ?? RewardFlags.DEFAULT_CLIP_MODEL
    const hasClip = yield* fs.exists(clipModel)
    const { modelDir: _, ...withoutClip } = rewardSpec
    const reward = Registry.layerNode(hasClip ? rewardSpec : withoutClip).pipe(Layer.provide(backend))
    const wiring: Compare.TrainWiring = { model: f.model, reward, backend, rewardSpec, threads: Option.match(f.threads, { onNone: () => "auto" as const, onSome: (n) => Math.max(1, n) }) }
    const sampler: Generate.SamplerOptions = { ...Generate.paperDefaults, steps: settings.evalSteps }
    const sets = yield* Report.loadEvalSets(settings.evalPrompts)
    const inferenceSets = yield* Report.loadEvalSets(settings.inferencePrompts)
    const curveSets = yield* Report.loadEvalSets(settings.curvePrompts)

    const program = Effect.gen(function*() {
      const clip = hasClip
        ? yield* Effect.flatMap(ClipModel.loadFiles(clipModel), (c) => Scoped.acquireWith(() => ClipModel.fromStored(c.config, c.weights, false), ClipModel.dispose))
        : undefined
      const evalDir = path.join(f.out, "eval")
      const evalModel = <E = never, R = never>(
        row: string,
        family: string,
        dir: string,
        promptSets = sets,
        onSet?: (set: Evaluate.PromptSet, images: ReadonlyArray<Float32Array>, report: Evaluate.SetReport) => Effect.Effect<void, E, R>
      ) =>
        Compare.cached(path.join(evalDir, `${row}.json`), Compare.EvalSummary, Effect.scoped(Effect.gen(function*() {
          yield* Console.error(`evaluating ${row} ...`)
          const model = yield* Compare.loadModel(dir)
          return yield* Compare.evaluateRow(row, family, Generate.nfePerImage(sampler), Compare.samplerGenerator(model, sampler), promptSets, clip, onSet)
        })))

      // Reward hacking: the RLHF-sharpened model's samples the learned reward
      // likes and the verifier rejects (first eval set), as numbers and a grid.
      // Kept while that model is evaluated, so its images are sampled once.
      const hackingRow = stage("rlhf-sharpening", settings.seeds[0])
      const hackingGrid = path.join(evalDir, "reward-hacking.png")
      const hackingFile = path.join(evalDir, "reward-hacking.json")
      const keepHacking = (images: ReadonlyArray<Float32Array>, report: Evaluate.SetReport) =>
        Effect.gen(function*() {
          const summary = Compare.disagreements(hackingRow, report, 24)
          yield* AtomicFile.writeFile(hackingGrid, Png.grid(summary.examples.map((e) => images[e.index]), summary.examples.map((e) => `clip ${e.clip.toFixed(2)} x ${e.prompt}`), 8))
          return yield* Compare.cached(hackingFile, Compare.HackingSummary, Effect.succeed(summary))
        })

      // Sections 1-2 are Table 1; section 3 (Tables 2-3) can also run alone (--only-ablations).
      const mainStages = Effect.gen(function*() {
        // 1. Fine-tuning methods, every seed.
        const trained: Array<{ method: Compare.FinetuneMethod; seed: number; summary: Compare.TrainSummary; eval: Compare.EvalSummary }> = []
        for (const seed of settings.seeds) {
          for (const method of methods) {
            const dir = path.join(f.out, "train", stage(method, seed))
            const snapshots = seed === settings.seeds[0] ? settings.curveEvals : 0
            const summary = yield* Compare.train(method, configFor(method, seed), dir, wiring, { snapshots })
            const keep = stage(method, seed) === hackingRow && clip !== undefined
              ? (set: Evaluate.PromptSet, images: ReadonlyArray<Float32Array>, report: Evaluate.SetReport) =>
                set.name === sets[0].name ? Effect.asVoid(keepHacking(images, report)) : Effect.void
              : undefined
            const ev = yield* evalModel(stage(method, seed), "fine-tuning", path.join(dir, "model"), sets, keep)
            trained.push({ method, seed, summary, eval: ev })
          }
        }

        if (Option.isSome(f.modelsDir)) {
          for (const t of trained.filter((t) => t.seed === settings.seeds[0])) {
            const to = path.join(f.modelsDir.value, `shapeworld-${t.method}-${rewardSpec.reward}`)
            yield* fs.makeDirectory(to, { recursive: true })
            for (const file of yield* fs.readDirectory(path.join(f.out, "train", stage(t.method, t.seed), "model"))) {
              yield* fs.copyFile(path.join(f.out, "train", stage(t.method, t.seed), "model", file), path.join(to, file))
            }
          }
        }

        // 2. The base model with the plain sampler, and the inference-time methods on it.
        const base = yield* evalModel("base", "base", f.model)
        const baseSmall = yield* evalModel("base-inference-prompts", "base", f.model, inferenceSets)
        const inference: Array<Compare.EvalSummary> = []
        for (const m of Compare.inferenceMethods(sampler, settings.bestOf, settings.stepSearch)) {
          inference.push(yield* Compare.cached(path.join(evalDir, `${m.name.replace(/ /g, "-")}.json`), Compare.EvalSummary, Effect.scoped(Effect.gen(function*() {
            yield* Console.error(`evaluating ${m.name} ...`)
            const model = yield* Compare.loadModel(f.model)
            return yield* Compare.evaluateRow(m.name, m.family, m.nfePerImage, Compare.methodGenerator(m, model), inferenceSets, clip)
          })).pipe(Effect.provide(reward))))
        }
        // The sharpened models on the same (smaller) prompt sets, for the reward-vs-NFE plot.
        const sharpenedSmall: Array<{ method: Compare.FinetuneMethod; eval: Compare.EvalSummary }> = []
        for (const [method, family] of [["rlhf-sharpening", "RLHF sharpening"], ["rlhf-sharpening-image", "RLHF sharpening (image-level)"]] as const) {
          if (!methods.includes(method)) continue
          const name = stage(method, settings.seeds[0])
          sharpenedSmall.push({ method, eval: yield* evalModel(`${name}-inference-prompts`, family, path.join(f.out, "train", name, "model"), inferenceSets) })
        }

        // Accuracy against training NFE: each method's snapshots and final model (first
        // seed) and the base model (NFE 0) on the curve prompts.
        const curves: Array<{ method: Compare.FinetuneMethod; points: Array<{ trainingNfe: number; eval: Compare.EvalSummary }> }> = []
        if (settings.curveEvals > 1) {
          const baseCurve = yield* evalModel(`curve-base-p${settings.curvePrompts}`, "base", f.model, curveSets)
          for (const t of trained.filter((t) => t.seed === settings.seeds[0])) {
            const name = stage(t.method, t.seed)
            const points = [{ trainingNfe: 0, eval: baseCurve }]
            for (const s of t.summary.snapshots ?? []) {
              points.push({ trainingNfe: s.trainingNfe, eval: yield* evalModel(`curve-${name}-k${s.k}-p${settings.curvePrompts}`, "curve", path.join(f.out, "train", name, "curve", `k${s.k}`), curveSets) })
            }
            points.push({
              trainingNfe: t.summary.trainingNfe ?? t.summary.nfe,
              eval: yield* evalModel(`curve-${name}-k${settings.curveEvals}-p${settings.curvePrompts}`, "curve", path.join(f.out, "train", name, "model"), curveSets)
            })
            curves.push({ method: t.method, points })
          }
        }

        // The reward-hacking summary, sampled again only when the RLHF row's
        // evaluation was cached by a run that predates it.
        const hacking = methods.includes("rlhf-sharpening") && clip !== undefined
          ? yield* Compare.cached(hackingFile, Compare.HackingSummary, Effect.scoped(Effect.gen(function*() {
            yield* Console.error("reward hacking: clip vs verifier on the RLHF-sharpened samples ...")
            const model = yield* Compare.loadModel(path.join(f.out, "train", hackingRow, "model"))
            const set = sets[0]
            const images = yield* Compare.samplerGenerator(model, sampler)(set.prompts.map((p) => p.text))
            return yield* keepHacking(images, yield* Evaluate.judge(set.name, set.prompts, images, Generate.nfePerImage(sampler), clip))
          })))
          : undefined
        return { trained, base, baseSmall, inference, sharpenedSmall, hacking, curves }
      })

      // 3. Ablations of n and m (RLHF sharpening, first seed). Given the main
      // stages, the main RLHF run stands in for the point with the same settings.
      const ablationStages = (
        done?: {
          trained: ReadonlyArray<{ method: Compare.FinetuneMethod; seed: number; summary: Compare.TrainSummary }>
          sharpenedSmall: ReadonlyArray<{ method: Compare.FinetuneMethod; eval: Compare.EvalSummary }>
        }
      ) =>
        Effect.gen(function*() {
          const ablations: Array<{ axis: "n" | "m"; value: number; summary: Compare.TrainSummary; eval: Compare.EvalSummary }> = []
          for (const axis of ["n", "m"] as const) {
            for (const value of settings.ablation[axis]) {
              const isDefault = configFor("rlhf-sharpening", settings.seeds[0])[axis] === value
              // The main RLHF run already is this point (same settings): reuse it.
              if (isDefault && settings.ablationIterations === settings.iterations) {
                const main = done?.trained.find((t) => t.method === "rlhf-sharpening" && t.seed === settings.seeds[0])
                const small = done?.sharpenedSmall.find((s) => s.method === "rlhf-sharpening")
                if (main !== undefined && small !== undefined) {
                  ablations.push({ axis, value, summary: main.summary, eval: small.eval })
                }
                if (done === undefined || main !== undefined) continue
              }
              // n = 3 of Table 2 and m = 3 of Table 3 are the same run: train it once.
              const name = isDefault ? "default" : `${axis}${value}`
              const dir = path.join(f.out, "ablation", (settings.ablationIterations === settings.iterations ? name : `${name}-i${settings.ablationIterations}`) + suffix)
              // The micro-batch is a row budget, so m = 8 fits the heap as m = 3 does.
              const summary = yield* Compare.train("rlhf-sharpening", configFor("rlhf-sharpening", settings.seeds[0], { [axis]: value, iterations: settings.ablationIterations }), dir, wiring)
              ablations.push({ axis, value, summary, eval: yield* evalModel(`ablation-${path.basename(dir)}`, "ablation", path.join(dir, "model"), inferenceSets) })
            }
          }
          return ablations
        })

      if (f.onlyAblations) {
        const points = yield* ablationStages()
        yield* Console.log(`${points.length} ablation points trained and evaluated in ${f.out}; run without --only-ablations to write the tables`)
        return
      }
      const { trained, base, baseSmall, inference, sharpenedSmall, hacking, curves } = yield* mainStages
      const ablations = f.ablations ? yield* ablationStages({ trained, sharpenedSmall }) : []

      // 4. Tables and plots.
      // One results file can hold several comparisons (e.g. the iteration-count table and the budget one).
      const blockName = Option.match(f.block, { onNone: () => "compare", onSome: (b) => `compare-${b}` })
      const plots = Option.getOrElse(f.plots, () => Option.isSome(f.results) ? path.join(path.dirname(f.results.value), "img", blockName) : path.join(f.out, "plots"))
      // Each method logs its own statistic (sharpening: the sum of m x0-estimate
      // rewards per path; DDPO: final images of the policy; Diffusion-DPO: the
      // frozen reference's samples), so the plot shows each curve's change
      // from its own start, not levels on one scale.
      // Smoothing over a tenth of the longest run (under a budget the cap is not a run's length).
      const smooth = Math.max(1, Math.round(Math.max(0, ...trained.map((t) => t.summary.iterations)) / 10))
      const fig46 = yield* Effect.promise(() =>
        Plot.lineSvg({
          title: `Training reward minus its first-3-iteration mean (each method's own statistic), reward ${rewardSpec.reward}`,
          x: "iteration",
          y: "reward change",
          series: "method",
          smooth,
          rows: trained.filter((t) => t.seed === settings.seeds[0] && t.method !== "standard").flatMap((t) => {
            const start = Stats.meanStd(t.summary.curve.slice(0, 3).map((c) => c.rewardMean)).mean
            return t.summary.curve.map((c) => ({ iteration: c.iteration, "reward change": c.rewardMean - start, method: Compare.LABELS[t.method] }))
          })
        }))
      const fig5 = yield* Effect.promise(() =>
        Plot.lineSvg({
          title: `Reward (${rewardSpec.reward}) of the final images vs NFE per image`,
          x: "NFE per image",
          y: "reward",
          series: "family",
          points: true,
          rows: [baseSmall, ...inference, ...sharpenedSmall.map((s) => s.eval)].map((e) => ({ "NFE per image": e.nfePerImage, reward: e.sets[0].reward, family: e.family === "base" ? "best-of-N" : e.family }))
            .concat(inference.filter((e) => e.family !== "best-of-N").length > 0 ? [{ "NFE per image": baseSmall.nfePerImage, reward: baseSmall.sets[0].reward, family: "step search" }] : [])
        }))
      // Reward (and, with --curve-evals, accuracy) against training NFE: the
      // training curves are each method's own statistic as above; the curve
      // evaluations score every method's final images on the same prompts.
      const estimated = trained.some((t) => Compare.nfeCurve(t.summary).estimated)
      const trainingCurve = yield* Effect.promise(() =>
        Plot.lineSvg({
          title: `Training reward minus its first-3-iteration mean vs training NFE, reward ${rewardSpec.reward}${estimated ? " (NFE of older stages estimated)" : ""}`,
          x: "training NFE",
          y: "reward change",
          series: "method",
          scheme: "tableau10",
          smooth,
          rows: trained.filter((t) => t.seed === settings.seeds[0] && t.method !== "standard").flatMap((t) => {
            const start = Stats.meanStd(t.summary.curve.slice(0, 3).map((c) => c.rewardMean)).mean
            const nfe = Compare.nfeCurve(t.summary).points
            return t.summary.curve.map((c, i) => ({ "training NFE": nfe[i], "reward change": c.rewardMean - start, method: Compare.LABELS[t.method] }))
          })
        }))
      const curvePlots: Array<readonly [string, string]> = []
      if (curves.length > 0) {
        const setName = curves[0].points[0].eval.sets[0].name
        const n = Compare.overall(curves[0].points[0].eval.sets[0]).n
        const rows = curves.flatMap((c) =>
          c.points.map((p) => ({
            "training NFE": p.trainingNfe,
            "verifier accuracy %": 100 * Compare.overall(p.eval.sets[0]).accuracy,
            reward: p.eval.sets[0].reward,
            method: Compare.LABELS[c.method]
          }))
        )
        for (const [name, y] of [["accuracy-vs-training-nfe", "verifier accuracy %"], ["eval-reward-vs-training-nfe", "reward"]] as const) {
          curvePlots.push([name, yield* Effect.promise(() =>
            Plot.lineSvg({
              title: `${y === "reward" ? `Reward (${rewardSpec.reward}) of the final images` : "Verifier accuracy"} vs training NFE (${n} ${setName} prompts, first seed)`,
              x: "training NFE",
              y,
              series: "method",
              scheme: "tableau10",
              points: true,
              rows
            }))])
        }
      }
      for (const [name, svg] of [["reward-vs-iteration", fig46], ["reward-vs-nfe", fig5], ["reward-vs-training-nfe", trainingCurve], ...curvePlots] as const) {
        yield* AtomicFile.writeText(path.join(plots, `${name}.svg`), svg)
        yield* AtomicFile.writeFile(path.join(plots, `${name}.png`), Plot.svgToPng(svg))
      }
      if (hacking !== undefined && (yield* fs.exists(hackingGrid))) {
        yield* AtomicFile.writeFile(path.join(plots, "reward-hacking.png"), yield* fs.readFile(hackingGrid))
      }

      const seedsOf = (m: Compare.FinetuneMethod) => trained.filter((t) => t.method === m)
      const rowOf = (m: Compare.FinetuneMethod) => {
        const runs = seedsOf(m)
        const first = runs[0].eval
        // Under a budget, the NFE each method spent and the iterations it ran (first seed).
        const training = budget > 0 ? { training: Compare.trainingOf(runs[0].summary) } : {}
        if (runs.length === 1) return { label: Compare.LABELS[m], eval: first, ...training }
        const spread = first.sets.map((_, i) => Stats.meanStd(runs.map((r) => Compare.overall(r.eval.sets[i]).accuracy)).std)
        return { label: `${Compare.LABELS[m]} (seed ${runs[0].seed}; ± over ${runs.length} seeds)`, eval: first, spread, ...training }
      }
      // The paper's rows in its order, then this project's (RAFT with the baselines).
      const order: Array<Compare.FinetuneMethod> = ["standard", "diffusion-dpo", "ddpo", "raft", "sft-sharpening", "rlhf-sharpening", "sft-sharpening-image", "rlhf-sharpening-image"]
      const table = Compare.table1([{ label: "base model", eval: base }, ...order.filter((m) => methods.includes(m)).map(rowOf)])
      const inferenceTable = Compare.table1([
        { label: "base model", eval: baseSmall },
        ...inference.map((e) => ({ label: e.row, eval: e })),
        ...sharpenedSmall.map((e) => ({ label: Compare.LABELS[e.method], eval: e.eval }))
      ])
      const costs = [
        "| method | seed | iterations | training min | sampling NFE | training NFE (sampling + objective) | reward calls |",
        "|---|---|---|---|---|---|---|",
        ...trained.map((t) =>
          `| ${Compare.LABELS[t.method]} | ${t.seed} | ${t.summary.iterations} | ${t.summary.wallMinutes.toFixed(1)} | ${t.summary.nfe} | ${t.summary.trainingNfe ?? "not recorded"} | ${t.summary.rewardCalls} |`
        )
      ].join("\n")
      const ownSettings = MethodSettings.describe(
        Object.fromEntries(Object.entries(perMethod).filter(([m]) => methods.includes(m as Compare.FinetuneMethod))),
        (m) => Compare.LABELS[m as Compare.FinetuneMethod]
      )
      const ablationTable = (axis: "n" | "m") => {
        const rows = ablations.filter((a) => a.axis === axis)
        if (rows.length === 0) return ""
        return [
          `| ${axis} | ${rows[0].eval.sets.map((s) => `${s.name} accuracy % [95% CI]`).join(" | ")} | reward (seen) | training min | training NFE |`,
          `|---|${rows[0].eval.sets.map(() => "---|").join("")}---|---|---|`,
          ...rows.map((a) =>
            `| ${a.value} | ${a.eval.sets.map((s) => Wilson.format(Compare.overall(s).accuracy, Compare.overall(s).n)).join(" | ")} | ${a.eval.sets[0].reward.toFixed(3)} | ${a.summary.wallMinutes.toFixed(1)} | ${a.summary.nfe} |`
          )
        ].join("\n")
      }
      // Table 1's order, first seed.
      const categoryRows = [
        { label: "base model", eval: base },
        ...order.flatMap((m) => trained.filter((t) => t.method === m && t.seed === settings.seeds[0]).map((t) => ({ label: Compare.LABELS[t.method], eval: t.eval })))
      ]
      const resultsFile = Option.getOrElse(f.results, () => path.join(f.out, "results.md"))
      const n = (s: Compare.EvalSummary) => s.sets.map((x) => `${Compare.overall(x).n} ${x.name}`).join(" + ")
      const block = [
        `Generated by \`npx tsx pipelines/compare.ts ${process.argv.slice(2).join(" ")}\` (stages in \`${f.out}\`).`,
        `Reward optimised by every method: \`${rewardSpec.reward}\`. Fine-tuning: ` +
        (budget > 0
          ? `a budget of ${budget} training NFE each (sampling plus the objective's model evaluations; at most ${settings.iterations} iterations)`
          : `${settings.iterations} iterations each`) +
        `, lr ${f.lr}${ownSettings.length > 0 ? " unless set per method below" : ""}, seeds ${settings.seeds.join(", ")}; evaluation DDIM ${sampler.steps}, CFG ${sampler.cfg}, eta 0 on ${n(base)} prompts.`,
        "",
        "### Table 1: verifier accuracy (overall), clip score, other rewards, NFE per image",
        "",
        table,
        "",
        ...(ownSettings.length > 0
          ? [`Per-method settings (\`${Option.getOrElse(f.methodSettings, () => "")}\`, over the shared ones; recorded in each stage's \`run/run.json\`):`, "", ...ownSettings, ""]
          : []),
        "Per category:",
        "",
        Compare.categoryTable(0, categoryRows),
        "",
        ...(base.sets.length > 1 ? [Compare.categoryTable(1, categoryRows), ""] : []),
        `### Training cost (same reward, ${budget > 0 ? "same training-NFE budget" : "same iterations"})`,
        "",
        costs,
        "",
        `### Inference-time methods on the base model (${n(baseSmall)} prompts)`,
        "",
        inferenceTable,
        "",
        "![reward vs iteration](" + path.relative(path.dirname(resultsFile), path.join(plots, "reward-vs-iteration.png")) + ")",
        "",
        "Training reward per iteration, as each method logs it: sharpening as published, the sum over the m scored steps of the reward of the model's x0 estimates, mean over paths; " +
        "image-level sharpening and RAFT, the reward of each path's final image; " +
        "DDPO, the policy's final images; Diffusion-DPO, the frozen reference's samples (flat by construction). Each curve is drawn relative to its own first 3 iterations, so only the trends compare.",
        "",
        "![reward vs NFE](" + path.relative(path.dirname(resultsFile), path.join(plots, "reward-vs-nfe.png")) + ")",
        "",
        "![training reward vs training NFE](" + path.relative(path.dirname(resultsFile), path.join(plots, "reward-vs-training-nfe.png")) + ")",
        "",
        "The same training curves against cumulative training NFE (sampling plus the objective's model evaluations), the budget's unit" +
        (estimated ? "; stages written before the objective's NFE were recorded are drawn at their sampling NFE, spread evenly over their iterations." : "."),
        ...curvePlots.flatMap(([name]) => ["", `![${name.replace(/-/g, " ")}](` + path.relative(path.dirname(resultsFile), path.join(plots, `${name}.png`)) + ")"]),
        ...(curves.length > 0
          ? [
            "",
            `Each method's ${settings.curveEvals} evenly spaced points of training (the last its final model; the first seed) and the base model at 0, sampled with the evaluation's sampler on ${n(curves[0].points[0].eval)} prompts.`
          ]
          : []),
        ...(hacking === undefined ? [] : [
          "",
          `### Where the learned reward and the verifier disagree (${hacking.row}, ${hacking.n} ${hacking.set} prompts)`,
          "",
          `${hacking.passes} of ${hacking.n} samples pass the verifier; median clip score ${hacking.medianClipPass?.toFixed(3) ?? "n/a"} for passes and ${hacking.medianClipFail?.toFixed(3) ?? "n/a"} for failures. ` +
          `${hacking.failsAbovePassMedian} of the ${hacking.n - hacking.passes} failures score at least the median pass: images the reward would train toward that the verifier rejects. ` +
          `The ${hacking.examples.length} failures it scores highest (label: clip score, prompt):`,
          "",
          "![reward hacking](" + path.relative(path.dirname(resultsFile), path.join(plots, "reward-hacking.png")) + ")"
        ]),
        ...(ablations.length > 0 ? ["", `Ablations: RLHF sharpening, ${settings.ablationIterations} iterations each${budget > 0 ? ` at most, within the budget of ${budget} training NFE` : ""}, evaluated on ${n(ablations[0].eval)} prompts.`, "", "### Table 2: samples n (m = 3)", "", ablationTable("n"), "", "n = 1 is not a point of RLHF sharpening here: one path gives no best/worst pair (the config requires n >= 2). The paper equates n = 1 with plain Diffusion-DPO, which is Table 1's Diffusion-DPO row.", "", "### Table 3: steps m (n = 3)", "", ablationTable("m")] : [])
      ].join("\n")
      const file = resultsFile
      const begin = `<!-- ${blockName}:begin -->`
      const end = `<!-- ${blockName}:end -->`
      const old = (yield* fs.exists(file)) ? yield* fs.readFileString(file) : ""
      // The block is replaced in place; a file without it keeps its text and gets the block at its end.
      const text = old.includes(begin) && old.includes(end)
        ? old.slice(0, old.indexOf(begin) + begin.length) + "\n" + block + "\n" + old.slice(old.indexOf(end))
        : old === ""
        ? `# Comparison\n\n${begin}\n${block}\n${end}\n`
        : `${old.replace(/\n*$/, "")}\n\n${begin}\n${block}\n${end}\n`
      yield* AtomicFile.writeText(file, text)
      yield* Console.log(`${table}\n\nwritten: ${file}`)
    })
    yield* program.pipe(Effect.provide(reward), Effect.provide(backend), Effect.scoped)
  }, (effect) => effect.pipe(Effect.scoped, Effect.provideService(Logger.LogToStderr, true)))
).pipe(Command.withDescription(
    "Train every fine-tuning method (the paper's rows, image-level sharpening, RAFT) from the base model with one reward, for the same iterations or the same training-NFE budget (--training-nfe), each with its own settings if given (--method-settings); run every inference-time method; write the paper's tables and plots, and reward / accuracy against training NFE."
  ))

Main.run(command)
