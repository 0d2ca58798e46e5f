/**
 * What `pipelines/compare.ts` will run, from its flags: the stages' sizes
 * (iterations or a training-NFE budget, prompts, seeds, ablation points),
 * their names, and each method's settings (its base, the shared settings,
 * its own, the run's length and seed). Pure: nothing is read or trained.
 *
 * @since 0.6.0
 */
import { Option, Result, Schema } from "effect"
import type { ConfigError, SharpenConfig } from "../sharpen/SharpenConfig.ts"
import * as SharpenConfigs from "../sharpen/SharpenConfig.ts"
import * as Compare from "./Compare.ts"
import * as MethodSettings from "./MethodSettings.ts"

const ints = (text: string) => text.split(",").filter((s) => s.trim() !== "").map((s) => Number(s.trim()))

/** The flags the plan is made of (compare.ts's). */
export interface Flags {
  readonly quick: boolean
  readonly trainingNfe: number
  readonly iterations: Option.Option<number>
  readonly evalPrompts: number
  readonly inferencePrompts: number
  readonly evalSteps: number
  readonly bestOf: string
  readonly stepSearch: string
  readonly ablationN: string
  readonly ablationM: string
  readonly ablationIterations: Option.Option<number>
  readonly seeds: string
  readonly curveEvals: number
  readonly curvePrompts: number
  readonly methods: string
  readonly lr: number
}

/**
 * The sizes of every stage (`--quick`: a smoke run of a few prompts and
 * steps; under a budget the iteration count is only the cap).
 *
 * @since 0.6.0
 */
export const make = (f: Flags) => {
  const q = f.quick
  const budget = f.trainingNfe
  const settings = {
    iterations: Option.getOrElse(f.iterations, () => budget > 0 ? 300 : q ? 2 : 40),
    evalPrompts: q ? 3 : f.evalPrompts,
    inferencePrompts: q ? 2 : f.inferencePrompts,
    evalSteps: q ? 4 : f.evalSteps,
    bestOf: q ? [2] : ints(f.bestOf),
    stepSearch: (q ? "1x2" : f.stepSearch).split(",").filter((s) => s.trim() !== "").map((s) => {
      const [points, branches] = s.split("x").map(Number)
      return { points, branches }
    }),
    ablation: { n: q ? [2, 3] : ints(f.ablationN), m: q ? [1, 2] : ints(f.ablationM) },
    ablationIterations: Option.getOrElse(f.ablationIterations, () => Option.getOrElse(f.iterations, () => budget > 0 ? 300 : q ? 2 : 40)),
    seeds: ints(f.seeds),
    curveEvals: f.curveEvals,
    curvePrompts: q ? 2 : f.curvePrompts
  }
  // Stages of a budget run are their own (a finished stage of another budget is not reused).
  const suffix = budget > 0 ? `-nfe${budget}` : ""
  return {
    ...settings,
    quick: q,
    budget,
    lr: f.lr,
    suffix,
    methods: f.methods.split(",").map((m) => Schema.decodeUnknownSync(Compare.FinetuneMethod)(m.trim())),
    /** The stage directory name of a method and seed. */
    stage: (method: Compare.FinetuneMethod, seed: number) => `${method}-s${seed}${suffix}`
  }
}

export type Plan = ReturnType<typeof make>

/**
 * A method's settings: its base (the published algorithm for the paper's
 * rows, as in docs/results.md's tables), the shared settings (`--config`),
 * `--lr`, its own (`--method-settings`), the smoke sizes, then the run's
 * length and seed, the same for all.
 *
 * @since 0.6.0
 */
export const configOf = (
  plan: Plan,
  shared: Record<string, unknown>,
  perMethod: MethodSettings.MethodSettings,
  files: { readonly config?: string; readonly methodSettings?: string }
) =>
(method: Compare.FinetuneMethod, seed: number, extra: Record<string, unknown> = {}): Result.Result<SharpenConfig, ConfigError> => {
  const quickConfig = plan.quick ? { batchSize: 2, n: 2, m: 2, onlineSteps: 4, inferenceSteps: 10, evalSteps: 4, evalPrompts: 2 } : {}
  const own = MethodSettings.splitObjective(perMethod[method]?.settings ?? {}).config
  const stop = { iterations: plan.iterations, seed, checkpointEvery: 5, trainingNfe: plan.budget, ...(plan.curveEvals > 1 ? { sampleEvery: 1 } : {}) }
  const file = Object.keys(own).length > 0 ? files.methodSettings : files.config
  return SharpenConfigs.decode([Compare.METHODS[method].base, shared, { lr: plan.lr }, own, quickConfig, stop, extra], file)
}

/**
 * A method's objective settings (`nft`, `group`): the defaults under its
 * own (`--method-settings`).
 *
 * @since 0.7.0
 */
export const objectiveOf = (perMethod: MethodSettings.MethodSettings, file?: string) =>
(method: Compare.FinetuneMethod): Result.Result<MethodSettings.ObjectiveSettings, ConfigError> =>
  MethodSettings.decodeObjective(MethodSettings.splitObjective(perMethod[method]?.settings ?? {}).objective, file)

