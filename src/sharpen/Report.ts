/**
 * What a sharpening run leaves behind besides checkpoints: before/after
 * evaluation on the eval prompt sets (same sampler, same seeds, same NFE),
 * contact sheets, reward and loss curves (the paper's Fig. 4 and 6), and the
 * final model directory.
 *
 * @since 0.1.0
 */
import { Effect, Path } from "effect"
import * as Inputs from "../io/Inputs.ts"
import type { ParsedPrompt } from "../data/Prompt.ts"
import * as Png from "../data/Png.ts"
import * as Evaluate from "../eval/Evaluate.ts"
import * as Wilson from "../eval/Wilson.ts"
import * as Generate from "../trajectory/Generate.ts"
import type * as JobThreads from "../parallel/JobThreads.ts"
import * as ParallelGenerate from "../parallel/ParallelGenerate.ts"
import * as Plot from "../eval/Plot.ts"
import * as AtomicFile from "../io/AtomicFile.ts"
import * as Stats from "../math/Stats.ts"
import type * as Denoiser from "../model/Denoiser.ts"
import type * as ClipModel from "../reward/ClipModel.ts"
import type { IterationRecord } from "../optim/Metrics.ts"

export const EVAL_FILES = ["data/eval/prompts-seen.txt", "data/eval/prompts-heldout.txt"]

/** `count` prompts spread evenly over the file (so every category appears); 0 = all. */
export const spread = <A>(items: ReadonlyArray<A>, count: number): Array<A> =>
  count <= 0 || count >= items.length ? [...items] : Array.from({ length: count }, (_, i) => items[Math.floor((i * items.length) / count)])

export const loadEvalSets = Effect.fn("Report.loadEvalSets")(function*(count: number, files: ReadonlyArray<string> = EVAL_FILES) {
  const path = yield* Path.Path
  const sets: Array<Evaluate.PromptSet> = []
  for (const f of files) {
    const prompts: ReadonlyArray<ParsedPrompt> = yield* Inputs.prompts(f)
    sets.push({ name: path.basename(f, ".txt"), prompts: spread(prompts, count) })
  }
  return sets
})

/**
 * Evaluate and write a contact sheet per set (`<dir>/<label>-<set>.png`).
 * The images are sampled over `transport` when given (a run's runners),
 * else on this process's worker threads; the same images either way.
 */
export const evaluateWithGrids = Effect.fn("Report.evaluateWithGrids")(function*(
  model: Denoiser.Model,
  sets: ReadonlyArray<Evaluate.PromptSet>,
  sampler: Generate.SamplerOptions,
  clip: ClipModel.Model | undefined,
  dir: string,
  label: string,
  transport?: JobThreads.Threads
) {
  const path = yield* Path.Path
  const reports: Array<Evaluate.SetReport> = []
  for (const set of sets) {
    const prompts = set.prompts.map((p) => p.text)
    const images = transport === undefined
      ? yield* Effect.promise((signal) => ParallelGenerate.generate(model, prompts, sampler, { signal }))
      : yield* ParallelGenerate.onTransport(transport, model, prompts, sampler)
    const r = yield* Evaluate.judge(set.name, set.prompts, images, Generate.nfePerImage(sampler), clip)
    reports.push(r)
    const labels = r.samples.map((s) => `${s.pass ? "ok" : "x"} ${s.prompt}`)
    yield* AtomicFile.writeFile(path.join(dir, `${label}-${set.name}.png`), Png.grid(images, labels, 8))
  }
  return reports
})

const pct = (v: number) => `${(100 * v).toFixed(1)}%`

const signed = (v: number, digits: number) => `${v >= 0 ? "+" : ""}${v.toFixed(digits)}`

