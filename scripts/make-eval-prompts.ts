/**
 * Writes the fixed ShapeWorld-32 evaluation prompt sets:
 *
 * - data/eval/prompts-seen.txt: 210 prompts from the generator's training
 *   split (compositions it was trained on): all 16 seen color prompts (the
 *   category has only 18 prompts, 2 of them held out), 50 binding,
 *   50 spatial, 44 numeracy (of 48 possible), 50 complex.
 * - data/eval/prompts-heldout.txt: 208 prompts each with at least one
 *   held-out composition: both held-out color prompts, all 6 held-out
 *   numeracy prompts, 64 binding, 64 spatial, 72 complex (a held-out object
 *   and/or relation "below", sampled uniformly among held-out complex prompts).
 *
 * Prompts are unique within each file, grouped by category, one per line.
 * "Seen" means seen compositions: the generator's training stream samples
 * the same distribution, so a seen prompt's exact text may also occur in
 * training (unavoidable for color, whose 16 seen prompts are all trained).
 *
 * Deterministic: `npx tsx scripts/make-eval-prompts.ts` always writes the
 * same files (seed below); test/data/EvalPrompts.test.ts checks that the
 * committed files match.
 *
 * @since 0.1.0
 */
import { mkdirSync, writeFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"
import { type Category, enumerate, isHeldOut, sample, type Split } from "../src/data/Prompt.ts"
import { Rng } from "../src/tensor/Random.ts"

export const EVAL_SEED = 20250217

export const SEEN_COUNTS: Record<Category, number> = { color: 16, binding: 50, spatial: 50, numeracy: 44, complex: 50 }
export const HELDOUT_COUNTS: Record<Category, number> = { color: 2, binding: 64, spatial: 64, numeracy: 6, complex: 72 }

const pick = (rng: Rng, category: Category, split: Exclude<Split, "full">, n: number): Array<string> => {
  const pool = enumerate(category).filter((p) => isHeldOut(p) === (split === "heldout"))
  if (n > pool.length) throw new RangeError(`${category}/${split} has only ${pool.length} prompts, asked for ${n}`)
  // Small pools: take a shuffled selection; large ones: unique uniform samples.
  if (pool.length <= 2 * n) return rng.shuffle(pool.map((p) => p.text)).slice(0, n)
  const out = new Set<string>()
  while (out.size < n) out.add(sample(rng, category, split).text)
  return [...out]
}

/** Both prompt lists, from one seed. */
export const makeEvalPrompts = (seed = EVAL_SEED): { seen: Array<string>; heldout: Array<string> } => {
  const rng = Rng.fromSeed(seed)
  const build = (split: "train" | "heldout", counts: Record<Category, number>) =>
    (Object.keys(counts) as Array<Category>).flatMap((c) => pick(rng, c, split, counts[c]))
  const seen = build("train", SEEN_COUNTS)
  const heldout = build("heldout", HELDOUT_COUNTS)
  return { seen, heldout }
}

export const toFileText = (prompts: ReadonlyArray<string>): string => prompts.join("\n") + "\n"

export const EVAL_DIR = join(dirname(fileURLToPath(import.meta.url)), "..", "data", "eval")

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { seen, heldout } = makeEvalPrompts()
  mkdirSync(EVAL_DIR, { recursive: true })
  writeFileSync(join(EVAL_DIR, "prompts-seen.txt"), toFileText(seen))
  writeFileSync(join(EVAL_DIR, "prompts-heldout.txt"), toFileText(heldout))
  console.log(`wrote ${seen.length} seen and ${heldout.length} held-out prompts to ${EVAL_DIR}`)
}
