import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Option, Schema } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as CheckpointDir from "../../src/io/CheckpointDir.ts"

const State = Schema.Struct({ step: Schema.Int })
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), "ckpt-"))
const save = (dir: string, step: number) =>
  CheckpointDir.save(dir, step, { "state.json": new TextEncoder().encode(JSON.stringify({ step })) }, 3)
const readStep = (ck: CheckpointDir.Reader) => Effect.map(ck.readState(State), (s) => s.step)

// The one restore path of sharpening, pretraining and the clip reward.
describe("CheckpointDir.resume", () => {
  it.effect("none without a checkpoint; else the newest good one, a damaged newer one set aside", () =>
    Effect.gen(function*() {
      const dir = tmp()
      assert.isTrue(Option.isNone(yield* CheckpointDir.resume(dir, readStep)))
      yield* save(dir, 1)
      yield* save(dir, 2)
      assert.strictEqual(Option.getOrThrow(yield* CheckpointDir.resume(dir, readStep)).value, 2)
      fs.writeFileSync(path.join(dir, "ckpt-0000002", "state.json"), "{ torn")
      const restored = Option.getOrThrow(yield* CheckpointDir.resume(dir, readStep))
      assert.strictEqual(restored.value, 1)
      assert.isTrue(fs.existsSync(path.join(dir, "ckpt-0000002.damaged")))
    }).pipe(Effect.provide(NodeServices.layer)))

  it.effect("an error that is not the checkpoint's own stops at once, renaming nothing", () =>
    Effect.gen(function*() {
      const dir = tmp()
      yield* save(dir, 1)
      yield* save(dir, 2)
      const exit = yield* Effect.exit(CheckpointDir.resume(dir, () => Effect.fail("another model")))
      assert.isTrue(Exit.isFailure(exit))
      assert.deepStrictEqual(fs.readdirSync(dir).filter((d) => d.startsWith("ckpt-")).sort(), ["ckpt-0000001", "ckpt-0000002"])
    }).pipe(Effect.provide(NodeServices.layer)))

  it.effect("every checkpoint damaged: the newest one's error", () =>
    Effect.gen(function*() {
      const dir = tmp()
      yield* save(dir, 1)
      fs.writeFileSync(path.join(dir, "ckpt-0000001", "state.json"), "[]")
      const exit = yield* Effect.exit(CheckpointDir.resume(dir, readStep))
      assert.isTrue(Exit.isFailure(exit))
    }).pipe(Effect.provide(NodeServices.layer)))
})
