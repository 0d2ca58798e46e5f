import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs-core"
import { beforeAll } from "vitest"
import * as Denoiser from "../../src/model/Denoiser.ts"
import { paramGrads } from "../../src/tensor/Grad.ts"
import { TokenizeError } from "../../src/model/Tokenizer.ts"
import { depthToSpace, forward, paramSpecs, spaceToDepth } from "../../src/model/UNet.ts"
import { defaultConfig } from "../../src/model/UNetConfig.ts"
import { tinyConfig, useCpu } from "../helpers.ts"

describe("UNet", () => {
  beforeAll(useCpu)

  it("predicts noise of the input's shape and is deterministic per seed", () => {
    const a = Denoiser.init(tinyConfig, 3)
    const b = Denoiser.init(tinyConfig, 3)
    const x = tf.randomNormal([2, 8, 8, 3], 0, 1, "float32", 1) as tf.Tensor4D
    const ya = Denoiser.eps(a, x, [10, 500], ["a red square", ""])
    const yb = Denoiser.eps(b, x, [10, 500], ["a red square", ""])
    assert.deepStrictEqual(ya.shape, [2, 8, 8, 3])
    assert.strictEqual(ya.dtype, "float32")
    assert.deepStrictEqual(Array.from(ya.dataSync()), Array.from(yb.dataSync()))
    tf.dispose([x, ya, yb])
    Denoiser.dispose(a)
    Denoiser.dispose(b)
  })

  it("uses every parameter: each gets a non-zero gradient", () => {
    const m = Denoiser.init(tinyConfig, 0)
    // The zero-initialised output conv blocks gradients to everything below
    // it at initialisation, so perturb all params first.
    tf.tidy(() => {
      for (const v of Object.values(m.params)) v.assign(tf.add(v, tf.randomNormal(v.shape, 0, 0.05, "float32", 7)))
    })
    const x = tf.randomNormal([2, 8, 8, 3], 0, 1, "float32", 2) as tf.Tensor4D
    const { value, grads } = paramGrads(() =>
      tf.sum(tf.square(forward(m.params, tinyConfig.architecture, Denoiser.encodeInputs(tinyConfig, x, [5, 900], ["a red square and a blue circle", "two green triangles"])))) as tf.Scalar,
      m.params
    )
    const specs = paramSpecs(tinyConfig.architecture, tinyConfig.vocabulary.length)
    assert.strictEqual(Object.keys(grads).length, specs.length)
    for (const s of specs) {
      const g = grads[s.name]
      assert.isDefined(g, s.name)
      assert.isAbove(tf.tidy(() => tf.max(tf.abs(g)).dataSync()[0]), 0, `zero gradient for ${s.name}`)
    }
    tf.dispose([x, value, ...Object.values(grads)])
    Denoiser.dispose(m)
  })

  it("reacts to the prompt (cross-attention is wired) and to the timestep", () => {
    const m = Denoiser.init(tinyConfig, 1)
    tf.tidy(() => {
      for (const v of Object.values(m.params)) v.assign(tf.add(v, tf.randomNormal(v.shape, 0, 0.05, "float32", 9)))
    })
    const x = tf.randomNormal([1, 8, 8, 3], 0, 1, "float32", 4) as tf.Tensor4D
    const diff = (a: tf.Tensor, b: tf.Tensor) => tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0])
    const red = Denoiser.eps(m, x, 100, ["a red square"])
    const blue = Denoiser.eps(m, x, 100, ["a blue square"])
    const later = Denoiser.eps(m, x, 800, ["a red square"])
    assert.isAbove(diff(red, blue), 1e-4)
    assert.isAbove(diff(red, later), 1e-4)
    tf.dispose([x, red, blue, later])
    Denoiser.dispose(m)
  })

  it("guided eps with scale 1 equals the conditional eps", () => {
    const m = Denoiser.init(tinyConfig, 2)
    const x = tf.randomNormal([2, 8, 8, 3], 0, 1, "float32", 5) as tf.Tensor4D
    const a = Denoiser.eps(m, x, 50, ["a red square", "a blue circle"])
    const b = Denoiser.guidedEps(m, x, 50, ["a red square", "a blue circle"], 1)
    assert.deepStrictEqual(Array.from(a.dataSync()), Array.from(b.dataSync()))
    tf.dispose([x, a, b])
    Denoiser.dispose(m)
  })

  it("rejects words outside the vocabulary with a typed error", () => {
    const m = Denoiser.init(tinyConfig, 0)
    const x = tf.zeros([1, 8, 8, 3]) as tf.Tensor4D
    assert.throws(() => Denoiser.eps(m, x, 1, ["a red hexagon"]), TokenizeError)
    tf.dispose(x)
    Denoiser.dispose(m)
  })

  it("default model: parameter count and FLOPs are what docs/performance.md reports", () => {
    const params = Denoiser.parameterCount(defaultConfig)
    assert.isAbove(params, 500_000)
    assert.isBelow(params, 5_000_000) // <= 20 MB as float32
    const flops = Denoiser.flopsPerForward(tinyConfig, 2)
    assert.isAbove(flops, 0)
  })

  it("patchSize 2 folds 2x2 pixel patches into channels, losslessly", () => {
    const x = tf.randomNormal([2, 8, 8, 3], 0, 1, "float32", 9) as tf.Tensor4D
    const folded = spaceToDepth(x, 2)
    assert.deepStrictEqual(folded.shape, [2, 4, 4, 12])
    // Position (1, 2) of the folded map holds pixels (2..3, 4..5), row by row.
    const f = folded.arraySync()[1][1][2]
    const px = x.arraySync()[1]
    assert.deepStrictEqual(f, [...px[2][4], ...px[2][5], ...px[3][4], ...px[3][5]])
    const back = depthToSpace(folded, 2)
    assert.deepStrictEqual(Array.from(back.dataSync()), Array.from(x.dataSync()))
    tf.dispose([x, folded, back])
  })

  it("a patched model runs its first level at imageSize / patchSize and predicts full-size noise", () => {
    const config = { ...tinyConfig, architecture: { ...tinyConfig.architecture, patchSize: 2, attentionResolutions: [2] } }
    const m = Denoiser.init(config, 1)
    const x = tf.randomNormal([2, 8, 8, 3], 0, 1, "float32", 4) as tf.Tensor4D
    const y = Denoiser.eps(m, x, [10, 500], ["a red square", ""])
    assert.deepStrictEqual(y.shape, [2, 8, 8, 3])
    const specs = paramSpecs(config.architecture, config.vocabulary.length)
    assert.deepStrictEqual(specs.find((s) => s.name === "in.w")?.shape, [3, 3, 12, 8])
    assert.deepStrictEqual(specs.find((s) => s.name === "out.w")?.shape, [3, 3, 8, 12])
    // Half the resolution at every level: a quarter of the conv FLOPs at equal channels.
    assert.isBelow(Denoiser.flopsPerForward(config, 2), Denoiser.flopsPerForward(tinyConfig, 2) / 2)
    tf.dispose([x, y])
    Denoiser.dispose(m)
  })
})
