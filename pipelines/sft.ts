/**
 * SFT-Diffusion-Sharpening (the paper's Algorithm 1): image-text data; for
 * each batch, n paths from each data image noised to t, the reward of each
 * path, the best path per prompt, and a denoising update toward it.
 *
 * What runs by default (preset `image-level`, measured best on the 2-D lab:
 * docs/method.md): every path is continued to t = 0 and the denoising loss is
 * taken on the best path's own final image. `--preset paper` runs the
 * published Eq. 9 along the best path.
 *
 *   npx tsx pipelines/sft.ts                        # models/shapeworld-base, clip reward
 *   npx tsx pipelines/sft.ts --reward compositional --iterations 50 --out out/sft
 *   npx tsx pipelines/sft.ts --out out/sft --resume  # continue after Ctrl-C
 *   npx tsx pipelines/sft.ts --runners sqlite:runs/runners.db --runner-count 2    # jobs on runners (pipelines/runner.ts, docs/scaling.md)
 *   npx tsx pipelines/sft.ts --help
 */
import { Layer } from "effect"
import * as Main from "../src/cli/Main.ts"
import * as SharpenCli from "../src/cli/SharpenCli.ts"
import { Optimizer } from "../src/optim/Optimizer.ts"
import * as Sharpen from "../src/sharpen/Sharpen.ts"
import * as SharpenLayers from "../src/sharpen/SharpenLayers.ts"
import { BatchSource } from "../src/sharpen/Sources.ts"
import { PathSelector } from "../src/trajectory/PathSelector.ts"
import { TrajectoryGenerator } from "../src/trajectory/TrajectoryGenerator.ts"

Main.run(SharpenCli.command({
  algorithm: "sft",
  run: Sharpen.sft,
  // One layer per stage of an iteration; provide your own to swap one (docs/architecture.md).
  layers: (config, wiring) =>
    SharpenLayers.assemble(config, wiring, Layer.mergeAll(
      // n paths of m DDIM steps from each data image noised to t (continued to t = 0 by default)
      TrajectoryGenerator.layer(SharpenLayers.trajectoryOptions(config)),
      // the reward of each path (the --reward expression on the decoded images)
      SharpenLayers.scorer(config, wiring),
      // the best path of each prompt (and the worst, unused by SFT)
      PathSelector.bestWorst,
      // the denoising loss toward it
      SharpenLayers.sftObjective(config),
      // ShapeWorld image-text pairs of the generator's training split
      BatchSource.imageText(config.split),
      // AdamW on the summed gradient, clipped
      Optimizer.adamW(SharpenLayers.optimizerConfig(config))
    ))
}))
