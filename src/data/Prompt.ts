/**
 * The ShapeWorld-32 prompt language: its types, the exact grammar (format and
 * a strict parser), the random prompt sampler with the generator's
 * training split, and prompt files.
 *
 * Grammar (lower case, single spaces, no final period):
 * - color:    `a {color} {shape}`
 * - binding:  `a {color} {shape} and a {color} {shape}`        (objects differ)
 * - spatial:  `a {color} {shape} {relation} a {color} {shape}` (objects differ)
 * - numeracy: `{two|three|four} {color} {shape}s`
 * - complex:  `two {color} {shape}s {relation} a {color} {shape}` (reference differs)
 *
 * `ParsedPrompt.objects` is the full multiset in prompt order: the subject(s)
 * first, then the reference; numeracy repeats the object n times.
 *
 * @since 0.1.0
 */
import { Effect, FileSystem, Result, Schema } from "effect"
import type { Rng } from "../tensor/Random.ts"
import { Color, COLORS } from "./Palette.ts"
import { Relation, RELATION_PHRASES, RELATIONS } from "./Relations.ts"
import { Shape, SHAPES } from "./Shapes.ts"

export { Color, COLORS, Relation, RELATION_PHRASES, RELATIONS, Shape, SHAPES }

/** Prompt categories, in reporting order. */
export const CATEGORIES = ["color", "binding", "spatial", "numeracy", "complex"] as const
export const Category = Schema.Literals(CATEGORIES)
export type Category = typeof Category.Type

/** One object a prompt names. */
export const SceneObject = Schema.Struct({ color: Color, shape: Shape })
export type SceneObject = typeof SceneObject.Type

/** Which objects (indices into `objects`) stand in which relation to which. */
export const RelationSpec = Schema.Struct({
  subjects: Schema.Array(Schema.Int),
  relation: Relation,
  reference: Schema.Int
})
export type RelationSpec = typeof RelationSpec.Type

/** A prompt, parsed. `text` is its canonical (and only valid) spelling. */
export const ParsedPrompt = Schema.Struct({
  category: Category,
  text: Schema.String,
  objects: Schema.Array(SceneObject),
  relation: Schema.optionalKey(RelationSpec)
})
export type ParsedPrompt = typeof ParsedPrompt.Type

/**
 * Which part of the distribution to sample:
 * - `train`: the generator's training split (no held-out composition);
 * - `full`: everything (what reward models are trained on);
 * - `heldout`: only prompts with at least one held-out composition (used to
 *   build the held-out evaluation set).
 */
export type Split = "train" | "full" | "heldout"

/** Objects the generator never sees in training, in any category. */
export const HELD_OUT_OBJECTS: ReadonlyArray<SceneObject> = [
  { color: "purple", shape: "triangle" },
  { color: "yellow", shape: "circle" }
]
/** Relation never trained inside complex prompts. */
export const HELD_OUT_COMPLEX_RELATION: Relation = "below"

const NUMBERS = ["two", "three", "four"] as const
const NUMBER_VALUE: Record<string, number> = { two: 2, three: 3, four: 4 }
const PLURAL: { readonly [S in Shape]: string } = { square: "squares", circle: "circles", triangle: "triangles" }

/**
 * A prompt is not in the grammar. `word` is the first unexpected word ("" when
 * the prompt ends early or has an empty word from a stray space); `line` and
 * `path` locate it in a prompt file.
 *
 * @since 0.1.0
 */
export class PromptParseError extends Schema.TaggedError<PromptParseError>()("PromptParseError", {
  prompt: Schema.String,
  path: Schema.optional(Schema.String),
  line: Schema.optional(Schema.Number),
  word: Schema.String,
  message: Schema.String
}) {}

/** `color shape`, e.g. "red square": the identity of an object in a multiset. */
export const objectKey = (o: SceneObject): string => `${o.color} ${o.shape}`

const sameObject = (a: SceneObject, b: SceneObject) => a.color === b.color && a.shape === b.shape

/**
 * Writes a parsed prompt in the grammar's one spelling.
 *
 * @since 0.1.0
 */
