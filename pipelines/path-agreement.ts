/**
 * Does RLHF-Diffusion-Sharpening's trajectory reward pick the path whose
 * final image is best? Builds trajectories with the RLHF training stages
 * (SharpenLayers.rlhf: online samples, n paths of m DDIM steps, reward of
 * each step's x0 estimate), continues every path to t = 0 (DDIM, eta 0,
 * same grid and guidance), scores the final images with the same reward and
 * compares the two rankings per prompt (src/eval/PathAgreement.ts).
 *
 *   npx tsx pipelines/path-agreement.ts --prompts 48 --out docs/data/path-agreement.json
 *
 * Writes the JSON (settings, every prompt's raw rewards, the summary) and a
 * markdown table beside it (<out>.md); progress goes to stderr. With
 * `--from a.json,b.json` nothing is generated: the prompts stored in those
 * reports (same model, reward and trajectory settings) are pooled and
 * summarised again.
 */
import { Console, Effect, FileSystem, Layer, Option, Schema } from "effect"
import { Command, Flag } from "effect/cli"
import * as os from "node:os"
import * as nodePath from "node:path"
import * as tf from "@tensorflow/tfjs-core"
import * as Main from "../src/cli/Main.ts"
import * as Setup from "../src/cli/Setup.ts"
import * as Progress from "../src/io/Progress.ts"
import * as PathAgreement from "../src/eval/PathAgreement.ts"
import * as AtomicFile from "../src/io/AtomicFile.ts"
import * as Denoiser from "../src/model/Denoiser.ts"
import { Metrics } from "../src/optim/Metrics.ts"
import * as Report from "../src/sharpen/Report.ts"
import * as SharpenConfig from "../src/sharpen/SharpenConfig.ts"
import * as SharpenLayers from "../src/sharpen/SharpenLayers.ts"
import { BatchSource } from "../src/sharpen/Sources.ts"
import { Decoder, scoreSamples } from "../src/reward/Decoder.ts"
import * as Registry from "../src/reward/Registry.ts"
import { Backend } from "../src/tensor/Backend.ts"
import * as Trajectory from "../src/trajectory/Trajectory.ts"
import { TrajectoryGenerator } from "../src/trajectory/TrajectoryGenerator.ts"
import { TrajectoryScorer } from "../src/trajectory/TrajectoryScorer.ts"

const Output = Schema.Struct({
  format: Schema.Literal("diffusion-sharpening/path-agreement@1"),
  /** The arguments the report was made with. */
  command: Schema.String,
  model: Schema.String,
  reward: Schema.String,
  promptFile: Schema.String,
  seed: Schema.Int,
  batchSize: Schema.Int,
  /** The trajectory settings (SharpenConfig defaults unless overridden). */
  n: Schema.Int,
  m: Schema.Int,
  inferenceSteps: Schema.Int,
  onlineSteps: Schema.Int,
  cfg: Schema.Number,
  estimator: Trajectory.Estimator,
  timestep: Trajectory.TimestepChoice,
  /** The model's schedule length (with the settings above, it fixes the start grid and its t0 split). */
  trainSteps: Schema.Int,
  wallSeconds: Schema.Number,
  nfe: Schema.Int,
  /** Live tensors after each batch's scope closed (constant when nothing leaks). */
  liveTensors: Schema.Array(Schema.Int),
  summary: PathAgreement.Summary,
  items: Schema.Array(PathAgreement.Item)
})

/** What pooling needs of a stored report; it must agree across the pooled reports. */
const Stored = Schema.Struct({
  model: Schema.String,
  reward: Schema.String,
  n: Schema.Int,
  m: Schema.Int,
  inferenceSteps: Schema.Int,
  cfg: Schema.Number,
  estimator: Trajectory.Estimator,
  timestep: Trajectory.TimestepChoice,
  trainSteps: Schema.Int,
  items: Schema.Array(PathAgreement.Item)
})

const Pooled = Schema.Struct({
  format: Schema.Literal("diffusion-sharpening/path-agreement-pooled@1"),
  command: Schema.String,
  sources: Schema.Array(Schema.String),
  model: Schema.String,
  reward: Schema.String,
  summary: PathAgreement.Summary,
  items: Schema.Array(PathAgreement.Item)
})

const commandLine = () => `npx tsx pipelines/path-agreement.ts ${process.argv.slice(2).join(" ")}`

/** The JSON report and the markdown table beside it (<out without .json>.md). */
const write = Effect.fn("pathAgreement.write")(function*(out: string, json: unknown, title: string, header: string, summary: PathAgreement.Summary) {
  const table = PathAgreement.markdown(summary)
  const mdFile = out.replace(/\.json$/, "") + ".md"
  yield* AtomicFile.writeText(out, JSON.stringify(json, null, 1) + "\n")
  yield* AtomicFile.writeText(mdFile, `# ${title}\n\n${header}\n\n${table}\n`)
  yield* Console.log(table)
  yield* Console.log(`\nwritten ${out} and ${mdFile}`)
})

