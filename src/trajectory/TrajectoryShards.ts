/**
 * A batch's trajectories computed in shards of items (on worker threads,
 * `GenerationPool`): the draws of the whole batch are split by item, each
 * shard computed on its own, and the shards' rows put back in the batch's
 * layout (row i*B + b). Every row depends only on its own item, start
 * timestep and noise, so the merged trajectories are those of one thread.
 *
 * Shards travel between threads as plain arrays ({@link TrajectoryData}).
 *
 * @since 0.5.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import * as HostRead from "../tensor/HostRead.ts"
import * as Trajectory from "./Trajectory.ts"

/** {@link Trajectory.Trajectories} as plain arrays (structured-cloneable). */
export interface TrajectoryData {
  readonly n: number
  readonly batch: number
  readonly prompts: ReadonlyArray<string>
  /** Shape of one sample, e.g. [32, 32, 3]. */
  readonly sampleShape: ReadonlyArray<number>
  readonly x0: Float32Array
  readonly noise: Float32Array
  /** Per step: every row's timestep, then x_{t_k}, eps and the x0 estimate. */
  readonly steps: ReadonlyArray<{ readonly ts: ReadonlyArray<number>; readonly xt: Float32Array; readonly eps: Float32Array; readonly x0: Float32Array }>
  readonly final?: Float32Array
  readonly nfe: number
}

/**
 * The arrays of trajectories (the tensors stay with the caller), each its
 * own (a transfer detaches it). The reads are issued together: one wait on
 * a GPU, not one per tensor.
 */
export const toData = (t: Trajectory.Trajectories): Effect.Effect<TrajectoryData> => {
  const rows = t.n * t.batch
  const read = HostRead.float32
  return Effect.all({
    x0: read(t.x0),
    noise: read(t.noise),
    steps: Effect.forEach(t.steps, (s) =>
      Effect.map(Effect.all([read(s.xt), read(s.eps), read(s.x0)], { concurrency: "unbounded" }), ([xt, eps, x0]) => ({ ts: Trajectory.rowTimesteps(s, rows), xt, eps, x0 })), {
      concurrency: "unbounded"
    }),
    final: t.final === undefined ? Effect.succeed(undefined) : read(t.final)
  }, { concurrency: "unbounded" }).pipe(Effect.map(({ final, noise, steps, x0 }) => ({
    n: t.n,
    batch: t.batch,
    prompts: t.prompts,
    sampleShape: t.x0.shape.slice(1),
    x0,
    noise,
    steps,
    ...(final === undefined ? {} : { final }),
    nfe: t.nfe
  })))
}

/** Tensors of trajectory arrays; a step keeps per-row timesteps only when its rows differ (as `Trajectory.generate`). */
export const fromData = (d: TrajectoryData): Trajectory.Trajectories => {
  const shape = (rows: number) => [rows, ...d.sampleShape]
  const rows = d.n * d.batch
  return {
    n: d.n,
    batch: d.batch,
    prompts: d.prompts,
    x0: tf.tensor(d.x0, shape(d.batch), "float32"),
    noise: tf.tensor(d.noise, shape(rows), "float32"),
    steps: d.steps.map((s) => ({
      t: s.ts[0],
      ...(s.ts.every((t) => t === s.ts[0]) ? {} : { ts: s.ts }),
      xt: tf.tensor(s.xt, shape(rows), "float32"),
      eps: tf.tensor(s.eps, shape(rows), "float32"),
      x0: tf.tensor(s.x0, shape(rows), "float32")
    })),
    ...(d.final === undefined ? {} : { final: tf.tensor(d.final, shape(rows), "float32") }),
    nfe: d.nfe
  }
}

/**
 * Split items 0..batch-1 into at most `parts` shards of near-equal cost
 * (greedy, largest first; each shard's items ascending). With continuation a
 * path costs one network call per grid step down to t = 0, so a high start
 * timestep costs several times a low one; without, every path costs m.
 *
 * @since 0.5.0
 */
