/**
 * Diffusion math: schedules, noising and parameterisation conversions, DDIM
 * sampling with log-likelihoods and guidance, and x0 estimators.
 *
 * @since 0.1.0
 */
export * as Ddim from "./Ddim.ts"
export * as DiffusionError from "./DiffusionError.ts"
export * as Estimators from "./Estimators.ts"
export * as Noise from "./Noise.ts"
export * as Schedule from "./Schedule.ts"
