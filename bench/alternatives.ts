/**
 * Per-layer timings of the convolution and dense-layer forms, kept and
 * not kept, for the default UNet's shapes at batch 8 (median of
 * interleaved repetitions, wall and CPU time). The step-level before/after
 * is bench/fusion.ts; these isolate changes too small to resolve in a
 * whole step on a busy machine.
 *
 * Not kept:
 * - conv + bias as one FusedConv2D call (gradient: the bias's one Sum) vs
 *   conv2dSame + add, forward and backward;
 * - the input gradient as wasm's Conv2DBackpropInput (tf.conv2dTranspose)
 *   vs a forward convolution with the flipped kernel (conv2dSame);
 * - the filter gradient as im2col + one transposed matMul vs conv2dSame's
 *   batch-as-channels convolution.
 * Kept:
 * - the flipped kernel permuted in JS vs Reverse + Transpose kernels;
 * - a 1x1 kernel's filter gradient as one GEMM vs the general form;
 * - a dense layer on 96 rows (the text encoder's) as a 1x1 convolution vs
 *   BatchMatMul, forward and backward.
 *
 *   npx tsx bench/alternatives.ts
 */
import * as tf from "@tensorflow/tfjs-core"
import { NodeRuntime } from "@effect/platform-node"
import { Effect } from "effect"
import { Backend, fromEnv } from "../src/tensor/Backend.ts"
import { conv2dSame, flipKernel, speedups } from "../src/tensor/Conv.ts"
import { race } from "./Race.ts"


/** A conv with a bias whose bias gradient comes from one Sum (the dropped fused form). */
const convBiasFused = tf.customGrad(((x: tf.Tensor4D, k: tf.Tensor4D, b: tf.Tensor1D, save: tf.GradSaveFunc) => {
  save([x, k])
  return {
    value: tf.fused.conv2d({ x, filter: k, bias: b, strides: 1, pad: "same" }),
    gradFunc: (dy: tf.Tensor4D, saved: Array<tf.Tensor>) => {
      // The same gradients conv2dSame computes (3x3 kernels), plus the bias's.
      const [xs, ks] = saved as [tf.Tensor4D, tf.Tensor4D]
      const dx = tf.conv2d(dy, flipKernel(ks), 1, "same")
      const xT = tf.transpose(tf.pad(xs, [[0, 0], [1, 1], [1, 1], [0, 0]]), [3, 1, 2, 0]) as tf.Tensor4D
      const dk = tf.transpose(tf.conv2d(xT, tf.transpose(dy, [1, 2, 0, 3]) as tf.Tensor4D, 1, "valid"), [1, 2, 0, 3])
      return [dx, dk, tf.sum(dy, [0, 1, 2])]
    }
  }
}) as never) as unknown as (x: tf.Tensor4D, k: tf.Tensor4D, b: tf.Tensor1D) => tf.Tensor4D

