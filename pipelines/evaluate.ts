/**
 * Evaluate a generator on prompt sets: per-category exact-verifier accuracy,
 * partial credit, clip score and NFE per image, at fixed sampler settings.
 *
 *   npx tsx pipelines/evaluate.ts --model models/shapeworld-base
 *   npx tsx pipelines/evaluate.ts --model out/rlhf/model --prompts data/eval/prompts-heldout.txt
 *   npx tsx pipelines/evaluate.ts --model out/rlhf/model --against docs/data/eval-shapeworld-base.json
 *   npx tsx pipelines/evaluate.ts --model out/rlhf/model --rewards aesthetic   # also each image's aesthetic score
 *   npx tsx pipelines/evaluate.ts --model out/rlhf/model --runners sqlite:runs/runners.db --runner-count 2 --coordinate
 *
 * Prints one markdown table per prompt set and writes them all as JSON.
 */
import { Console, Context, Effect, FileSystem, Layer, Option, Path } from "effect"
import { Command, Flag } from "effect/cli"
import * as Inputs from "../src/io/Inputs.ts"
import * as Main from "../src/cli/Main.ts"
import * as Setup from "../src/cli/Setup.ts"
import * as Progress from "../src/io/Progress.ts"
import * as ClipReport from "../src/eval/ClipReport.ts"
import * as Png from "../src/data/Png.ts"
import * as EvalFile from "../src/eval/EvalFile.ts"
import * as Evaluate from "../src/eval/Evaluate.ts"
import * as Report from "../src/sharpen/Report.ts"
import * as Generate from "../src/trajectory/Generate.ts"
import * as JobThreads from "../src/parallel/JobThreads.ts"
import * as ParallelGenerate from "../src/parallel/ParallelGenerate.ts"
import * as AtomicFile from "../src/io/AtomicFile.ts"
import * as Denoiser from "../src/model/Denoiser.ts"
import * as Registry from "../src/reward/Registry.ts"
import { Reward } from "../src/reward/Reward.ts"

export const DEFAULT_PROMPTS = ["data/eval/prompts-seen.txt", "data/eval/prompts-heldout.txt"]
export const DEFAULT_CLIP = Setup.DEFAULT_CLIP_MODEL

