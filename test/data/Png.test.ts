import { NodeFileSystem } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, FileSystem, Result } from "effect"
import { PNG } from "pngjs"
import { SIZE } from "../../src/data/Image.ts"
import { decodePng, encodePng, grid, PngError, readPng, writePngFile } from "../../src/data/Png.ts"
import { parseOrThrow } from "../../src/data/Prompt.ts"
import { render } from "../../src/data/Render.ts"
import { Rng } from "../../src/tensor/Random.ts"

const sampleImage = () => render(parseOrThrow("two red squares to the left of a blue circle"), Rng.fromSeed(1))

const decodeOk = (bytes: Uint8Array): Uint8Array => {
  const r = decodePng(bytes, "t.png")
  if (Result.isFailure(r)) assert.fail(r.failure.message)
  return r.success
}

const decodeErr = (bytes: Uint8Array, file = "bad.png"): PngError => {
  const r = decodePng(bytes, file)
  if (Result.isSuccess(r)) assert.fail("decoded")
  return r.failure
}

/** A PNG written by pngjs directly, of any size/colour type. */
const foreign = (width: number, height: number, colorType: 0 | 2 | 4 | 6, fill: (p: number) => [number, number, number, number]) => {
  const png = new PNG({ width, height })
  for (let p = 0; p < width * height; p++) png.data.set(fill(p), p * 4)
  return PNG.sync.write(png, { colorType })
}

describe("Png", () => {
  it("round-trips a render exactly as 32x32 8-bit RGB, non-interlaced", () => {
    const img = sampleImage()
    const bytes = encodePng(img)
    const meta = PNG.sync.read(bytes)
    assert.deepStrictEqual([meta.width, meta.height, meta.colorType, meta.depth, meta.interlace], [32, 32, 2, 8, false])
    assert.deepStrictEqual(decodeOk(bytes), img)
    // Floats in [0, 1] are quantised by rounding.
    assert.deepStrictEqual(decodeOk(encodePng(Float32Array.from(img, (v) => v / 255))), img)
  })

  it("decodes RGBA, compositing transparency over black", () => {
    const bytes = foreign(SIZE, SIZE, 6, (p) => (p === 0 ? [200, 100, 50, 128] : [10, 20, 30, 255]))
    const out = decodeOk(bytes)
    assert.deepStrictEqual([...out.slice(0, 6)], [100, 50, 25, 10, 20, 30])
  })

  it("errors name the file and the problem", () => {
    let e = decodeErr(new TextEncoder().encode("hello, not a png"), "x/hello.png")
    assert.strictEqual(e._tag, "PngError")
    assert.strictEqual(e.file, "x/hello.png")
    assert.match(e.message, /^x\/hello\.png: not a PNG/)
    e = decodeErr(foreign(64, 32, 2, () => [0, 0, 0, 255]))
    assert.match(e.message, /bad\.png: wrong size 64x32 \(expected 32x32\)/)
    e = decodeErr(foreign(SIZE, SIZE, 0, () => [9, 9, 9, 255]))
    assert.match(e.message, /greyscale/)
    const truncated = encodePng(sampleImage()).subarray(0, 60)
    assert.match(decodeErr(truncated).message, /corrupt PNG/)
  })

  it("grid makes a labelled, upscaled contact sheet", () => {
    const imgs = [sampleImage(), sampleImage(), sampleImage()]
    const sheet = PNG.sync.read(grid(imgs, ["two red squares to the left of a blue circle", "b", "c"], 2))
    // 2 columns of 96 px tiles with 2 px padding; labels wrap to 2 lines of 6 px.
    assert.strictEqual(sheet.width, 2 + 2 * (96 + 2))
    assert.strictEqual(sheet.height, 2 + 2 * (96 + 2 * 6 + 1 + 2))
    // The upscaled tile reproduces the image's pixels.
    const img = imgs[0]
    for (const [x, y] of [[0, 0], [10, 12], [31, 31], [20, 5]]) {
      const s = (y * SIZE + x) * 3
      const d = ((2 + y * 3 + 1) * sheet.width + 2 + x * 3 + 1) * 4
      assert.deepStrictEqual([...sheet.data.subarray(d, d + 3)], [...img.subarray(s, s + 3)])
    }
    // Label text has ink under the first tile.
    let ink = 0
    for (let y = 2 + 96; y < 2 + 96 + 13; y++) for (let x = 2; x < 98; x++) if (sheet.data[(y * sheet.width + x) * 4] > 200) ink++
    assert.isAbove(ink, 50)
    assert.throws(() => grid(imgs, ["a"], 2), RangeError)
  })

  it.effect("reads and writes files, with typed errors naming the path", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const dir = yield* fs.makeTempDirectoryScoped()
      const img = sampleImage()
      yield* writePngFile(`${dir}/a.png`, encodePng(img))
      assert.deepStrictEqual(yield* readPng(`${dir}/a.png`), img)
      const missing = yield* Effect.flip(readPng(`${dir}/missing.png`))
      assert.strictEqual(missing.file, `${dir}/missing.png`)
      assert.match(missing.message, /cannot read/)
      yield* fs.writeFileString(`${dir}/b.png`, "nope")
      const bad = yield* Effect.flip(readPng(`${dir}/b.png`))
      assert.strictEqual(bad._tag, "PngError")
      assert.match(bad.message, /b\.png: not a PNG/)
    }).pipe(Effect.scoped, Effect.provide(NodeFileSystem.layer)))
})
