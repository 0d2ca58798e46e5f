/**
 * Does a denoiser use its prompt? Noise-prediction error with the prompt
 * and with the null prompt, per timestep, on fresh training renders.
 *
 *   npx tsx pipelines/conditioning.ts --model models/shapeworld-base
 */
import { Console, Effect, Layer } from "effect"
import { Command, Flag } from "effect/cli"
import * as Main from "../src/cli/Main.ts"
import * as Conditioning from "../src/eval/Conditioning.ts"
import * as Denoiser from "../src/model/Denoiser.ts"
import { Backend, BackendName } from "../src/tensor/Backend.ts"

const command = Command.make(
  "conditioning",
  {
    model: Flag.String("model").pipe(Flag.withDescription("model directory"), Flag.withDefault("models/shapeworld-base")),
    batch: Flag.Int("batch").pipe(Flag.withDescription("renders per timestep"), Flag.withDefault(32)),
    seed: Flag.Int("seed").pipe(Flag.withDefault(5)),
    backend: Flag.Literals("backend", BackendName.literals).pipe(Flag.withDefault("auto" as const))
  },
  Effect.fn(function*(f) {
    const backend = Backend.fromFlag(f.backend)
    const table = yield* Effect.gen(function*() {
      const { model } = yield* Denoiser.Denoiser
      return Conditioning.markdown(yield* Conditioning.report(model, f.batch, f.seed))
    }).pipe(Effect.provide(Denoiser.Denoiser.fromDir(f.model, false).pipe(Layer.provideMerge(backend))), Effect.scoped)
    yield* Console.log(`${f.model}\n\n${table}`)
  })
).pipe(Command.withDescription("How much a denoiser uses its prompt: noise error with and without it, per timestep."))

Main.run(command)
