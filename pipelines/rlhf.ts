/**
 * RLHF-Diffusion-Sharpening (the paper's Algorithm 2): prompts only; for each
 * batch, online samples of the policy, n paths from each, the reward of each
 * path, the best and worst path per prompt, and a reward-modulated
 * Diffusion-DPO update against the frozen base model.
 *
 * What runs by default (preset `image-level`, measured best: docs/method.md,
 * docs/results.md): every path is continued to t = 0 and DPO compares the
 * best and worst paths' own final images; 26 iterations, lr 5e-5, DPO beta
 * 500, 4 optimiser steps per generated batch, DDIM-20 paths. `--preset paper`
 * runs the published Eq. 11 between noise draws of one image.
 *
 *   npx tsx pipelines/rlhf.ts                       # models/shapeworld-base, clip reward, about 10 minutes on 2 cores
 *   npx tsx pipelines/rlhf.ts --reward compositional-dense --iterations 50 --out out/rlhf-dense
 *   npx tsx pipelines/rlhf.ts --out out/rlhf --resume # continue after Ctrl-C
 *   npx tsx pipelines/rlhf.ts --runners sqlite:runs/runners.db --runner-count 2   # jobs on runners (pipelines/runner.ts, docs/scaling.md)
 *   npx tsx pipelines/rlhf.ts --help
 */
import { Layer } from "effect"
import * as Main from "../src/cli/Main.ts"
import * as SharpenCli from "../src/cli/SharpenCli.ts"
import { Optimizer } from "../src/optim/Optimizer.ts"
import * as Sharpen from "../src/sharpen/Sharpen.ts"
import * as SharpenLayers from "../src/sharpen/SharpenLayers.ts"
import { PathSelector } from "../src/trajectory/PathSelector.ts"
import { TrajectoryGenerator } from "../src/trajectory/TrajectoryGenerator.ts"

Main.run(SharpenCli.command({
  algorithm: "rlhf",
  run: Sharpen.rlhf,
  // One layer per stage of an iteration; provide your own to swap one (docs/architecture.md).
  layers: (config, wiring) =>
    SharpenLayers.assemble(config, wiring, Layer.mergeAll(
      // n paths of m DDIM steps from each online sample noised to t (continued to t = 0 by default)
      TrajectoryGenerator.layer(SharpenLayers.trajectoryOptions(config)),
      // the reward of each path (the --reward expression on the decoded images)
      SharpenLayers.scorer(config, wiring),
      // the best and the worst path of each prompt
      PathSelector.bestWorst,
      // Diffusion-DPO between them against the frozen base model
      SharpenLayers.rlhfObjective(config, wiring),
      // prompts and online samples of the current policy (DDIM, CFG)
      SharpenLayers.rlhfSource(config),
      // AdamW on the summed gradient, clipped
      Optimizer.adamW(SharpenLayers.optimizerConfig(config))
    ))
}))
