/**
 * Evaluation of a generator on prompt sets: generate one image per prompt at
 * fixed sampler settings, judge each with the exact verifier and (if given)
 * the learned clip score, and tabulate per category.
 *
 * @since 0.1.0
 */
import { Effect } from "effect"
import { CATEGORIES, type Category, type ParsedPrompt } from "../data/Prompt.ts"
import * as Verifier from "../data/Verifier.ts"
import { mean } from "../math/Stats.ts"
import * as ClipModel from "../reward/ClipModel.ts"

export interface Row {
  readonly category: Category | "overall"
  readonly n: number
  readonly accuracy: number
  readonly partial: number
  readonly clip: number | null
}

export interface SetReport {
  readonly name: string
  readonly rows: ReadonlyArray<Row>
  readonly nfePerImage: number
  readonly samples: ReadonlyArray<{ prompt: string; category: Category; pass: boolean; partial: boolean; clip: number | null; rewards?: Readonly<Record<string, number>> }>
}

export interface PromptSet {
  readonly name: string
  readonly prompts: ReadonlyArray<ParsedPrompt>
}

/** Judge already generated images ([0,1] HWC) against their prompts. */
export const judge = (
  name: string,
  prompts: ReadonlyArray<ParsedPrompt>,
  images: ReadonlyArray<Float32Array>,
  nfePerImage: number,
  clip?: ClipModel.Model
): Effect.Effect<SetReport> =>
  Effect.gen(function*() {
    const verdicts = prompts.map((p, i) => Verifier.verify(p, images[i]))
    let clipScores: Array<number | null> = prompts.map(() => null)
    if (clip !== undefined && images.length > 0) {
      const flat = new Float32Array(images.length * images[0].length)
      images.forEach((img, i) => flat.set(img, i * img.length))
      clipScores = Array.from(yield* ClipModel.scoreArray(clip, flat, prompts.map((p) => p.text), "unit"))
    }
    const samples = prompts.map((p, i) => ({
      prompt: p.text,
      category: p.category,
      pass: verdicts[i].pass,
      partial: verdicts[i].partial,
      clip: clipScores[i]
    }))
    const row = (category: Category | "overall", rs: typeof samples): Row => ({
      category,
      n: rs.length,
      accuracy: mean(rs.map((r) => (r.pass ? 1 : 0))),
      partial: mean(rs.map((r) => (r.partial ? 1 : 0))),
      clip: clip === undefined ? null : mean(rs.map((r) => r.clip ?? 0))
    })
    const rows = [
      ...CATEGORIES.flatMap((c) => {
        const rs = samples.filter((s) => s.category === c)
        return rs.length > 0 ? [row(c, rs)] : []
      }),
      row("overall", samples)
    ]
    return { name, rows, nfePerImage, samples }
  })

const pct = (v: number) => `${(100 * v).toFixed(1)}%`

/** A markdown table of one set's report. */
export const markdown = (r: SetReport): string => {
  const lines = [
    `| ${r.name} | n | verifier accuracy | partial credit | clip score | NFE / image |`,
    "|---|---|---|---|---|---|",
    ...r.rows.map((row) =>
      `| ${row.category === "overall" ? "**overall**" : row.category} | ${row.n} | ${pct(row.accuracy)} | ${pct(row.partial)} | ${row.clip === null ? "n/a" : row.clip.toFixed(3)} | ${r.nfePerImage} |`
    )
  ]
  return lines.join("\n")
}