export const format = (parsed: Pick<ParsedPrompt, "category" | "objects" | "relation">): string => {
  const { category, objects } = parsed
  const one = (o: SceneObject) => `a ${o.color} ${o.shape}`
  const many = (n: number, o: SceneObject) => `${NUMBERS[n - 2]} ${o.color} ${PLURAL[o.shape]}`
  const rel = parsed.relation
  switch (category) {
    case "color":
      return one(objects[0])
    case "binding":
      return `${one(objects[0])} and ${one(objects[1])}`
    case "numeracy":
      if (objects.length < 2 || objects.length > 4) throw new RangeError(`numeracy needs 2-4 objects, got ${objects.length}`)
      return many(objects.length, objects[0])
    case "spatial":
    case "complex": {
      if (rel === undefined) throw new RangeError(`a ${category} prompt needs a relation`)
      const subject = objects[rel.subjects[0]]
      const head = category === "spatial" ? one(subject) : many(rel.subjects.length, subject)
      return `${head} ${RELATION_PHRASES[rel.relation]} ${one(objects[rel.reference])}`
    }
  }
}

// ---------------------------------------------------------------- parsing

/** Thrown inside the parser only; turned into a PromptParseError at the top. */
class Unexpected {
  constructor(readonly index: number, readonly expected: string, readonly note?: string) {}
}

const COLOR_SET: ReadonlySet<string> = new Set(COLORS)
const SHAPE_SET: ReadonlySet<string> = new Set(SHAPES)
const PLURAL_TO_SHAPE = new Map<string, Shape>(SHAPES.map((s) => [PLURAL[s], s]))

const EXPECT_COLOR = `a color (${COLORS.join(", ")})`
const EXPECT_SHAPE = `a shape (${SHAPES.join(", ")})`
const EXPECT_SHAPES = `a plural shape (${SHAPES.map((s) => PLURAL[s]).join(", ")})`
const EXPECT_RELATION = `a relation ("to the left of", "to the right of", "above", "below")`

/** Why a specific word might be wrong, beyond "not what the grammar wants". */
const hint = (word: string, index: number, tokens: ReadonlyArray<string>): string => {
  if (word === "") {
    if (index === 0) return "prompt starts with a space"
    if (index === tokens.length - 1) return "prompt ends with a space"
    return `double space after "${tokens[index - 1]}"`
  }
  if (word !== word.toLowerCase()) return "prompts are lower case"
  if (/[.,;:!?]$/.test(word)) return "prompts have no punctuation or final period"
  if (word === "an" || word === "the" || word === "one") return 'the article is always "a"'
  if (/\s/.test(word)) return "words are separated by single spaces only"
  return ""
}

const parseTokens = (tokens: ReadonlyArray<string>): Omit<ParsedPrompt, "text"> => {
  let i = 0
  const atEnd = () => i >= tokens.length
  const expectWord = (word: string, expected = `"${word}"`) => {
    if (tokens[i] !== word) throw new Unexpected(i, expected)
    i++
  }
  const color = (): Color => {
    const w = tokens[i]
    if (!COLOR_SET.has(w)) throw new Unexpected(i, EXPECT_COLOR)
    i++
    return w as Color
  }
  const singular = (): SceneObject => {
    const c = color()
    const w = tokens[i]
    if (!SHAPE_SET.has(w)) {
      throw new Unexpected(i, EXPECT_SHAPE, PLURAL_TO_SHAPE.has(w) ? 'after "a" the shape is singular' : undefined)
    }
    i++
    return { color: c, shape: w as Shape }
  }
  const plural = (): SceneObject => {
    const c = color()
    const s = PLURAL_TO_SHAPE.get(tokens[i])
    if (s === undefined) {
      throw new Unexpected(i, EXPECT_SHAPES, SHAPE_SET.has(tokens[i]) ? "after a number the shape is plural" : undefined)
    }
    i++
    return { color: c, shape: s }
  }
  const relation = (expected: string): Relation => {
    const w = tokens[i]
    if (w === "above" || w === "below") {
      i++
      return w
    }
    if (w !== "to") throw new Unexpected(i, expected)
    i++
    expectWord("the")
    const side = tokens[i]
    if (side !== "left" && side !== "right") throw new Unexpected(i, '"left" or "right"')
    i++
    expectWord("of")
    return side
  }
  const end = (expected: string) => {
    if (!atEnd()) throw new Unexpected(i, expected)
  }
  const mustDiffer = (a: SceneObject, b: SceneObject, what: string) => {
    // The offending word is the shape that completed the duplicate object.
    if (sameObject(a, b)) throw new Unexpected(i - 1, `an object that differs from the ${what} in color or shape`, `"${objectKey(b)}" repeats the ${what}`)
  }

  const first = tokens[i]
  if (first === "a") {
    i++
    const a = singular()
    if (atEnd()) return { category: "color", objects: [a] }
    if (tokens[i] === "and") {
      i++
      expectWord("a")
      const b = singular()
      mustDiffer(a, b, "first object")
      end("end of prompt")
      return { category: "binding", objects: [a, b] }
    }
    const rel = relation(`end of prompt, "and" or ${EXPECT_RELATION}`)
    expectWord("a")
    const b = singular()
    mustDiffer(a, b, "first object")
    end("end of prompt")
    return { category: "spatial", objects: [a, b], relation: { subjects: [0], relation: rel, reference: 1 } }
  }
  const n = NUMBER_VALUE[first]
  if (n !== undefined && Object.hasOwn(NUMBER_VALUE, first)) {
    i++
    const o = plural()
    const objects = Array.from({ length: n }, () => ({ ...o }))
    if (atEnd()) return { category: "numeracy", objects }
    if (n !== 2) throw new Unexpected(i, "end of prompt")
    const rel = relation(`end of prompt or ${EXPECT_RELATION}`)
    expectWord("a")
    const ref = singular()
    mustDiffer(o, ref, "two subjects")
    end("end of prompt")
    return {
      category: "complex",
      objects: [...objects, ref],
      relation: { subjects: [0, 1], relation: rel, reference: 2 }
    }
  }
  throw new Unexpected(0, '"a", "two", "three" or "four"')
}

