/**
 * How good is the learned reward ("clip") as a proxy for the exact verifier?
 *
 * (a) Retrieval on fresh renders (a seed disjoint from training): for each
 *     image, is its prompt scored above each of its hard negatives (every
 *     candidate of `HardNegatives.candidates`, reported per negative kind and
 *     per category), is it top-1 among the 32 prompts of its group of 32
 *     images, and top-1 among all 2826 prompts of the grammar? A retrieved
 *     prompt counts as correct when it is true of the image (a duplicate
 *     prompt, or another prompt the verifier accepts on that render).
 * (b) Agreement with the verifier on degraded and mis-rendered images, all
 *     scored against the original prompt: clean renders, renders of each
 *     kind of hard negative (the verifier fails them), Gaussian noise, box
 *     blur, dimming. Reported as AUC of the clip score predicting the
 *     verifier's pass, per degradation and pooled, and as the pairwise rate
 *     at which the true render outscores a negative render.
 *
 * `agreementWithVerifier` is the entry point for scoring any image set
 * (e.g. base-model samples) against verifier verdicts.
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Path } from "effect"
import { fromBytes, IMAGE_LENGTH, SIZE } from "../data/Image.ts"
import { CATEGORIES, type Category, enumerate, type ParsedPrompt, sample as samplePrompt } from "../data/Prompt.ts"
import { render } from "../data/Render.ts"
import { verify } from "../data/Verifier.ts"
import * as AtomicFile from "../io/AtomicFile.ts"
import * as Stats from "../math/Stats.ts"
import * as Clip from "../reward/ClipModel.ts"
import * as HardNegatives from "../reward/HardNegatives.ts"
import type { NegativeKind } from "../reward/HardNegatives.ts"
import * as HostRead from "../tensor/HostRead.ts"
import { Rng } from "../tensor/Random.ts"

// ---------------------------------------------------------------- statistics

/**
 * How well a score separates verifier passes from failures.
 *
 * - `auc`: probability that a random passing image outscores a random
 *   failing one (ties count half); 0.5 is chance. NaN without both classes.
 * - `accuracy`/`threshold`: best accuracy of "pass iff score >= threshold"
 *   over all thresholds (an optimistic, in-sample figure).
 * - `correlation`: Pearson correlation of score and pass (0/1), i.e. the
 *   point-biserial correlation.
 *
 * @since 0.1.0
 */
export interface Agreement {
  readonly n: number
  readonly passRate: number
  readonly auc: number
  readonly accuracy: number
  readonly threshold: number
  readonly correlation: number
  readonly meanScorePass: number
  readonly meanScoreFail: number
}

/**
 * `Agreement` of scores with verifier verdicts (pure).
 *
 * @since 0.1.0
 */
export const agreement = (scores: ArrayLike<number>, pass: ReadonlyArray<boolean>): Agreement => {
  const n = scores.length
  if (n !== pass.length) throw new RangeError(`${n} scores but ${pass.length} verdicts`)
  const idx = Array.from({ length: n }, (_, i) => i).sort((a, b) => scores[a] - scores[b])
  const pos = pass.filter((p) => p).length
  const neg = n - pos
  // AUC by average ranks (Mann-Whitney U).
  let rankSumPos = 0
  for (let i = 0; i < n;) {
    let j = i
    while (j + 1 < n && scores[idx[j + 1]] === scores[idx[i]]) j++
    const avgRank = (i + j) / 2 + 1
    for (let k = i; k <= j; k++) if (pass[idx[k]]) rankSumPos += avgRank
    i = j + 1
  }
  const auc = pos > 0 && neg > 0 ? (rankSumPos - (pos * (pos + 1)) / 2) / (pos * neg) : NaN
  // Best threshold: predict pass for the items at and above position i.
  let bestAcc = neg / Math.max(n, 1)
  let bestThreshold = Infinity
  let passesBelow = 0
  for (let i = 0; i < n; i++) {
    if (i === 0 || scores[idx[i]] !== scores[idx[i - 1]]) {
      const failsBelow = i - passesBelow
      const acc = (failsBelow + (pos - passesBelow)) / n
      if (acc > bestAcc) {
        bestAcc = acc
        bestThreshold = scores[idx[i]]
      }
    }
    if (pass[idx[i]]) passesBelow++
  }
  const sel = (want: boolean) => Array.from(scores).filter((_, i) => pass[i] === want)
  return {
    n,
    passRate: n === 0 ? NaN : pos / n,
    auc,
    accuracy: bestAcc,
    threshold: bestThreshold,
    correlation: Stats.pearson(scores, pass.map((p) => (p ? 1 : 0))) ?? NaN,
    meanScorePass: Stats.mean(sel(true), NaN),
    meanScoreFail: Stats.mean(sel(false), NaN)
  }
}

