/**
 * Spatial relations: their prompt phrases and the centroid rule that decides
 * whether one object stands in a relation to another.
 *
 * Image coordinates: x grows to the right, y grows downwards, so "above"
 * means a smaller y. The same rule serves the renderer (margin 4 px) and the
 * verifier (margin 2 px, as generated images are blurrier than renders).
 *
 * @since 0.1.0
 */
import { Schema } from "effect"

/** Relation names in a fixed order. */
export const RELATIONS = ["left", "right", "above", "below"] as const

export const Relation = Schema.Literals(RELATIONS)
export type Relation = typeof Relation.Type

/** The words each relation is written with in a prompt. */
export const RELATION_PHRASES: { readonly [R in Relation]: string } = {
  left: "to the left of",
  right: "to the right of",
  above: "above",
  below: "below"
}

/** Centroid margin the renderer guarantees (Placement). */
export const RENDER_MARGIN = 4
/** Centroid margin the verifier requires of generated images (rule 4). */
export const VERIFY_MARGIN = 2

/** A point in canvas pixel units (pixel centres at k + 0.5). */
export interface Point {
  readonly x: number
  readonly y: number
}

/**
 * Whether `subject` stands in `relation` to `reference`: along the relation's
 * axis the centroids differ, in the right direction, by at least `margin`, and
 * that difference is strictly larger in magnitude than the difference along
 * the other axis.
 *
 * @since 0.1.0
 */
export const relationHolds = (relation: Relation, subject: Point, reference: Point, margin: number): boolean => {
  const dx = subject.x - reference.x
  const dy = subject.y - reference.y
  switch (relation) {
    case "left":
      return -dx >= margin && Math.abs(dx) > Math.abs(dy)
    case "right":
      return dx >= margin && Math.abs(dx) > Math.abs(dy)
    case "above":
      return -dy >= margin && Math.abs(dy) > Math.abs(dx)
    case "below":
      return dy >= margin && Math.abs(dy) > Math.abs(dx)
  }
}
