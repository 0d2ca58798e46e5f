/**
 * The paper's comparison on ShapeWorld-32 (issue #6): every fine-tuning
 * method trained from the base model with the same reward and iterations,
 * the inference-time methods on the base model, all evaluated on both eval
 * sets; ablations of n and m; tables and plots written to --results.
 *
 *   npx tsx pipelines/compare.ts --quick --out out/compare-quick        # smoke run, minutes
 *   npx tsx pipelines/compare.ts --iterations 40 --results docs/results.md
 *   npx tsx pipelines/compare.ts --ablations --seeds 0,1,2 ...          # resumable: rerun to continue
 *
 * Every stage writes its JSON under --out and is skipped when it exists.
 */
import { Console, Effect, FileSystem, Layer, Logger, Option, Path, Schema } from "effect"
import { Command, Flag } from "effect/cli"
import * as Main from "../src/cli/Main.ts"
import * as Png from "../src/data/Png.ts"
import * as Evaluate from "../src/eval/Evaluate.ts"
import * as Generate from "../src/eval/Generate.ts"
import { defaultWorkers } from "../src/eval/ParallelGenerate.ts"
import * as Plot from "../src/eval/Plot.ts"
import * as Wilson from "../src/eval/Wilson.ts"
import * as AtomicFile from "../src/io/AtomicFile.ts"
import * as RunLock from "../src/io/RunLock.ts"
import * as Inputs from "../src/cli/Inputs.ts"
import * as RewardFlags from "../src/cli/RewardFlags.ts"
import * as ClipModel from "../src/reward/ClipModel.ts"
import * as Registry from "../src/reward/Registry.ts"
import * as Compare from "../src/pipeline/Compare.ts"
import * as Report from "../src/pipeline/Report.ts"
import * as SharpenConfig from "../src/pipeline/SharpenConfig.ts"
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
    results: Flag.String("results").pipe(Flag.withDescription("markdown file to write (its compare block is replaced if present)"), Flag.optional),
    plots: Flag.String("plots").pipe(Flag.withDescription("directory of the plots and grids (default: img/compare beside --results, else <out>/plots)"), Flag.optional),
    modelsDir: Flag.String("models-dir").pipe(Flag.withDescription("also copy each trained model (first seed) to <dir>/shapeworld-<method>-<reward>"), Flag.optional),
    config: Flag.String("config").pipe(Flag.withDescription("JSON file of sharpening settings shared by every method (and a \"reward\" entry)"), Flag.optional),
    iterations: Flag.Int("iterations").pipe(Flag.withDescription("iterations of every fine-tuning method"), Flag.withDefault(40)),
    lr: Flag.Finite("lr").pipe(Flag.withDescription("learning rate of every fine-tuning method"), Flag.withDefault(1e-4)),
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
    quick: Flag.Boolean("quick").pipe(Flag.withDescription("tiny smoke run (2 iterations, few prompts and steps)"), Flag.withDefault(false)),
    backend: Flag.Literals("backend", BackendName.literals).pipe(Flag.withDefault("auto" as const)),
    threads: Flag.Int("threads").pipe(
      Flag.withDescription("threads of the sharpening and RAFT stages (generation and image-level gradient parts), this one included (1 beside another training process; the result is the same; default: one per core, at most 4, or SHARPEN_WORKERS)"),
      Flag.withDefault(defaultWorkers())
    )
  },
  Effect.fn(function*(f) {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const q = f.quick
    const settings = {
      iterations: q ? 2 : f.iterations,
      evalPrompts: q ? 3 : f.evalPrompts,
      inferencePrompts: q ? 2 : f.inferencePrompts,
      evalSteps: q ? 4 : f.evalSteps,
      bestOf: q ? [2] : ints(f.bestOf),
      stepSearch: (q ? "1x2" : f.stepSearch).split(",").filter((s) => s.trim() !== "").map((s) => {
        const [points, branches] = s.split("x").map(Number)
        return { points, branches }
      }),
      ablation: { n: q ? [2, 3] : ints(f.ablationN), m: q ? [1, 2] : ints(f.ablationM) },
      ablationIterations: q ? 2 : Option.getOrElse(f.ablationIterations, () => f.iterations),
      seeds: ints(f.seeds)
    }
    // Outputs first, then the lock: one compare per --out.
    yield* Inputs.writableDirectory(f.out)
    yield* RunLock.acquire(f.out)
    const stale = yield* AtomicFile.removeStale(f.out)
    if (stale.length > 0) yield* Console.error(`removed ${stale.length} temporary file(s) of interrupted writes in ${f.out}`)
    const { reward: rewardEntry, ...shared }: Record<string, unknown> = Option.isSome(f.config) ? JSON.parse(yield* fs.readFileString(f.config.value)) : {}
    const rewardSpec = RewardFlags.spec(f, rewardEntry, Option.getOrUndefined(f.config))
    if (rewardSpec instanceof SharpenConfig.ConfigError) return yield* rewardSpec
    const quickConfig = q ? { batchSize: 2, n: 2, m: 2, onlineSteps: 4, inferenceSteps: 10, evalSteps: 4, evalPrompts: 2 } : {}
    const configFor = (seed: number, extra: Record<string, unknown> = {}) => {
      // The published algorithms, as in docs/results.md's tables; a --config can set image-level settings.
      const c = SharpenConfig.decode([SharpenConfig.paperVariant, shared, quickConfig, { iterations: settings.iterations, lr: f.lr, seed, checkpointEvery: 5 }, extra], Option.getOrUndefined(f.config))
      if (c instanceof SharpenConfig.ConfigError) throw c
      return c
    }
    const methods = f.methods.split(",").map((m) => Schema.decodeUnknownSync(Compare.FinetuneMethod)(m.trim()))
    const backend = Backend.make(process.env.SHARPEN_BACKEND ? (process.env.SHARPEN_BACKEND as BackendName) : f.backend)
    const clipModel = rewardSpec.modelDir ?? RewardFlags.DEFAULT_CLIP_MODEL
    const hasClip = yield* fs.exists(clipModel)
    const { modelDir: _, ...withoutClip } = rewardSpec
    const reward = Registry.layerNode(hasClip ? rewardSpec : withoutClip).pipe(Layer.provide(backend))
    const wiring: Compare.TrainWiring = { model: f.model, reward, backend, rewardSpec, threads: Math.max(1, f.threads) }
    const sampler: Generate.SamplerOptions = { ...Generate.paperDefaults, steps: settings.evalSteps }
    const sets = yield* Report.loadEvalSets(settings.evalPrompts)
    const inferenceSets = yield* Report.loadEvalSets(settings.inferencePrompts)

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
      const hackingRow = `rlhf-sharpening-s${settings.seeds[0]}`
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
            const dir = path.join(f.out, "train", `${method}-s${seed}`)
            const summary = yield* Compare.train(method, configFor(seed), dir, wiring)
            const keep = `${method}-s${seed}` === hackingRow && clip !== undefined
              ? (set: Evaluate.PromptSet, images: ReadonlyArray<Float32Array>, report: Evaluate.SetReport) =>
                set.name === sets[0].name ? Effect.asVoid(keepHacking(images, report)) : Effect.void
              : undefined
            const ev = yield* evalModel(`${method}-s${seed}`, "fine-tuning", path.join(dir, "model"), sets, keep)
            trained.push({ method, seed, summary, eval: ev })
          }
        }

        if (Option.isSome(f.modelsDir)) {
          for (const t of trained.filter((t) => t.seed === settings.seeds[0])) {
            const to = path.join(f.modelsDir.value, `shapeworld-${t.method}-${rewardSpec.reward}`)
            yield* fs.makeDirectory(to, { recursive: true })
            for (const file of yield* fs.readDirectory(path.join(f.out, "train", `${t.method}-s${t.seed}`, "model"))) {
              yield* fs.copyFile(path.join(f.out, "train", `${t.method}-s${t.seed}`, "model", file), path.join(to, file))
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
        // The sharpened model on the same (smaller) prompt sets, for the reward-vs-NFE plot.
        const sharpenedSmall = methods.includes("rlhf-sharpening")
          ? [yield* evalModel(`rlhf-sharpening-s${settings.seeds[0]}-inference-prompts`, "RLHF sharpening", path.join(f.out, "train", `rlhf-sharpening-s${settings.seeds[0]}`, "model"), inferenceSets)]
          : []

        // The reward-hacking summary, sampled again only when the RLHF row's
        // evaluation was cached by a run that predates it.
        const hacking = methods.includes("rlhf-sharpening") && clip !== undefined
          ? yield* Compare.cached(hackingFile, Compare.HackingSummary, Effect.scoped(Effect.gen(function*() {
            yield* Console.error("reward hacking: clip vs verifier on the RLHF-sharpened samples ...")
            const model = yield* Compare.loadModel(path.join(f.out, "train", hackingRow, "model"))
            const set = sets[0]
            const images = yield* Compare.samplerGenerator(model, sampler)(set.prompts.map((p) => p.text))
            return yield* keepHacking(images, Evaluate.judge(set.name, set.prompts, images, Generate.nfePerImage(sampler), clip))
          })))
          : undefined
        return { trained, base, baseSmall, inference, sharpenedSmall, hacking }
      })

      // 3. Ablations of n and m (RLHF sharpening, first seed). Given the main
      // stages, the main RLHF run stands in for the point with the same settings.
      const ablationStages = (done?: { trained: ReadonlyArray<{ method: Compare.FinetuneMethod; seed: number; summary: Compare.TrainSummary }>; sharpenedSmall: ReadonlyArray<Compare.EvalSummary> }) =>
        Effect.gen(function*() {
          const ablations: Array<{ axis: "n" | "m"; value: number; summary: Compare.TrainSummary; eval: Compare.EvalSummary }> = []
          for (const axis of ["n", "m"] as const) {
            for (const value of settings.ablation[axis]) {
              const isDefault = configFor(settings.seeds[0])[axis] === value
              // The main RLHF run already is this point (same settings): reuse it.
              if (isDefault && settings.ablationIterations === settings.iterations) {
                const main = done?.trained.find((t) => t.method === "rlhf-sharpening" && t.seed === settings.seeds[0])
                if (main !== undefined && done!.sharpenedSmall.length > 0) {
                  ablations.push({ axis, value, summary: main.summary, eval: done!.sharpenedSmall[0] })
                }
                if (done === undefined || main !== undefined) continue
              }
              // n = 3 of Table 2 and m = 3 of Table 3 are the same run: train it once.
              const name = isDefault ? "default" : `${axis}${value}`
              const dir = path.join(f.out, "ablation", settings.ablationIterations === settings.iterations ? name : `${name}-i${settings.ablationIterations}`)
              // The micro-batch is a row budget, so m = 8 fits the heap as m = 3 does.
              const summary = yield* Compare.train("rlhf-sharpening", configFor(settings.seeds[0], { [axis]: value, iterations: settings.ablationIterations }), dir, wiring)
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
      const { trained, base, baseSmall, inference, sharpenedSmall, hacking } = yield* mainStages
      const ablations = f.ablations ? yield* ablationStages({ trained, sharpenedSmall }) : []

      // 4. Tables and plots.
      const plots = Option.getOrElse(f.plots, () => Option.isSome(f.results) ? path.join(path.dirname(f.results.value), "img", "compare") : path.join(f.out, "plots"))
      // Each method logs its own statistic (sharpening: the sum of m x0-estimate
      // rewards per path; DDPO: final images of the policy; Diffusion-DPO: the
      // frozen reference's samples), so the plot shows each curve's change
      // from its own start, not levels on one scale.
      const fig46 = yield* Effect.promise(() =>
        Plot.lineSvg({
          title: `Training reward minus its first-3-iteration mean (each method's own statistic), reward ${rewardSpec.reward}`,
          x: "iteration",
          y: "reward change",
          series: "method",
          smooth: Math.max(1, Math.round(settings.iterations / 10)),
          rows: trained.filter((t) => t.seed === settings.seeds[0] && t.method !== "standard").flatMap((t) => {
            const start = Compare.meanStd(t.summary.curve.slice(0, 3).map((c) => c.rewardMean)).mean
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
          rows: [baseSmall, ...inference, ...sharpenedSmall].map((e) => ({ "NFE per image": e.nfePerImage, reward: e.sets[0].reward, family: e.family === "base" ? "best-of-N" : e.family }))
            .concat(inference.filter((e) => e.family !== "best-of-N").length > 0 ? [{ "NFE per image": baseSmall.nfePerImage, reward: baseSmall.sets[0].reward, family: "step search" }] : [])
        }))
      for (const [name, svg] of [["reward-vs-iteration", fig46], ["reward-vs-nfe", fig5]] as const) {
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
        if (runs.length === 1) return { label: Compare.LABELS[m], eval: first }
        const spread = first.sets.map((_, i) => Compare.meanStd(runs.map((r) => Compare.overall(r.eval.sets[i]).accuracy)).std)
        return { label: `${Compare.LABELS[m]} (seed ${runs[0].seed}; ± over ${runs.length} seeds)`, eval: first, spread }
      }
      const order: Array<Compare.FinetuneMethod> = ["standard", "diffusion-dpo", "ddpo"]
      const table = Compare.table1([
        { label: "base model", eval: base },
        ...order.filter((m) => methods.includes(m)).map(rowOf),
        ...(["sft-sharpening", "rlhf-sharpening"] as const).filter((m) => methods.includes(m)).map(rowOf)
      ])
      const inferenceTable = Compare.table1([{ label: "base model", eval: baseSmall }, ...inference.map((e) => ({ label: e.row, eval: e })), ...sharpenedSmall.map((e) => ({ label: "RLHF Diffusion-Sharpening", eval: e }))])
      const costs = [
        "| method | seed | iterations | training min | training NFE | reward calls |",
        "|---|---|---|---|---|---|",
        ...trained.map((t) => `| ${Compare.LABELS[t.method]} | ${t.seed} | ${t.summary.iterations} | ${t.summary.wallMinutes.toFixed(1)} | ${t.summary.nfe} | ${t.summary.rewardCalls} |`)
      ].join("\n")
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
      const resultsFile = Option.getOrElse(f.results, () => path.join(f.out, "results.md"))
      const n = (s: Compare.EvalSummary) => s.sets.map((x) => `${Compare.overall(x).n} ${x.name}`).join(" + ")
      const block = [
        `Generated by \`npx tsx pipelines/compare.ts ${process.argv.slice(2).join(" ")}\` (stages in \`${f.out}\`).`,
        `Reward optimised by every method: \`${rewardSpec.reward}\`. Fine-tuning: ${settings.iterations} iterations each, lr ${f.lr}, seeds ${settings.seeds.join(", ")}; evaluation DDIM ${sampler.steps}, CFG ${sampler.cfg}, eta 0 on ${n(base)} prompts.`,
        "",
        "### Table 1: verifier accuracy (overall), clip score, other rewards, NFE per image",
        "",
        table,
        "",
        "Per category:",
        "",
        Compare.categoryTable(0, [{ label: "base model", eval: base }, ...trained.filter((t) => t.seed === settings.seeds[0]).map((t) => ({ label: Compare.LABELS[t.method], eval: t.eval }))]),
        "",
        ...(base.sets.length > 1 ? [Compare.categoryTable(1, [{ label: "base model", eval: base }, ...trained.filter((t) => t.seed === settings.seeds[0]).map((t) => ({ label: Compare.LABELS[t.method], eval: t.eval }))]), ""] : []),
        "### Training cost (same reward, same iterations)",
        "",
        costs,
        "",
        `### Inference-time methods on the base model (${n(baseSmall)} prompts)`,
        "",
        inferenceTable,
        "",
        "![reward vs iteration](" + path.relative(path.dirname(resultsFile), path.join(plots, "reward-vs-iteration.png")) + ")",
        "",
        "Training reward per iteration, as each method logs it: sharpening, the sum over the m scored steps of the reward of the model's x0 estimates, mean over paths; " +
        "DDPO, the policy's final images; Diffusion-DPO, the frozen reference's samples (flat by construction). Each curve is drawn relative to its own first 3 iterations, so only the trends compare.",
        "",
        "![reward vs NFE](" + path.relative(path.dirname(resultsFile), path.join(plots, "reward-vs-nfe.png")) + ")",
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
        ...(ablations.length > 0 ? ["", `Ablations: RLHF sharpening, ${settings.ablationIterations} iterations each, evaluated on ${n(ablations[0].eval)} prompts.`, "", "### Table 2: samples n (m = 3)", "", ablationTable("n"), "", "n = 1 is not a point of RLHF sharpening here: one path gives no best/worst pair (the config requires n >= 2). The paper equates n = 1 with plain Diffusion-DPO, which is Table 1's Diffusion-DPO row.", "", "### Table 3: steps m (n = 3)", "", ablationTable("m")] : [])
      ].join("\n")
      const file = resultsFile
      const begin = "<!-- compare:begin -->"
      const end = "<!-- compare:end -->"
      const old = (yield* fs.exists(file)) ? yield* fs.readFileString(file) : ""
      const text = old.includes(begin) && old.includes(end)
        ? old.slice(0, old.indexOf(begin) + begin.length) + "\n" + block + "\n" + old.slice(old.indexOf(end))
        : `# Comparison\n\n${begin}\n${block}\n${end}\n`
      yield* AtomicFile.writeText(file, text)
      yield* Console.log(`${table}\n\nwritten: ${file}`)
    })
    yield* program.pipe(Effect.provide(reward), Effect.provide(backend), Effect.scoped)
  }, (effect) => effect.pipe(Effect.scoped, Effect.provideService(Logger.LogToStderr, true)))
).pipe(Command.withDescription("Train every fine-tuning method and run every inference-time method from the base model with one reward; write the paper's tables and plots."))

Main.run(command)