/** `--from`: pool the prompts of stored reports and summarise them again. */
const pool = Effect.fn("pathAgreement.pool")(function*(files: ReadonlyArray<string>, out: string) {
  const fs = yield* FileSystem.FileSystem
  const stored: Array<typeof Stored.Type> = []
  for (const file of files) {
    const text = yield* fs.readFileString(file)
    const json = yield* Effect.try({ try: () => JSON.parse(text) as unknown, catch: () => new PathAgreement.PathAgreementError({ message: `${file} is not JSON` }) })
    stored.push(yield* Schema.decodeUnknownEffect(Stored)(json).pipe(
      Effect.mapError((e) => new PathAgreement.PathAgreementError({ message: `${file} is not a path-agreement report: ${e.message.split("\n")[0]}` }))
    ))
  }
  if (stored.length === 0) return yield* new PathAgreement.PathAgreementError({ message: "--from names no report" })
  const { items: _, ...first } = stored[0]
  const differs = stored.findIndex(({ items: _i, ...rest }) => JSON.stringify(rest) !== JSON.stringify(first))
  if (differs >= 0) {
    return yield* new PathAgreement.PathAgreementError({ message: `${files[differs]} has other model, reward or trajectory settings than ${files[0]}` })
  }
  const threshold = PathAgreement.splitThreshold(Trajectory.startTimesteps(first.trainSteps, first))
  const items = stored.flatMap((s) => s.items)
  const summary = PathAgreement.summarize(items, threshold)
  const pooled = { format: "diffusion-sharpening/path-agreement-pooled@1" as const, command: commandLine(), sources: files, model: first.model, reward: first.reward, summary, items }
  yield* write(out, Schema.encodeSync(Pooled)(pooled), `Path agreement, pooled: ${first.model}, reward ${first.reward}`, `Command: \`${pooled.command}\` (the prompts of ${files.join(", ")})`, summary)
})

