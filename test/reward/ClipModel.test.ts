import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import * as fsNode from "node:fs"
import * as os from "node:os"
import * as nodePath from "node:path"
import { beforeAll } from "vitest"
import * as Clip from "../../src/reward/ClipModel.ts"
import { TokenizeError } from "../../src/model/Tokenizer.ts"
import { paramGrads } from "../../src/tensor/Grad.ts"
import { tinyConfig, useCpu } from "../helpers.ts"
import * as Denoiser from "../../src/model/Denoiser.ts"
import { tinyClip } from "./helpers.ts"

const tmp = () => fsNode.mkdtempSync(nodePath.join(os.tmpdir(), "clip-"))
const loadError = (dir: string) => Clip.loadFiles(dir).pipe(Effect.flip, Effect.provide(NodeServices.layer))
const prompts = ["a red square", "two blue circles to the left of a green triangle", "four white triangles"]
const images = (n: number, seed = 1) => tf.randomUniform([n, 32, 32, 3], -1, 1, "float32", seed) as tf.Tensor4D

describe("ClipModel", () => {
  beforeAll(useCpu)

  it("embeds images and texts as unit vectors of the embedding size", () => {
    const m = Clip.init(tinyClip, 0)
    tf.tidy(() => {
      const ei = Clip.embedImages(m.params, tinyClip, images(3))
      const et = Clip.embedTexts(m.params, tinyClip, prompts)
      assert.deepStrictEqual(ei.shape, [3, tinyClip.embedDim])
      assert.deepStrictEqual(et.shape, [3, tinyClip.embedDim])
      for (const e of [ei, et]) {
        for (const n of tf.norm(e, 2, 1).dataSync()) assert.approximately(n, 1, 1e-5)
      }
    })
    Clip.dispose(m)
  })

  it("text embeddings do not depend on the other prompts of the batch (padding is exact)", () => {
    const m = Clip.init(tinyClip, 1)
    tf.tidy(() => {
      const alone = Clip.embedTexts(m.params, tinyClip, ["a red square"]).dataSync()
      const batched = Clip.embedTexts(m.params, tinyClip, prompts).dataSync().slice(0, tinyClip.embedDim)
      Array.from(alone).forEach((v, i) => assert.approximately(v, batched[i], 1e-5))
    })
    assert.throws(() => tf.tidy(() => Clip.embedTexts(m.params, tinyClip, ["a red hexagon"])), TokenizeError)
    Clip.dispose(m)
  })

  it.effect("score is CLIPScore 2.5 * max(cos, 0) in [0, 2.5]; [0, 1] input goes through toSigned", () =>
    Effect.gen(function*() {
      const m = Clip.init(tinyClip, 2)
      const x = images(3, 5)
      const s = Clip.score(m, x, prompts)
      const cos = tf.tidy(() => Clip.cosine(m.params, tinyClip, x, prompts))
      const sv = s.dataSync()
      cos.dataSync().forEach((c, i) => assert.approximately(sv[i], 2.5 * Math.max(c, 0), 1e-5))
      for (const v of sv) assert.isTrue(v >= 0 && v <= 2.5)
      const unit = tf.tidy(() => tf.div(tf.add(x, 1), 2)) as tf.Tensor4D
      const su = Clip.score(m, unit, prompts, "unit").dataSync()
      su.forEach((v, i) => assert.approximately(v, sv[i], 1e-5))
      const arr = yield* Clip.scoreArray(m, x.dataSync() as Float32Array, prompts, "signed", 2)
      arr.forEach((v, i) => assert.approximately(v, sv[i], 1e-5))
      // An image whose embedding equals the prompt's scores the maximum: check the bound by construction.
      const top = tf.tidy(() => Clip.clipScore(tf.tensor2d([[1, 0]]), tf.tensor2d([[1, 0]])).dataSync()[0])
      assert.approximately(top, 2.5, 1e-6)
      tf.dispose([x, s, cos, unit])
      Clip.dispose(m)
    }))

  it("logit scale starts at 1/0.07 and is clamped at 100", () => {
    const m = Clip.init(tinyClip, 0)
    assert.approximately(tf.tidy(() => Clip.logitScale(m.params).dataSync()[0]), 1 / 0.07, 1e-3)
    m.params["logit_scale"].assign(tf.scalar(10))
    assert.approximately(tf.tidy(() => Clip.logitScale(m.params).dataSync()[0]), 100, 1e-3)
    Clip.dispose(m)
  })

  it("every parameter gets a gradient", () => {
    const m = Clip.init(tinyClip, 3)
    const x = images(2, 9)
    const { value, grads } = paramGrads(() =>
      tf.tidy(() => tf.mul(tf.sum(Clip.cosine(m.params, tinyClip, x, prompts.slice(0, 2))), Clip.logitScale(m.params)) as tf.Scalar), m.params)
    for (const s of Clip.paramSpecs(tinyClip)) {
      const g = grads[s.name]
      assert.isDefined(g, s.name)
      assert.isTrue(tf.tidy(() => tf.sum(tf.abs(g)).dataSync()[0]) > 0, `zero gradient for ${s.name}`)
    }
    tf.dispose([value, x, ...Object.values(grads)])
    Clip.dispose(m)
  })

  it.effect("save then load gives back the same config, weights and scores", () =>
    Effect.gen(function*() {
      const dir = tmp()
      const m = Clip.init(tinyClip, 4)
      yield* Clip.save(dir, m, { note: "test" })
      assert.deepStrictEqual(fsNode.readdirSync(dir).sort(), ["config.json", "model.safetensors"])
      const files = yield* Clip.loadFiles(dir)
      assert.deepStrictEqual(files.config, tinyClip)
      assert.strictEqual(files.metadata.note, "test")
      const back = yield* Clip.load(dir)
      for (const [k, v] of Object.entries(m.params)) {
        assert.deepStrictEqual(Array.from(back.params[k].dataSync()), Array.from(v.dataSync()), k)
        assert.isFalse(back.params[k].trainable)
      }
      const x = images(3)
      const a = Clip.score(m, x, prompts)
      const b = yield* Effect.map(Clip.Clip, ({ model }) => Clip.score(model, x, prompts)).pipe(
        Effect.provide(Clip.Clip.fromDir(dir))
      )
      assert.deepStrictEqual(Array.from(a.dataSync()), Array.from(b.dataSync()))
      tf.dispose([x, a, b])
      Clip.dispose(m)
      Clip.dispose(back)
    }).pipe(Effect.provide(NodeServices.layer)))

  it.effect("a missing directory names the path", () =>
    Effect.gen(function*() {
      const e = yield* loadError("/nonexistent/clip")
      assert.strictEqual(e._tag, "ModelLoadError")
      assert.strictEqual(e.file, "/nonexistent/clip")
      assert.match(e.message, /does not exist/)
    }))

  it.effect("a denoiser directory is refused by its format", () =>
    Effect.gen(function*() {
      const dir = tmp()
      const d = Denoiser.init(tinyConfig, 0)
      yield* Denoiser.save(dir, d).pipe(Effect.provide(NodeServices.layer))
      Denoiser.dispose(d)
      const e = yield* loadError(dir)
      assert.strictEqual(e.file, nodePath.join(dir, "config.json"))
      assert.match(e.message, /unet@1.*not a clip reward model/)
    }))

  it.effect("a config that does not match the weights names the tensor and both shapes", () =>
    Effect.gen(function*() {
      const dir = tmp()
      const m = Clip.init(tinyClip, 0)
      yield* Clip.save(dir, m).pipe(Effect.provide(NodeServices.layer))
      Clip.dispose(m)
      const configFile = nodePath.join(dir, "config.json")
      fsNode.writeFileSync(configFile, JSON.stringify({ ...tinyClip, embedDim: 24 }))
      const e = yield* loadError(dir)
      assert.strictEqual(e.file, nodePath.join(dir, "model.safetensors"))
      assert.strictEqual(e.tensor, "img.proj.w")
      assert.match(e.message, /\[16, 16\].*\[16, 24\]/)
      fsNode.writeFileSync(configFile, JSON.stringify({ ...tinyClip, imageHidden: -1 }))
      const bad = yield* loadError(dir)
      assert.strictEqual(bad.file, configFile)
      assert.match(bad.message, /imageHidden/)
      fsNode.writeFileSync(configFile, "{ not json")
      assert.match((yield* loadError(dir)).message, /not valid JSON/)
    }))

  it.effect("a truncated weights file names the file and the tensor", () =>
    Effect.gen(function*() {
      const dir = tmp()
      const m = Clip.init(tinyClip, 0)
      yield* Clip.save(dir, m).pipe(Effect.provide(NodeServices.layer))
      Clip.dispose(m)
      const file = nodePath.join(dir, "model.safetensors")
      const bytes = fsNode.readFileSync(file)
      fsNode.writeFileSync(file, bytes.subarray(0, bytes.length - 100))
      const e = yield* loadError(dir)
      assert.strictEqual(e.file, file)
      assert.isDefined(e.tensor)
      assert.match(e.message, /truncated/)
    }))
})
