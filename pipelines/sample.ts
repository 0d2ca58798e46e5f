/**
 * Generate one 32x32 PNG per prompt and judge them with the exact verifier.
 *
 *   npx tsx pipelines/sample.ts --model models/shapeworld-base \
 *     --prompts data/eval/prompts-seen.txt --out out/seen --grid out/seen.png
 *
 * Writes OUT/0000.png, 0001.png, ... (one per non-empty prompt line, in
 * order) and OUT/samples.json (options, prompts, verdicts) last, so a
 * directory without samples.json is an incomplete run.
 */
import { Console, Effect, FileSystem, Option, Path } from "effect"
import { Command, Flag } from "effect/cli"
import * as Inputs from "../src/io/Inputs.ts"
import * as Main from "../src/cli/Main.ts"
import * as Setup from "../src/cli/Setup.ts"
import * as Progress from "../src/io/Progress.ts"
import * as Png from "../src/data/Png.ts"
import * as Verifier from "../src/data/Verifier.ts"
import * as Generate from "../src/trajectory/Generate.ts"
import * as ParallelGenerate from "../src/parallel/ParallelGenerate.ts"
import * as AtomicFile from "../src/io/AtomicFile.ts"
import * as Denoiser from "../src/model/Denoiser.ts"

const command = Command.make(
  "sample",
  {
    model: Flag.String("model").pipe(Flag.withDescription("model directory (config.json + model.safetensors)")),
    prompts: Flag.String("prompts").pipe(Flag.withDescription("prompt file, one prompt per line")),
    out: Flag.String("out").pipe(Flag.withDescription("output directory for the PNGs")),
    seed: Flag.Int("seed").pipe(Flag.withDefault(0)),
    steps: Flag.Int("steps").pipe(Flag.withDescription("DDIM steps"), Flag.withDefault(50)),
    cfg: Flag.Finite("cfg").pipe(Flag.withDescription("classifier-free guidance scale (1 = off)"), Flag.withDefault(5)),
    eta: Flag.Finite("eta").pipe(Flag.withDescription("DDIM eta (0 = deterministic)"), Flag.withDefault(0)),
    batchSize: Flag.Int("batch-size").pipe(Flag.withDefault(16)),
    grid: Flag.String("grid").pipe(Flag.withDescription("also write a labelled contact sheet PNG"), Flag.optional),
    backend: Setup.backendFlag
  },
  Effect.fn(function*(f) {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const parsed = yield* Inputs.prompts(f.prompts)
    const { model } = yield* Denoiser.Denoiser
    yield* Inputs.writableDirectory(f.out)
    if (Option.isSome(f.grid)) yield* Inputs.writableDirectory(path.dirname(f.grid.value))
    const options = { steps: f.steps, cfg: f.cfg, eta: f.eta, seed: f.seed, batchSize: f.batchSize }
    const bar = Progress.make({ label: "sample", total: parsed.length })
    const images = yield* Effect.promise((signal) => ParallelGenerate.generate(model, parsed.map((p) => p.text), options, { onImages: (done) => bar.tick(done), signal }))
    bar.end()
    const verdicts = parsed.map((p, i) => ({ category: p.category, ...Verifier.verify(p, images[i]) }))
    for (let i = 0; i < images.length; i++) {
      yield* AtomicFile.writeFile(path.join(f.out, `${String(i).padStart(4, "0")}.png`), Png.encodePng(images[i]))
    }
    if (Option.isSome(f.grid)) {
      const labels = parsed.map((p, i) => `${verdicts[i].pass ? "ok" : "x"} ${p.text}`)
      yield* AtomicFile.writeFile(f.grid.value, Png.grid(images, labels, 8))
    }
    const summary = Verifier.summarize(verdicts)
    yield* AtomicFile.writeText(
      path.join(f.out, "samples.json"),
      JSON.stringify({
        model: f.model,
        options: { ...options, nfePerImage: Generate.nfePerImage(options) },
        summary,
        samples: parsed.map((p, i) => ({ index: i, prompt: p.text, category: p.category, pass: verdicts[i].pass, partial: verdicts[i].partial, reason: verdicts[i].reason }))
      }, null, 2) + "\n"
    )
    yield* fs.exists(f.out)
    yield* Console.log(`wrote ${images.length} images to ${f.out} (NFE per image ${Generate.nfePerImage(options)})`)
    yield* Console.log(Verifier.formatSummary(summary))
  }, (effect, f) =>
    effect.pipe(
      Effect.provide(Setup.denoiser(f.model, f.backend))
    ))
).pipe(Command.withDescription("Generate one PNG per prompt with DDIM + classifier-free guidance and judge them exactly."))

Main.run(command)
