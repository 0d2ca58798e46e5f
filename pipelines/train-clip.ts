/**
 * Train the ShapeWorld-32 reward model ("clip": a small contrastive dual
 * encoder on the full distribution, with hard negatives).
 *
 *   npx tsx pipelines/train-clip.ts --max-minutes 20
 *   npx tsx pipelines/train-clip.ts --resume          # continue the last run
 *
 * Checkpoints go to --run-dir (atomic, every --checkpoint-every steps and on
 * Ctrl-C; the layout of a sharpening run's), with metrics.jsonl (one line per
 * step); the model directory (config.json, model.safetensors, loss.svg) is
 * written to --out when training ends.
 */
import { Console, Effect } from "effect"
import { Command, Flag } from "effect/cli"
import * as Main from "../src/cli/Main.ts"
import * as Setup from "../src/cli/Setup.ts"
import * as TrainClip from "../src/train/TrainClip.ts"
import { defaultConfig } from "../src/reward/ClipModel.ts"

const command = Command.make(
  "train-clip",
  {
    steps: Flag.Int("steps").pipe(Flag.withDescription("optimisation steps in total (sets the lr decay)"), Flag.withDefault(2000)),
    batchSize: Flag.Int("batch-size").pipe(Flag.withDescription("images per step"), Flag.withDefault(32)),
    negatives: Flag.Int("negatives").pipe(Flag.withDescription("hard-negative prompts per image"), Flag.withDefault(4)),
    pairedFraction: Flag.Finite("paired-fraction").pipe(
      Flag.withDescription("fraction of the batch rendered from hard negatives of other items (<= 0.5)"),
      Flag.withDefault(0.25)
    ),
    noiseStd: Flag.Finite("noise").pipe(Flag.withDescription("max std of pixel-noise augmentation ([-1, 1] units)"), Flag.withDefault(0.1)),
    lr: Flag.Finite("lr").pipe(Flag.withDescription("peak learning rate (AdamW, cosine decay to 10%)"), Flag.withDefault(2e-3)),
    warmupSteps: Flag.Int("warmup").pipe(Flag.withDescription("linear warm-up steps"), Flag.withDefault(100)),
    weightDecay: Flag.Finite("weight-decay").pipe(Flag.withDescription("decoupled weight decay on weight matrices"), Flag.withDefault(0.01)),
    seed: Flag.Int("seed").pipe(Flag.withDefault(0)),
    checkpointEvery: Flag.Int("checkpoint-every").pipe(Flag.withDefault(250)),
    maxMinutes: Flag.Finite("max-minutes").pipe(Flag.withDescription("stop after this many minutes (0 = no limit)"), Flag.withDefault(20)),
    runDir: Flag.String("run-dir").pipe(Flag.withDescription("checkpoint directory"), Flag.withDefault("runs/train-clip")),
    out: Flag.String("out").pipe(Flag.withDescription("model directory written at the end"), Flag.withDefault("models/shapeworld-clip")),
    resume: Flag.Boolean("resume").pipe(Flag.withDescription("continue from the latest checkpoint in --run-dir"), Flag.withDefault(false)),
    backend: Setup.backendFlag
  },
  Effect.fn(function*(flags) {
    const { backend, ...rest } = flags
    const result = yield* TrainClip.run({ ...rest, config: defaultConfig }).pipe(
      Effect.provide(Setup.backend(backend))
    )
    yield* Console.log(
      `trained ${result.step} steps in ${result.wallMinutes.toFixed(1)} min; mean loss of the last 100 steps ${result.finalLoss.toFixed(4)}, ` +
        `batch retrieval accuracy ${(100 * result.finalAccuracy).toFixed(1)}%; model in ${flags.out}`
    )
  }, Effect.scoped)
).pipe(Command.withDescription("Train the ShapeWorld-32 clip reward (contrastive, hard negatives, atomic checkpoints, --resume)."))

Main.run(command)
