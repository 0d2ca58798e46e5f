/**
 * Seeded, serialisable randomness.
 *
 * One seed drives noise, data order and initialisation. The generator is
 * xoshiro128** (four 32-bit words of state), so its state fits in a
 * checkpoint and a resumed run draws exactly the numbers an uninterrupted run
 * would have drawn. Pure JS on purpose: tfjs's own seeded ops are not
 * resumable mid-stream.
 *
 * @since 0.1.0
 */
import { Schema } from "effect"

/**
 * Serialised generator state (four unsigned 32-bit words).
 *
 * @since 0.1.0
 */
export const RngState = Schema.Tuple([Schema.Number, Schema.Number, Schema.Number, Schema.Number])
export type RngState = typeof RngState.Type

const rotl = (x: number, k: number) => (x << k) | (x >>> (32 - k))

/**
 * A mutable xoshiro128** generator. Mutable because it sits on hot paths
 * (a training step draws tens of thousands of normals); services wrap it so
 * that user code never shares one by accident.
 *
 * @since 0.1.0
 */
export class Rng {
  private s: Uint32Array
  private constructor(state: Uint32Array) {
    this.s = state
  }

  /** A generator seeded from one integer via SplitMix32. */
  static fromSeed(seed: number): Rng {
    let z = (seed >>> 0) ^ 0x9e3779b9
    const s = new Uint32Array(4)
    for (let i = 0; i < 4; i++) {
      z = (z + 0x9e3779b9) >>> 0
      let t = z
      t = Math.imul(t ^ (t >>> 16), 0x85ebca6b)
      t = Math.imul(t ^ (t >>> 13), 0xc2b2ae35)
      s[i] = (t ^ (t >>> 16)) >>> 0
    }
    if (s[0] === 0 && s[1] === 0 && s[2] === 0 && s[3] === 0) s[0] = 1
    return new Rng(s)
  }

  static fromState(state: RngState): Rng {
    return new Rng(Uint32Array.from(state))
  }

  /** Continue from a saved state (e.g. when a checkpoint is restored). */
  setState(state: RngState): void {
    this.s = Uint32Array.from(state)
  }

  state(): RngState {
    return [this.s[0], this.s[1], this.s[2], this.s[3]]
  }

  /** A uint32. */
  nextU32(): number {
    const s = this.s
    const result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0
    const t = s[1] << 9
    s[2] ^= s[0]
    s[3] ^= s[1]
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = rotl(s[3], 11)
    return result
  }

  /** Uniform in [0, 1). */
  uniform(): number {
    return this.nextU32() / 4294967296
  }

  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.uniform() * n)
  }

  /** Picks one element. */
  pick<A>(items: ReadonlyArray<A>): A {
    return items[this.int(items.length)]
  }

  /** Standard normal by Box-Muller (both draws used, so state stays exact). */
  normals(n: number, scale = 1): Float32Array {
    const out = new Float32Array(n)
    for (let i = 0; i < n; i += 2) {
      let u = this.uniform()
      while (u === 0) u = this.uniform()
      const v = this.uniform()
      const r = Math.sqrt(-2 * Math.log(u)) * scale
      out[i] = r * Math.cos(2 * Math.PI * v)
      if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * v)
    }
    return out
  }

  normal(): number {
    return this.normals(1)[0]
  }

  /** Fisher-Yates shuffle of a copy. */
  shuffle<A>(items: ReadonlyArray<A>): Array<A> {
    const a = items.slice()
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.int(i + 1)
      const tmp = a[i]
      a[i] = a[j]
      a[j] = tmp
    }
    return a
  }

  /** An independent child generator (for a sub-stream, e.g. per worker). */
  fork(): Rng {
    return Rng.fromSeed(this.nextU32())
  }
}