const command = Command.make(
  "path-agreement",
  {
    model: Flag.String("model").pipe(Flag.withDescription("model directory (policy of the trajectories)"), Flag.withDefault("models/shapeworld-base")),
    clipModel: Flag.String("clip-model").pipe(Flag.withDescription("clip model directory (for the clip reward)"), Flag.withDefault(Setup.DEFAULT_CLIP_MODEL)),
    reward: Flag.String("reward").pipe(Flag.withDescription("reward expression scoring both the x0 estimates and the final images"), Flag.withDefault("clip")),
    promptFile: Flag.String("prompt-file").pipe(Flag.withDescription("prompt set"), Flag.withDefault("data/eval/prompts-seen.txt")),
    prompts: Flag.Int("prompts").pipe(Flag.withDescription("prompts, spread evenly over the file (0 = all)"), Flag.withDefault(48)),
    n: Flag.Int("n").pipe(Flag.withDescription("paths per prompt"), Flag.withDefault(SharpenConfig.defaults.n)),
    m: Flag.Int("m").pipe(Flag.withDescription("scored steps per path"), Flag.withDefault(SharpenConfig.defaults.m)),
    inferenceSteps: Flag.Int("inference-steps").pipe(Flag.withDescription("DDIM grid of the paths and their continuation"), Flag.withDefault(SharpenConfig.defaults.inferenceSteps)),
    onlineSteps: Flag.Int("online-steps").pipe(Flag.withDescription("DDIM steps of the online samples"), Flag.withDefault(SharpenConfig.defaults.onlineSteps)),
    seed: Flag.Int("seed").pipe(Flag.withDefault(0)),
    batchSize: Flag.Int("batch-size").pipe(Flag.withDescription("prompts per batch (one start timestep per batch, as in training)"), Flag.withDefault(4)),
    out: Flag.String("out").pipe(Flag.withDescription("JSON report; the markdown table goes beside it"), Flag.withDefault("out/path-agreement.json")),
    from: Flag.String("from").pipe(Flag.withDescription("comma-separated reports to pool instead of generating (same model, reward and settings)"), Flag.optional),
    backend: Setup.backendFlag
  },
  Effect.fn(function*(f) {
    if (Option.isSome(f.from)) return yield* pool(f.from.value.split(",").map((s) => s.trim()).filter((s) => s !== ""), f.out)
    const started = performance.now()
    const fs = yield* FileSystem.FileSystem
    // The published trajectory reward (x0 estimates summed along the path) is what this measures.
    const config = yield* Effect.fromResult(
      SharpenConfig.decode([SharpenConfig.paperVariant, { n: f.n, m: f.m, seed: f.seed, batchSize: f.batchSize, inferenceSteps: f.inferenceSteps, onlineSteps: f.onlineSteps }])
    )
    const sets = yield* Report.loadEvalSets(f.prompts, [f.promptFile])
    const prompts = sets[0].prompts.map((p) => p.text)
    const backend = Backend.fromFlag(f.backend)
    const hasClip = yield* fs.exists(f.clipModel)
    const reward = Registry.layerNode({ reward: f.reward, ...(hasClip ? { modelDir: f.clipModel } : {}) }).pipe(Layer.provide(backend))
    // The RLHF training stack; only its BatchSource, TrajectoryGenerator and
    // TrajectoryScorer are used (nothing trains, no checkpoint is written).
    const training = SharpenLayers.rlhf(config, {
      model: f.model,
      runDir: nodePath.join(os.tmpdir(), "path-agreement-unused"),
      reward,
      backend,
      metrics: Metrics.memory
    })
    // Training's online source, on the eval prompts instead of random training-split prompts.
    const source = BatchSource.online({ split: config.split, steps: config.onlineSteps, cfg: config.cfg, prompts })
    const layers = Layer.mergeAll(Layer.provideMerge(source, training), reward, Decoder.layer)

    const program = Effect.gen(function*() {
      const { model } = yield* Denoiser.Denoiser
      const sourceService = yield* BatchSource
      const generator = yield* TrajectoryGenerator
      const scorer = yield* TrajectoryScorer
      const schedule = Denoiser.scheduleOf(model.config)
      const threshold = PathAgreement.splitThreshold(Trajectory.startTimesteps(schedule.trainSteps, generator.options))
      const items: Array<PathAgreement.Item> = []
      const liveTensors: Array<number> = []
      let nfe = 0
      const batches = Math.ceil(prompts.length / config.batchSize)
      yield* Console.error(`${prompts.length} prompts of ${f.promptFile}, ${batches} batches of ${config.batchSize}; n = ${config.n}, m = ${config.m}, DDIM ${config.inferenceSteps}, CFG ${config.cfg}, reward ${f.reward}`)
      const bar = Progress.make({ label: "path-agreement", total: batches, logEvery: 1 })
      for (let start = 0; start < prompts.length; start += config.batchSize) {
        const size = Math.min(config.batchSize, prompts.length - start)
        const batchItems = yield* Effect.scoped(Effect.gen(function*() {
          const batch = yield* sourceService.next(size)
          const trajectories = yield* generator.generate(batch.x0, batch.prompts)
          const scores = yield* scorer.score(trajectories)
          const continued = yield* PathAgreement.continuePaths(model, trajectories, generator.options)
          const rowPrompts = Array.from({ length: trajectories.n * size }, (_, r) => batch.prompts[r % size])
          const finalRows = yield* scoreSamples(yield* PathAgreement.rowsOf(continued.images), rowPrompts)
          const final = Array.from({ length: trajectories.n }, (_, i) => finalRows.slice(i * size, (i + 1) * size))
          nfe += batch.nfe + trajectories.nfe + continued.nfe
          return PathAgreement.items(batch.prompts, trajectories.steps[0].t, scores.perStep, final)
        }))
        items.push(...batchItems)
        liveTensors.push(tf.memory().numTensors)
        const sofar = PathAgreement.summarize(items, threshold)
        bar.tick(items.length === prompts.length ? batches : Math.ceil(items.length / config.batchSize), {
          t0: batchItems[0].t0,
          argmax: sofar.rankings[0].argmax.rate,
          spearman: sofar.rankings[0].spearman ?? "n/a"
        })
      }
      bar.end()
      return { items, liveTensors, nfe, trainSteps: schedule.trainSteps, summary: PathAgreement.summarize(items, threshold) }
    })
    const r = yield* program.pipe(Effect.provide(layers), Effect.scoped)

    const output = {
      format: "diffusion-sharpening/path-agreement@1" as const,
      command: commandLine(),
      model: f.model,
      reward: f.reward,
      promptFile: f.promptFile,
      seed: config.seed,
      batchSize: config.batchSize,
      n: config.n,
      m: config.m,
      inferenceSteps: config.inferenceSteps,
      onlineSteps: config.onlineSteps,
      cfg: config.cfg,
      estimator: config.estimator,
      timestep: config.timestep,
      trainSteps: r.trainSteps,
      wallSeconds: (performance.now() - started) / 1000,
      nfe: r.nfe,
      liveTensors: r.liveTensors,
      summary: r.summary,
      items: r.items
    }
    yield* write(
      f.out,
      Schema.encodeSync(Output)(output),
      `Path agreement: ${f.model}, reward ${f.reward}`,
      `Command: \`${output.command}\` (${output.wallSeconds.toFixed(0)} s, ${r.nfe} NFE)`,
      r.summary
    )
  })
).pipe(Command.withDescription("Does the trajectory reward (x0 estimates) rank a prompt's paths as their final images rank?"))

Main.run(command)
