/**
 * The ShapeWorld-32 verifier: finds the objects in an image and decides
 * whether the image satisfies its prompt, exactly by the spec's rules.
 *
 * 1. Ink: max(R, G, B) >= 100; it takes the nearest palette colour; ink
 *    farther than 120 from every palette colour is "unknown ink".
 * 2. Objects: 4-connected components of same-colour ink with >= 12 pixels;
 *    smaller components are noise and ignored.
 * 3. Shape: IoU of the component (its own pixels only) with each shape's
 *    template stretched to its bounding box; the best wins (ties go to the
 *    earlier of square, circle, triangle). Aspect ratio w/h outside
 *    [0.6, 1.6] or best IoU < 0.6 makes the object "unrecognised".
 * 4. Pass: the multiset of (colour, shape) equals the prompt's, with no
 *    unrecognised object, and every subject stands in the relation to the
 *    reference by centroids with margin 2 px.
 *
 * Choice (the spec leaves it open): unknown ink is labelled as a seventh
 * colour, "unknown", and grouped into 4-connected components like any other
 * colour. A component of >= 12 unknown-ink pixels is an unrecognised object
 * (so it fails the prompt: "no unrecognised objects"); smaller ones are noise,
 * like small components of palette ink. The total number of unknown-ink
 * pixels is reported for diagnostics but does not by itself fail a prompt.
 *
 * Partial credit: the object multiset matches (right colours, shapes and
 * counts, no unrecognised object), relations ignored. So pass ⇒ partial.
 *
 * Float images are taken as [0, 1] and quantised to bytes first (see Image.ts).
 *
 * @since 0.1.0
 */
import { asBytes, CHANNELS, SIZE } from "./Image.ts"
import { type Color, COLORS, INK_THRESHOLD, nearestColor, UNKNOWN_INK_DISTANCE } from "./Palette.ts"
import { CATEGORIES, type Category, objectKey, type ParsedPrompt } from "./Prompt.ts"
import { type Point, relationHolds, VERIFY_MARGIN } from "./Relations.ts"
import { type Shape, SHAPES, templateMask } from "./Shapes.ts"

/** Components smaller than this are noise (rule 2). */
export const MIN_OBJECT_PIXELS = 12
/** Allowed aspect ratio w/h of a recognisable object (rule 3). */
export const ASPECT_RANGE = [0.6, 1.6] as const
/** Minimum template IoU of a recognisable object (rule 3). */
export const MIN_IOU = 0.6

/** The colour of a detected object; "unknown" for unknown ink. */
export type DetectedColor = Color | "unknown"
/** The shape of a detected object, or "unrecognised" (rule 3). */
export type DetectedShape = Shape | "unrecognised"

/**
 * One connected component of >= 12 pixels of one ink colour.
 *
 * @since 0.1.0
 */
export interface DetectedObject {
  readonly color: DetectedColor
  readonly shape: DetectedShape
  /** Mean of the pixel centres (k + 0.5), canvas coordinates. */
  readonly centroid: Point
  /** Bounding box: top-left pixel and size. */
  readonly bbox: { readonly x: number; readonly y: number; readonly width: number; readonly height: number }
  readonly pixels: number
  /** IoU with each template (all 0 for unknown ink). */
  readonly iou: { readonly [S in Shape]: number }
}

/**
 * Everything found in an image.
 *
 * @since 0.1.0
 */
export interface Detection {
  readonly objects: ReadonlyArray<DetectedObject>
  /** Pixels of unknown ink, in components of any size. */
  readonly unknownInk: number
  /** Ink pixels in components too small to be objects (any colour). */
  readonly noise: number
}

const UNKNOWN = COLORS.length // label of unknown ink; -1 is background

/** Per-pixel label: -1 background, 0..5 palette index, 6 unknown ink. */
const labelPixels = (bytes: Uint8Array): Int8Array => {
  const labels = new Int8Array(SIZE * SIZE)
  for (let p = 0; p < SIZE * SIZE; p++) {
    const r = bytes[p * CHANNELS]
    const g = bytes[p * CHANNELS + 1]
    const b = bytes[p * CHANNELS + 2]
    if (Math.max(r, g, b) < INK_THRESHOLD) {
      labels[p] = -1
      continue
    }
    const near = nearestColor(r, g, b)
    labels[p] = near.distance > UNKNOWN_INK_DISTANCE ? UNKNOWN : COLORS.indexOf(near.color)
  }
  return labels
}

