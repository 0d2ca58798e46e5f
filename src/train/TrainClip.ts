/**
 * Contrastive training of the ShapeWorld-32 reward model ("clip") on the
 * full distribution (no held-out compositions: the reward "knows more" than
 * the generator).
 *
 * Batches: `batchSize` renders, of which a fraction (`pairedFraction`) are
 * renders of a hard negative of another batch item, so that the in-batch
 * contrast holds image-side hard negatives in both directions. Each image
 * also gets `negatives` hard-negative prompts (see HardNegatives.ts).
 *
 * Loss: symmetric InfoNCE with the learned logit scale s. Image -> text rows
 * hold the B batch prompts plus the image's K hard-negative prompts; text ->
 * image rows hold the B batch images. Batch prompts that are also true of an
 * image (the same prompt drawn twice, or e.g. "a red square to the left of a
 * blue circle" on a render of "a red square above ..." that happens to hold)
 * are masked out rather than treated as negatives. Truth is exact: same
 * object multiset and, for relation prompts, the verifier on the render.
 *
 * AdamW with warm-up and cosine decay, atomic checkpoints, exact --resume,
 * metrics.jsonl, a time budget, and a loss plot: the services and loop of
 * Pretrain.ts (`TrainingLoop.supervised`).
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect, FileSystem, Layer, Path, Schema } from "effect"
import { sampleCategory } from "../data/Dataset.ts"
import { fromBytes, IMAGE_LENGTH } from "../data/Image.ts"
import { type ParsedPrompt, sample as samplePrompt } from "../data/Prompt.ts"
import { render } from "../data/Render.ts"
import { verify } from "../data/Verifier.ts"
import * as AtomicFile from "../io/AtomicFile.ts"
import * as Stats from "../math/Stats.ts"
import * as AdamW from "../optim/AdamW.ts"
import { Checkpointer } from "../optim/Checkpointer.ts"
import { StepMetrics } from "../optim/Metrics.ts"
import { Optimizer, type OptimizerConfig } from "../optim/Optimizer.ts"
import * as Clip from "../reward/ClipModel.ts"
import * as HardNegatives from "../reward/HardNegatives.ts"
import { Backend } from "../tensor/Backend.ts"
import * as HostRead from "../tensor/HostRead.ts"
import type { Rng } from "../tensor/Random.ts"
import { RandomSource } from "../tensor/RandomSource.ts"
import * as Scoped from "../tensor/Scoped.ts"
import { lossPlot } from "./Pretrain.ts"
import * as LrSchedule from "../optim/LrSchedule.ts"
import * as TrainingLoop from "./TrainingLoop.ts"

export const TrainClipOptions = Schema.Struct({
  steps: Schema.Int.check(Schema.isGreaterThan(0)),
  batchSize: Schema.Int.check(Schema.isGreaterThan(1)),
  /** Hard-negative prompts per image (extra columns of its logits row). */
  negatives: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  /** Fraction of the batch rendered from a hard negative of another item. */
  pairedFraction: Schema.Number.check(Schema.isGreaterThanOrEqualTo(0), Schema.isLessThanOrEqualTo(0.5)),
  /** Max std of Gaussian pixel noise added to half the images ([-1, 1] units). */
  noiseStd: Schema.Number.check(Schema.isGreaterThanOrEqualTo(0)),
  lr: Schema.Number.check(Schema.isGreaterThan(0)),
  warmupSteps: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  weightDecay: Schema.Number.check(Schema.isGreaterThanOrEqualTo(0)),
  seed: Schema.Int,
  checkpointEvery: Schema.Int.check(Schema.isGreaterThan(0)),
  /** Stop (with a checkpoint) after this many minutes of training; 0 = no limit. */
  maxMinutes: Schema.Number.check(Schema.isGreaterThanOrEqualTo(0)),
  runDir: Schema.String,
  out: Schema.String,
  resume: Schema.Boolean,
  config: Clip.ClipConfig
})
export type TrainClipOptions = typeof TrainClipOptions.Type