/** A paired before/after line: the same prompts and seeds, so the difference's interval is the fair one. */
const paired = (before: ReadonlyArray<number>, after: ReadonlyArray<number>, digits: number, scale = 1) => {
  const d = Stats.pairedDifference(before, after)
  const verdict = d.mean - d.half > 0 ? "up" : d.mean + d.half < 0 ? "down" : "within noise"
  return `${(scale * Stats.mean(before)).toFixed(digits)} -> ${(scale * Stats.mean(after)).toFixed(digits)}, ` +
    `paired difference ${signed(scale * d.mean, digits)} ± ${(scale * d.half).toFixed(digits)} (95%, ${before.length} prompts): ${verdict}`
}

/**
 * Markdown table comparing before and after per set and category: accuracy
 * with its Wilson 95% interval, and under it the paired difference of the
 * clip score and of the verifier's partial credit over the set.
 */
export const comparison = (before: ReadonlyArray<Evaluate.SetReport>, after: ReadonlyArray<Evaluate.SetReport>): string =>
  before.map((b, i) => {
    const a = after[i]
    const rows = b.rows.map((rb, j) => {
      const ra = a.rows[j]
      const delta = 100 * (ra.accuracy - rb.accuracy)
      const clip = rb.clip === null || ra.clip === null ? "n/a" : `${rb.clip.toFixed(3)} -> ${ra.clip.toFixed(3)}`
      return `| ${rb.category} | ${rb.n} | ${Wilson.format(rb.accuracy, rb.n)} | ${Wilson.format(ra.accuracy, ra.n)} | ${signed(delta, 1)} | ${pct(rb.partial)} -> ${pct(ra.partial)} | ${clip} |`
    })
    const pairs = b.samples.length === a.samples.length && b.samples.length > 0
    const clipOf = (r: Evaluate.SetReport) => r.samples.map((s) => s.clip)
    const lines = pairs
      ? [
        ...(clipOf(b).every((c) => c !== null) && clipOf(a).every((c) => c !== null)
          ? [`- clip score ${paired(clipOf(b) as Array<number>, clipOf(a) as Array<number>, 3)}`]
          : []),
        `- partial credit (points) ${paired(b.samples.map((s) => (s.partial ? 1 : 0)), a.samples.map((s) => (s.partial ? 1 : 0)), 1, 100)}`
      ]
      : []
    return [
      `**${b.name}** (NFE per image ${b.nfePerImage} before and after; accuracy in % with its Wilson 95% interval)`,
      "",
      "| category | n | accuracy before | accuracy after | points | partial credit | clip score |",
      "|---|---|---|---|---|---|---|",
      ...rows,
      ...(lines.length > 0 ? ["", ...lines] : [])
    ].join("\n")
  }).join("\n\n")

/** Reward and loss curves (Fig. 4 / Fig. 6 of the paper) as SVG and PNG. */
export const curves = Effect.fn("Report.curves")(function*(records: ReadonlyArray<IterationRecord>, dir: string, title: string) {
  const path = yield* Path.Path
  const smooth = Math.max(1, Math.round(records.length / 20))
  const reward = yield* Effect.promise(() =>
    Plot.lineSvg({
      title: `${title}: reward of the trajectories`,
      x: "iteration",
      y: "reward",
      series: "series",
      smooth,
      rows: records.flatMap((r) => [
        { iteration: r.iteration, reward: r.rewardMean, series: "mean" },
        { iteration: r.iteration, reward: r.rewardBest, series: "best path" },
        { iteration: r.iteration, reward: r.rewardWorst, series: "worst path" }
      ])
    })
  )
  const loss = yield* Effect.promise(() =>
    Plot.lineSvg({ title: `${title}: loss`, x: "iteration", y: "loss", smooth, rows: records.map((r) => ({ iteration: r.iteration, loss: r.loss })) })
  )
  for (const [name, svg] of [["reward", reward], ["loss", loss]] as const) {
    yield* AtomicFile.writeText(path.join(dir, `${name}.svg`), svg)
    yield* AtomicFile.writeFile(path.join(dir, `${name}.png`), Plot.svgToPng(svg))
  }
})
