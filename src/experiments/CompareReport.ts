/**
 * The report of `pipelines/compare.ts`: Table 1 (verifier accuracy with
 * Wilson intervals, rewards, NFE), per-category tables, training cost, the
 * inference-time table, Tables 2-3 of the ablations, and the plots, written
 * as a marked block into the results file (a block of another name, and
 * the text around it, are kept).
 *
 * @since 0.6.0
 */
import { Console, Effect, FileSystem, Option, Path } from "effect"
import * as Plot from "../eval/Plot.ts"
import * as Wilson from "../eval/Wilson.ts"
import * as AtomicFile from "../io/AtomicFile.ts"
import * as Stats from "../math/Stats.ts"
import type * as Generate from "../trajectory/Generate.ts"
import * as Compare from "./Compare.ts"
import type { Plan } from "./ComparePlan.ts"
import type { Ablation, MainResults } from "./CompareStages.ts"
import * as MethodSettings from "./MethodSettings.ts"

export interface Options {
  readonly plan: Plan
  readonly out: string
  readonly rewardName: string
  readonly sampler: Generate.SamplerOptions
  /** The results markdown file (default `<out>/results.md`). */
  readonly results: Option.Option<string>
  /** Name of the block: `<!-- compare-<name>:begin -->` (default `compare`). */
  readonly block: Option.Option<string>
  /** Directory of the plots (default `img/<block>` beside the results file, else `<out>/plots`). */
  readonly plots: Option.Option<string>
  readonly methodSettings: Option.Option<string>
  readonly perMethod: MethodSettings.MethodSettings
  /** The reward-hacking grid written by the stages. */
  readonly hackingGrid: string
}

/**
 * Write the tables and plots of the stages' results.
 *
 * @since 0.6.0
 */
