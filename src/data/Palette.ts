/**
 * The six ShapeWorld-32 colours with their exact sRGB render values, and the
 * nearest-colour rule the verifier uses to name ink.
 *
 * @since 0.1.0
 */
import { Schema } from "effect"

/** Colour words in a fixed order (the order ties are broken in). */
export const COLORS = ["red", "green", "blue", "yellow", "purple", "white"] as const

/** A colour word of the prompt grammar. */
export const Color = Schema.Literals(COLORS)
export type Color = typeof Color.Type

/** Exact render values from the spec's palette table. */
export const PALETTE: { readonly [C in Color]: readonly [number, number, number] } = {
  red: [230, 40, 40],
  green: [40, 190, 60],
  blue: [50, 90, 235],
  yellow: [235, 215, 40],
  purple: [160, 60, 210],
  white: [235, 235, 235]
}

/** A pixel is ink when max(R, G, B) reaches this (verification rule 1). */
export const INK_THRESHOLD = 100

/** Ink farther than this from every palette colour is "unknown ink" (rule 1). */
export const UNKNOWN_INK_DISTANCE = 120

/**
 * The palette colour nearest to (r, g, b) by Euclidean RGB distance. Ties go
 * to the colour listed first in `COLORS` (they cannot occur for integer input
 * far enough from the midpoints to matter, but the rule must be total).
 *
 * @since 0.1.0
 */
export const nearestColor = (r: number, g: number, b: number): { color: Color; distance: number } => {
  let best: Color = COLORS[0]
  let bestSq = Infinity
  for (const c of COLORS) {
    const [pr, pg, pb] = PALETTE[c]
    const d = (r - pr) ** 2 + (g - pg) ** 2 + (b - pb) ** 2
    if (d < bestSq) {
      bestSq = d
      best = c
    }
  }
  return { color: best, distance: Math.sqrt(bestSq) }
}
