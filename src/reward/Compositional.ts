/**
 * Compositional rewards from the exact ShapeWorld verifier
 * (src/data/Verifier.ts): the binary `compositional` and the dense
 * `compositional-dense`. Prompts must be in the grammar (Prompt.ts); a prompt
 * that is not is a `RewardInputError` naming its index.
 *
 * `compositional` = 1 when the image passes its prompt (right objects,
 * nothing unrecognised, relation held), else 0.
 *
 * `compositional-dense` gives partial credit, in [0, 1]. Let E be the objects
 * the prompt names (a multiset, n = |E| >= 1) and D the objects the verifier
 * detects (components of >= 12 pixels, including unrecognised shapes and
 * unknown ink).
 * 1. Object credit: a maximum matching between E and D where a pair earns 1
 *    when colour and shape both agree and 0.5 when exactly one of them does
 *    (an unrecognised shape or unknown colour agrees with nothing):
 *    `objects = credit / max(n, |D|)`, so missing, wrong, extra and
 *    unrecognised objects all lower it.
 * 2. Relation credit (spatial and complex prompts): a detected subject (an
 *    object with a subject's colour and shape) holds when it stands in the
 *    relation to every detected reference object (margin 2 px, as the
 *    verifier); `relation = sum over subject keys of min(holding, named) /
 *    number of subjects named`, 0 when no reference object is detected.
 * 3. `dense = objects` without a relation, `(objects + relation) / 2` with one.
 * So dense = 1 exactly when the verifier passes, and a blank image scores 0.
 *
 * @since 0.1.0
 */
import { Effect, Layer, Result } from "effect"
import { type Color } from "../data/Palette.ts"
import { objectKey, parse, type ParsedPrompt } from "../data/Prompt.ts"
import { relationHolds, VERIFY_MARGIN } from "../data/Relations.ts"
import { type Shape } from "../data/Shapes.ts"
import { type DetectedObject, detect, verify } from "../data/Verifier.ts"
import { make as makeReward, Reward, type RewardMetadata, type RewardService } from "./Reward.ts"
import { RewardInputError } from "./RewardError.ts"

/** Which compositional reward. */
export type Variant = "exact" | "dense"

/**
 * The dense score and its two parts (relation absent for prompts without one).
 *
 * @since 0.1.0
 */
export interface DenseScore {
  readonly score: number
  readonly objects: number
  readonly relation?: number
}

type Scene = Pick<ParsedPrompt, "objects" | "relation">

/** Maximum bipartite matching (Kuhn) between `left` and `right` over `edge`. */
const maxMatching = (nLeft: number, nRight: number, edge: (l: number, r: number) => boolean): number => {
  const matchOfRight = new Array<number>(nRight).fill(-1)
  const augment = (l: number, seen: Array<boolean>): boolean => {
    for (let r = 0; r < nRight; r++) {
      if (seen[r] || !edge(l, r)) continue
      seen[r] = true
      if (matchOfRight[r] < 0 || augment(matchOfRight[r], seen)) {
        matchOfRight[r] = l
        return true
      }
    }
    return false
  }
  let size = 0
  for (let l = 0; l < nLeft; l++) if (augment(l, new Array<boolean>(nRight).fill(false))) size++
  return size
}

/**
 * Object credit (see the module comment): exact pairs first (optimal, as an
 * exact pair is worth at least any two half pairs it could block), then a
 * maximum matching of half-credit pairs among the rest.
 */
const objectCredit = (expected: Scene["objects"], found: ReadonlyArray<DetectedObject>): number => {
  const usedE = new Array<boolean>(expected.length).fill(false)
  const usedF = new Array<boolean>(found.length).fill(false)
  let credit = 0
  expected.forEach((e, i) => {
    const j = found.findIndex((f, k) => !usedF[k] && f.color === e.color && f.shape === e.shape)
    if (j >= 0) {
      usedE[i] = usedF[j] = true
      credit += 1
    }
  })
  const restE = expected.filter((_, i) => !usedE[i])
  const restF = found.filter((_, k) => !usedF[k])
  const half = maxMatching(restE.length, restF.length, (l, r) => restE[l].color === restF[r].color || restE[l].shape === restF[r].shape)
  return credit + 0.5 * half
}