const command = Command.make(
  "evaluate",
  {
    model: Flag.String("model").pipe(Flag.withDescription("model directory to evaluate")),
    prompts: Flag.String("prompts").pipe(Flag.withDescription("prompt file (repeatable; default: both eval sets)"), Flag.atLeast(0)),
    clip: Flag.String("clip").pipe(Flag.withDescription(`clip reward model directory (default ${DEFAULT_CLIP})`), Flag.optional),
    seed: Flag.Int("seed").pipe(Flag.withDefault(0)),
    steps: Flag.Int("steps").pipe(Flag.withDescription("DDIM steps"), Flag.withDefault(50)),
    cfg: Flag.Finite("cfg").pipe(Flag.withDescription("classifier-free guidance scale"), Flag.withDefault(5)),
    eta: Flag.Finite("eta").pipe(Flag.withDefault(0)),
    batchSize: Flag.Int("batch-size").pipe(Flag.withDefault(16)),
    grids: Flag.String("grids").pipe(Flag.withDescription("also write a labelled contact sheet per prompt set into this directory"), Flag.optional),
    against: Flag.String("against").pipe(Flag.withDescription("an earlier report of this command (same prompts and sampler, e.g. the base model's): also print the before/after table, paired per prompt, with Wilson intervals"), Flag.optional),
    rewards: Flag.String("rewards").pipe(
      Flag.withDescription("also score every image under these named rewards (comma-separated, e.g. aesthetic,compressibility; docs/rewards.md): per image in the JSON, the set's mean in the table"),
      Flag.optional
    ),
    json: Flag.String("json").pipe(Flag.withDescription("where to write the JSON report (default out/evaluate/<model>.json)"), Flag.optional),
    backend: Setup.backendFlag,
    ...Setup.runnersFlags("the images (sampler batches as Images jobs; the same images as threads give)", "; replaces the worker threads")
  },
  Effect.fn(function*(f) {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const files = f.prompts.length > 0 ? f.prompts : DEFAULT_PROMPTS
    const sets: Array<Evaluate.PromptSet> = []
    for (const file of files) sets.push({ name: path.basename(file, ".txt"), prompts: yield* Inputs.prompts(file) })
    const jsonFile = Option.getOrElse(f.json, () => path.join("out", "evaluate", `${path.basename(path.resolve(f.model))}.json`))
    yield* Inputs.writableDirectory(path.dirname(jsonFile))
    if (Option.isSome(f.grids)) yield* Inputs.writableDirectory(f.grids.value)
    const sampler = { steps: f.steps, cfg: f.cfg, eta: f.eta, seed: f.seed, batchSize: f.batchSize }
    // Checked before sampling: a report that cannot be paired fails now, not after minutes.
    const againstFile = Option.getOrUndefined(f.against)
    const against = againstFile !== undefined ? yield* EvalFile.read(againstFile) : undefined
    if (against !== undefined && againstFile !== undefined) {
      const why = EvalFile.unpairable(against, { sampler, sets: sets.map((s) => ({ name: s.name, prompts: s.prompts.map((p) => p.text) })) })
      if (why !== undefined) return yield* new EvalFile.EvalFileError({ file: againstFile, message: `cannot be compared with this evaluation: ${why}` })
    }
    const { model } = yield* Denoiser.Denoiser
    // With --runners the images are sampled there (ParallelGenerate.onTransport), else on worker threads.
    const runners = yield* Setup.runnersOptions(f)
    const cluster = runners === undefined ? undefined : Setup.clusterTransport(model.config, runners)
    const transport = cluster === undefined ? undefined : Context.get(yield* Layer.build(cluster.layer), JobThreads.JobThreads)
    // The default clip model is optional (evaluation still runs without it);
    // an explicitly requested one must load.
    const clipDir = Option.getOrElse(f.clip, () => DEFAULT_CLIP)
    const useClip = Option.isSome(f.clip) || (yield* fs.exists(clipDir))
    const clip = useClip ? yield* Setup.clip(clipDir) : undefined
    if (!useClip) yield* Console.error(`note: ${clipDir} not found; clip score omitted`)
    const others = Option.match(f.rewards, { onNone: () => [] as Array<string>, onSome: (r) => r.split(",").map((x) => x.trim()).filter((x) => x.length > 0) })
    // Built before sampling: an unknown reward name fails now, not after minutes.
    const scorers = yield* Effect.forEach(others, (name) =>
      Effect.map(Layer.build(Registry.layerNode({ reward: name })), (context) => ({ name, reward: Context.get(context, Reward) })))
    const total = sets.reduce((a, s) => a + s.prompts.length, 0)
    const bar = Progress.make({ label: "evaluate", total })
    const reports: Array<Evaluate.SetReport> = []
    let offset = 0
    for (const set of sets) {
      const texts = set.prompts.map((p) => p.text)
      const images = transport !== undefined
        ? yield* ParallelGenerate.onTransport(transport, model, texts, sampler, (done) => bar.tick(offset + done))
        : yield* Effect.promise((signal) => ParallelGenerate.generate(model, texts, sampler, { onImages: (done) => bar.tick(offset + done), signal }))
      offset += set.prompts.length
      const judged = yield* Evaluate.judge(set.name, set.prompts, images, Generate.nfePerImage(sampler), clip)
      const scores = yield* Effect.forEach(scorers, (r) => Effect.map(r.reward.score(images, texts), (xs) => ({ name: r.name, xs })))
      const report: Evaluate.SetReport = scores.length === 0 ? judged : {
        ...judged,
        samples: judged.samples.map((s, i) => ({ ...s, rewards: Object.fromEntries(scores.map((r) => [r.name, r.xs[i]])) }))
      }
      reports.push(report)
      if (Option.isSome(f.grids)) {
        const labels = report.samples.map((s) => `${s.pass ? "ok" : "x"} ${s.prompt}`)
        yield* AtomicFile.writeFile(path.join(f.grids.value, `${set.name}.png`), Png.grid(images, labels, 10))
      }
    }
    bar.end()
    // How well the learned reward predicts the exact verifier on these samples.
    const agreements = useClip
      ? reports.map((r) => ({ set: r.name, ...ClipReport.agreement(r.samples.map((s) => s.clip ?? 0), r.samples.map((s) => s.pass)) }))
      : []
    for (const r of reports) yield* Console.log(`\n${Evaluate.markdown(r)}`)
    for (const name of others) {
      const means = reports.map((r) => `${r.name} ${(r.samples.reduce((a, s) => a + (s.rewards?.[name] ?? 0), 0) / r.samples.length).toFixed(3)}`)
      yield* Console.log(`\n${name}, mean per image: ${means.join(", ")}`)
    }
    for (const a of agreements) {
      yield* Console.log(`\nclip vs verifier on ${a.set}: AUC ${a.auc.toFixed(3)}, correlation ${a.correlation.toFixed(3)}, mean clip ${a.meanScorePass.toFixed(3)} (pass) vs ${a.meanScoreFail.toFixed(3)} (fail)`)
    }
    yield* AtomicFile.writeText(jsonFile, JSON.stringify({ model: f.model, clip: useClip ? clipDir : null, sampler, reports, agreements }, null, 2) + "\n")
    if (against !== undefined) {
      const table = `${against.model} -> ${f.model}\n\n${Report.comparison(against.reports, reports)}\n`
      const mdFile = jsonFile.replace(/\.json$/, "") + "-comparison.md"
      yield* AtomicFile.writeText(mdFile, table)
      yield* Console.log(`\n${table}\nwrote ${mdFile}`)
    }
    yield* Console.log(`\nwrote ${jsonFile}`)
  }, (effect, f) =>
    effect.pipe(
      Effect.provide(Setup.denoiser(f.model, f.backend)),
      Effect.scoped
    ))
).pipe(Command.withDescription("Evaluate a generator: per-category verifier accuracy, partial credit, clip score, NFE per image."))

Main.run(command)
