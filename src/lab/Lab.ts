/**
 * The 2-D lab's experiment: every method of the project, through the same
 * `Sharpen.loop` and layer stacks as ShapeWorld (only the model directory,
 * the reward, the decoder and the SFT data source differ), at one budget of
 * training NFE, over several seeds, measured on fresh DDIM-50 samples.
 *
 * @since 0.4.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Layer, Result } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as nodePath from "node:path"
import * as Denoiser from "../model/Denoiser.ts"
import { Ema } from "../optim/Ema.ts"
import { Metrics, trainingNfe } from "../optim/Metrics.ts"
import * as MethodLayers from "../experiments/MethodLayers.ts"
import * as MethodSettings from "../experiments/MethodSettings.ts"
import type { IterationRecord } from "../optim/Metrics.ts"
import * as Sharpen from "../sharpen/Sharpen.ts"
import * as SharpenConfig from "../sharpen/SharpenConfig.ts"
import { Decoder } from "../reward/Decoder.ts"
import type { Backend } from "../tensor/Backend.ts"
import type { PathSelector } from "../trajectory/PathSelector.ts"
import * as LabModel from "./LabModel.ts"
import * as LabReward from "./LabReward.ts"
import * as Ring from "./Ring.ts"
import * as RingSource from "./RingSource.ts"

export type Algorithm = MethodLayers.Algorithm

/** Sharpening settings and, for `nft` and `group`, their objective's (MethodSettings.ObjectiveSettings). */
export type LabSettings = Partial<SharpenConfig.SharpenConfig> & Partial<MethodSettings.ObjectiveSettings>

export interface LabMethod {
  readonly name: string
  readonly algorithm: Algorithm
  /** Settings over the lab's defaults. */
  readonly settings: LabSettings
  readonly note: string
}

/**
 * The lab's run settings: the paper's n = m = 3, batch 8 and beta2, unguided
 * (the MLP is unconditional), DPO beta 5 (the best of the lab's beta sweep
 * for both DPO methods; its errors are means over 2 numbers, not on
 * ShapeWorld's scale), and the library's defaults otherwise. Each method adds
 * its own learning rate, the best of the lab's sweep (docs/method.md).
 */
export const labDefaults: Partial<SharpenConfig.SharpenConfig> = SharpenConfig.presets.lab.rlhf

/** Training NFE per run of the lab's table (sampling plus the objective's evaluations). */
export const LAB_BUDGET = 60_000

/** Iteration cap: methods with cheap iterations (standard fine-tuning) stop here first. */
export const LAB_MAX_ITERATIONS = 300

const paper = SharpenConfig.paperVariant

/** Every method of the project, faithful variants first; `lr` is each one's best of the sweep. */
export const methods: ReadonlyArray<LabMethod> = [
  { name: "rlhf-paper", algorithm: "rlhf", settings: { ...paper, beta1: 0.9, lr: 1e-5 }, note: "RLHF sharpening as published (consistent target, margin inside the log-sigmoid), AdamW beta1 0.9" },
  { name: "rlhf-paper-exact", algorithm: "rlhf", settings: { ...paper, lr: 1e-5 }, note: "... with the paper's AdamW (beta1 0)" },
  { name: "rlhf-paper-original", algorithm: "rlhf", settings: { ...paper, beta1: 0.9, target: "original", lr: 1e-5 }, note: "... with the reference code's epsilon target" },
  { name: "rlhf-paper-refmargin", algorithm: "rlhf", settings: { ...paper, beta1: 0.9, margin: "outside", lr: 1e-5 }, note: "... with the reference code's margin (outside the log-sigmoid)" },
  { name: "sft-paper", algorithm: "sft", settings: { ...paper, beta1: 0.9, lr: 1e-5 }, note: "SFT sharpening as published (consistent target)" },
  { name: "sft-paper-original", algorithm: "sft", settings: { ...paper, beta1: 0.9, target: "original", lr: 1e-5 }, note: "... with the reference code's epsilon target" },
  { name: "standard-ft", algorithm: "standard", settings: { lr: 1e-5 }, note: "denoising loss on data, no reward" },
  { name: "diffusion-dpo", algorithm: "diffusion-dpo", settings: { lr: 1e-4 }, note: "2 reference samples per prompt, ranked, Diffusion-DPO" },
  { name: "ddpo", algorithm: "ddpo", settings: { lr: 3e-5 }, note: "PPO on n policy chains (eta 1)" },
  { name: "raft", algorithm: "raft", settings: { lr: 3e-5 }, note: "best of n fresh samples, denoising loss on it" },
  { name: "rlhf-image", algorithm: "rlhf", settings: { lr: 1e-4 }, note: "image-level RLHF sharpening (the default): DPO between the best and worst paths' final images" },
  { name: "sft-image", algorithm: "sft", settings: { lr: 5e-5 }, note: "image-level SFT sharpening (the default): denoising loss on the best path's final image" },
  // Swept like image-level RLHF (docs/method.md): lr, then each one's own beta and settings over 3 seeds.
  // nft's beta acts only from a batch's second step (stepsPerBatch > 1): 0.1 is its best at K = 4.
  { name: "nft", algorithm: "nft", settings: { lr: 1e-4, nftNoise: "prompt", nftWeighting: "eps", nftBeta: 0.1 }, note: "DiffusionNFT on the paths' final images: implicit positive / negative policies weighted by r and 1 - r from group advantages (one eps and t per prompt, the adaptive loss on the eps error)" },
  { name: "group-pairs", algorithm: "group", settings: { lr: 1e-4, groupForm: "pairs", groupBeta: 5 }, note: "group-relative image-level RLHF: DPO on every pair of the n final images, weighted by the advantage gap" },
  { name: "group-awr", algorithm: "group", settings: { lr: 1e-4, groupForm: "awr", groupBeta: 3 }, note: "group-relative image-level SFT: denoising loss on every final image weighted by softmax(A / tau)" }
]