/**
 * Hard-negative kinds the model finds hardest come first more often (see
 * `HardNegatives.sample`); changes of one color, counts and dropped objects
 * are learned early and need less weight.
 *
 * @since 0.1.0
 */
export const KIND_WEIGHTS: Partial<Record<HardNegatives.NegativeKind, number>> = {
  "swap-colors": 3,
  "swap-shapes": 3,
  shape: 3,
  relation: 3
}

/**
 * One contrastive batch: images (signed, B x 32 x 32 x 3), their prompts,
 * K hard-negative prompts per image (row-major B x K), and the mask of batch
 * prompts true of each image (B x B, 1 = true, diagonal included).
 *
 * @since 0.1.0
 */
export interface ClipBatch {
  readonly batchSize: number
  readonly images: Float32Array
  readonly parsed: ReadonlyArray<ParsedPrompt>
  readonly negatives: ReadonlyArray<string>
  readonly negativesPerImage: number
  readonly truth: Float32Array
}

/** Whether prompt `p` is true of `image`, a render of `source`. */
const trueOf = (p: ParsedPrompt, source: ParsedPrompt, image: Uint8Array): boolean => {
  if (p.text === source.text || HardNegatives.sameMeaning(p, source)) return true
  if (HardNegatives.objectMultiset(p) !== HardNegatives.objectMultiset(source)) return false
  return verify(p, image).pass
}

/**
 * Renders a contrastive batch (see module doc). Deterministic in `rng`.
 *
 * @since 0.1.0
 */
export const nextBatch = (
  rng: Rng,
  o: { readonly batchSize: number; readonly negatives: number; readonly pairedFraction: number; readonly noiseStd: number }
): ClipBatch => {
  const b = o.batchSize
  const paired = Math.floor(b * o.pairedFraction)
  const parsed: Array<ParsedPrompt> = []
  for (let i = 0; i < b - paired; i++) parsed.push(samplePrompt(rng, sampleCategory(rng), "full"))
  for (let i = 0; i < paired; i++) parsed.push(HardNegatives.sample(rng, parsed[i], 1, KIND_WEIGHTS)[0].prompt)
  const bytes = parsed.map((p) => render(p, rng))
  const images = new Float32Array(b * IMAGE_LENGTH)
  bytes.forEach((img, i) => {
    fromBytes(img, "signed", images, i * IMAGE_LENGTH)
    // Half the images get mild pixel noise (robustness to generated images).
    if (o.noiseStd > 0 && rng.uniform() < 0.5) {
      const std = o.noiseStd * rng.uniform()
      const noise = rng.normals(IMAGE_LENGTH, std)
      for (let k = 0; k < IMAGE_LENGTH; k++) images[i * IMAGE_LENGTH + k] += noise[k]
    }
  })
  const negatives = parsed.flatMap((p) => HardNegatives.sample(rng, p, o.negatives, KIND_WEIGHTS).map((n) => n.prompt.text))
  const truth = new Float32Array(b * b)
  for (let i = 0; i < b; i++) {
    for (let j = 0; j < b; j++) truth[i * b + j] = i === j || trueOf(parsed[j], parsed[i], bytes[i]) ? 1 : 0
  }
  return { batchSize: b, images, parsed, negatives, negativesPerImage: o.negatives, truth }
}

/**
 * The symmetric InfoNCE loss of a batch (scalar) and the fraction of images
 * whose own prompt wins their logits row. Pure (call inside a gradient
 * function or tidy).
 *
 * @since 0.1.0
 */