const classify = (
  pixels: ReadonlyArray<number>,
  x0: number,
  y0: number,
  w: number,
  h: number
): { shape: DetectedShape; iou: { [S in Shape]: number } } => {
  const inBox = new Uint8Array(w * h)
  for (const p of pixels) inBox[(((p / SIZE) | 0) - y0) * w + ((p % SIZE) - x0)] = 1
  const iou = { square: 0, circle: 0, triangle: 0 }
  let best: Shape = SHAPES[0]
  for (const s of SHAPES) {
    const t = templateMask(s, w, h)
    let inter = 0
    for (let k = 0; k < w * h; k++) inter += inBox[k] & t.data[k]
    iou[s] = inter / (pixels.length + t.count - inter)
    if (iou[s] > iou[best]) best = s
  }
  const aspect = w / h
  const ok = aspect >= ASPECT_RANGE[0] && aspect <= ASPECT_RANGE[1] && iou[best] >= MIN_IOU
  return { shape: ok ? best : "unrecognised", iou }
}

/**
 * Finds the objects of an image (bytes, or floats in [0, 1]), in raster order
 * of each component's first pixel.
 *
 * @since 0.1.0
 */
export const detect = (image: Uint8Array | Float32Array): Detection => {
  if (image.length !== SIZE * SIZE * CHANNELS) {
    throw new RangeError(`expected a ${SIZE}x${SIZE}x${CHANNELS} image (${SIZE * SIZE * CHANNELS} values), got ${image.length}`)
  }
  const labels = labelPixels(asBytes(image))
  const seen = new Uint8Array(SIZE * SIZE)
  const objects: Array<DetectedObject> = []
  let unknownInk = 0
  let noise = 0
  const stack: Array<number> = []
  for (let start = 0; start < SIZE * SIZE; start++) {
    const label = labels[start]
    if (label < 0 || seen[start]) continue
    // Flood fill one 4-connected component of this label.
    const pixels: Array<number> = []
    seen[start] = 1
    stack.push(start)
    while (stack.length > 0) {
      const p = stack.pop()!
      pixels.push(p)
      const x = p % SIZE
      const y = (p / SIZE) | 0
      if (x > 0 && !seen[p - 1] && labels[p - 1] === label) (seen[p - 1] = 1), stack.push(p - 1)
      if (x < SIZE - 1 && !seen[p + 1] && labels[p + 1] === label) (seen[p + 1] = 1), stack.push(p + 1)
      if (y > 0 && !seen[p - SIZE] && labels[p - SIZE] === label) (seen[p - SIZE] = 1), stack.push(p - SIZE)
      if (y < SIZE - 1 && !seen[p + SIZE] && labels[p + SIZE] === label) (seen[p + SIZE] = 1), stack.push(p + SIZE)
    }
    if (label === UNKNOWN) unknownInk += pixels.length
    if (pixels.length < MIN_OBJECT_PIXELS) {
      noise += pixels.length
      continue
    }
    let x0 = SIZE, y0 = SIZE, x1 = -1, y1 = -1, sx = 0, sy = 0
    for (const p of pixels) {
      const x = p % SIZE
      const y = (p / SIZE) | 0
      if (x < x0) x0 = x
      if (x > x1) x1 = x
      if (y < y0) y0 = y
      if (y > y1) y1 = y
      sx += x + 0.5
      sy += y + 0.5
    }
    const w = x1 - x0 + 1
    const h = y1 - y0 + 1
    const { iou, shape } = label === UNKNOWN
      ? { shape: "unrecognised" as const, iou: { square: 0, circle: 0, triangle: 0 } }
      : classify(pixels, x0, y0, w, h)
    objects.push({
      color: label === UNKNOWN ? "unknown" : COLORS[label],
      shape,
      centroid: { x: sx / pixels.length, y: sy / pixels.length },
      bbox: { x: x0, y: y0, width: w, height: h },
      pixels: pixels.length,
      iou
    })
  }
  return { objects, unknownInk, noise }
}

/**
 * The verdict on one image.
 *
 * @since 0.1.0
 */
export interface Verification {
  /** Objects and relations all right. */
  readonly pass: boolean
  /** Object colours, shapes and counts right (relations ignored). */
  readonly partial: boolean
  /** Why it failed ("" when it passed). */
  readonly reason: string
  readonly detected: Detection
}

const countKeys = (keys: ReadonlyArray<string>) => {
  const m = new Map<string, number>()
  for (const k of keys) m.set(k, (m.get(k) ?? 0) + 1)
  return m
}

