/**
 * Does a denoiser use its prompt? Noise-prediction error with the prompt
 * and with the null prompt, per timestep, on fresh training renders.
 *
 *   npx tsx pipelines/conditioning.ts --model models/shapeworld-base
 */
import { Console, Effect } from "effect"
import { Command, Flag } from "effect/cli"
import * as Main from "../src/cli/Main.ts"
import * as Setup from "../src/cli/Setup.ts"
import * as Conditioning from "../src/eval/Conditioning.ts"
import * as Denoiser from "../src/model/Denoiser.ts"

const command = Command.make(
  "conditioning",
  {
    model: Setup.modelFlag(),
    batch: Flag.Int("batch").pipe(Flag.withDescription("renders per timestep"), Flag.withDefault(32)),
    seed: Flag.Int("seed").pipe(Flag.withDefault(5)),
    backend: Setup.backendFlag
  },
  Effect.fn(function*(f) {
    const table = yield* Effect.gen(function*() {
      const { model } = yield* Denoiser.Denoiser
      return Conditioning.markdown(yield* Conditioning.report(model, f.batch, f.seed))
    }).pipe(Effect.provide(Setup.denoiser(f.model, f.backend)), Effect.scoped)
    yield* Console.log(`${f.model}\n\n${table}`)
  })
).pipe(Command.withDescription("How much a denoiser uses its prompt: noise error with and without it, per timestep."))

Main.run(command)