/**
 * Scores images against prompts with the reward model and measures how well
 * the score predicts the verifier's verdicts. `images` is N x 32 x 32 x 3,
 * row-major, in [-1, 1] (`range: "signed"`) or [0, 1] (`"unit"`).
 *
 * @since 0.1.0
 */
export const agreementWithVerifier = (
  model: Clip.Model,
  images: Float32Array,
  prompts: ReadonlyArray<string>,
  verifierPass: ReadonlyArray<boolean>,
  range: "signed" | "unit" = "signed"
): Effect.Effect<Agreement & { readonly scores: Float32Array }> =>
  Effect.map(Clip.scoreArray(model, images, prompts, range), (scores) => ({ ...agreement(scores, verifierPass), scores }))

// ---------------------------------------------------------------- embeddings

/** Every prompt of the grammar with its unit text embedding. */
interface PromptTable {
  readonly prompts: ReadonlyArray<ParsedPrompt>
  readonly index: ReadonlyMap<string, number>
  readonly emb: Float32Array
  readonly dim: number
}

const embedAllPrompts = (m: Clip.Model): Effect.Effect<PromptTable> =>
  Effect.gen(function*() {
    const prompts = CATEGORIES.flatMap((c) => enumerate(c))
    const dim = m.config.embedDim
    const emb = new Float32Array(prompts.length * dim)
    for (let i = 0; i < prompts.length; i += 512) {
      const chunk = prompts.slice(i, i + 512).map((p) => p.text)
      emb.set(yield* HostRead.consumeFloat32(() => Clip.embedTexts(m.params, m.config, chunk)), i * dim)
    }
    return { prompts, index: new Map(prompts.map((p, i) => [p.text, i])), emb, dim }
  })

/** Unit image embeddings of N signed images, [N * D]. */
const embedImageArray = (m: Clip.Model, images: Float32Array, n: number): Effect.Effect<Float32Array> =>
  Effect.gen(function*() {
    const dim = m.config.embedDim
    const out = new Float32Array(n * dim)
    for (let i = 0; i < n; i += 256) {
      const k = Math.min(256, n - i)
      const e = yield* HostRead.consumeFloat32(() =>
        Clip.embedImages(m.params, m.config, tf.tensor4d(images.subarray(i * IMAGE_LENGTH, (i + k) * IMAGE_LENGTH), [k, SIZE, SIZE, 3]))
      )
      out.set(e, i * dim)
    }
    return out
  })

const dot = (a: Float32Array, ai: number, b: Float32Array, bi: number, d: number) => {
  let s = 0
  for (let k = 0; k < d; k++) s += a[ai * d + k] * b[bi * d + k]
  return s
}


/** Whether prompt `p` is true of a render of `source` (exact). */
const trueOf = (p: ParsedPrompt, source: ParsedPrompt, image: Uint8Array): boolean =>
  p.text === source.text || HardNegatives.sameMeaning(p, source) ||
  (HardNegatives.objectMultiset(p) === HardNegatives.objectMultiset(source) && verify(p, image).pass)

// ---------------------------------------------------------------- (a) retrieval

export interface Rate {
  readonly n: number
  readonly rate: number
}
const rate = (wins: number, n: number): Rate => ({ n, rate: n === 0 ? NaN : wins / n })

class Counter {
  private readonly m = new Map<string, [number, number]>()
  add(key: string, win: boolean) {
    const c = this.m.get(key) ?? [0, 0]
    c[0] += win ? 1 : 0
    c[1] += 1
    this.m.set(key, c)
  }
  get(key: string): Rate {
    const c = this.m.get(key) ?? [0, 0]
    return rate(c[0], c[1])
  }
  toRecord(keys: ReadonlyArray<string>): Record<string, Rate> {
    return Object.fromEntries(keys.filter((k) => this.m.has(k)).map((k) => [k, this.get(k)]))
  }
}

