/**
 * DDPO's rollouts (Black et al. 2023; ddpo-pytorch `pipeline_with_logprob`):
 * n samples per prompt from the current policy, full DDIM chains with
 * stochasticity eta (1: DDPM-like) and guidance, recording every state
 * x_{t_k} and the log-density of each stochastic step under the sampling
 * policy,
 *
 *   log pi(x_{t_{k+1}} | x_{t_k}, c) = log N(x_{t_{k+1}}; mu_theta(x_{t_k}, t_k, c), std_k^2 I),
 *
 * as a per-pixel mean like ddpo-pytorch (`Ddim.logProb(..., "mean")`), so
 * its clip range 1e-4 means the same thing here.
 *
 * The last step lands on clean data (a_{-1} = 1) and has std 0: it is
 * deterministic, has no density, and is not a policy step (ddpo-pytorch's SD
 * scheduler ends at a_0 instead, a tiny std); so T steps give T - 1 policy
 * steps.
 *
 * As a {@link Trajectories} value: one "step" holding the final samples
 * (`x0`, what the reward scores once per image), and the chain in `rollout`.
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Layer } from "effect"
import * as Ddim from "../diffusion/Ddim.ts"
import * as Schedule from "../diffusion/Schedule.ts"
import * as Generate from "./Generate.ts"
import * as Denoiser from "../model/Denoiser.ts"
import * as HostRead from "../tensor/HostRead.ts"
import type { Rng } from "../tensor/Random.ts"
import { RandomSource } from "../tensor/RandomSource.ts"
import * as Scoped from "../tensor/Scoped.ts"
import type { Trajectories } from "./Trajectory.ts"
import { TrajectoryGenerator } from "./TrajectoryGenerator.ts"

export interface RolloutOptions {
  /** Samples per prompt (DDPO's per-prompt statistics want several). */
  readonly n: number
  /** DDIM steps of a chain (ddpo-pytorch: 50). */
  readonly steps: number
  /** Guidance, used when sampling and when training (ddpo-pytorch: 5, `train.cfg`). */
  readonly cfg: number
  /** DDIM stochasticity (ddpo-pytorch: 1). */
  readonly eta: number
  /** Clip each step's x0 prediction to [-clip, clip] (pixel space: 1, as the repo's samplers). */
  readonly clipSample: number
}

export interface Rollout {
  /** The DDIM grid t_0 > ... > t_{T-1}; step k goes t_k -> t_{k+1} (-1 after the last). */
  readonly timesteps: ReadonlyArray<number>
  /** States x_{t_0} (pure noise) ... x_{t_{T-1}}, then the final sample: T + 1 tensors of [n*B, H, W, C]. */
  readonly latents: ReadonlyArray<tf.Tensor>
  /** logProbs[k][r]: log pi of step k of row r under the sampling policy, for the T - 1 stochastic steps. */
  readonly logProbs: ReadonlyArray<ReadonlyArray<number>>
  readonly options: RolloutOptions
}

export interface RolloutTrajectories extends Trajectories {
  readonly kind: "rollout"
  readonly rollout: Rollout
}

export const isRollout = (t: Trajectories): t is RolloutTrajectories => (t as Partial<RolloutTrajectories>).kind === "rollout"

export const dispose = (t: RolloutTrajectories): void => {
  tf.dispose([...new Set([t.x0, t.noise, ...t.rollout.latents, ...t.steps.flatMap((s) => [s.xt, s.eps, s.x0])])])
}

/**
 * Guided noise with one timestep per item: eps_u + cfg (eps_c - eps_u),
 * the same operations as `Denoiser.guidedEps` (so sampling and training
 * compute the same numbers).
 *
 * @since 0.1.0
 */
export const guidedEpsPerItem = (
  model: Denoiser.Model,
  x: tf.Tensor,
  ts: ReadonlyArray<number>,
  prompts: ReadonlyArray<string>,
  scale: number
): tf.Tensor =>
  tf.tidy(() => {
    if (scale === 1) return Denoiser.eps(model, x, ts, prompts)
    const b = x.shape[0]
    const both = Denoiser.eps(model, tf.concat([x, x], 0) as tf.Tensor, [...ts, ...ts], [...prompts, ...prompts.map(() => "")])
    const [c, u] = tf.split(both, [b, b], 0)
    return tf.add(u, tf.mul(tf.sub(c, u), scale)) as tf.Tensor
  })

/**
 * log pi(next | x, t) per item ([B]) under `model`: the DDIM step's mean from
 * the guided prediction at (x, t), its std from (t, tPrev, eta), and the
 * per-pixel-mean Gaussian log-density of `next`. Differentiable in the
 * model's parameters; used by the sampler (old log-probs) and by DDPO's loss
 * (new ones), so both compute the same function.
 *
 * @since 0.1.0
 */