export const partition = (
  itemT0: ReadonlyArray<number>,
  parts: number,
  o: Pick<Trajectory.TrajectoryOptions, "m" | "inferenceSteps" | "continuation">,
  trainSteps: number
): Array<Array<number>> => {
  const ratio = Trajectory.stride(trainSteps, o.inferenceSteps)
  const cost = itemT0.map((t) => (o.continuation === true ? Math.floor(t / ratio) + 1 : o.m))
  const bins = Array.from({ length: Math.max(1, Math.min(parts, itemT0.length)) }, () => ({ items: [] as Array<number>, cost: 0 }))
  const order = itemT0.map((_, b) => b).sort((a, b) => cost[b] - cost[a] || a - b)
  for (const b of order) {
    const bin = bins.reduce((lo, x) => (x.cost < lo.cost ? x : lo))
    bin.items.push(b)
    bin.cost += cost[b]
  }
  return bins.map((x) => x.items.sort((a, b) => a - b)).filter((items) => items.length > 0)
}

/** Rows of `items` taken from a row-major array of `rows x per` values. */
const takeRows = (data: Float32Array, rows: ReadonlyArray<number>, per: number): Float32Array => {
  const out = new Float32Array(rows.length * per)
  rows.forEach((r, k) => out.set(data.subarray(r * per, (r + 1) * per), k * per))
  return out
}

/** The path rows of `items` in a batch of `batch`: row i*|items| + j is path i of items[j]. */
const pathRows = (n: number, batch: number, items: ReadonlyArray<number>): Array<number> =>
  Array.from({ length: n }, (_, i) => items.map((b) => i * batch + b)).flat()

/**
 * The draws, clean images and prompts of one shard of items.
 *
 * @since 0.5.0
 */
export const shard = (
  whole: { readonly x0: Float32Array; readonly prompts: ReadonlyArray<string>; readonly draws: Trajectory.Draws },
  items: ReadonlyArray<number>,
  n: number
): { readonly x0: Float32Array; readonly prompts: ReadonlyArray<string>; readonly draws: Trajectory.Draws } => {
  const batch = whole.prompts.length
  const per = whole.x0.length / batch
  return {
    x0: takeRows(whole.x0, items, per),
    prompts: items.map((b) => whole.prompts[b]),
    draws: { itemT0: items.map((b) => whole.draws.itemT0[b]), noise: takeRows(whole.draws.noise, pathRows(n, batch, items), per) }
  }
}

/**
 * Put shards computed on `items` back into one batch of `batch` items: the
 * same rows, in the batch's layout, and the summed NFE.
 *
 * @since 0.5.0
 */
export const merge = (parts: ReadonlyArray<{ readonly items: ReadonlyArray<number>; readonly data: TrajectoryData }>, batch: number): TrajectoryData => {
  const first = parts[0].data
  const n = first.n
  const per = first.sampleShape.reduce((a, b) => a * b, 1)
  const rows = n * batch
  const scatter = (pick: (d: TrajectoryData) => Float32Array, byPath: boolean) => {
    const out = new Float32Array((byPath ? rows : batch) * per)
    for (const { items, data } of parts) {
      const src = pick(data)
      const targets = byPath ? pathRows(n, batch, items) : items
      targets.forEach((r, k) => out.set(src.subarray(k * per, (k + 1) * per), r * per))
    }
    return out
  }
  const prompts = new Array<string>(batch)
  for (const { items, data } of parts) items.forEach((b, j) => (prompts[b] = data.prompts[j]))
  return {
    n,
    batch,
    prompts,
    sampleShape: first.sampleShape,
    x0: scatter((d) => d.x0, false),
    noise: scatter((d) => d.noise, true),
    steps: first.steps.map((_, k) => {
      const ts = new Array<number>(rows)
      for (const { items, data } of parts) pathRows(n, batch, items).forEach((r, j) => (ts[r] = data.steps[k].ts[j]))
      return {
        ts,
        xt: scatter((d) => d.steps[k].xt, true),
        eps: scatter((d) => d.steps[k].eps, true),
        x0: scatter((d) => d.steps[k].x0, true)
      }
    }),
    ...(first.final === undefined ? {} : { final: scatter((d) => d.final!, true) }),
    nfe: parts.reduce((a, p) => a + p.data.nfe, 0)
  }
}