/**
 * Retrieval results. `negativePairs*`: fraction of (image, hard negative)
 * pairs where the true prompt scores strictly higher (chance 0.5);
 * `allNegatives*`: fraction of images whose prompt beats every one of its
 * negatives; `top1InBatch`: top-1 among the 32 prompts of the image's group
 * (chance ~1/32); `top1AllPrompts`: top-1 among all 2826 prompts.
 *
 * @since 0.1.0
 */
export interface Retrieval {
  readonly images: number
  readonly negativePairsByKind: Record<string, Rate>
  readonly negativePairsByCategory: Record<string, Rate>
  readonly negativePairsOverall: Rate
  readonly allNegativesByCategory: Record<string, Rate>
  readonly allNegativesOverall: Rate
  readonly top1InBatchByCategory: Record<string, Rate>
  readonly top1InBatch: Rate
  readonly top1AllPromptsByCategory: Record<string, Rate>
  readonly top1AllPrompts: Rate
  /** Kind x category pair rates, for finding exactly where the proxy fails. */
  readonly negativePairsByCategoryAndKind: Record<string, Record<string, Rate>>
}

/** Fresh renders: `perCategory` prompts of each category (full split). */
const renderSet = (rng: Rng, perCategory: number) => {
  const parsed: Array<ParsedPrompt> = []
  for (const c of CATEGORIES) for (let i = 0; i < perCategory; i++) parsed.push(samplePrompt(rng, c, "full"))
  const order = rng.shuffle(parsed.map((_, i) => i))
  const ps = order.map((i) => parsed[i])
  const bytes = ps.map((p) => render(p, rng))
  return { parsed: ps, bytes }
}

const signedImages = (bytes: ReadonlyArray<Uint8Array>): Float32Array => {
  const out = new Float32Array(bytes.length * IMAGE_LENGTH)
  bytes.forEach((b, i) => fromBytes(b, "signed", out, i * IMAGE_LENGTH))
  return out
}

export const retrieval = (m: Clip.Model, table: PromptTable, rng: Rng, perCategory: number, groupSize = 32): Effect.Effect<Retrieval> =>
  Effect.gen(function*() {
    const { parsed, bytes } = renderSet(rng, perCategory)
    const n = parsed.length
    const d = table.dim
    const img = yield* embedImageArray(m, signedImages(bytes), n)
    const byKind = new Counter()
    const byCat = new Counter()
    const byCatKind = new Counter()
    const allNeg = new Counter()
    const top1 = new Counter()
    const top1All = new Counter()
    for (let i = 0; i < n; i++) {
      const p = parsed[i]
      const own = dot(img, i, table.emb, table.index.get(p.text)!, d)
      let beatsAll = true
      for (const neg of HardNegatives.candidates(p)) {
        const win = own > dot(img, i, table.emb, table.index.get(neg.prompt.text)!, d)
        byKind.add(neg.kind, win)
        byCat.add(p.category, win)
        byCatKind.add(`${p.category}|${neg.kind}`, win)
        byKind.add("overall", win)
        beatsAll &&= win
      }
      allNeg.add(p.category, beatsAll)
      allNeg.add("overall", beatsAll)
      // Top-1 among the whole grammar.
      let best = -Infinity
      let bestJ = 0
      for (let j = 0; j < table.prompts.length; j++) {
        const s = dot(img, i, table.emb, j, d)
        if (s > best) {
          best = s
          bestJ = j
        }
      }
      const okAll = trueOf(table.prompts[bestJ], p, bytes[i])
      top1All.add(p.category, okAll)
      top1All.add("overall", okAll)
    }
    // Top-1 within groups of `groupSize` images and their prompts.
    for (let g = 0; g + groupSize <= n; g += groupSize) {
      for (let i = g; i < g + groupSize; i++) {
        let best = -Infinity
        let bestJ = g
        for (let j = g; j < g + groupSize; j++) {
          const s = dot(img, i, table.emb, table.index.get(parsed[j].text)!, d)
          if (s > best) {
            best = s
            bestJ = j
          }
        }
        const ok = trueOf(parsed[bestJ], parsed[i], bytes[i])
        top1.add(parsed[i].category, ok)
        top1.add("overall", ok)
      }
    }
    const cats = CATEGORIES as ReadonlyArray<string>
    const byCategoryAndKind: Record<string, Record<string, Rate>> = {}
    for (const c of CATEGORIES) {
      byCategoryAndKind[c] = byCatKind.toRecord(HardNegatives.NEGATIVE_KINDS.map((k) => `${c}|${k}`))
      byCategoryAndKind[c] = Object.fromEntries(Object.entries(byCategoryAndKind[c]).map(([k, v]) => [k.split("|")[1], v]))
    }
    return {
      images: n,
      negativePairsByKind: byKind.toRecord(HardNegatives.NEGATIVE_KINDS),
      negativePairsByCategory: byCat.toRecord(cats),
      negativePairsOverall: byKind.get("overall"),
      allNegativesByCategory: allNeg.toRecord(cats),
      allNegativesOverall: allNeg.get("overall"),
      top1InBatchByCategory: top1.toRecord(cats),
      top1InBatch: top1.get("overall"),
      top1AllPromptsByCategory: top1All.toRecord(cats),
      top1AllPrompts: top1All.get("overall"),
      negativePairsByCategoryAndKind: byCategoryAndKind
    }
  })

