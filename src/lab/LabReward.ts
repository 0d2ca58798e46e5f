/**
 * Rewards of the 2-D lab, as ordinary `Reward` services on decoded points
 * (2 values, lab units): every stage that scores images scores these.
 *
 * - `mode(k)`: closeness to mode k, exp(-d^2 / (2 * 0.5^2)) in [0, 1]; the
 *   base model puts about 1/8 of its samples there.
 * - `x`: the x coordinate (smooth, unbounded by the reward itself).
 *
 * @since 0.4.0
 */
import { Effect, Layer, Schema } from "effect"
import { Reward, type RewardService } from "../reward/Reward.ts"
import * as Ring from "./Ring.ts"

export const LabRewardName = Schema.Literals(["mode", "x"])
export type LabRewardName = typeof LabRewardName.Type

/** Width of the mode reward, lab units. */
export const MODE_WIDTH = 0.5

/** The rewarded mode of the lab's `mode` reward. */
export const TARGET_MODE = 0

export const modeScore = (x: number, y: number, k = TARGET_MODE): number => {
  const [cx, cy] = Ring.mode(k)
  return Math.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * MODE_WIDTH ** 2))
}

export const score = (name: LabRewardName, x: number, y: number): number => (name === "mode" ? modeScore(x, y) : x)

export const service = (name: LabRewardName): RewardService =>
  Reward.make(
    { name: `lab-${name}`, range: name === "mode" ? [0, 1] : [-Infinity, Infinity], differentiable: false, relativeCost: 0 },
    (points) => Effect.succeed(points.map((p) => score(name, p[0], p[1]))),
    { sampleLength: 2 }
  )

export const layer = (name: LabRewardName): Layer.Layer<Reward> => Layer.succeed(Reward, service(name))
