/**
 * Hard negative prompts for contrastive reward training and evaluation:
 * prompts of the ShapeWorld-32 grammar that differ from a given prompt in
 * exactly one compositional aspect, so that no render of the original prompt
 * satisfies them.
 *
 * Kinds (each a `NegativeKind`):
 * - `swap-colors`:   the two named objects exchange colors;
 * - `swap-shapes`:   the two named objects exchange shapes;
 * - `color`:         one object (group) takes another color;
 * - `shape`:         one object (group) takes another shape;
 * - `relation`:      the relation is flipped (left <-> right, above <-> below);
 * - `relation-axis`: the relation moves to the other axis (left -> above, ...);
 * - `count`:         the count changes (numeracy 2/3/4 and 1 = color prompt,
 *                    complex <-> spatial, color -> numeracy);
 * - `drop-object`:   one of two named objects (groups) is left out.
 *
 * A candidate that means the same as the original (e.g. swapping the colors
 * of "a red square and a blue square") is never produced: see `sameMeaning`.
 * Why every candidate is false for every render of the original: it either
 * names a different multiset of objects (renders contain exactly the named
 * objects), or keeps the multiset and contradicts a relation (renders place
 * relations along one axis with |d_axis| > |d_other|, which excludes the
 * opposite and the orthogonal relations).
 *
 * Everything here is pure; `sample` draws from the given `Rng` only.
 *
 * @since 0.1.0
 */
import {
  COLORS,
  type Category,
  make,
  objectKey,
  type ParsedPrompt,
  type Relation,
  RELATIONS,
  type SceneObject,
  SHAPES
} from "../data/Prompt.ts"
import type { Rng } from "../tensor/Random.ts"

/** Kinds of hard negatives, in reporting order. */
export const NEGATIVE_KINDS = [
  "swap-colors",
  "swap-shapes",
  "color",
  "shape",
  "relation",
  "relation-axis",
  "count",
  "drop-object"
] as const
export type NegativeKind = (typeof NEGATIVE_KINDS)[number]

/**
 * A negative prompt and how it was derived from the original.
 *
 * @since 0.1.0
 */
export interface HardNegative {
  readonly kind: NegativeKind
  readonly prompt: ParsedPrompt
}

type Prompt = Pick<ParsedPrompt, "category" | "objects" | "relation">

const OPPOSITE: { readonly [R in Relation]: Relation } = { left: "right", right: "left", above: "below", below: "above" }

/**
 * The prompt as roles: `first` (subject, or the only/first object), its
 * multiplicity, and the optional `second` object (binding's second object,
 * or the reference of a relation).
 */
interface Roles {
  readonly first: SceneObject
  readonly count: number
  readonly second?: SceneObject
  readonly relation?: Relation
}

const roles = (p: Prompt): Roles => {
  const o = p.objects
  switch (p.category) {
    case "color":
      return { first: o[0], count: 1 }
    case "numeracy":
      return { first: o[0], count: o.length }
    case "binding":
      return { first: o[0], count: 1, second: o[1] }
    case "spatial":
    case "complex": {
      const rel = p.relation!
      return { first: o[rel.subjects[0]], count: rel.subjects.length, second: o[rel.reference], relation: rel.relation }
    }
  }
}

const same = (a: SceneObject, b: SceneObject) => a.color === b.color && a.shape === b.shape

/**
 * Builds a prompt of a category from roles, or undefined when the grammar
 * has no such prompt (two objects that are alike, counts out of range).
 */
const build = (category: Category, r: Roles): ParsedPrompt | undefined => {
  const { first: a, second: b, count: n, relation } = r
  if (b !== undefined && same(a, b)) return undefined
  switch (category) {
    case "color":
      return n === 1 && b === undefined ? make("color", [a]) : undefined
    case "numeracy":
      return n >= 2 && n <= 4 && b === undefined ? make("numeracy", Array.from({ length: n }, () => ({ ...a }))) : undefined
    case "binding":
      return n === 1 && b !== undefined ? make("binding", [a, b]) : undefined
    case "spatial":
      return n === 1 && b !== undefined && relation !== undefined
        ? make("spatial", [a, b], { subjects: [0], relation, reference: 1 })
        : undefined
    case "complex":
      return n === 2 && b !== undefined && relation !== undefined
        ? make("complex", [a, { ...a }, b], { subjects: [0, 1], relation, reference: 2 })
        : undefined
  }
}

/** Sorted object keys: the multiset a prompt names. */
export const objectMultiset = (p: Pick<ParsedPrompt, "objects">): string =>
  p.objects.map(objectKey).sort().join(",")

/** Relation facts, normalised to "left" and "above" (A right of B = B left of A). */
const facts = (p: Prompt): string => {
  const rel = p.relation
  if (rel === undefined) return ""
  const ref = objectKey(p.objects[rel.reference])
  const out = new Set<string>()
  for (const s of rel.subjects) {
    const subj = objectKey(p.objects[s])
    switch (rel.relation) {
      case "left":
      case "above":
        out.add(`${subj}|${rel.relation}|${ref}`)
        break
      case "right":
        out.add(`${ref}|left|${subj}`)
        break
      case "below":
        out.add(`${ref}|above|${subj}`)
        break
    }
  }
  return [...out].sort().join(";")
}

