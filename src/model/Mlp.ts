/**
 * A small MLP denoiser for low-dimensional samples (the 2-D lab, docs/method.md):
 * eps_theta(x_t, t) with a sinusoidal time embedding, unconditional (prompts
 * are accepted and ignored, so every stage of the pipeline runs unchanged).
 * It sits behind the same `Denoiser` service as the UNet: `Denoiser.eps`
 * dispatches on the config's `format`.
 *
 *   h_0 = silu(W_in [x, emb(t)] + b_in),  h_{l+1} = h_l + W_l2 silu(W_l1 h_l + b_l1) + b_l2,
 *   eps = W_out h_L + b_out
 *
 * @since 0.4.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Schema } from "effect"
import { ScheduleConfig } from "../diffusion/Schedule.ts"
import { linear, type ParamSpec, type Params, silu, spec, timestepEmbedding } from "./Layers.ts"

const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))

export const MlpArchitecture = Schema.Struct({
  /** Values per sample (2 for the lab's points). */
  dim: PositiveInt,
  hidden: PositiveInt,
  /** Residual blocks after the input layer. */
  blocks: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  /** Sinusoidal time-embedding width (even). */
  timeDim: PositiveInt.check(Schema.makeFilter((n: number) => n % 2 === 0 || "an even number"))
})
export type MlpArchitecture = typeof MlpArchitecture.Type

export const MlpConfig = Schema.Struct({
  format: Schema.Literal("diffusion-sharpening/mlp@1"),
  architecture: MlpArchitecture,
  schedule: ScheduleConfig,
  prediction: Schema.Literals(["epsilon", "v_prediction"]),
  /** Unused (unconditional); kept so every model config has one. */
  vocabulary: Schema.Array(Schema.String)
})
export type MlpConfig = typeof MlpConfig.Type

/** The lab's denoiser: 2-D points, 3 residual blocks of 128. */
export const labConfig: MlpConfig = {
  format: "diffusion-sharpening/mlp@1",
  architecture: { dim: 2, hidden: 128, blocks: 3, timeDim: 32 },
  schedule: { kind: "linear", trainSteps: 1000, betaStart: 0.0001, betaEnd: 0.02 },
  prediction: "epsilon",
  vocabulary: []
}

export const paramSpecs = (a: MlpArchitecture): Array<ParamSpec> => [
  ...spec.linear("in", a.dim + a.timeDim, a.hidden),
  ...Array.from({ length: a.blocks }, (_, l) => [...spec.linear(`b${l}.l1`, a.hidden, a.hidden), ...spec.linear(`b${l}.l2`, a.hidden, a.hidden, true)]).flat(),
  ...spec.linear("out", a.hidden, a.dim, true)
]

/** Noise prediction for x [B, dim] at per-item timesteps t. */
export const forward = (p: Params, a: MlpArchitecture, x: tf.Tensor, t: ReadonlyArray<number>): tf.Tensor =>
  tf.tidy(() => {
    const b = x.shape[0]
    const flat = tf.reshape(x, [b, a.dim])
    let h = silu(linear(p, "in", tf.concat([flat, timestepEmbedding(t, a.timeDim)], 1)))
    for (let l = 0; l < a.blocks; l++) h = tf.add(h, linear(p, `b${l}.l2`, silu(linear(p, `b${l}.l1`, h))))
    return tf.reshape(linear(p, "out", h), x.shape)
  })
