/**
 * The ShapeWorld-32 renderer: draws exactly the objects a prompt names on a
 * black 32 x 32 canvas, with placement obeying the spec.
 *
 * Placement rules (checked by `placementViolations`):
 * - box side s ∈ {8, 9, 10}, every box inside the canvas with ≥ 1 px margin;
 * - any two boxes separated by a gap of ≥ 2 px along x or along y;
 * - for relation prompts, every subject's centroid stands in the relation to
 *   the reference's centroid with margin 4 px (`relationHolds`). Centroids
 *   are those of the drawn pixels, which is what the verifier measures (a
 *   triangle's centroid sits below its box centre).
 *
 * Placement is rejection sampling: the reference (or first object) is placed
 * uniformly, each further object tries uniform positions until one satisfies
 * every rule against the objects already placed; an object that fails
 * `OBJECT_TRIES` times restarts the scene, up to `SCENE_TRIES` scenes. All
 * draws come from the given `Rng`, so a scene is a function of its state.
 *
 * @since 0.1.0
 */
import { Effect, Schema } from "effect"
import type { Rng } from "../tensor/Random.ts"
import { CHANNELS, SIZE } from "./Image.ts"
import { type Color, PALETTE } from "./Palette.ts"
import type { ParsedPrompt } from "./Prompt.ts"
import { RENDER_MARGIN, relationHolds } from "./Relations.ts"
import { BOX_SIDES, type Shape, shapeMask } from "./Shapes.ts"

/** Minimum empty pixels between a box and the canvas edge. */
export const CANVAS_MARGIN = 1
/** Minimum empty pixels between two boxes (along one axis). */
export const BOX_GAP = 2
/** Positions tried per object before the scene is restarted. */
export const OBJECT_TRIES = 200
/** Scenes tried before giving up with a `RenderError`. */
export const SCENE_TRIES = 500

/**
 * A prompt's scene could not be placed within the try budget (never happens
 * for prompts of the grammar; the bound turns a bug into an error, not a hang).
 *
 * @since 0.1.0
 */
export class RenderError extends Schema.TaggedError<RenderError>()("RenderError", {
  prompt: Schema.String,
  message: Schema.String
}) {}

/**
 * An object as drawn: box top-left (x, y) and side, and the centroid of its
 * pixels in canvas coordinates (pixel centres at k + 0.5).
 *
 * @since 0.1.0
 */
export interface PlacedObject {
  readonly color: Color
  readonly shape: Shape
  readonly x: number
  readonly y: number
  readonly size: number
  readonly cx: number
  readonly cy: number
}

const place = (color: Color, shape: Shape, x: number, y: number, size: number): PlacedObject => {
  const m = shapeMask(shape, size)
  return { color, shape, x, y, size, cx: x + m.cx, cy: y + m.cy }
}

/** Boxes a and b leave at least `BOX_GAP` empty pixels between them on some axis. */
const separated = (a: PlacedObject, b: PlacedObject) =>
  b.x - (a.x + a.size) >= BOX_GAP ||
  a.x - (b.x + b.size) >= BOX_GAP ||
  b.y - (a.y + a.size) >= BOX_GAP ||
  a.y - (b.y + b.size) >= BOX_GAP

const insideCanvas = (o: PlacedObject) =>
  o.x >= CANVAS_MARGIN && o.y >= CANVAS_MARGIN && o.x + o.size <= SIZE - CANVAS_MARGIN && o.y + o.size <= SIZE - CANVAS_MARGIN

/**
 * Every placement rule the boxes break (empty when the scene is valid).
 * `boxes[i]` draws `parsed.objects[i]`.
 *
 * @since 0.1.0
 */
export const placementViolations = (
  parsed: Pick<ParsedPrompt, "objects" | "relation">,
  boxes: ReadonlyArray<PlacedObject>,
  margin = RENDER_MARGIN
): Array<string> => {
  const out: Array<string> = []
  if (boxes.length !== parsed.objects.length) out.push(`${boxes.length} boxes for ${parsed.objects.length} objects`)
  boxes.forEach((b, i) => {
    if (!(BOX_SIDES as ReadonlyArray<number>).includes(b.size)) out.push(`object ${i} has side ${b.size}`)
    if (!insideCanvas(b)) out.push(`object ${i} at (${b.x}, ${b.y}) side ${b.size} breaks the canvas margin`)
    const o = parsed.objects[i]
    if (o !== undefined && (o.color !== b.color || o.shape !== b.shape)) out.push(`object ${i} drawn as ${b.color} ${b.shape}`)
    for (let j = 0; j < i; j++) if (!separated(boxes[j], b)) out.push(`objects ${j} and ${i} are closer than ${BOX_GAP} px`)
  })
  const rel = parsed.relation
  if (rel !== undefined) {
    const ref = boxes[rel.reference]
    for (const s of rel.subjects) {
      if (!relationHolds(rel.relation, { x: boxes[s].cx, y: boxes[s].cy }, { x: ref.cx, y: ref.cy }, margin)) {
        out.push(`object ${s} is not ${rel.relation} of object ${rel.reference} with margin ${margin}`)
      }
    }
  }
  return out
}

