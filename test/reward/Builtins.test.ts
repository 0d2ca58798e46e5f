import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Layer } from "effect"
import { FetchHttpClient } from "effect/http"
import jpeg from "jpeg-js"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { beforeAll } from "vitest"
import { fromBytes, IMAGE_LENGTH, toBytes } from "../../src/data/Image.ts"
import { CATEGORIES, parseOrThrow, sample } from "../../src/data/Prompt.ts"
import { render } from "../../src/data/Render.ts"
import { verify } from "../../src/data/Verifier.ts"
import * as Aesthetic from "../../src/reward/Aesthetic.ts"
import * as Clip from "../../src/reward/Clip.ts"
import * as ClipModel from "../../src/reward/ClipModel.ts"
import * as Compositional from "../../src/reward/Compositional.ts"
import * as Compressibility from "../../src/reward/Compressibility.ts"
import * as Registry from "../../src/reward/Registry.ts"
import { Backend } from "../../src/tensor/Backend.ts"
import { Rng } from "../../src/tensor/Random.ts"
import { useCpu } from "../helpers.ts"
import { tinyClip } from "./helpers.ts"

const blank = () => new Float32Array(IMAGE_LENGTH)
const renderUnit = (text: string, seed: number) => fromBytes(render(parseOrThrow(text), Rng.fromSeed(seed)), "unit")

describe("compositional rewards", () => {
  const rng = Rng.fromSeed(7)
  const prompts = CATEGORIES.flatMap((c) => Array.from({ length: 6 }, () => sample(rng, c, "full")))
  const renders = prompts.map((p) => fromBytes(render(p, rng), "unit"))

  it.effect("exact renders score 1 (both variants); blanks score 0", () =>
    Effect.gen(function*() {
      const exact = Compositional.make("exact")
      const dense = Compositional.make("dense")
      const texts = prompts.map((p) => p.text)
      assert.deepStrictEqual(yield* exact.score(renders, texts), texts.map(() => 1))
      assert.deepStrictEqual(yield* dense.score(renders, texts), texts.map(() => 1))
      const blanks = texts.map(blank)
      assert.deepStrictEqual(yield* exact.score(blanks, texts), texts.map(() => 0))
      assert.deepStrictEqual(yield* dense.score(blanks, texts), texts.map(() => 0))
    }))

  it.effect("agrees with the verifier on mismatched (prompt, render) pairs; dense is 1 exactly when it passes", () =>
    Effect.gen(function*() {
      const exact = Compositional.make("exact")
      const dense = Compositional.make("dense")
      // Pair every prompt with the render of the next prompt (mostly wrong, sometimes right).
      const shifted = renders.map((_, i) => renders[(i + 1) % renders.length])
      const texts = prompts.map((p) => p.text)
      const e = yield* exact.score(shifted, texts)
      const d = yield* dense.score(shifted, texts)
      prompts.forEach((p, i) => {
        const pass = verify(p, shifted[i]).pass
        assert.strictEqual(e[i], pass ? 1 : 0, p.text)
        assert.strictEqual(d[i] === 1, pass, p.text)
        assert.isTrue(d[i] >= 0 && d[i] <= 1)
      })
    }))

  it("dense partial credit: colour-only, missing objects, wrong relation, extra objects", () => {
    const score = (prompt: string, renderOf: string) => Compositional.denseScore(parseOrThrow(prompt), renderUnit(renderOf, 3))
    assert.strictEqual(score("a red square", "a red circle").score, 0.5)
    assert.strictEqual(score("a red square", "a blue circle").score, 0)
    assert.strictEqual(score("three blue circles", "two blue circles").score, 2 / 3)
    assert.strictEqual(score("two blue circles", "three blue circles").score, 2 / 3)
    const rel = score("a red square to the left of a blue circle", "a red square to the right of a blue circle")
    assert.deepStrictEqual(rel, { score: 0.5, objects: 1, relation: 0 })
    const noRef = score("a red square to the left of a blue circle", "a red square")
    assert.deepStrictEqual(noRef, { score: 0.25, objects: 0.5, relation: 0 })
  })

  it.effect("a prompt outside the grammar is a RewardInputError naming its index", () =>
    Effect.gen(function*() {
      const e = yield* Effect.flip(Compositional.make("dense").score([blank(), blank()], ["a red square", "a cat"]))
      assert.strictEqual(e._tag, "RewardInputError")
      assert.strictEqual((e as { index?: number }).index, 1)
    }))
})

describe("compressibility", () => {
  it.effect("is DDPO's JPEG size in kB at quality 95, negated for compressibility", () =>
    Effect.gen(function*() {
      const rng = Rng.fromSeed(1)
      const noise = new Float32Array(IMAGE_LENGTH).map(() => rng.uniform())
      const images = [blank(), renderUnit("two green triangles", 2), noise]
      const sizes = images.map((img) => {
        const rgb = toBytes(img)
        const rgba = Buffer.alloc(32 * 32 * 4, 255)
        for (let p = 0; p < 1024; p++) rgba.set(rgb.subarray(p * 3, p * 3 + 3), p * 4)
        return jpeg.encode({ data: rgba, width: 32, height: 32 }, 95).data.length / 1000
      })
      const inc = yield* Compressibility.make("incompressibility").score(images, ["", "", ""])
      const com = yield* Compressibility.make("compressibility").score(images, ["", "", ""])
      assert.deepStrictEqual(inc, sizes)
      assert.deepStrictEqual(com, sizes.map((s) => -s))
      assert.isTrue(inc[0] < inc[1] && inc[1] < inc[2])
      assert.deepStrictEqual(Compressibility.metadata.compressibility.range, [-Infinity, 0])
    }))
})

