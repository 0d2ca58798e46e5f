/**
 * RLHF-Diffusion-Sharpening (paper Algorithm 2): prompts only, online samples,
 * reward-modulated Diffusion-DPO between the best and worst trajectories.
 *
 *   npx tsx pipelines/rlhf.ts                       # defaults: models/shapeworld-base, clip reward
 *   npx tsx pipelines/rlhf.ts --reward compositional-dense --iterations 50 --out out/rlhf-dense
 *   npx tsx pipelines/rlhf.ts --out out/rlhf --resume # continue after Ctrl-C
 *   npx tsx pipelines/rlhf.ts --help
 */
import * as Main from "../src/cli/Main.ts"
import * as SharpenCli from "../src/cli/SharpenCli.ts"

Main.run(SharpenCli.command("rlhf"))
