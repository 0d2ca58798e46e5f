/**
 * Discrete-time noise schedules (DDPM convention, as in diffusers):
 * x_t = alpha_t * x0 + sigma_t * eps with alpha_t = sqrt(alphas_cumprod[t]),
 * sigma_t = sqrt(1 - alphas_cumprod[t]), t in [0, trainSteps).
 *
 * @since 0.1.0
 */
import { Schema } from "effect"

const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))
const Beta = Schema.Number.check(Schema.isGreaterThan(0), Schema.isLessThan(1))

export const ScheduleConfig = Schema.Union([
  Schema.Struct({ kind: Schema.Literal("linear"), trainSteps: PositiveInt, betaStart: Beta, betaEnd: Beta }),
  /** Stable Diffusion / SDXL: betas linear in sqrt space. */
  Schema.Struct({ kind: Schema.Literal("scaled_linear"), trainSteps: PositiveInt, betaStart: Beta, betaEnd: Beta }),
  /** Nichol & Dhariwal (2021), offset s = 0.008, betas clipped at 0.999. */
  Schema.Struct({ kind: Schema.Literal("cosine"), trainSteps: PositiveInt })
])
export type ScheduleConfig = typeof ScheduleConfig.Type

/**
 * A materialised schedule: plain Float64Arrays, no tensors, so it is shared
 * freely and needs no disposal.
 *
 * @since 0.1.0
 */
export interface Schedule {
  readonly config: ScheduleConfig
  readonly trainSteps: number
  readonly betas: Float64Array
  readonly alphasCumprod: Float64Array
}

export const make = (config: ScheduleConfig): Schedule => {
  const n = config.trainSteps
  const betas = new Float64Array(n)
  switch (config.kind) {
    case "linear":
      for (let i = 0; i < n; i++) betas[i] = config.betaStart + (config.betaEnd - config.betaStart) * (n === 1 ? 0 : i / (n - 1))
      break
    case "scaled_linear": {
      const a = Math.sqrt(config.betaStart)
      const b = Math.sqrt(config.betaEnd)
      for (let i = 0; i < n; i++) betas[i] = (a + (b - a) * (n === 1 ? 0 : i / (n - 1))) ** 2
      break
    }
    case "cosine": {
      const f = (t: number) => Math.cos(((t / n + 0.008) / 1.008) * (Math.PI / 2)) ** 2
      for (let i = 0; i < n; i++) betas[i] = Math.min(1 - f(i + 1) / f(i), 0.999)
      break
    }
  }
  const alphasCumprod = new Float64Array(n)
  let prod = 1
  for (let i = 0; i < n; i++) {
    prod *= 1 - betas[i]
    alphasCumprod[i] = prod
  }
  return { config, trainSteps: n, betas, alphasCumprod }
}

/** alpha_t = sqrt(alphas_cumprod[t]); t = -1 means the clean data (alpha = 1). */
export const alpha = (s: Schedule, t: number): number => (t < 0 ? 1 : Math.sqrt(s.alphasCumprod[t]))

/** sigma_t = sqrt(1 - alphas_cumprod[t]); t = -1 means the clean data (sigma = 0). */
export const sigma = (s: Schedule, t: number): number => (t < 0 ? 0 : Math.sqrt(1 - s.alphasCumprod[t]))

/** The defaults of the paper's SDXL runs. */
export const sdxl: ScheduleConfig = { kind: "scaled_linear", trainSteps: 1000, betaStart: 0.00085, betaEnd: 0.012 }

/** DDPM's pixel-space schedule, used by the ShapeWorld-32 models. */
export const ddpmLinear: ScheduleConfig = { kind: "linear", trainSteps: 1000, betaStart: 0.0001, betaEnd: 0.02 }