// ---------------------------------------------------------------- (b) verifier agreement

/** Degradations of a [0, 1] image (row-major HWC), all pure given the rng. */
export const degrade = {
  noise: (img: Float32Array, std: number, rng: Rng): Float32Array => {
    const z = rng.normals(img.length, std)
    return img.map((v, i) => Math.min(1, Math.max(0, v + z[i])))
  },
  /** 3x3 box blur (edges clamp), `times` passes. */
  blur: (img: Float32Array, times: number): Float32Array => {
    let cur = img
    for (let t = 0; t < times; t++) {
      const out = new Float32Array(cur.length)
      for (let y = 0; y < SIZE; y++) {
        for (let x = 0; x < SIZE; x++) {
          for (let c = 0; c < 3; c++) {
            let s = 0
            for (let dy = -1; dy <= 1; dy++) {
              for (let dx = -1; dx <= 1; dx++) {
                const yy = Math.min(SIZE - 1, Math.max(0, y + dy))
                const xx = Math.min(SIZE - 1, Math.max(0, x + dx))
                s += cur[(yy * SIZE + xx) * 3 + c]
              }
            }
            out[(y * SIZE + x) * 3 + c] = s / 9
          }
        }
      }
      cur = out
    }
    return cur
  },
  dim: (img: Float32Array, factor: number): Float32Array => img.map((v) => v * factor)
}

/**
 * Verifier agreement on degraded and mis-rendered images (see module doc).
 * `byDegradation[k]` is the agreement among the images of degradation k
 * alone (AUC NaN when the verifier fails or passes all of them), with
 * `aucVsClean`, the AUC after adding the clean renders (defined for every
 * k), and `degradedPassRate`; `negativeRenders.pairwiseByKind` is the rate at which
 * the clean render outscores a render of a hard negative of that kind,
 * both scored against the original prompt.
 *
 * @since 0.1.0
 */
export interface VerifierAgreement {
  readonly prompts: number
  readonly overall: Agreement
  readonly byCategory: Record<string, Agreement>
  readonly byDegradation: Record<string, Agreement & { readonly aucVsClean: number; readonly degradedPassRate: number }>
  readonly negativeRenders: {
    readonly pairwiseByKind: Record<string, Rate>
    readonly pairwiseByCategory: Record<string, Rate>
    readonly pairwiseOverall: Rate
  }
  readonly meanScore: Record<string, number>
}