export const contrastiveLoss = (p: Clip.Model["params"], config: Clip.ClipConfig, batch: ClipBatch): tf.Scalar => {
  const b = batch.batchSize
  const k = batch.negativesPerImage
  const s = config.imageSize
  const img = Clip.embedImages(p, config, tf.tensor4d(batch.images, [b, s, s, 3]))
  const txt = Clip.embedTexts(p, config, [...batch.parsed.map((q) => q.text), ...batch.negatives])
  const [pos, neg] = tf.split(txt, [b, b * k], 0)
  const scale = Clip.logitScale(p)
  // Mask: the target itself stays; other true prompts drop out.
  const eye = tf.eye(b)
  const truth = tf.tensor2d(batch.truth, [b, b])
  const maskOut = tf.mul(tf.sub(truth, eye), -1e9)
  const sim = tf.add(tf.mul(tf.matMul(img, pos, false, true), scale), maskOut) as tf.Tensor2D
  // Cross-entropy with the target on the diagonal of the first b columns.
  const ce = (logits: tf.Tensor2D) =>
    tf.mean(tf.sub(tf.logSumExp(logits, 1), tf.sum(tf.mul(tf.slice(logits, [0, 0], [b, b]), eye), 1)))
  let rows: tf.Tensor2D = sim
  if (k > 0) {
    const negSim = tf.mul(tf.sum(tf.mul(tf.reshape(img, [b, 1, -1]), tf.reshape(neg, [b, k, -1])), 2), scale) as tf.Tensor2D
    rows = tf.concat([sim, negSim], 1) as tf.Tensor2D
  }
  const cols = tf.transpose(sim) as tf.Tensor2D
  return tf.mul(tf.add(ce(rows), ce(cols)), 0.5) as tf.Scalar
}

/**
 * Fraction of images whose own prompt outranks all its hard negatives and
 * all false batch prompts (training-time retrieval accuracy).
 */
const rowAccuracy = (p: Clip.Model["params"], config: Clip.ClipConfig, batch: ClipBatch): Effect.Effect<number> =>
  Effect.map(
    HostRead.consume(() => {
      const s = config.imageSize
      const img = Clip.embedImages(p, config, tf.tensor4d(batch.images, [batch.batchSize, s, s, 3]))
      const txt = Clip.embedTexts(p, config, [...batch.parsed.map((q) => q.text), ...batch.negatives])
      return tf.matMul(img, txt, false, true)
    }, (x) => HostRead.array<Array<Array<number>>>(x)),
    (sims) => {
      const b = batch.batchSize
      const k = batch.negativesPerImage
      let correct = 0
      for (let i = 0; i < b; i++) {
        const own = sims[i][i]
        let ok = true
        for (let j = 0; j < b && ok; j++) if (batch.truth[i * b + j] === 0 && sims[i][j] >= own) ok = false
        for (let n = 0; n < k && ok; n++) if (sims[i][b + i * k + n] >= own) ok = false
        if (ok) correct++
      }
      return correct / b
    }
  )

/**
 * One optimisation step through the `Optimizer` (AdamW on the clip model's
 * weights), then the decoupled weight decay on the weights `decayed` names
 * at the step's learning rate.
 *
 * @since 0.1.0
 */
export const trainStep = (
  model: Clip.Model,
  batch: ClipBatch,
  index: number,
  weightDecay = 0,
  decayed: (name: string) => boolean = () => false
) =>
  Effect.gen(function*() {
    const optimizer = yield* Optimizer
    const r = yield* optimizer.step(() => tf.tidy(() => contrastiveLoss(model.params, model.config, batch)), index + 1)
    // AdamW's decoupled decay, applied only to weight matrices and embeddings.
    if (weightDecay > 0) {
      tf.tidy(() => {
        for (const [k, v] of Object.entries(model.params)) if (decayed(k)) v.assign(tf.mul(v, 1 - r.lr * weightDecay))
      })
    }
    return r
  })

/** Linear warm-up, then cosine decay to 10% of the peak at `steps`. */
export const lrAt = (o: Pick<TrainClipOptions, "lr" | "warmupSteps" | "steps">, step: number): number =>
  LrSchedule.at({ lr: o.lr, minLr: 0.1 * o.lr, warmupSteps: o.warmupSteps, totalSteps: o.steps, schedule: "cosine" }, step)