describe("aesthetic proxy", () => {
  it("renders score 1, a blank canvas 1/3; noise, haze and blur lower it", () => {
    const rng = Rng.fromSeed(5)
    for (const c of CATEGORIES) {
      const p = sample(rng, c, "full")
      assert.strictEqual(Aesthetic.aestheticParts(fromBytes(render(p, rng), "unit")).score, 1, p.text)
    }
    assert.strictEqual(Aesthetic.aestheticParts(blank()).score, 1 / 3)
    const clean = renderUnit("a red square and a blue circle", 4)
    const noisy = clean.map((v) => Math.min(1, Math.max(0, v + (rng.uniform() - 0.5) * 0.6)))
    // Haze: grey 0.25 where the background was black (ink untouched).
    const hazy = clean.map((v, k) => {
      const p = k - (k % 3)
      return clean[p] + clean[p + 1] + clean[p + 2] === 0 ? 0.25 : v
    })
    // Blur: average each pixel with its right neighbour.
    const blurred = clean.map((v, k) => (k % 96 < 93 ? (v + clean[k + 3]) / 2 : v))
    const parts = [noisy, hazy, blurred].map(Aesthetic.aestheticParts)
    for (const q of parts) assert.isBelow(q.score, 1)
    assert.isBelow(parts[1].background, 0.5)
    assert.strictEqual(parts[1].palette, 1)
    assert.isBelow(parts[2].palette, 1)
  })
})

describe("clip reward (wraps ClipModel)", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "clip-reward-"))
  let model: ClipModel.Model
  beforeAll(async () => {
    await useCpu()
    model = ClipModel.init(tinyClip, 3, false)
    await Effect.runPromise(ClipModel.save(dir, model).pipe(Effect.provide(NodeServices.layer)))
  })

  it.effect("loads the model directory and scores [0, 1] images like ClipModel.scoreArray", () =>
    Effect.gen(function*() {
      const reward = yield* Clip.make({ modelDir: dir })
      const images = [renderUnit("a red square", 1), renderUnit("two blue circles", 2), blank()]
      const prompts = ["a red square", "a red square", "four white triangles"]
      const r = yield* reward.score(images, prompts)
      const flat = new Float32Array(3 * IMAGE_LENGTH)
      images.forEach((img, i) => flat.set(img, i * IMAGE_LENGTH))
      const expected = yield* ClipModel.scoreArray(model, flat, prompts, "unit")
      r.forEach((v, i) => {
        assert.approximately(v, expected[i], 1e-5)
        assert.isTrue(v >= 0 && v <= 2.5)
      })
      assert.deepStrictEqual(reward.metadata, { name: "clip", range: [0, 2.5], differentiable: true, relativeCost: 5 })
      // The tensor form agrees and is what a differentiable pipeline would use.
      const t = tf.tensor4d(flat, [3, 32, 32, 3])
      const s = reward.scoreTensor!(t, prompts)
      Array.from(s.dataSync()).forEach((v, i) => assert.approximately(v, r[i], 1e-5))
      tf.dispose([t, s])
      const e = yield* Effect.flip(reward.score([blank(), blank()], ["a red square", "a purple cat"]))
      assert.strictEqual(e._tag, "RewardInputError")
      assert.strictEqual((e as { index?: number }).index, 1)
    }).pipe(Effect.scoped, Effect.provide(Layer.merge(NodeServices.layer, Backend.layerCpu))))

  it.effect("a missing model directory fails with ModelLoadError naming the path", () =>
    Effect.gen(function*() {
      const e = yield* Effect.flip(Clip.make({ modelDir: path.join(dir, "nope") }))
      assert.strictEqual(e._tag, "ModelLoadError")
      assert.include((e as { file: string }).file, "nope")
    }).pipe(Effect.scoped, Effect.provide(Layer.merge(NodeServices.layer, Backend.layerCpu))))
})

describe("registry", () => {
  it.effect("builds every local reward by name, and weighted expressions", () =>
    Effect.gen(function*() {
      const images = [renderUnit("a red square", 1), blank()]
      const prompts = ["a red square", "a red square"]
      const expected: Record<string, [number, number]> = {
        compositional: [1, 0],
        "compositional-dense": [1, 0],
        aesthetic: [1, 1 / 3]
      }
      for (const [name, want] of Object.entries(expected)) {
        const r = yield* Registry.make({ reward: name })
        assert.strictEqual(r.metadata.name, name)
        assert.deepStrictEqual(yield* r.score(images, prompts), want)
      }
      for (const name of ["compressibility", "incompressibility"]) {
        const r = yield* Registry.make({ reward: name })
        const [a, b] = yield* r.score(images, prompts)
        assert.isTrue(name === "compressibility" ? a < b : a > b)
      }
      const mix = yield* Registry.make({ reward: "0.5*compositional + 0.5*aesthetic" })
      assert.strictEqual(mix.metadata.name, "0.5*compositional+0.5*aesthetic")
      assert.deepStrictEqual(yield* mix.score(images, prompts), [1, 1 / 6])
      const clip = yield* Registry.make({ reward: "clip", modelDir: path.join(os.tmpdir(), "definitely-missing-clip") }).pipe(Effect.flip)
      assert.strictEqual(clip._tag, "ModelLoadError")
    }).pipe(Effect.scoped, Effect.provide(Layer.mergeAll(NodeServices.layer, FetchHttpClient.layer, Backend.layerCpu))))
})
