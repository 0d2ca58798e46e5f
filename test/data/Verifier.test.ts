import { assert, describe, it } from "@effect/vitest"
import { SIZE } from "../../src/data/Image.ts"
import { nearestColor, PALETTE } from "../../src/data/Palette.ts"
import { type Category, CATEGORIES, parseOrThrow, sample } from "../../src/data/Prompt.ts"
import { paint, type PlacedObject, renderScene } from "../../src/data/Render.ts"
import { shapeMask, templateMask } from "../../src/data/Shapes.ts"
import { detect, formatSummary, summarize, verify } from "../../src/data/Verifier.ts"
import { Rng } from "../../src/tensor/Random.ts"

/** 3 x 3 box blur (mean over in-canvas neighbours) mixed 50/50 with the original, in [0, 1]. */
const mildBlur = (img: Uint8Array): Float32Array => {
  // Separable box sums; the in-canvas neighbour count is the product of the
  // row and column counts (2 at an edge, 3 inside).
  const h = new Float32Array(img.length)
  for (let y = 0; y < SIZE; y++) {
    for (let x = 0; x < SIZE; x++) {
      for (let c = 0; c < 3; c++) {
        const i = (y * SIZE + x) * 3 + c
        h[i] = img[i] + (x > 0 ? img[i - 3] : 0) + (x < SIZE - 1 ? img[i + 3] : 0)
      }
    }
  }
  const out = new Float32Array(img.length)
  const row = SIZE * 3
  for (let y = 0; y < SIZE; y++) {
    const ny = y === 0 || y === SIZE - 1 ? 2 : 3
    for (let x = 0; x < SIZE; x++) {
      const n = ny * (x === 0 || x === SIZE - 1 ? 2 : 3)
      for (let c = 0; c < 3; c++) {
        const i = (y * SIZE + x) * 3 + c
        const s = h[i] + (y > 0 ? h[i - row] : 0) + (y < SIZE - 1 ? h[i + row] : 0)
        out[i] = (0.5 * img[i] + (0.5 * s) / n) / 255
      }
    }
  }
  return out
}

/** Additive Gaussian noise of the given sigma in [0, 1] units (clamped by the verifier). */
const noisy = (img: Uint8Array, rng: Rng, sigma: number): Float32Array => {
  const z = rng.normals(img.length, sigma)
  const out = new Float32Array(img.length)
  for (let i = 0; i < img.length; i++) out[i] = img[i] / 255 + z[i]
  return out
}

const N = 500

const rates = (seed: number, corrupt: (img: Uint8Array, rng: Rng) => Uint8Array | Float32Array, margin?: number) => {
  const rng = Rng.fromSeed(seed)
  const results: Array<{ category: Category; pass: boolean; partial: boolean }> = []
  const failures: Array<string> = []
  for (const c of CATEGORIES) {
    for (let k = 0; k < N; k++) {
      const p = sample(rng, c, "full")
      const v = verify(p, corrupt(renderScene(p, rng).image, rng), margin)
      results.push({ category: c, pass: v.pass, partial: v.partial })
      if (!v.pass && failures.length < 5) failures.push(`${p.text}: ${v.reason}`)
    }
  }
  return { summary: summarize(results), failures }
}

describe("Verifier on renders", () => {
  it("passes 100% of exact renders of 500 prompts per category (also at the render margin 4)", () => {
    for (const margin of [2, 4]) {
      const { summary, failures } = rates(1, (img) => img, margin)
      assert.deepStrictEqual(failures, [])
      for (const c of CATEGORIES) {
        assert.strictEqual(summary.perCategory[c]?.n, N)
        assert.strictEqual(summary.perCategory[c]?.accuracy, 1)
        assert.strictEqual(summary.perCategory[c]?.partial, 1)
      }
    }
  })

  it("passes 0% of blank (black) images, with no partial credit", () => {
    const blank = new Uint8Array(SIZE * SIZE * 3)
    const rng = Rng.fromSeed(2)
    for (const c of CATEGORIES) {
      for (let k = 0; k < 100; k++) {
        const v = verify(sample(rng, c, "full"), blank)
        assert.isFalse(v.pass)
        assert.isFalse(v.partial)
        assert.strictEqual(v.detected.objects.length, 0)
      }
    }
  })

  it("stays high on mildly blurred renders (3x3 box blur mixed 50/50)", () => {
    const { summary, failures } = rates(3, (img) => mildBlur(img))
    console.log(`mild blur:\n${formatSummary(summary)}`)
    // Measured: 100.0% in every category (blur halos stay below the ink threshold).
    for (const c of CATEGORIES) assert.isAtLeast(summary.perCategory[c]!.accuracy, 0.98, failures.join("\n"))
  })

  it("stays high on noisy renders (Gaussian sigma 0.05 in [0, 1] units)", () => {
    const { summary, failures } = rates(4, (img, rng) => noisy(img, rng, 0.05))
    console.log(`noise 0.05:\n${formatSummary(summary)}`)
    // Measured: 100.0% in every category (sigma 0.05 = 12.75 levels, far from every threshold).
    for (const c of CATEGORIES) assert.isAtLeast(summary.perCategory[c]!.accuracy, 0.98, failures.join("\n"))
  })

  it("stays high on blurred-and-noisy renders", () => {
    const { summary } = rates(5, (img, rng) => {
      const b = mildBlur(img)
      const z = rng.normals(b.length, 0.05)
      for (let i = 0; i < b.length; i++) b[i] += z[i]
      return b
    })
    console.log(`blur + noise:\n${formatSummary(summary)}`)
    assert.isAtLeast(summary.overall.accuracy, 0.98)
  })
})

