/**
 * The 2-D lab's data and measures (docs/method.md): 8 Gaussians on a ring of
 * radius 2 (std 0.12), the lab's stand-in for a data manifold, and rewards
 * whose effect on a model shows in seconds.
 *
 * The model works in [-1, 1] (the samplers clip x0 there, as for images), so
 * points are stored divided by {@link SCALE} and the lab's decoder
 * (`Decoder.scaled(SCALE)`) maps them back before a reward sees them.
 *
 * @since 0.4.0
 */
import type { Rng } from "../tensor/Random.ts"

export const MODES = 8
export const RADIUS = 2
export const STD = 0.12
/** Lab units per model unit: the ring (radius 2 + 3 std) fits in [-1, 1]. */
export const SCALE = 2.5
/** A point is "in" a mode within this distance of its centre (about 4 std). */
export const MODE_RADIUS = 0.5
/** A point is "on the ring" within 3 std of radius 2. */
export const RING_TOLERANCE = 3 * STD

/** Centre of mode k, in lab units. */
export const mode = (k: number): readonly [number, number] => {
  const a = (2 * Math.PI * k) / MODES
  return [RADIUS * Math.cos(a), RADIUS * Math.sin(a)]
}

/** `count` points of the mixture in model units ([count * 2], x then y). */
export const sampleModel = (rng: Rng, count: number): Float32Array => {
  const noise = rng.normals(2 * count, STD)
  const out = new Float32Array(2 * count)
  for (let i = 0; i < count; i++) {
    const [cx, cy] = mode(rng.int(MODES))
    out[2 * i] = (cx + noise[2 * i]) / SCALE
    out[2 * i + 1] = (cy + noise[2 * i + 1]) / SCALE
  }
  return out
}

export const inMode = (x: number, y: number, k: number): boolean => {
  const [cx, cy] = mode(k)
  return Math.hypot(x - cx, y - cy) < MODE_RADIUS
}

export const onRing = (x: number, y: number): boolean => Math.abs(Math.hypot(x, y) - RADIUS) < RING_TOLERANCE