const program = Effect.gen(function*() {
  const backend = yield* Backend
  const fmt = (r: { wall: number; cpu: number }) => `${r.wall.toFixed(1)} / ${r.cpu.toFixed(1)}`
  console.log(`Per layer at batch 8 on **${backend.name}**, ms wall / ms CPU, median of 12 interleaved repetitions. Command: \`npx tsx bench/alternatives.ts\`\n`)
  console.log("| layer | conv + add (kept) | FusedConv2D + bias | dx: flipped-kernel conv (kept) | dx: Conv2DBackpropInput | dK: batch-as-channels conv (kept) | dK: im2col + matMul |")
  console.log("|---|---|---|---|---|---|---|")
  for (const [h, ci, co] of [[32, 32, 32], [32, 96, 32], [16, 64, 64], [8, 64, 64]]) {
    const x = tf.randomNormal([8, h, h, ci]) as tf.Tensor4D
    const k = tf.variable(tf.randomNormal([3, 3, ci, co], 0, 0.1) as tf.Tensor4D)
    const b = tf.variable(tf.randomNormal([co]) as tf.Tensor1D)
    const dy = tf.randomNormal([8, h, h, co]) as tf.Tensor4D
    const fwdBwd = (f: () => tf.Tensor) => () => {
      const { value, grads } = tf.variableGrads(() => tf.sum(tf.mul(f(), dy)) as tf.Scalar, [k, b])
      value.dataSync()
      tf.dispose([value, ...Object.values(grads)])
    }
    const bias = race({
      kept: fwdBwd(() => tf.add(conv2dSame(x, k), b)),
      fused: fwdBwd(() => convBiasFused(x, k, b))
    }, 12)
    const run = (f: () => tf.Tensor) => () => tf.tidy(() => void f().dataSync())
    const dx = race({
      kept: run(() => tf.conv2d(dy, tf.transpose(tf.reverse(k, [0, 1]), [0, 1, 3, 2]) as tf.Tensor4D, 1, "same")),
      backprop: run(() => tf.conv2dTranspose(dy, k, [8, h, h, ci], 1, "same"))
    }, 12)
    const dk = race({
      kept: run(() => {
        const xT = tf.transpose(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), [3, 1, 2, 0]) as tf.Tensor4D
        return tf.transpose(tf.conv2d(xT, tf.transpose(dy, [1, 2, 0, 3]) as tf.Tensor4D, 1, "valid"), [1, 2, 0, 3])
      }),
      im2col: run(() => {
        const xPad = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
        const cols: Array<tf.Tensor> = []
        for (let i = 0; i < 3; i++) for (let j = 0; j < 3; j++) cols.push(tf.slice(xPad, [0, i, j, 0], [8, h, h, ci]))
        const m = tf.reshape(tf.concat(cols, 3), [-1, 9 * ci]) as tf.Tensor2D
        return tf.reshape(tf.matMul(m, tf.reshape(dy, [-1, co]) as tf.Tensor2D, true, false), [3, 3, ci, co])
      })
    }, 12)
    console.log(`| ${h}x${h}, ${ci} -> ${co} | ${fmt(bias.kept)} | ${fmt(bias.fused)} | ${fmt(dx.kept)} | ${fmt(dx.backprop)} | ${fmt(dk.kept)} | ${fmt(dk.im2col)} |`)
    tf.dispose([x, k, b, dy])
  }

  console.log("\nKept forms against what they replaced:\n")
  console.log("| operation | before | after |")
  console.log("|---|---|---|")
  for (const [ci, co] of [[32, 32], [64, 64], [128, 64], [96, 32]]) {
    const k = tf.randomNormal([3, 3, ci, co]) as tf.Tensor4D
    const r = race({
      before: () => tf.tidy(() => void tf.transpose(tf.reverse(k, [0, 1]), [0, 1, 3, 2]).dataSync()),
      after: () => tf.tidy(() => void flipKernel(k).dataSync())
    }, 12)
    console.log(`| kernel flip [3, 3, ${ci}, ${co}]: Reverse + Transpose -> JS | ${fmt(r.before)} | ${fmt(r.after)} |`)
    k.dispose()
  }
  for (const [rows, ci, co] of [[2048, 64, 64], [8192, 64, 32], [96, 64, 256]]) {
    const x = tf.randomNormal([1, rows, 1, ci]) as tf.Tensor4D
    const w = tf.variable(tf.randomNormal([1, 1, ci, co], 0, 0.1) as tf.Tensor4D)
    const up = tf.randomNormal([1, rows, 1, co])
    const step = (gemm: boolean) => () => {
      speedups.gemm1x1 = gemm
      const { value, grads } = tf.variableGrads(() => tf.sum(tf.mul(conv2dSame(x, w), up)) as tf.Scalar, [w])
      value.dataSync()
      tf.dispose([value, ...Object.values(grads)])
      speedups.gemm1x1 = true
    }
    const r = race({ before: step(false), after: step(true) }, 12)
    console.log(`| 1x1 conv on ${rows} rows, ${ci} -> ${co}, forward + backward: filter gradient general -> one GEMM | ${fmt(r.before)} | ${fmt(r.after)} |`)
    tf.dispose([x, w, up])
  }
  for (const [ci, co] of [[64, 64], [64, 256], [256, 64]]) {
    const rows = 96
    const x = tf.variable(tf.randomNormal([rows, ci]) as tf.Tensor2D)
    const w = tf.variable(tf.randomNormal([ci, co], 0, 0.1) as tf.Tensor2D)
    const up = tf.randomNormal([rows, co])
    const dense = (asConv: boolean) => () => {
      const f = () => asConv
        ? tf.reshape(conv2dSame(tf.reshape(x, [1, rows, 1, ci]) as tf.Tensor4D, tf.reshape(w, [1, 1, ci, co]) as tf.Tensor4D), [rows, co])
        : tf.matMul(x, w)
      const { value, grads } = tf.variableGrads(() => tf.sum(tf.mul(f(), up)) as tf.Scalar, [x, w])
      value.dataSync()
      tf.dispose([value, ...Object.values(grads)])
    }
    const r = race({ before: dense(false), after: dense(true) }, 12)
    console.log(`| dense layer on ${rows} rows, ${ci} -> ${co}, forward + backward: BatchMatMul -> 1x1 conv | ${fmt(r.before)} | ${fmt(r.after)} |`)
    tf.dispose([x, w, up])
  }
}).pipe(Effect.provide(Backend.make(fromEnv())))

NodeRuntime.runMain(program)
