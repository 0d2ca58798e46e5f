/**
 * Pretrain the ShapeWorld-32 base generator.
 *
 *   npx tsx pipelines/pretrain.ts --max-minutes 88 --run-dir runs/pretrain2
 *   npx tsx pipelines/pretrain.ts --resume          # continue the last run
 *   npx tsx pipelines/pretrain.ts --runners sqlite:runs/runners.db --runner-count 2   # gradient shards on runners (pipelines/runner.ts)
 *
 * --architecture FILE overrides fields of the default UNet architecture (JSON);
 * --resume refuses a checkpoint trained with another one.
 *
 * Checkpoints go to --run-dir (atomic, every --checkpoint-every steps and on
 * Ctrl-C; the layout of a sharpening run's), with metrics.jsonl (one line per
 * step); the EMA weights are written to --out when training ends.
 *
 * --runners STORAGE sends the gradient shards to effect/cluster runners
 * (docs/scaling.md) in place of --workers' threads; this process computes
 * one shard, and every draw stays here.
 */
import { Console, Effect, Layer, Option } from "effect"
import { Command, Flag } from "effect/cli"
import * as Main from "../src/cli/Main.ts"
import * as Setup from "../src/cli/Setup.ts"
import { defaultWorkers } from "../src/parallel/ParallelGenerate.ts"
import { defaultConfig } from "../src/model/UNetConfig.ts"
import * as Pretrain from "../src/train/Pretrain.ts"

const command = Command.make(
  "pretrain",
  {
    steps: Flag.Int("steps").pipe(Flag.withDescription("optimisation steps in total"), Flag.withDefault(4000)),
    batchSize: Flag.Int("batch-size").pipe(Flag.withDescription("images per step (split over --workers)"), Flag.withDefault(16)),
    lr: Flag.Finite("lr").pipe(Flag.withDescription("peak learning rate (AdamW)"), Flag.withDefault(8e-4)),
    warmupSteps: Flag.Int("warmup").pipe(Flag.withDescription("linear warm-up steps"), Flag.withDefault(200)),
    emaDecay: Flag.Finite("ema").pipe(Flag.withDescription("EMA decay of the released weights"), Flag.withDefault(0.999)),
    nullPromptFraction: Flag.Finite("null-fraction").pipe(Flag.withDescription("fraction of null prompts (CFG)"), Flag.withDefault(0.1)),
    seed: Flag.Int("seed").pipe(Flag.withDefault(0)),
    checkpointEvery: Flag.Int("checkpoint-every").pipe(Flag.withDefault(250)),
    lrSchedule: Flag.Literals("lr-schedule", ["cosine", "constant"] as const).pipe(
      Flag.withDescription("after warm-up: cosine decay to --min-lr at the last step, or constant"),
      Flag.withDefault("cosine" as const)
    ),
    minLr: Flag.Finite("min-lr").pipe(Flag.withDescription("final learning rate of the cosine schedule"), Flag.withDefault(4e-5)),
    workers: Flag.Int("workers").pipe(
      Flag.withDescription("threads computing gradient shards, the main one included (default: one per core, at most 4)"),
      Flag.withDefault(defaultWorkers())
    ),
    maxMinutes: Flag.Finite("max-minutes").pipe(Flag.withDescription("stop after this many minutes (0 = no limit)"), Flag.withDefault(0)),
    runDir: Flag.String("run-dir").pipe(Flag.withDescription("checkpoint directory"), Flag.withDefault("runs/pretrain")),
    out: Flag.String("out").pipe(Flag.withDescription("model directory written at the end"), Flag.withDefault("models/shapeworld-base")),
    resume: Flag.Boolean("resume").pipe(Flag.withDescription("continue from the latest checkpoint in --run-dir"), Flag.withDefault(false)),
    architecture: Flag.String("architecture").pipe(
      Flag.withDescription("JSON file of UNet architecture fields that override the default, e.g. {\"baseChannels\": 48}"),
      Flag.optional
    ),
    backend: Setup.backendFlag,
    ...Setup.runnersFlags("each step's gradient shards", "; replaces --workers")
  },
  Effect.fn(function*(flags) {
    const { architecture, backend, runners: _r, runnerCount: _c, connectTimeout: _t, jobTimeout: _j, ...rest } = flags
    const config = Option.isSome(architecture) ? yield* Pretrain.configWith(architecture.value) : defaultConfig
    const runners = yield* Setup.runnersOptions(flags)
    // --runners: the gradient shards go to the runners (a JobThreads transport in the context) instead of --workers' threads.
    const transport = runners === undefined ? Layer.empty : Setup.clusterTransport(config, runners).layer
    const result = yield* Pretrain.run({ ...rest, config }).pipe(
      Effect.provide(transport),
      Effect.provide(Setup.backend(backend))
    )
    yield* Console.log(
      `pretrained ${result.step} steps in ${result.wallMinutes.toFixed(1)} min; mean loss of the last 100 steps ${result.finalLoss.toFixed(4)}; model in ${flags.out}`
    )
  }, Effect.scoped)
).pipe(Command.withDescription("Pretrain the ShapeWorld-32 base generator (EMA weights, atomic checkpoints, --resume)."))

Main.run(command)