export const verifierAgreement = (m: Clip.Model, rng: Rng, perCategory: number): Effect.Effect<VerifierAgreement> =>
  Effect.gen(function*() {
    const base: Array<ParsedPrompt> = []
    for (const c of CATEGORIES) for (let i = 0; i < perCategory; i++) base.push(samplePrompt(rng, c, "full"))
    interface Item {
      readonly prompt: ParsedPrompt
      readonly kind: string
      readonly image: Float32Array // unit
      readonly group: number
    }
    const items: Array<Item> = []
    base.forEach((p, g) => {
      const clean = fromBytes(render(p, rng), "unit")
      items.push({ prompt: p, kind: "clean", image: clean, group: g })
      // One render of a hard negative per kind available.
      const byKind = new Map<NegativeKind, Array<HardNegatives.HardNegative>>()
      for (const c of HardNegatives.candidates(p)) byKind.set(c.kind, [...(byKind.get(c.kind) ?? []), c])
      for (const [kind, cs] of byKind) {
        items.push({ prompt: p, kind: `negative:${kind}`, image: fromBytes(render(rng.pick(cs).prompt, rng), "unit"), group: g })
      }
      for (const std of [0.1, 0.2, 0.35]) items.push({ prompt: p, kind: `noise:${std}`, image: degrade.noise(clean, std, rng), group: g })
      for (const times of [1, 2]) items.push({ prompt: p, kind: `blur:${times}`, image: degrade.blur(clean, times), group: g })
      items.push({ prompt: p, kind: "dim", image: degrade.dim(clean, 0.3 + 0.6 * rng.uniform()), group: g })
    })
    const images = new Float32Array(items.length * IMAGE_LENGTH)
    items.forEach((it, i) => images.set(it.image, i * IMAGE_LENGTH))
    const pass = items.map((it) => verify(it.prompt, it.image).pass)
    const scores = yield* Clip.scoreArray(m, images, items.map((it) => it.prompt.text), "unit")

    const subset = (keep: (it: Item) => boolean) => {
      const idx = items.flatMap((it, i) => (keep(it) ? [i] : []))
      return agreement(idx.map((i) => scores[i]), idx.map((i) => pass[i]))
    }
    const kinds = [...new Set(items.map((it) => it.kind))].filter((k) => k !== "clean")
    const byDegradation: Record<string, Agreement & { aucVsClean: number; degradedPassRate: number }> = {}
    for (const k of kinds) {
      const within = subset((it) => it.kind === k)
      byDegradation[k] = {
        ...within,
        aucVsClean: subset((it) => it.kind === k || it.kind === "clean").auc,
        degradedPassRate: within.passRate
      }
    }
    const byCategory: Record<string, Agreement> = {}
    for (const c of CATEGORIES) byCategory[c] = subset((it) => it.prompt.category === c)

    const cleanScore = new Map<number, number>()
    items.forEach((it, i) => {
      if (it.kind === "clean") cleanScore.set(it.group, scores[i])
    })
    const pairKind = new Counter()
    const pairCat = new Counter()
    items.forEach((it, i) => {
      if (!it.kind.startsWith("negative:") || pass[i]) return
      const win = cleanScore.get(it.group)! > scores[i]
      pairKind.add(it.kind.slice("negative:".length), win)
      pairCat.add(it.prompt.category, win)
      pairKind.add("overall", win)
    })
    const meanScore: Record<string, number> = {}
    for (const k of ["clean", ...kinds]) meanScore[k] = Stats.mean(items.flatMap((it, i) => (it.kind === k ? [scores[i]] : [])), NaN)
    return {
      prompts: base.length,
      overall: agreement(scores, pass),
      byCategory,
      byDegradation,
      negativeRenders: {
        pairwiseByKind: pairKind.toRecord(HardNegatives.NEGATIVE_KINDS),
        pairwiseByCategory: pairCat.toRecord(CATEGORIES as ReadonlyArray<string>),
        pairwiseOverall: pairKind.get("overall")
      },
      meanScore
    }
  })

// ---------------------------------------------------------------- report

export interface ReportOptions {
  readonly model: string
  readonly out: string
  readonly seed: number
  readonly retrievalPerCategory: number
  readonly agreementPerCategory: number
}

/**
 * The full report as JSON-ready data.
 *
 * @since 0.1.0
 */