/**
 * Draws placed objects on a black canvas (RGB bytes, row-major HWC).
 *
 * @since 0.1.0
 */
export const paint = (boxes: ReadonlyArray<PlacedObject>): Uint8Array => {
  const image = new Uint8Array(SIZE * SIZE * CHANNELS)
  for (const b of boxes) {
    const m = shapeMask(b.shape, b.size)
    const [r, g, bl] = PALETTE[b.color]
    for (let y = 0; y < m.height; y++) {
      for (let x = 0; x < m.width; x++) {
        if (m.data[y * m.width + x] === 0) continue
        const p = ((b.y + y) * SIZE + (b.x + x)) * CHANNELS
        image[p] = r
        image[p + 1] = g
        image[p + 2] = bl
      }
    }
  }
  return image
}

/** Placement order: the reference first, so subjects are tried against it. */
const order = (parsed: Pick<ParsedPrompt, "objects" | "relation">): Array<number> => {
  const all = parsed.objects.map((_, i) => i)
  const rel = parsed.relation
  return rel === undefined ? all : [rel.reference, ...all.filter((i) => i !== rel.reference)]
}

const tryScene = (parsed: Pick<ParsedPrompt, "objects" | "relation">, rng: Rng): Array<PlacedObject> | undefined => {
  const boxes: Array<PlacedObject | undefined> = parsed.objects.map(() => undefined)
  const placed: Array<PlacedObject> = []
  const rel = parsed.relation
  for (const i of order(parsed)) {
    const { color, shape } = parsed.objects[i]
    const size = rng.pick(BOX_SIDES)
    const span = SIZE - 2 * CANVAS_MARGIN - size + 1
    let ok: PlacedObject | undefined
    for (let t = 0; t < OBJECT_TRIES && ok === undefined; t++) {
      const cand = place(color, shape, CANVAS_MARGIN + rng.int(span), CANVAS_MARGIN + rng.int(span), size)
      if (!placed.every((p) => separated(p, cand))) continue
      if (rel !== undefined && i !== rel.reference) {
        const ref = boxes[rel.reference]!
        if (!relationHolds(rel.relation, { x: cand.cx, y: cand.cy }, { x: ref.cx, y: ref.cy }, RENDER_MARGIN)) continue
      }
      ok = cand
    }
    if (ok === undefined) return undefined
    boxes[i] = ok
    placed.push(ok)
  }
  return boxes as Array<PlacedObject>
}

/**
 * Renders a prompt and reports where each object went (`boxes[i]` draws
 * `parsed.objects[i]`). Throws `RenderError` if no valid scene is found
 * within the try budget.
 *
 * @since 0.1.0
 */
export const renderScene = (
  parsed: Pick<ParsedPrompt, "text" | "objects" | "relation">,
  rng: Rng
): { image: Uint8Array; boxes: Array<PlacedObject> } => {
  for (let attempt = 0; attempt < SCENE_TRIES; attempt++) {
    const boxes = tryScene(parsed, rng)
    if (boxes !== undefined) return { image: paint(boxes), boxes }
  }
  throw new RenderError({
    prompt: parsed.text,
    message: `could not place "${parsed.text}" within ${SCENE_TRIES} scenes of ${OBJECT_TRIES} tries per object`
  })
}

/**
 * Renders a prompt to 32 x 32 x 3 RGB bytes (see `renderScene`).
 *
 * @since 0.1.0
 */
export const render = (parsed: Pick<ParsedPrompt, "text" | "objects" | "relation">, rng: Rng): Uint8Array =>
  renderScene(parsed, rng).image

/**
 * `renderScene` as an Effect, with `RenderError` in the error channel.
 *
 * @since 0.1.0
 */
export const renderEffect = (
  parsed: Pick<ParsedPrompt, "text" | "objects" | "relation">,
  rng: Rng
): Effect.Effect<{ image: Uint8Array; boxes: Array<PlacedObject> }, RenderError> =>
  Effect.suspend(() => {
    try {
      return Effect.succeed(renderScene(parsed, rng))
    } catch (e) {
      if (e instanceof RenderError) return Effect.fail(e)
      throw e
    }
  })