export interface RunResult extends LabModel.LabMetrics {
  readonly method: string
  readonly seed: number
  readonly iterations: number
  readonly trainingNfe: number
  readonly wallMs: number
  readonly records: ReadonlyArray<IterationRecord>
  /** A few hundred evaluation points (lab units) for the scatter plot. */
  readonly points: ReadonlyArray<readonly [number, number]>
}

export interface RunOptions {
  readonly modelDir: string
  readonly reward: LabReward.LabRewardName
  readonly seed: number
  /** Training NFE per run. */
  readonly budget: number
  readonly evalSamples: number
  readonly backend: Layer.Layer<Backend, unknown>
  /** Settings over the method's (sweeps). */
  readonly overrides?: LabSettings
  /** Path selection (default best / worst); tests flip it to check the objectives' direction. */
  readonly selector?: Layer.Layer<PathSelector>
}

/** The method's sharpening settings, validated. */
export const configOf = (method: LabMethod, o: Pick<RunOptions, "seed" | "budget" | "overrides">): SharpenConfig.SharpenConfig => {
  const layers = [method.settings, o.overrides ?? {}].map((l) => MethodSettings.splitObjective(l).config)
  const c = SharpenConfig.decode([labDefaults, ...layers, { seed: o.seed, trainingNfe: o.budget }])
  if (Result.isFailure(c)) throw new RangeError(`lab method ${method.name}: ${c.failure.message}`)
  return c.success
}

/** The method's objective settings (nft, group), validated. */
export const objectiveOf = (method: LabMethod, o: Pick<RunOptions, "overrides">): MethodSettings.ObjectiveSettings => {
  const layers = [method.settings, o.overrides ?? {}].map((l) => MethodSettings.splitObjective(l).objective)
  const s = MethodSettings.decodeObjective(Object.assign({}, ...layers))
  if (Result.isFailure(s)) throw new RangeError(`lab method ${method.name}: ${s.failure.message}`)
  return s.success
}

const stack = (method: LabMethod, c: SharpenConfig.SharpenConfig, o: RunOptions, runDir: string) =>
  MethodLayers.layers(method.algorithm, c, {
    model: o.modelDir,
    runDir,
    reward: LabReward.layer(o.reward),
    backend: o.backend,
    metrics: Metrics.memory,
    decoder: Decoder.scaled(Ring.SCALE),
    label: method.name,
    ...(o.selector === undefined ? {} : { selector: o.selector })
  }, RingSource.layer, objectiveOf(method, o))

/** Evaluation seed: the same fresh samples for every method and the base. */
export const EVAL_SEED = 12345

/**
 * Train one method from the base model for one seed and measure it.
 *
 * @since 0.4.0
 */
export const run = (method: LabMethod, o: RunOptions) =>
  Effect.gen(function*() {
    const c = configOf(method, o)
    const runDir = fs.mkdtempSync(nodePath.join(os.tmpdir(), "lab-"))
    const started = performance.now()
    return yield* Effect.gen(function*() {
      yield* Sharpen.loop(c)
      const records = yield* (yield* Metrics).records
      const wallMs = performance.now() - started
      const model = (yield* Ema).model()
      const evaluation = measured(yield* LabModel.sample(model, o.evalSamples, EVAL_SEED), o.reward)
      return {
        method: method.name,
        seed: o.seed,
        iterations: records.length,
        trainingNfe: trainingNfe(records),
        wallMs,
        records,
        ...evaluation
      } satisfies RunResult
    }).pipe(
      Effect.provide(stack(method, c, o, runDir)),
      Effect.scoped,
      Effect.ensuring(Effect.sync(() => fs.rmSync(runDir, { recursive: true, force: true })))
    )
  })

/** The base model's measures (and points) on the evaluation samples. */
export const base = (model: Denoiser.Model, reward: LabReward.LabRewardName, evalSamples: number) =>
  Effect.map(LabModel.sample(model, evalSamples, EVAL_SEED), (pts) => measured(pts, reward))

/** Points to draw in a scatter per evaluation. */
const SCATTER_POINTS = 400

/**
 * The lab's measures of evaluation points (lab units), with the first few
 * hundred kept for the scatter plot.
 *
 * @since 0.4.0
 */
export const measured = (pts: Float32Array, reward: LabReward.LabRewardName) => ({
  ...LabModel.measure(pts, reward),
  points: Array.from({ length: Math.min(SCATTER_POINTS, pts.length / 2) }, (_, i) => [pts[2 * i], pts[2 * i + 1]] as const)
})

export const liveTensors = () => tf.memory().numTensors
