/**
 * SFT-Diffusion-Sharpening (paper Algorithm 1): ShapeWorld image-text pairs,
 * epsilon loss along the best-rewarded trajectory.
 *
 *   npx tsx pipelines/sft.ts                       # defaults: models/shapeworld-base, clip reward
 *   npx tsx pipelines/sft.ts --reward compositional-dense --iterations 50 --out out/sft-dense
 *   npx tsx pipelines/sft.ts --out out/sft --resume # continue after Ctrl-C
 *   npx tsx pipelines/sft.ts --help
 */
import * as Main from "../src/cli/Main.ts"
import * as SharpenCli from "../src/cli/SharpenCli.ts"

Main.run(SharpenCli.command("sft"))