/**
 * Whether two prompts describe exactly the same scenes: the same multiset of
 * objects and the same relations (up to "A left of B" = "B right of A").
 *
 * @since 0.1.0
 */
export const sameMeaning = (a: Prompt, b: Prompt): boolean =>
  objectMultiset(a) === objectMultiset(b) && facts(a) === facts(b)

const otherColors = (o: SceneObject) => COLORS.filter((c) => c !== o.color).map((color) => ({ ...o, color }))
const otherShapes = (o: SceneObject) => SHAPES.filter((s) => s !== o.shape).map((shape) => ({ ...o, shape }))

/**
 * Every hard negative of a prompt, grouped by kind in `NEGATIVE_KINDS` order,
 * deduplicated by text, none meaning the same as the original. Deterministic.
 *
 * @since 0.1.0
 */
export const candidates = (parsed: Prompt): Array<HardNegative> => {
  const r = roles(parsed)
  const cat = parsed.category
  const { first: a, second: b } = r
  const raw: Array<{ kind: NegativeKind; prompt: ParsedPrompt | undefined }> = []
  const add = (kind: NegativeKind, prompt: ParsedPrompt | undefined) => raw.push({ kind, prompt })

  if (b !== undefined) {
    if (a.color !== b.color) add("swap-colors", build(cat, { ...r, first: { ...a, color: b.color }, second: { ...b, color: a.color } }))
    if (a.shape !== b.shape) add("swap-shapes", build(cat, { ...r, first: { ...a, shape: b.shape }, second: { ...b, shape: a.shape } }))
  }
  for (const x of otherColors(a)) add("color", build(cat, { ...r, first: x }))
  if (b !== undefined) for (const x of otherColors(b)) add("color", build(cat, { ...r, second: x }))
  for (const x of otherShapes(a)) add("shape", build(cat, { ...r, first: x }))
  if (b !== undefined) for (const x of otherShapes(b)) add("shape", build(cat, { ...r, second: x }))
  if (r.relation !== undefined) {
    add("relation", build(cat, { ...r, relation: OPPOSITE[r.relation] }))
    for (const rel of RELATIONS) {
      if (rel !== r.relation && rel !== OPPOSITE[r.relation]) add("relation-axis", build(cat, { ...r, relation: rel }))
    }
  }
  switch (cat) {
    case "color":
      for (const n of [2, 3, 4]) add("count", build("numeracy", { first: a, count: n }))
      break
    case "numeracy":
      for (const n of [2, 3, 4]) if (n !== r.count) add("count", build("numeracy", { first: a, count: n }))
      add("count", build("color", { first: a, count: 1 }))
      break
    case "spatial":
      add("count", build("complex", { ...r, count: 2 }))
      break
    case "complex":
      add("count", build("spatial", { ...r, count: 1 }))
      break
    case "binding":
      break
  }
  if (b !== undefined) {
    add("drop-object", r.count === 1 ? build("color", { first: a, count: 1 }) : build("numeracy", { first: a, count: r.count }))
    add("drop-object", build("color", { first: b, count: 1 }))
  }

  const seen = new Set<string>()
  const out: Array<HardNegative> = []
  for (const { kind, prompt } of raw) {
    if (prompt === undefined || seen.has(prompt.text) || sameMeaning(prompt, parsed)) continue
    seen.add(prompt.text)
    out.push({ kind, prompt })
  }
  return out
}

/**
 * `k` hard negatives drawn with kinds balanced: the kinds the prompt has are
 * visited round-robin in a random order (so the first draws all differ in
 * kind), each visit taking an unused candidate of that kind uniformly.
 * `kindWeights` (default 1 each) bias that order: it is a weighted random
 * permutation (Efraimidis-Spirakis keys u^(1/w)), so a kind of weight 3 comes
 * early about three times as often as one of weight 1. When
 * the prompt has fewer than `k` candidates, all are used and the rest are
 * drawn again uniformly (every prompt has at least the `color` and `shape`
 * kinds).
 *
 * @since 0.1.0
 */
export const sample = (
  rng: Rng,
  parsed: Prompt,
  k: number,
  kindWeights: Partial<Record<NegativeKind, number>> = {}
): Array<HardNegative> => {
  const all = candidates(parsed)
  const pools = new Map<NegativeKind, Array<HardNegative>>()
  for (const c of all) {
    const pool = pools.get(c.kind)
    if (pool === undefined) pools.set(c.kind, [c])
    else pool.push(c)
  }
  const order = [...pools.keys()]
    .map((kind) => ({ kind, key: Math.pow(rng.uniform(), 1 / Math.max(kindWeights[kind] ?? 1, 1e-9)) }))
    .sort((a, b) => b.key - a.key)
    .map((x) => x.kind)
  const out: Array<HardNegative> = []
  let turn = 0
  while (out.length < k) {
    const open = order.filter((kind) => pools.get(kind)!.length > 0)
    if (open.length === 0) {
      out.push(rng.pick(all))
      continue
    }
    const kind = open[turn++ % open.length]
    const pool = pools.get(kind)!
    out.push(pool.splice(rng.int(pool.length), 1)[0])
  }
  return out
}
