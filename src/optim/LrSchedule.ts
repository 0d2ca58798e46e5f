/**
 * The learning-rate schedule of every training in the project (sharpening,
 * pretraining, the clip reward, the lab's base model): linear warm-up over
 * `warmupSteps`, then constant, or a cosine from `lr` down to `minLr` at
 * `totalSteps`.
 *
 * @since 0.6.0
 */
import { Schema } from "effect"

export const LrSchedule = Schema.Literals(["constant", "cosine"])
export type LrSchedule = typeof LrSchedule.Type

export interface Options {
  readonly lr: number
  readonly warmupSteps: number
  readonly schedule: LrSchedule
  readonly totalSteps: number
  /** Where the cosine ends (default 0). */
  readonly minLr?: number
}

/**
 * The learning rate of a 0-based step.
 *
 * @since 0.6.0
 */
export const at = (o: Options, step: number): number => {
  if (o.warmupSteps > 0 && step < o.warmupSteps) return (o.lr * (step + 1)) / o.warmupSteps
  if (o.schedule === "constant") return o.lr
  const progress = Math.min(1, (step - o.warmupSteps) / Math.max(1, o.totalSteps - o.warmupSteps))
  const minLr = o.minLr ?? 0
  return minLr + (o.lr - minLr) * 0.5 * (1 + Math.cos(Math.PI * progress))
}
