import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { fromBytes, IMAGE_LENGTH } from "../../src/data/Image.ts"
import { parseOrThrow } from "../../src/data/Prompt.ts"
import { render } from "../../src/data/Render.ts"
import { Rng } from "../../src/tensor/Random.ts"
import * as Aesthetic from "../../src/reward/Aesthetic.ts"
import * as Registry from "../../src/reward/Registry.ts"
import { Reward } from "../../src/reward/Reward.ts"

const scoreWith = (layer: Layer.Layer<Reward, unknown, never>, images: ReadonlyArray<Float32Array>) =>
  Effect.gen(function*() {
    const reward = yield* Reward
    return { name: reward.metadata.name, scores: yield* reward.score(images, images.map(() => "a red circle")) }
  }).pipe(Effect.provide(layer))

describe("Registry.withGuard", () => {
  // A blank canvas (aesthetic 1/3) and an exact render (1).
  const images = [new Float32Array(IMAGE_LENGTH), fromBytes(render(parseOrThrow("a red circle"), Rng.fromSeed(1)), "unit")]

  it.effect("adds the guard expression to the reward; empty leaves the reward alone", () =>
    Effect.gen(function*() {
      const primary = Reward.constant(2)
      const aesthetic = yield* Effect.forEach(images, (im) => Effect.succeed(Aesthetic.aestheticParts(im).score))
      const plain = yield* scoreWith(Registry.withGuard("")(primary).pipe(Layer.provide(NodeServices.layer)), images)
      assert.deepStrictEqual(plain.scores, [2, 2])
      const guarded = yield* scoreWith(Registry.withGuard("0.5*aesthetic")(primary).pipe(Layer.provide(NodeServices.layer)), images)
      assert.match(guarded.name, /guard\(0\.5\*aesthetic\)/)
      for (let i = 0; i < images.length; i++) assert.closeTo(guarded.scores[i], 2 + 0.5 * aesthetic[i], 1e-9)
      assert.notStrictEqual(guarded.scores[0], guarded.scores[1])
    }))

  it.effect("an unknown reward in the guard is a typed error naming it", () =>
    Effect.gen(function*() {
      const error = yield* scoreWith(Registry.withGuard("beauty")(Reward.constant(1)).pipe(Layer.provide(NodeServices.layer)), images).pipe(Effect.flip)
      assert.strictEqual((error as { _tag: string })._tag, "RewardConfigError")
      assert.match(String((error as { message: string }).message), /beauty/)
    }))
})