export const stepLogProb = (
  model: Denoiser.Model,
  schedule: Schedule.Schedule,
  o: Pick<RolloutOptions, "cfg" | "eta" | "clipSample">,
  x: tf.Tensor,
  ts: ReadonlyArray<number>,
  tPrevs: ReadonlyArray<number>,
  prompts: ReadonlyArray<string>,
  next: tf.Tensor
): tf.Tensor1D =>
  tf.tidy(() => {
    const eps = guidedEpsPerItem(model, x, ts, prompts, o.cfg)
    // Only the mean is needed: a zero noise makes the step's sample its mean.
    const r = Ddim.step({ schedule, eps, t: ts, tPrev: tPrevs, xt: x, eta: o.eta, noise: tf.zerosLike(x), clipSample: o.clipSample })
    return Ddim.logProb(next, r.mean, r.std, "mean")
  })

/**
 * Sample n chains per prompt from the policy, recording states and
 * log-probabilities (no gradient). Row i*B + b is sample i of prompt b.
 * Model evaluations: n * B * steps, doubled by guidance. The log-probs of
 * every step are read once, at the end.
 *
 * @since 0.1.0
 */
export const rollout = Effect.fn("PolicyRollout.rollout")(function*(
  model: Denoiser.Model,
  schedule: Schedule.Schedule,
  prompts: ReadonlyArray<string>,
  rng: Rng,
  o: RolloutOptions
) {
  if (o.steps < 2) throw new RangeError(`a rollout needs at least 2 DDIM steps (the last one is deterministic), got ${o.steps}`)
  if (!(o.eta > 0)) throw new RangeError(`DDPO needs stochastic steps (eta > 0), got eta = ${o.eta}`)
  const b = prompts.length
  const rows = o.n * b
  const shape = [rows, ...Denoiser.sampleShape(model.config)]
  const rowPrompts = Array.from({ length: rows }, (_, r) => prompts[r % b])
  const grid = Ddim.timesteps(schedule.trainSteps, o.steps)
  const latents: Array<tf.Tensor> = [Generate.normalTensor(rng, shape) as tf.Tensor]
  const lps: Array<tf.Tensor> = []
  let lastEps: tf.Tensor | undefined
  const release = () => {
    tf.dispose(latents)
    lastEps?.dispose()
  }
  try {
    for (let k = 0; k < grid.length; k++) {
      const x = latents[k]
      const ts = new Array<number>(rows).fill(grid[k])
      const tPrevs = new Array<number>(rows).fill(k + 1 < grid.length ? grid[k + 1] : -1)
      const stochastic = k + 1 < grid.length
      const z = stochastic ? (Generate.normalTensor(rng, shape) as tf.Tensor) : undefined
      let std: number | ReadonlyArray<number> = 0
      const out = tf.tidy(() => {
        const eps = guidedEpsPerItem(model, x, ts, rowPrompts, o.cfg)
        const r = Ddim.step({ schedule, eps, t: ts, tPrev: tPrevs, xt: x, eta: stochastic ? o.eta : 0, noise: z, clipSample: o.clipSample })
        std = r.std
        return { eps, next: r.prevSample, mean: r.mean }
      })
      z?.dispose()
      latents.push(out.next)
      if (stochastic) {
        lps.push(tf.tidy(() => Ddim.logProb(out.next, out.mean, std, "mean")))
        tf.dispose([out.eps, out.mean])
      } else {
        out.mean.dispose()
        lastEps = out.eps
      }
    }
  } catch (e) {
    release()
    tf.dispose(lps)
    throw e
  }
  const logProbs = yield* HostRead.consume(() => tf.stack(lps), (x) => HostRead.array<Array<Array<number>>>(x)).pipe(
    Effect.ensuring(Effect.sync(() => tf.dispose(lps))),
    Effect.onError(() => Effect.sync(release))
  )
  const final = latents[latents.length - 1]
  const x0 = tf.tidy(() => tf.clipByValue(final, -1, 1) as tf.Tensor)
  const t: RolloutTrajectories = {
    kind: "rollout",
    n: o.n,
    batch: b,
    prompts,
    x0: tf.tidy(() => tf.slice(x0, 0, b)),
    noise: latents[0],
    steps: [{ t: -1, xt: final, eps: lastEps!, x0 }],
    nfe: rows * o.steps * (o.cfg === 1 ? 1 : 2),
    rollout: { timesteps: grid, latents, logProbs, options: o }
  }
  return t
})

/**
 * The rollout generator stage (ignores the batch's images; uses its prompts).
 *
 * @since 0.1.0
 */
export const generatorLayer = (o: RolloutOptions): Layer.Layer<TrajectoryGenerator, never, Denoiser.Denoiser | RandomSource> =>
  Layer.effect(
    TrajectoryGenerator,
    Effect.gen(function*() {
      const { model } = yield* Denoiser.Denoiser
      const { rng } = yield* RandomSource
      const schedule = Schedule.make(model.config.schedule)
      return TrajectoryGenerator.of({
        options: { n: o.n, m: o.steps, inferenceSteps: o.steps, cfg: o.cfg, estimator: { kind: "tweedie" }, timestep: { kind: "uniform" } },
        generate: (_x0, prompts) =>
          Scoped.acquireFrom<Trajectories, never, never>(rollout(model, schedule, prompts, rng, o), (t) => dispose(t as RolloutTrajectories)).pipe(
            Effect.withSpan("PolicyRollout.generate")
          )
      })
    })
  )
