/**
 * Evaluate the ShapeWorld-32 clip reward against the exact verifier:
 * retrieval with hard negatives on fresh renders, and agreement with the
 * verifier on degraded and mis-rendered images (see src/eval/ClipReport.ts).
 *
 *   npx tsx pipelines/clip-report.ts                       # models/shapeworld-clip
 *   npx tsx pipelines/clip-report.ts --model runs/x/model --out runs/x/report.json
 */
import { Console, Effect } from "effect"
import { Command, Flag } from "effect/cli"
import * as Main from "../src/cli/Main.ts"
import * as Setup from "../src/cli/Setup.ts"
import * as ClipReport from "../src/eval/ClipReport.ts"

const command = Command.make(
  "clip-report",
  {
    model: Setup.modelFlag("clip model directory", Setup.DEFAULT_CLIP_MODEL),
    out: Flag.String("out").pipe(Flag.withDescription("JSON report file"), Flag.withDefault("models/shapeworld-clip/report.json")),
    seed: Flag.Int("seed").pipe(Flag.withDescription("seed of the fresh renders (training draws from seed + 1 of its own seed)"), Flag.withDefault(20250214)),
    retrievalPerCategory: Flag.Int("retrieval-per-category").pipe(Flag.withDescription("rendered images per category for retrieval"), Flag.withDefault(400)),
    agreementPerCategory: Flag.Int("agreement-per-category").pipe(Flag.withDescription("prompts per category for verifier agreement"), Flag.withDefault(200)),
    backend: Setup.backendFlag
  },
  Effect.fn(function*(flags) {
    const { backend, ...rest } = flags
    const r = yield* ClipReport.run(rest).pipe(
      Effect.provide(Setup.backend(backend))
    )
    yield* Console.log(ClipReport.formatReport(r))
    yield* Console.log(`report written to ${flags.out} (${r.seconds.toFixed(0)} s)`)
  }, Effect.scoped)
).pipe(Command.withDescription("Measure the clip reward's retrieval accuracy and agreement with the exact verifier."))

Main.run(command)