const scene = (boxes: Array<Omit<PlacedObject, "cx" | "cy">>): Uint8Array =>
  paint(boxes.map((b) => ({ ...b, cx: 0, cy: 0 })))

describe("Verifier rules", () => {
  it("nearest palette colour and unknown-ink distance", () => {
    for (const [name, rgb] of Object.entries(PALETTE)) assert.deepStrictEqual(nearestColor(...rgb), { color: name as never, distance: 0 })
    assert.strictEqual(nearestColor(200, 30, 30).color, "red")
    assert.isAbove(nearestColor(120, 120, 0).distance, 100)
  })

  it("templates at w = h = s are exactly the rendered shapes", () => {
    for (const s of [8, 9, 10]) {
      for (const shape of ["square", "circle", "triangle"] as const) {
        assert.deepStrictEqual(templateMask(shape, s, s).data, shapeMask(shape, s).data)
      }
    }
    // The stretched ellipse and triangle follow the spec's formulas.
    const w = 12
    const h = 7
    const e = templateMask("circle", w, h)
    const t = templateMask("triangle", w, h)
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const inE = ((x + 0.5 - w / 2) / (w / 2)) ** 2 + ((y + 0.5 - h / 2) / (h / 2)) ** 2 <= 1
        const inT = Math.abs(x + 0.5 - w / 2) <= ((y + 1) / h) * (w / 2)
        assert.strictEqual(e.data[y * w + x] === 1, inE)
        assert.strictEqual(t.data[y * w + x] === 1, inT)
      }
    }
  })

  it("detects colour, shape, bbox and centroid", () => {
    const img = scene([
      { color: "green", shape: "triangle", x: 2, y: 3, size: 9 },
      { color: "white", shape: "circle", x: 20, y: 20, size: 10 }
    ])
    const d = detect(img)
    assert.strictEqual(d.objects.length, 2)
    const [t, c] = d.objects
    assert.deepStrictEqual([t.color, t.shape, c.color, c.shape], ["green", "triangle", "white", "circle"])
    assert.deepStrictEqual(t.bbox, { x: 2, y: 3, width: 9, height: 9 })
    assert.strictEqual(t.pixels, shapeMask("triangle", 9).count)
    assert.closeTo(t.centroid.x, 2 + 4.5, 1e-9)
    assert.closeTo(t.centroid.y, 3 + shapeMask("triangle", 9).cy, 1e-9)
    assert.strictEqual(t.iou.triangle, 1)
    assert.strictEqual(d.unknownInk, 0)
    // Float input in [0, 1] is judged like its bytes.
    assert.deepStrictEqual(detect(Float32Array.from(img, (v) => v / 255)), d)
  })

  it("fails wrong colours, missing and extra objects, without partial credit", () => {
    const p = parseOrThrow("a red square and a blue circle")
    const good = scene([
      { color: "red", shape: "square", x: 2, y: 2, size: 8 },
      { color: "blue", shape: "circle", x: 20, y: 20, size: 10 }
    ])
    assert.isTrue(verify(p, good).pass)
    const wrong = scene([
      { color: "red", shape: "square", x: 2, y: 2, size: 8 },
      { color: "blue", shape: "triangle", x: 20, y: 20, size: 10 }
    ])
    const v = verify(p, wrong)
    assert.isFalse(v.pass)
    assert.isFalse(v.partial)
    assert.match(v.reason, /missing 1 blue circle; extra 1 blue triangle/)
    const extra = scene([
      { color: "red", shape: "square", x: 2, y: 2, size: 8 },
      { color: "blue", shape: "circle", x: 20, y: 20, size: 10 },
      { color: "red", shape: "square", x: 20, y: 2, size: 8 }
    ])
    assert.isFalse(verify(p, extra).partial)
    assert.isFalse(verify(parseOrThrow("three red squares"), good).pass)
  })

  it("relation failures keep partial credit; margin 2 px for generated images", () => {
    const left = parseOrThrow("a red square to the left of a blue circle")
    const right = parseOrThrow("a red square to the right of a blue circle")
    const rng = Rng.fromSeed(6)
    const { image } = renderScene(left, rng)
    assert.isTrue(verify(left, image).pass)
    const v = verify(right, image)
    assert.isFalse(v.pass)
    assert.isTrue(v.partial)
    assert.match(v.reason, /not right of/)
    // Two touching 3 x 4 blocks (12 px each, aspect 0.75: squares) with
    // centroids 3 px apart along x: passes at the default margin 2, not at 4.
    const near = new Uint8Array(SIZE * SIZE * 3)
    for (let y = 10; y < 14; y++) {
      for (let x = 10; x < 13; x++) near.set(PALETTE.red, (y * SIZE + x) * 3)
      for (let x = 13; x < 16; x++) near.set(PALETTE.blue, (y * SIZE + x) * 3)
    }
    const p = parseOrThrow("a red square to the left of a blue square")
    const d = detect(near)
    assert.deepStrictEqual(d.objects.map((o) => o.shape), ["square", "square"])
    assert.strictEqual(d.objects[1].centroid.x - d.objects[0].centroid.x, 3)
    assert.isTrue(verify(p, near).pass)
    const strict = verify(p, near, 4)
    assert.isFalse(strict.pass)
    assert.isTrue(strict.partial)
  })

  it("complex prompts need both subjects in the relation", () => {
    const p = parseOrThrow("two red squares above a blue circle")
    const ok = scene([
      { color: "red", shape: "square", x: 4, y: 1, size: 8 },
      { color: "red", shape: "square", x: 16, y: 1, size: 8 },
      { color: "blue", shape: "circle", x: 10, y: 20, size: 9 }
    ])
    assert.isTrue(verify(p, ok).pass)
    const oneBeside = scene([
      { color: "red", shape: "square", x: 4, y: 1, size: 8 },
      { color: "red", shape: "square", x: 22, y: 20, size: 8 },
      { color: "blue", shape: "circle", x: 10, y: 20, size: 9 }
    ])
    const v = verify(p, oneBeside)
    assert.isFalse(v.pass)
    assert.isTrue(v.partial)
  })

  it("ignores components under 12 px and rejects odd shapes as unrecognised", () => {
    const p = parseOrThrow("a green square")
    const img = scene([{ color: "green", shape: "square", x: 2, y: 2, size: 8 }])
    // 11 stray red pixels in a row: noise.
    for (let x = 15; x < 26; x++) img.set(PALETTE.red, (25 * SIZE + x) * 3)
    let v = verify(p, img)
    assert.isTrue(v.pass)
    assert.strictEqual(v.detected.noise, 11)
    // A 12th pixel makes a 12 x 1 red bar: an object, but aspect 12 is unrecognised.
    img.set(PALETTE.red, (25 * SIZE + 26) * 3)
    v = verify(p, img)
    assert.isFalse(v.pass)
    assert.isFalse(v.partial)
    assert.strictEqual(v.detected.objects[1].shape, "unrecognised")
    // A hollow 9 x 9 ring has aspect 1 but IoU < 0.6 with every template.
    const ring = new Uint8Array(SIZE * SIZE * 3)
    for (let y = 5; y < 14; y++) for (let x = 5; x < 14; x++) if (y === 5 || y === 13 || x === 5 || x === 13) ring.set(PALETTE.blue, (y * SIZE + x) * 3)
    const r = detect(ring)
    assert.strictEqual(r.objects.length, 1)
    assert.strictEqual(r.objects[0].shape, "unrecognised")
  })

  it("counts unknown ink; a 12+ px unknown component is an unrecognised object", () => {
    const p = parseOrThrow("a white square")
    const img = scene([{ color: "white", shape: "square", x: 2, y: 2, size: 8 }])
    const olive: [number, number, number] = [130, 130, 0] // max >= 100, > 120 from every colour
    assert.isAbove(nearestColor(...olive).distance, 120)
    for (let x = 20; x < 25; x++) img.set(olive, (20 * SIZE + x) * 3)
    let v = verify(p, img)
    assert.isTrue(v.pass)
    assert.strictEqual(v.detected.unknownInk, 5)
    for (let y = 21; y < 24; y++) for (let x = 20; x < 25; x++) img.set(olive, (y * SIZE + x) * 3)
    v = verify(p, img)
    assert.isFalse(v.pass)
    assert.strictEqual(v.detected.unknownInk, 20)
    assert.deepStrictEqual([v.detected.objects[1].color, v.detected.objects[1].shape], ["unknown", "unrecognised"])
  })

  it("dim pixels are not ink", () => {
    const img = scene([{ color: "red", shape: "square", x: 2, y: 2, size: 8 }])
    const dim = Uint8Array.from(img, (v) => Math.floor(v * 0.43)) // red 230 -> 98 < 100
    assert.strictEqual(detect(dim).objects.length, 0)
  })

  it("summarize reports per category and pooled overall", () => {
    const rs: Array<{ category: Category; pass: boolean; partial: boolean }> = [
      { category: "color", pass: true, partial: true },
      { category: "color", pass: false, partial: false },
      { category: "spatial", pass: false, partial: true },
      { category: "spatial", pass: true, partial: true }
    ]
    const s = summarize(rs)
    assert.deepStrictEqual(s.perCategory.color, { n: 2, accuracy: 0.5, partial: 0.5 })
    assert.deepStrictEqual(s.perCategory.spatial, { n: 2, accuracy: 0.5, partial: 1 })
    assert.isUndefined(s.perCategory.binding)
    assert.deepStrictEqual(s.overall, { n: 4, accuracy: 0.5, partial: 0.75 })
    assert.match(formatSummary(s), /overall\s+4\s+50\.0%\s+75\.0%/)
  })
})