const keyOf = (o: DetectedObject) => objectKey(o as { color: Color; shape: Shape })

const relationCredit = (scene: Scene, found: ReadonlyArray<DetectedObject>): number => {
  const rel = scene.relation!
  const recognised = found.filter((o) => o.shape !== "unrecognised" && o.color !== "unknown")
  const refKey = objectKey(scene.objects[rel.reference])
  const refs = recognised.filter((o) => keyOf(o) === refKey)
  if (refs.length === 0 || rel.subjects.length === 0) return 0
  const named = new Map<string, number>()
  for (const s of rel.subjects) {
    const k = objectKey(scene.objects[s])
    named.set(k, (named.get(k) ?? 0) + 1)
  }
  let holding = 0
  for (const [key, n] of named) {
    const ok = recognised.filter((o) =>
      keyOf(o) === key && refs.every((ref) => relationHolds(rel.relation, o.centroid, ref.centroid, VERIFY_MARGIN))
    ).length
    holding += Math.min(ok, n)
  }
  return holding / rel.subjects.length
}

/**
 * The dense compositional score of one image (bytes or floats in [0, 1]).
 *
 * @since 0.1.0
 */
export const denseScore = (scene: Scene, image: Uint8Array | Float32Array): DenseScore => {
  const found = detect(image).objects
  const objects = objectCredit(scene.objects, found) / Math.max(scene.objects.length, found.length)
  if (scene.relation === undefined) return { score: objects, objects }
  const relation = relationCredit(scene, found)
  return { score: (objects + relation) / 2, objects, relation }
}

/**
 * The binary compositional score: 1 when the verifier passes, else 0.
 *
 * @since 0.1.0
 */
export const exactScore = (scene: Scene, image: Uint8Array | Float32Array): number => (verify(scene, image).pass ? 1 : 0)

/**
 * Metadata of each variant.
 *
 * @since 0.1.0
 */
export const metadata: { readonly [V in Variant]: RewardMetadata } = {
  exact: { name: "compositional", range: [0, 1], differentiable: false, relativeCost: 1 },
  dense: { name: "compositional-dense", range: [0, 1], differentiable: false, relativeCost: 1 }
}

/**
 * The compositional reward service (parsed prompts are memoised per service).
 *
 * @since 0.1.0
 */
export const make = (variant: Variant = "exact"): RewardService => {
  const meta = metadata[variant]
  const parsed = new Map<string, ParsedPrompt>()
  const scoreOne = variant === "exact" ? exactScore : (s: Scene, img: Float32Array) => denseScore(s, img).score
  return makeReward(meta, (images, prompts) =>
    Effect.suspend(() => {
      const out = new Array<number>(images.length)
      for (let i = 0; i < images.length; i++) {
        let scene = parsed.get(prompts[i])
        if (scene === undefined) {
          const r = parse(prompts[i])
          if (Result.isFailure(r)) {
            return Effect.fail(
              new RewardInputError({
                reward: meta.name,
                field: "prompts",
                index: i,
                message: `prompt ${i} is not in the ShapeWorld grammar: ${r.failure.message}`
              })
            )
          }
          scene = r.success
          if (parsed.size >= 100_000) parsed.clear()
          parsed.set(prompts[i], scene)
        }
        out[i] = scoreOne(scene, images[i])
      }
      return Effect.succeed(out)
    }))
}

/**
 * The compositional reward as a layer.
 *
 * @since 0.1.0
 */
export const layer = (variant: Variant = "exact"): Layer.Layer<Reward> => Layer.sync(Reward, () => make(variant))