const where = (path: string | undefined, line: number | undefined) =>
  path !== undefined ? `${path}${line !== undefined ? `:${line}` : ""}: ` : line !== undefined ? `line ${line}: ` : ""

const toError = (text: string, tokens: ReadonlyArray<string>, u: Unexpected, line?: number, path?: string): PromptParseError => {
  const prefix = where(path, line)
  if (u.index >= tokens.length) {
    const last = tokens[tokens.length - 1]
    return new PromptParseError({
      prompt: text,
      path,
      line,
      word: "",
      message: `${prefix}prompt "${text}" ends early after "${last}": expected ${u.expected}`
    })
  }
  const word = tokens[u.index]
  const note = u.note ?? hint(word, u.index, tokens)
  return new PromptParseError({
    prompt: text,
    path,
    line,
    word,
    message: `${prefix}unexpected word "${word}" (word ${u.index + 1}) in "${text}": expected ${u.expected}${note ? ` (${note})` : ""}`
  })
}

/**
 * Parses a prompt that must match the grammar exactly; anything else fails
 * with a `PromptParseError` naming the first unexpected word (and the line,
 * when given).
 *
 * @since 0.1.0
 */
export const parse = (text: string, line?: number, path?: string): Result.Result<ParsedPrompt, PromptParseError> => {
  if (text === "") {
    return Result.fail(
      new PromptParseError({ prompt: text, path, line, word: "", message: `${where(path, line)}empty prompt` })
    )
  }
  const tokens = text.split(" ")
  try {
    return Result.succeed({ ...parseTokens(tokens), text } as ParsedPrompt)
  } catch (e) {
    if (e instanceof Unexpected) return Result.fail(toError(text, tokens, e, line, path))
    throw e
  }
}

/**
 * `parse` for callers that treat a bad prompt as a bug (throws the
 * `PromptParseError`).
 *
 * @since 0.1.0
 */
export const parseOrThrow = (text: string, line?: number): ParsedPrompt => {
  const r = parse(text, line)
  if (Result.isFailure(r)) throw r.failure
  return r.success
}

/**
 * `parse` as an Effect.
 *
 * @since 0.1.0
 */
export const parseEffect = (text: string, line?: number): Effect.Effect<ParsedPrompt, PromptParseError> =>
  Effect.suspend(() => Effect.fromResult(parse(text, line)))

/**
 * Parses a prompt file: one prompt per line, empty lines skipped (a trailing
 * "\r" from CRLF files is dropped; a line of only spaces is an error). Fails
 * on the first bad line with its path and 1-based line number.
 *
 * @since 0.1.0
 */
export const parsePromptFile = (text: string, path: string): Result.Result<Array<ParsedPrompt>, PromptParseError> => {
  const out: Array<ParsedPrompt> = []
  const lines = text.split("\n")
  for (let k = 0; k < lines.length; k++) {
    const line = lines[k].endsWith("\r") ? lines[k].slice(0, -1) : lines[k]
    if (line === "") continue
    const r = parse(line, k + 1, path)
    if (Result.isFailure(r)) return Result.fail(r.failure)
    out.push(r.success)
  }
  return Result.succeed(out)
}

