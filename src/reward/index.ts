/**
 * Rewards: the `Reward` service, the `Decoder` stage, built-in rewards,
 * combinators, typed errors, mocks and the registry by name.
 *
 * @since 0.1.0
 */
export * as Aesthetic from "./Aesthetic.ts"
export * as Clip from "./Clip.ts"
export * as Combinators from "./Combinators.ts"
export * as Compositional from "./Compositional.ts"
export * as Compressibility from "./Compressibility.ts"
export { Decoder, type DecoderService, scoreSamples } from "./Decoder.ts"
export * as Http from "./Http.ts"
export * as Mllm from "./Mllm.ts"
export * as Registry from "./Registry.ts"
export {
  constantReward,
  functionReward,
  Reward,
  RewardMetadata,
  type RewardService,
  type ScoreFn,
  scriptedReward,
  type ScriptedOptions
} from "./Reward.ts"
export * from "./RewardError.ts"
export { StatTracker, StatTrackerState } from "./Combinators.ts"