export const report = (m: Clip.Model, o: Pick<ReportOptions, "seed" | "retrievalPerCategory" | "agreementPerCategory">) =>
  Effect.gen(function*() {
    const table = yield* embedAllPrompts(m)
    const rng = Rng.fromSeed(o.seed)
    const t0 = performance.now()
    const r = yield* retrieval(m, table, rng.fork(), o.retrievalPerCategory)
    const a = yield* verifierAgreement(m, rng.fork(), o.agreementPerCategory)
    return {
      seed: o.seed,
      chance: { negativePair: 0.5, top1InBatch: 1 / 32, top1AllPrompts: 1 / table.prompts.length },
      retrieval: r,
      verifierAgreement: a,
      seconds: (performance.now() - t0) / 1000
    }
  })
export type Report = Effect.Success<ReturnType<typeof report>>

const pct = (r: Rate | number) => {
  const v = typeof r === "number" ? r : r.rate
  return Number.isNaN(v) ? "   -  " : `${(100 * v).toFixed(1)}%`.padStart(6)
}

const fmt = (v: number) => (Number.isNaN(v) ? "  -  " : v.toFixed(3))

/**
 * A short text summary of a report (for logs and docs).
 *
 * @since 0.1.0
 */
export const formatReport = (r: Report): string => {
  const rt = r.retrieval
  const lines = [
    `retrieval on ${rt.images} fresh renders (seed ${r.seed}):`,
    `  true prompt > hard negative (pairs, chance 50%): ${pct(rt.negativePairsOverall)} overall`,
    ...HardNegatives.NEGATIVE_KINDS.filter((k) => rt.negativePairsByKind[k] !== undefined).map((k) =>
      `    ${k.padEnd(14)} ${pct(rt.negativePairsByKind[k])}  (n=${rt.negativePairsByKind[k].n})`
    ),
    `  per category     pairs  all-neg  top1/32  top1/all`,
    ...CATEGORIES.map((c: Category) =>
      `    ${c.padEnd(12)} ${pct(rt.negativePairsByCategory[c])}  ${pct(rt.allNegativesByCategory[c])}   ${pct(rt.top1InBatchByCategory[c])}   ${pct(rt.top1AllPromptsByCategory[c])}`
    ),
    `    ${"overall".padEnd(12)} ${pct(rt.negativePairsOverall)}  ${pct(rt.allNegativesOverall)}   ${pct(rt.top1InBatch)}   ${pct(rt.top1AllPrompts)}`,
    `verifier agreement on ${r.verifierAgreement.prompts} prompts x (clean, negative renders, noise, blur, dim):`,
    `  pooled: AUC ${r.verifierAgreement.overall.auc.toFixed(3)}, corr ${r.verifierAgreement.overall.correlation.toFixed(3)}, best-threshold accuracy ${pct(r.verifierAgreement.overall.accuracy)} (pass rate ${pct(r.verifierAgreement.overall.passRate)})`,
    `  clean render > negative render (same prompt): ${pct(r.verifierAgreement.negativeRenders.pairwiseOverall)}`,
    ...Object.entries(r.verifierAgreement.negativeRenders.pairwiseByKind).map(([k, v]) => `    ${k.padEnd(14)} ${pct(v)}  (n=${v.n})`),
    `  ${"images".padEnd(24)} verifier-pass  mean-score  AUC(within)  AUC(with clean)`,
    `    ${"clean".padEnd(22)} ${pct(1)}        ${r.verifierAgreement.meanScore.clean.toFixed(3)}`,
    ...Object.entries(r.verifierAgreement.byDegradation).map(([k, v]) =>
      `    ${k.padEnd(22)} ${pct(v.degradedPassRate)}        ${r.verifierAgreement.meanScore[k].toFixed(3)}       ${fmt(v.auc)}        ${fmt(v.aucVsClean)}`
    )
  ]
  return lines.join("\n")
}

/**
 * Loads a model directory, runs the report, writes it as JSON to `out`.
 *
 * @since 0.1.0
 */
export const run = Effect.fn("ClipReport.run")(function*(o: ReportOptions) {
  const path = yield* Path.Path
  const model = yield* Effect.acquireRelease(Clip.load(o.model), (m) => Effect.sync(() => Clip.dispose(m)))
  const r = yield* report(model, o)
  yield* AtomicFile.writeText(o.out, JSON.stringify({ model: path.normalize(o.model), ...r }, null, 2) + "\n")
  return r
})