export const write = (o: Options, results: MainResults, ablations: ReadonlyArray<Ablation>) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const { plan, perMethod } = o
    const { trained, base, baseSmall, inference, sharpenedSmall, hacking, curves } = results
    const hackingGrid = o.hackingGrid
    // 4. Tables and plots.
    // One results file can hold several comparisons (e.g. the iteration-count table and the budget one).
    const blockName = Option.match(o.block, { onNone: () => "compare", onSome: (b) => `compare-${b}` })
    const plots = Option.getOrElse(o.plots, () => Option.isSome(o.results) ? path.join(path.dirname(o.results.value), "img", blockName) : path.join(o.out, "plots"))
    // Each method logs its own statistic (sharpening: the sum of m x0-estimate
    // rewards per path; DDPO: final images of the policy; Diffusion-DPO: the
    // frozen reference's samples), so the plot shows each curve's change
    // from its own start, not levels on one scale.
    // Smoothing over a tenth of the longest run (under a budget the cap is not a run's length).
    const smooth = Math.max(1, Math.round(Math.max(0, ...trained.map((t) => t.summary.iterations)) / 10))
    const fig46 = yield* Effect.promise(() =>
      Plot.lineSvg({
        title: `Training reward minus its first-3-iteration mean (each method's own statistic), reward ${o.rewardName}`,
        x: "iteration",
        y: "reward change",
        series: "method",
        smooth,
        rows: trained.filter((t) => t.seed === plan.seeds[0] && t.method !== "standard").flatMap((t) => {
          const start = Stats.meanStd(t.summary.curve.slice(0, 3).map((c) => c.rewardMean)).mean
          return t.summary.curve.map((c) => ({ iteration: c.iteration, "reward change": c.rewardMean - start, method: Compare.LABELS[t.method] }))
        })
      }))
    const fig5 = yield* Effect.promise(() =>
      Plot.lineSvg({
        title: `Reward (${o.rewardName}) of the final images vs NFE per image`,
        x: "NFE per image",
        y: "reward",
        series: "family",
        points: true,
        rows: [baseSmall, ...inference, ...sharpenedSmall.map((s) => s.eval)].map((e) => ({ "NFE per image": e.nfePerImage, reward: e.sets[0].reward, family: e.family === "base" ? "best-of-N" : e.family }))
          .concat(inference.filter((e) => e.family !== "best-of-N").length > 0 ? [{ "NFE per image": baseSmall.nfePerImage, reward: baseSmall.sets[0].reward, family: "step search" }] : [])
      }))
    // Reward (and, with --curve-evals, accuracy) against training NFE: the
    // training curves are each method's own statistic as above; the curve
    // evaluations score every method's final images on the same prompts.
    const estimated = trained.some((t) => Compare.nfeCurve(t.summary).estimated)
    const trainingCurve = yield* Effect.promise(() =>
      Plot.lineSvg({
        title: `Training reward minus its first-3-iteration mean vs training NFE, reward ${o.rewardName}${estimated ? " (NFE of older stages estimated)" : ""}`,
        x: "training NFE",
        y: "reward change",
        series: "method",
        scheme: "tableau10",
        smooth,
        rows: trained.filter((t) => t.seed === plan.seeds[0] && t.method !== "standard").flatMap((t) => {
          const start = Stats.meanStd(t.summary.curve.slice(0, 3).map((c) => c.rewardMean)).mean
          const nfe = Compare.nfeCurve(t.summary).points
          return t.summary.curve.map((c, i) => ({ "training NFE": nfe[i], "reward change": c.rewardMean - start, method: Compare.LABELS[t.method] }))
        })
      }))
    const curvePlots: Array<readonly [string, string]> = []
    if (curves.length > 0) {
      const setName = curves[0].points[0].eval.sets[0].name
      const n = Compare.overall(curves[0].points[0].eval.sets[0]).n
      const rows = curves.flatMap((c) =>
        c.points.map((p) => ({
          "training NFE": p.trainingNfe,
          "verifier accuracy %": 100 * Compare.overall(p.eval.sets[0]).accuracy,
          reward: p.eval.sets[0].reward,
          method: Compare.LABELS[c.method]
        }))
      )
      for (const [name, y] of [["accuracy-vs-training-nfe", "verifier accuracy %"], ["eval-reward-vs-training-nfe", "reward"]] as const) {
        curvePlots.push([name, yield* Effect.promise(() =>
          Plot.lineSvg({
            title: `${y === "reward" ? `Reward (${o.rewardName}) of the final images` : "Verifier accuracy"} vs training NFE (${n} ${setName} prompts, first seed)`,
            x: "training NFE",
            y,
            series: "method",
            scheme: "tableau10",
            points: true,
            rows
          }))])
      }
    }
    for (const [name, svg] of [["reward-vs-iteration", fig46], ["reward-vs-nfe", fig5], ["reward-vs-training-nfe", trainingCurve], ...curvePlots] as const) {
      yield* AtomicFile.writeText(path.join(plots, `${name}.svg`), svg)
      yield* AtomicFile.writeFile(path.join(plots, `${name}.png`), Plot.svgToPng(svg))
    }
    if (hacking !== undefined && (yield* fs.exists(hackingGrid))) {
      yield* AtomicFile.writeFile(path.join(plots, "reward-hacking.png"), yield* fs.readFile(hackingGrid))
    }

    const seedsOf = (m: Compare.FinetuneMethod) => trained.filter((t) => t.method === m)
    const rowOf = (m: Compare.FinetuneMethod) => {
      const runs = seedsOf(m)
      const first = runs[0].eval
      // Under a budget, the NFE each method spent and the iterations it ran (first seed).
      const training = plan.budget > 0 ? { training: Compare.trainingOf(runs[0].summary) } : {}
      if (runs.length === 1) return { label: Compare.LABELS[m], eval: first, ...training }
      const spread = first.sets.map((_, i) => Stats.meanSampleStd(runs.map((r) => Compare.overall(r.eval.sets[i]).accuracy)).std)
      return { label: `${Compare.LABELS[m]} (seed ${runs[0].seed}; ± sample SD over ${runs.length} seeds)`, eval: first, spread, ...training }
    }
    // The paper's rows in its order, then this project's (RAFT with the baselines).
    const order: Array<Compare.FinetuneMethod> = ["standard", "diffusion-dpo", "ddpo", "raft", "sft-sharpening", "rlhf-sharpening", "sft-sharpening-image", "rlhf-sharpening-image", "nft", "group-pairs"]
    const table = Compare.table1([{ label: "base model", eval: base }, ...order.filter((m) => plan.methods.includes(m)).map(rowOf)])
    const inferenceTable = Compare.table1([
      { label: "base model", eval: baseSmall },
      ...inference.map((e) => ({ label: e.row, eval: e })),
      ...sharpenedSmall.map((e) => ({ label: Compare.LABELS[e.method], eval: e.eval }))
    ])
    const costs = [
      "| method | seed | iterations | training min | sampling NFE | training NFE (sampling + objective) | reward calls |",
      "|---|---|---|---|---|---|---|",
      ...trained.map((t) =>
        `| ${Compare.LABELS[t.method]} | ${t.seed} | ${t.summary.iterations} | ${t.summary.wallMinutes.toFixed(1)} | ${t.summary.nfe} | ${t.summary.trainingNfe ?? "not recorded"} | ${t.summary.rewardCalls} |`
      )
    ].join("\n")
    const ownSettings = MethodSettings.describe(
      Object.fromEntries(Object.entries(perMethod).filter(([m]) => plan.methods.includes(m as Compare.FinetuneMethod))),
      (m) => Compare.LABELS[m as Compare.FinetuneMethod]
    )
    const ablationTable = (axis: "n" | "m") => {
      const rows = ablations.filter((a) => a.axis === axis)
      if (rows.length === 0) return ""
      return [
        `| ${axis} | ${rows[0].eval.sets.map((s) => `${s.name} accuracy % [95% CI]`).join(" | ")} | reward (seen) | training min | training NFE |`,
        `|---|${rows[0].eval.sets.map(() => "---|").join("")}---|---|---|`,
        ...rows.map((a) =>
          `| ${a.value} | ${a.eval.sets.map((s) => Wilson.format(Compare.overall(s).accuracy, Compare.overall(s).n)).join(" | ")} | ${a.eval.sets[0].reward.toFixed(3)} | ${a.summary.wallMinutes.toFixed(1)} | ${a.summary.nfe} |`
        )
      ].join("\n")
    }
    // Table 1's order, first seed.
    const categoryRows = [
      { label: "base model", eval: base },
      ...order.flatMap((m) => trained.filter((t) => t.method === m && t.seed === plan.seeds[0]).map((t) => ({ label: Compare.LABELS[t.method], eval: t.eval })))
    ]
    const resultsFile = Option.getOrElse(o.results, () => path.join(o.out, "results.md"))
    const n = (s: Compare.EvalSummary) => s.sets.map((x) => `${Compare.overall(x).n} ${x.name}`).join(" + ")
    const block = [
      `Generated by \`npx tsx pipelines/compare.ts ${process.argv.slice(2).join(" ")}\` (stages in \`${o.out}\`).`,
      `Reward optimised by every method: \`${o.rewardName}\`. Fine-tuning: ` +
      (plan.budget > 0
        ? `a budget of ${plan.budget} training NFE each (sampling plus the objective's model evaluations; at most ${plan.iterations} iterations)`
        : `${plan.iterations} iterations each`) +
      `, lr ${plan.lr}${ownSettings.length > 0 ? " unless set per method below" : ""}, seeds ${plan.seeds.join(", ")}; evaluation DDIM ${o.sampler.steps}, CFG ${o.sampler.cfg}, eta 0 on ${n(base)} prompts.`,
      "",
      "### Table 1: verifier accuracy (overall), clip score, other rewards, NFE per image",
      "",
      table,
      "",
      ...(ownSettings.length > 0
        ? [`Per-method settings (\`${Option.getOrElse(o.methodSettings, () => "")}\`, over the shared ones; recorded in each stage's \`run/run.json\`):`, "", ...ownSettings, ""]
        : []),
      ...seedsSection(trained, base),
      "Per category:",
      "",
      Compare.categoryTable(0, categoryRows),
      "",
      ...(base.sets.length > 1 ? [Compare.categoryTable(1, categoryRows), ""] : []),
      `### Training cost (same reward, ${plan.budget > 0 ? "same training-NFE budget" : "same iterations"})`,
      "",
      costs,
      "",
      `### Inference-time methods on the base model (${n(baseSmall)} prompts)`,
      "",
      inferenceTable,
      "",
      "![reward vs iteration](" + path.relative(path.dirname(resultsFile), path.join(plots, "reward-vs-iteration.png")) + ")",
      "",
      "Training reward per iteration, as each method logs it: sharpening as published, the sum over the m scored steps of the reward of the model's x0 estimates, mean over paths; " +
      "image-level sharpening and RAFT, the reward of each path's final image; " +
      "DDPO, the policy's final images; Diffusion-DPO, the frozen reference's samples (flat by construction). Each curve is drawn relative to its own first 3 iterations, so only the trends compare.",
      "",
      "![reward vs NFE](" + path.relative(path.dirname(resultsFile), path.join(plots, "reward-vs-nfe.png")) + ")",
      "",
      "![training reward vs training NFE](" + path.relative(path.dirname(resultsFile), path.join(plots, "reward-vs-training-nfe.png")) + ")",
      "",
      "The same training curves against cumulative training NFE (sampling plus the objective's model evaluations), the budget's unit" +
      (estimated ? "; stages written before the objective's NFE were recorded are drawn at their sampling NFE, spread evenly over their iterations." : "."),
      ...curvePlots.flatMap(([name]) => ["", `![${name.replace(/-/g, " ")}](` + path.relative(path.dirname(resultsFile), path.join(plots, `${name}.png`)) + ")"]),
      ...(curves.length > 0
        ? [
          "",
          `Each method's ${plan.curveEvals} evenly spaced points of training (the last its final model; the first seed) and the base model at 0, sampled with the evaluation's sampler on ${n(curves[0].points[0].eval)} prompts.`
        ]
        : []),
      ...(hacking === undefined ? [] : [
        "",
        `### Where the learned reward and the verifier disagree (${hacking.row}, ${hacking.n} ${hacking.set} prompts)`,
        "",
        `${hacking.passes} of ${hacking.n} samples pass the verifier; median clip score ${hacking.medianClipPass?.toFixed(3) ?? "n/a"} for passes and ${hacking.medianClipFail?.toFixed(3) ?? "n/a"} for failures. ` +
        `${hacking.failsAbovePassMedian} of the ${hacking.n - hacking.passes} failures score at least the median pass: images the reward would train toward that the verifier rejects. ` +
        `The ${hacking.examples.length} failures it scores highest (label: clip score, prompt):`,
        "",
        "![reward hacking](" + path.relative(path.dirname(resultsFile), path.join(plots, "reward-hacking.png")) + ")"
      ]),
      ...(ablations.length > 0 ? ["", `Ablations: RLHF sharpening, ${plan.ablationIterations} iterations each${plan.budget > 0 ? ` at most, within the budget of ${plan.budget} training NFE` : ""}, evaluated on ${n(ablations[0].eval)} prompts.`, "", "### Table 2: samples n (m = 3)", "", ablationTable("n"), "", "n = 1 is not a point of RLHF sharpening here: one path gives no best/worst pair (the config requires n >= 2). The paper equates n = 1 with plain Diffusion-DPO, which is Table 1's Diffusion-DPO row.", "", "### Table 3: steps m (n = 3)", "", ablationTable("m")] : [])
    ].join("\n")
    const file = resultsFile
    const begin = `<!-- ${blockName}:begin -->`
    const end = `<!-- ${blockName}:end -->`
    const old = (yield* fs.exists(file)) ? yield* fs.readFileString(file) : ""
    // The block is replaced in place; a file without it keeps its text and gets the block at its end.
    const text = old.includes(begin) && old.includes(end)
      ? old.slice(0, old.indexOf(begin) + begin.length) + "\n" + block + "\n" + old.slice(old.indexOf(end))
      : old === ""
      ? `# Comparison\n\n${begin}\n${block}\n${end}\n`
      : `${old.replace(/\n*$/, "")}\n\n${begin}\n${block}\n${end}\n`
    yield* AtomicFile.writeText(file, text)
    yield* Console.log(`${table}\n\nwritten: ${file}`)
    return table
  })