/** The optimiser of the clip reward: AdamW (0.9, 0.999), clip 1, warm-up then cosine to 10% (`lrAt`). */
export const optimizerConfig = (o: Pick<TrainClipOptions, "lr" | "warmupSteps" | "steps">): OptimizerConfig => ({
  ...AdamW.defaults,
  maxGradNorm: 1,
  lr: o.lr,
  warmupSteps: o.warmupSteps,
  schedule: "cosine",
  totalSteps: o.steps,
  minLr: 0.1 * o.lr
})

/** No weight decay on norms, biases and the logit scale. */
const decayed = (name: string) => name.endsWith(".w") || name === "text.tok" || name === "text.pos"

/**
 * Train on the services of a training run (`TrainingLoop.supervised`): the
 * `Optimizer` on the clip model's weights, the `Checkpointer` in `runDir`
 * and `StepMetrics` (`runDir/metrics.jsonl`, with the accuracy every 10
 * steps and the logit scale).
 *
 * @since 0.1.0
 */
export const run = Effect.fn("TrainClip.run")(function*(o: TrainClipOptions) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const backend = yield* Backend
  const model = yield* Scoped.acquireWith(() => Clip.init(o.config, o.seed), Clip.dispose)
  yield* fs.makeDirectory(o.runDir, { recursive: true })
  const config = optimizerConfig(o)
  const services = Checkpointer.steps(o.runDir, { run: { ...o, config: undefined }, legacy: config }).pipe(
    Layer.provideMerge(Layer.mergeAll(Optimizer.adamWOf(model.params, config), StepMetrics.jsonl(path.join(o.runDir, "metrics.jsonl"), o.steps, "train-clip"))),
    Layer.provideMerge(RandomSource.fromSeed(o.seed + 1))
  )

  const { steps: step, records } = yield* Effect.gen(function*() {
    const { rng } = yield* RandomSource
    return yield* TrainingLoop.supervised({
      total: o.steps,
      resume: o.resume,
      maxMinutes: o.maxMinutes,
      checkpointEvery: o.checkpointEvery,
      step: (index) =>
        Effect.gen(function*() {
          const batch = nextBatch(rng, o)
          // Accuracy before the update, every 10 steps (a cheap extra forward).
          const accuracy = index % 10 === 0 ? yield* rowAccuracy(model.params, model.config, batch) : undefined
          const r = yield* trainStep(model, batch, index, o.weightDecay, decayed)
          const logitScale = yield* HostRead.consumeScalar(() => Clip.logitScale(model.params))
          return { ...r, accuracy, logitScale }
        })
    })
  }).pipe(Effect.provide(services))

  const losses = records.map((r) => r.loss)
  const accuracies = records.flatMap((r) => (r.accuracy === undefined ? [] : [r.accuracy]))
  const wallMinutes = records.reduce((a, r) => a + r.wallMs, 0) / 60_000
  yield* Clip.save(o.out, model, {
    trainedSteps: String(step),
    batchSize: String(o.batchSize),
    negatives: String(o.negatives),
    wallMinutes: wallMinutes.toFixed(1),
    seed: String(o.seed),
    backend: backend.name,
    split: "full"
  })
  const svg = yield* Effect.promise(() =>
    lossPlot(losses, `ShapeWorld-32 clip reward: contrastive loss (batch ${o.batchSize}, ${o.negatives} hard negatives)`)
  )
  yield* AtomicFile.writeText(path.join(o.out, "loss.svg"), svg)
  yield* AtomicFile.writeText(path.join(o.runDir, "losses.json"), JSON.stringify({ step, wallMinutes, losses, accuracies }))
  return {
    step,
    wallMinutes,
    finalLoss: Stats.mean(losses.slice(-100), NaN),
    finalAccuracy: Stats.mean(accuracies.slice(-10), NaN)
  }
})
