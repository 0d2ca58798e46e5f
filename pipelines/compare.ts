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
 *   npx tsx pipelines/compare.ts --quick --runners sqlite:runs/runners.db --runner-count 2   # jobs and evaluation images on runners (pipelines/runner.ts)
 *
 * Every stage writes its JSON under --out and is skipped when it exists.
 * The plan is src/experiments/ComparePlan.ts, the stages CompareStages.ts,
 * the tables and plots CompareReport.ts.
 */
import { Console, Effect, FileSystem, Layer, Logger, Option, Result } from "effect"
import { Command, Flag } from "effect/cli"
import * as Main from "../src/cli/Main.ts"
import * as RewardFlags from "../src/cli/RewardFlags.ts"
import * as Setup from "../src/cli/Setup.ts"
import * as Compare from "../src/experiments/Compare.ts"
import * as ComparePlan from "../src/experiments/ComparePlan.ts"
import * as CompareReport from "../src/experiments/CompareReport.ts"
import * as CompareStages from "../src/experiments/CompareStages.ts"
import * as MethodSettings from "../src/experiments/MethodSettings.ts"
import * as AtomicFile from "../src/io/AtomicFile.ts"
import * as Weights from "../src/model/Weights.ts"
import * as Inputs from "../src/io/Inputs.ts"
import * as RunLock from "../src/io/RunLock.ts"
import * as Registry from "../src/reward/Registry.ts"
import * as Report from "../src/sharpen/Report.ts"
import * as SharpenConfig from "../src/sharpen/SharpenConfig.ts"
import { Backend } from "../src/tensor/Backend.ts"
import * as Generate from "../src/trajectory/Generate.ts"

