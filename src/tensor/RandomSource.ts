/**
 * The run's random generator as a service, so every stage draws from one
 * seeded stream and the checkpointer can save and restore its state.
 *
 * @since 0.1.0
 */
import { Context, Layer } from "effect"
import { Rng } from "./Random.ts"

export class RandomSource extends Context.Service<RandomSource, { readonly rng: Rng }>()("sharpen/tensor/RandomSource") {
  static readonly fromSeed = (seed: number): Layer.Layer<RandomSource> => Layer.sync(RandomSource, () => ({ rng: Rng.fromSeed(seed) }))
  static readonly layerTest: Layer.Layer<RandomSource> = RandomSource.fromSeed(0)
}