/**
 * Reads and parses a prompt file.
 *
 * @since 0.1.0
 */
export const loadPromptFile = Effect.fnUntraced(function*(path: string) {
  const fs = yield* FileSystem.FileSystem
  const text = yield* fs.readFileString(path)
  return yield* Effect.fromResult(parsePromptFile(text, path))
})

// ---------------------------------------------------------------- splits and sampling

const isHeldOutObject = (o: SceneObject) => HELD_OUT_OBJECTS.some((h) => sameObject(h, o))

/**
 * Whether a prompt contains a composition held out from the generator's
 * training data: a purple triangle or yellow circle object, or a complex
 * prompt whose relation is "below".
 *
 * @since 0.1.0
 */
export const isHeldOut = (parsed: Pick<ParsedPrompt, "category" | "objects" | "relation">): boolean =>
  parsed.objects.some(isHeldOutObject) ||
  (parsed.category === "complex" && parsed.relation?.relation === HELD_OUT_COMPLEX_RELATION)

const inSplit = (parsed: ParsedPrompt, split: Split) =>
  split === "full" ? true : split === "train" ? !isHeldOut(parsed) : isHeldOut(parsed)

const randomObject = (rng: Rng): SceneObject => ({ color: rng.pick(COLORS), shape: rng.pick(SHAPES) })

const differentObject = (rng: Rng, from: SceneObject): SceneObject => {
  // Rejection keeps the pair uniform over ordered pairs of distinct objects.
  for (;;) {
    const o = randomObject(rng)
    if (!sameObject(o, from)) return o
  }
}

/** Builds the parsed form (with its canonical text) from its parts. */
export const make = (category: Category, objects: ReadonlyArray<SceneObject>, relation?: RelationSpec): ParsedPrompt => {
  const base = relation === undefined ? { category, objects } : { category, objects, relation }
  return { ...base, text: format(base) }
}

const sampleFull = (rng: Rng, category: Category): ParsedPrompt => {
  switch (category) {
    case "color":
      return make(category, [randomObject(rng)])
    case "binding": {
      const a = randomObject(rng)
      return make(category, [a, differentObject(rng, a)])
    }
    case "spatial": {
      const a = randomObject(rng)
      const b = differentObject(rng, a)
      return make(category, [a, b], { subjects: [0], relation: rng.pick(RELATIONS), reference: 1 })
    }
    case "numeracy": {
      const n = 2 + rng.int(3)
      const o = randomObject(rng)
      return make(category, Array.from({ length: n }, () => ({ ...o })))
    }
    case "complex": {
      const a = randomObject(rng)
      const b = differentObject(rng, a)
      return make(category, [a, { ...a }, b], { subjects: [0, 1], relation: rng.pick(RELATIONS), reference: 2 })
    }
  }
}

/**
 * A uniformly random prompt of the category within the split (uniform over
 * the category's prompts of that split, by rejection from the full
 * distribution, whose numeracy count is uniform over 2, 3, 4).
 *
 * @since 0.1.0
 */
export const sample = (rng: Rng, category: Category, split: Split): ParsedPrompt => {
  for (;;) {
    const p = sampleFull(rng, category)
    if (inSplit(p, split)) return p
  }
}

/**
 * Every prompt of a category (color 18, binding 306, spatial 1224,
 * numeracy 54, complex 1224), in a fixed order.
 *
 * @since 0.1.0
 */
export const enumerate = (category: Category): Array<ParsedPrompt> => {
  const objects = COLORS.flatMap((color) => SHAPES.map((shape): SceneObject => ({ color, shape })))
  const pairs = objects.flatMap((a) => objects.filter((b) => !sameObject(a, b)).map((b) => [a, b] as const))
  switch (category) {
    case "color":
      return objects.map((o) => make(category, [o]))
    case "binding":
      return pairs.map(([a, b]) => make(category, [a, b]))
    case "spatial":
      return pairs.flatMap(([a, b]) =>
        RELATIONS.map((relation) => make(category, [a, b], { subjects: [0], relation, reference: 1 }))
      )
    case "numeracy":
      return [2, 3, 4].flatMap((n) => objects.map((o) => make(category, Array.from({ length: n }, () => ({ ...o })))))
    case "complex":
      return pairs.flatMap(([a, b]) =>
        RELATIONS.map((relation) => make(category, [a, { ...a }, b], { subjects: [0, 1], relation, reference: 2 }))
      )
  }
}