const command = Command.make(
  "compare",
  {
    model: Setup.modelFlag("base model directory"),
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
    backend: Setup.backendFlag,
    threads: Flag.Int("threads").pipe(
      Flag.withDescription("threads of the sharpening and RAFT stages (generation and image-level gradient parts), this one included (1 beside another training process; the result is the same; default: one per core, at most 4, or SHARPEN_WORKERS, on wasm and cpu; 1 on a GPU)"),
      Flag.optional
    ),
    ...Setup.runnersFlags(
      "the sharpening and RAFT stages' iteration jobs (online samples, paths, gradient parts, reference errors) and the evaluation images of every model",
      "; one connection for the whole comparison; each stage's run.json names the runners; standard fine-tuning, Diffusion-DPO, DDPO and the inference-time rows compute here; replaces --threads"
    )
  },
  Effect.fn(function*(f) {
    const fs = yield* FileSystem.FileSystem
    // The plan: what runs, its sizes, each method's settings (all checked before anything trains).
    const plan = ComparePlan.make(f)
    // Outputs first, then the lock: one compare per --out.
    yield* Inputs.writableDirectory(f.out)
    yield* RunLock.acquire(f.out)
    const stale = yield* AtomicFile.removeStale(f.out)
    if (stale.length > 0) yield* Console.error(`removed ${stale.length} temporary file(s) of interrupted writes in ${f.out}`)
    const { reward: rewardEntry, ...shared }: Record<string, unknown> = Option.isSome(f.config) ? JSON.parse(yield* fs.readFileString(f.config.value)) : {}
    const rewardSpec = yield* Effect.fromResult(RewardFlags.spec(f, rewardEntry, Option.getOrUndefined(f.config)))
    const perMethod = Option.isSome(f.methodSettings) ? yield* MethodSettings.load(f.methodSettings.value, Compare.FINETUNE_METHODS) : {}
    for (const line of [shared, ...Object.values(perMethod).map((e) => e.settings)].flatMap((l, i) => SharpenConfig.deprecations(l, Option.getOrUndefined(i === 0 ? f.config : f.methodSettings)))) yield* Console.error(line)
    const configOf = ComparePlan.configOf(plan, shared, perMethod, { config: Option.getOrUndefined(f.config), methodSettings: Option.getOrUndefined(f.methodSettings) })
    const configFor = (method: Compare.FinetuneMethod, seed: number, extra: Record<string, unknown> = {}) => {
      const c = configOf(method, seed, extra)
      if (Result.isFailure(c)) throw c.failure
      return c.success
    }
    const objectiveOf = ComparePlan.objectiveOf(perMethod, Option.getOrUndefined(f.methodSettings))
    const objectiveFor = (method: Compare.FinetuneMethod) => {
      const o = objectiveOf(method)
      if (Result.isFailure(o)) throw o.failure
      return o.success
    }
    for (const m of plan.methods) {
      yield* Effect.fromResult(configOf(m, plan.seeds[0]))
      yield* Effect.fromResult(objectiveOf(m))
    }

    // --runners: one transport over the runners for every stage (connected once the program starts).
    const runners = yield* Setup.runnersOptions(f)
    if (runners !== undefined && Option.isSome(f.threads)) {
      return yield* new SharpenConfig.ConfigError({ field: "threads", message: "--threads and --runners: the runners take the place of the worker threads (this process computes one share); give one of them" })
    }
    const cluster = runners === undefined ? undefined : Setup.clusterTransport((yield* Weights.load(f.model)).config, runners)

    const backend = Backend.fromFlag(f.backend)
    const clipModel = rewardSpec.modelDir ?? RewardFlags.DEFAULT_CLIP_MODEL
    const hasClip = yield* fs.exists(clipModel)
    const { modelDir: _, ...withoutClip } = rewardSpec
    const reward = Registry.layerNode(hasClip ? rewardSpec : withoutClip).pipe(Layer.provide(backend))
    const sampler: Generate.SamplerOptions = { ...Generate.paperDefaults, steps: plan.evalSteps }

    const program = Effect.gen(function*() {
      const ctx: CompareStages.Context = {
        plan,
        out: f.out,
        model: f.model,
        modelsDir: Option.getOrUndefined(f.modelsDir),
        rewardName: rewardSpec.reward,
        reward,
        wiring: {
          model: f.model,
          reward,
          backend,
          rewardSpec,
          threads: Option.match(f.threads, { onNone: () => "auto" as const, onSome: (n) => Math.max(1, n) }),
          ...(cluster === undefined ? {} : { runners: { transport: cluster.transport()!, used: cluster.used } })
        },
        configFor,
        objectiveFor,
        sampler,
        sets: yield* Report.loadEvalSets(plan.evalPrompts),
        inferenceSets: yield* Report.loadEvalSets(plan.inferencePrompts),
        curveSets: yield* Report.loadEvalSets(plan.curvePrompts),
        clip: hasClip ? yield* Setup.clip(clipModel) : undefined
      }
      // The stages: Table 1's (or the ablations alone, e.g. in a second process), then the ablations.
      if (f.onlyAblations) {
        const points = yield* CompareStages.ablations(ctx)
        yield* Console.log(`${points.length} ablation points trained and evaluated in ${f.out}; run without --only-ablations to write the tables`)
        return
      }
      const results = yield* CompareStages.main(ctx)
      const ablations = f.ablations ? yield* CompareStages.ablations(ctx, results) : []
      // The report.
      yield* CompareReport.write({
        plan,
        out: f.out,
        rewardName: rewardSpec.reward,
        sampler,
        results: f.results,
        block: f.block,
        plots: f.plots,
        methodSettings: f.methodSettings,
        perMethod,
        hackingGrid: CompareStages.hackingFiles(ctx).grid
      }, results, ablations)
    })
    yield* program.pipe(Effect.provide(reward), Effect.provide(backend), cluster === undefined ? (e) => e : Effect.provide(cluster.layer), Effect.scoped)
  }, (effect) => effect.pipe(Effect.scoped, Effect.provideService(Logger.LogToStderr, true)))
).pipe(Command.withDescription(
    "Train every fine-tuning method (the paper's rows, image-level sharpening, RAFT) from the base model with one reward, for the same iterations or the same training-NFE budget (--training-nfe), each with its own settings if given (--method-settings); run every inference-time method; write the paper's tables and plots, and reward / accuracy against training NFE."
  ))

Main.run(command)