/** Differences between expected and found multisets, e.g. "missing red square". */
const multisetDiff = (expected: ReadonlyArray<string>, found: ReadonlyArray<string>): Array<string> => {
  const e = countKeys(expected)
  const f = countKeys(found)
  const out: Array<string> = []
  for (const [k, n] of e) if ((f.get(k) ?? 0) < n) out.push(`missing ${n - (f.get(k) ?? 0)} ${k}`)
  for (const [k, n] of f) if ((e.get(k) ?? 0) < n) out.push(`extra ${n - (e.get(k) ?? 0)} ${k}`)
  return out
}

/**
 * Judges an image against its prompt (rules 1-4). `margin` is the relation
 * margin in pixels (2 for generated images; pass 4 to check renders strictly).
 *
 * @since 0.1.0
 */
export const verify = (
  parsed: Pick<ParsedPrompt, "objects" | "relation">,
  image: Uint8Array | Float32Array,
  margin = VERIFY_MARGIN
): Verification => {
  const detected = detect(image)
  const unrecognised = detected.objects.filter((o) => o.shape === "unrecognised")
  const problems = unrecognised.map((o) => `unrecognised ${o.color} object at (${o.bbox.x}, ${o.bbox.y})`)
  const recognised = detected.objects.filter((o) => o.shape !== "unrecognised")
  problems.push(...multisetDiff(parsed.objects.map(objectKey), recognised.map((o) => objectKey(o as { color: Color; shape: Shape }))))
  if (problems.length > 0) return { pass: false, partial: false, reason: problems.join("; "), detected }

  const rel = parsed.relation
  if (rel !== undefined) {
    // The multiset matches and the grammar makes the reference's (colour,
    // shape) differ from the subjects', so each role is identified by key.
    const withKey = (k: string) => recognised.filter((o) => objectKey(o as { color: Color; shape: Shape }) === k)
    const refKey = objectKey(parsed.objects[rel.reference])
    const refs = withKey(refKey)
    const subjectKeys = [...new Set(rel.subjects.map((s) => objectKey(parsed.objects[s])))]
    for (const ref of refs) {
      for (const key of subjectKeys) {
        for (const s of withKey(key)) {
          if (!relationHolds(rel.relation, s.centroid, ref.centroid, margin)) {
            const reason = `${key} at (${s.centroid.x.toFixed(1)}, ${s.centroid.y.toFixed(1)}) is not ${rel.relation} of ${refKey} at (${ref.centroid.x.toFixed(1)}, ${ref.centroid.y.toFixed(1)})`
            return { pass: false, partial: true, reason, detected }
          }
        }
      }
    }
  }
  return { pass: true, partial: true, reason: "", detected }
}

/**
 * Accuracy (fraction passing) and partial credit over a set of prompts.
 *
 * @since 0.1.0
 */
export interface Score {
  readonly n: number
  readonly accuracy: number
  readonly partial: number
}

/**
 * Per-category and overall scores; `overall` is over all prompts pooled.
 * Categories with no prompt are absent.
 *
 * @since 0.1.0
 */
export interface Summary {
  readonly perCategory: { readonly [C in Category]?: Score }
  readonly overall: Score
}

const score = (rs: ReadonlyArray<{ pass: boolean; partial: boolean }>): Score => ({
  n: rs.length,
  accuracy: rs.length === 0 ? 0 : rs.filter((r) => r.pass).length / rs.length,
  partial: rs.length === 0 ? 0 : rs.filter((r) => r.partial).length / rs.length
})

/**
 * Aggregates verdicts (rule 5).
 *
 * @since 0.1.0
 */
export const summarize = (results: ReadonlyArray<{ category: Category; pass: boolean; partial: boolean }>): Summary => {
  const perCategory: { [C in Category]?: Score } = {}
  for (const c of CATEGORIES) {
    const rs = results.filter((r) => r.category === c)
    if (rs.length > 0) perCategory[c] = score(rs)
  }
  return { perCategory, overall: score(results) }
}

/**
 * A fixed-width text table of a summary (for logs and reports).
 *
 * @since 0.1.0
 */
export const formatSummary = (summary: Summary): string => {
  const pct = (v: number) => `${(100 * v).toFixed(1)}%`.padStart(7)
  const row = (name: string, s: Score) => `${name.padEnd(9)} ${String(s.n).padStart(5)} ${pct(s.accuracy)} ${pct(s.partial)}`
  const lines = [`${"category".padEnd(9)} ${"n".padStart(5)} ${"pass".padStart(7)} ${"partial".padStart(7)}`]
  for (const c of CATEGORIES) {
    const s = summary.perCategory[c]
    if (s !== undefined) lines.push(row(c, s))
  }
  lines.push(row("overall", summary.overall))
  return lines.join("\n")
}
