/**
 * ShapeWorld-32 shape masks: the exact pixel sets the renderer draws for a
 * box of side s, and the templates stretched to a w x h bounding box that the
 * verifier matches detected components against.
 *
 * All tests are evaluated in integer arithmetic, multiplied out from the
 * spec's formulas (both sides scaled by positive constants), so no pixel on a
 * boundary can flip through floating-point rounding:
 * - circle/ellipse: ((x+0.5-w/2)/(w/2))^2 + ((y+0.5-h/2)/(h/2))^2 <= 1
 *   ⇔ (2x+1-w)^2 h^2 + (2y+1-h)^2 w^2 <= w^2 h^2
 * - triangle: |x+0.5-w/2| <= ((y+1)/h)(w/2)  ⇔  |2x+1-w| h <= (y+1) w
 * With w = h = s these are exactly the renderer's Shapes rules, so an exactly
 * rendered object has IoU 1 with its own template.
 *
 * @since 0.1.0
 */
import { Schema } from "effect"

/** Shape words in a fixed order (the order IoU ties are broken in). */
export const SHAPES = ["square", "circle", "triangle"] as const

/** A shape word of the prompt grammar (singular). */
export const Shape = Schema.Literals(SHAPES)
export type Shape = typeof Shape.Type

/** Box sides the renderer draws. */
export const BOX_SIDES = [8, 9, 10] as const

/**
 * A binary w x h mask, row-major, 1 = set, with its pixel count and the
 * centroid of its pixel centres relative to the box's top-left corner.
 *
 * @since 0.1.0
 */
export interface Mask {
  readonly width: number
  readonly height: number
  readonly data: Uint8Array
  readonly count: number
  readonly cx: number
  readonly cy: number
}

const inside = (shape: Shape, x: number, y: number, w: number, h: number): boolean => {
  switch (shape) {
    case "square":
      return true
    case "circle": {
      const dx = 2 * x + 1 - w
      const dy = 2 * y + 1 - h
      return dx * dx * h * h + dy * dy * w * w <= w * w * h * h
    }
    case "triangle":
      return Math.abs(2 * x + 1 - w) * h <= (y + 1) * w
  }
}

const build = (shape: Shape, w: number, h: number): Mask => {
  const data = new Uint8Array(w * h)
  let count = 0
  let sx = 0
  let sy = 0
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (inside(shape, x, y, w, h)) {
        data[y * w + x] = 1
        count++
        sx += x + 0.5
        sy += y + 0.5
      }
    }
  }
  return { width: w, height: h, data, count, cx: count > 0 ? sx / count : w / 2, cy: count > 0 ? sy / count : h / 2 }
}

// Masks are immutable and few (at most 3 shapes x 32 x 32 sizes), so cache them.
const cache = new Map<string, Mask>()

/**
 * The shape stretched to a w x h box (verification rule 3). Cached; do not
 * mutate the returned mask.
 *
 * @since 0.1.0
 */
export const templateMask = (shape: Shape, width: number, height: number): Mask => {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new RangeError(`template size must be positive integers, got ${width} x ${height}`)
  }
  const key = `${shape}:${width}x${height}`
  let mask = cache.get(key)
  if (mask === undefined) {
    mask = build(shape, width, height)
    cache.set(key, mask)
  }
  return mask
}

/**
 * The rendered shape for a box of side s (the spec's Shapes rules).
 *
 * @since 0.1.0
 */
export const shapeMask = (shape: Shape, side: number): Mask => templateMask(shape, side, side)