/**
 * Each method run with several seeds, against the base model on the same
 * prompts and sampler: the change of the optimised reward and aesthetic
 * score, verifier and colour accuracy, per seed and as the mean with its
 * Student-t 95% interval over seeds, and in how many seeds the reward rose.
 *
 * @since 0.7.0
 */
export const seedsSection = (trained: MainResults["trained"], base: Compare.EvalSummary): Array<string> => {
  const methods = [...new Set(trained.map((t) => t.method))].filter((m) => trained.filter((t) => t.method === m).length > 1)
  if (methods.length === 0) return []
  const pct = (x: number) => (100 * x).toFixed(1)
  const signed = (x: number, digits: number) => `${x >= 0 ? "+" : ""}${x.toFixed(digits)}`
  const colour = (s: Compare.EvalSummary["sets"][number]) => s.rows.find((r) => r.category === "color")?.accuracy ?? NaN
  const sets = base.sets.map((s) => s.name)
  const header = [
    "| method | seed | " + sets.map((n) => `reward change (${n})`).join(" | ") + " | " + sets.map((n) => `accuracy % (${n}; base ${pct(Compare.overall(base.sets[sets.indexOf(n)]).accuracy)})`).join(" | ") +
    ` | aesthetic change (${sets[0]}) | colour accuracy % (${sets[0]}; base ${pct(colour(base.sets[0]))}) |`,
    `|---|---|${sets.map(() => "---|").join("")}${sets.map(() => "---|").join("")}---|---|`
  ]
  const rows: Array<string> = []
  const verdicts: Array<string> = []
  for (const m of methods) {
    const runs = trained.filter((t) => t.method === m)
    const reward = sets.map((_, i) => runs.map((r) => r.eval.sets[i].reward - base.sets[i].reward))
    const accuracy = sets.map((_, i) => runs.map((r) => Compare.overall(r.eval.sets[i]).accuracy))
    const aesthetic = runs.map((r) => r.eval.sets[0].aesthetic - base.sets[0].aesthetic)
    const colours = runs.map((r) => colour(r.eval.sets[0]))
    runs.forEach((r, k) => {
      rows.push(
        `| ${Compare.LABELS[m]} | ${r.seed} | ${reward.map((d) => signed(d[k], 3)).join(" | ")} | ${accuracy.map((a) => pct(a[k])).join(" | ")} | ${signed(aesthetic[k], 3)} | ${pct(colours[k])} |`
      )
    })
    // Changes carry their sign; levels (accuracy) do not.
    const ci = (xs: ReadonlyArray<number>, digits: number, scale = 1, change = true) => {
      const t = Stats.tInterval95(xs)
      const f = (x: number) => (change ? signed(scale * x, digits) : (scale * x).toFixed(digits))
      return `${f(t.mean)} [${f(t.mean - t.half)}, ${f(t.mean + t.half)}]`
    }
    rows.push(
      `| ${Compare.LABELS[m]} | mean [95% t] | ${reward.map((d) => ci(d, 3)).join(" | ")} | ${accuracy.map((a) => ci(a, 1, 100, false)).join(" | ")} | ${ci(aesthetic, 3)} | ${ci(colours, 1, 100, false)} |`
    )
    const up = reward.map((d) => d.filter((x) => x > 0).length)
    verdicts.push(`- **${Compare.LABELS[m]}**: the reward rose in ${sets.map((n, i) => `${up[i]} of ${runs.length} seeds on ${n}`).join(", ")}.`)
  }
  return [
    `### Over seeds: change from the base model (same prompts and sampler)`,
    "",
    ...header,
    ...rows,
    "",
    ...verdicts,
    "",
    `Reward: the reward every method optimised, the mean over the set's prompts, minus the base model's. The interval is Student's t over seeds (${
      [...new Set(methods.map((m) => trained.filter((t) => t.method === m).length))].sort((a, b) => a - b).map((n) => `${n} seeds: t = ${Stats.t975(n - 1).toFixed(2)}`).join("; ")
    }), the seeds' spread only: the prompts are the same for every seed.`,
    ""
  ]
}

