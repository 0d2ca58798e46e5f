/**
 * The UNet's cross-attention (image positions to the 12 text tokens, 4
 * heads, 64 channels) at its two resolutions, batch 8: the kept form
 * (`Layers.attention`: heads split by reshape + transpose, scores by a
 * batched product with a transposed operand) against a form without the
 * transposes of the image-side tensors, where the heads become one product
 * with block-diagonal keys and values ([c, heads * m], zero outside each
 * head's block). Same projections, same function: the bench checks the
 * outputs and gradients agree before timing them (median of interleaved
 * repetitions, ms wall).
 *
 *   npx tsx bench/attention.ts
 *
 * Not kept: on wasm the block-diagonal products cost more than the
 * transposes they save (docs/performance.md, "Closing the distance").
 */
import { NodeRuntime } from "@effect/platform-node"
import * as tf from "@tensorflow/tfjs-core"
import { Effect } from "effect"
import { attention, linear, maskBias, type Params } from "../src/model/Layers.ts"
import { Backend, fromEnv } from "../src/tensor/Backend.ts"
import { race } from "./Race.ts"


/** `attention` with the heads as one product against block-diagonal keys and values. */
const blockDiagonal = (p: Params, name: string, q: tf.Tensor3D, kv: tf.Tensor3D, heads: number, keyBias: tf.Tensor, mask: { k: tf.Tensor; v: tf.Tensor }) => {
  const [b, n, c] = q.shape
  const m = kv.shape[1]
  const Q = linear(p, `${name}.q`, q)
  // [b, c, heads * m]: head h's keys in rows h*dh..(h+1)*dh-1, columns h*m..(h+1)*m-1.
  const K = tf.mul(tf.tile(tf.transpose(linear(p, `${name}.k`, kv), [0, 2, 1]), [1, 1, heads]), mask.k)
  const V = tf.mul(tf.tile(linear(p, `${name}.v`, kv), [1, heads, 1]), mask.v)
  const bias = tf.reshape(tf.tile(keyBias, [1, 1, heads, 1]), [b, 1, heads * m])
  const scores = tf.add(tf.mul(tf.matMul(Q, K), 1 / Math.sqrt(c / heads)), bias)
  const attn = tf.reshape(tf.softmax(tf.reshape(scores, [b, n, heads, m])), [b, n, heads * m])
  return linear(p, `${name}.o`, tf.matMul(attn, V)) as tf.Tensor3D
}

const program = Effect.gen(function*() {
  const backend = yield* Backend
  const [b, m, c, heads] = [8, 12, 64, 4]
  const dh = c / heads
  const blocks = new Float32Array(c * heads * m).map((_, i) => (Math.floor(Math.floor(i / (heads * m)) / dh) === Math.floor((i % (heads * m)) / m) ? 1 : 0))
  const mask = { k: tf.tensor2d(blocks, [c, heads * m]), v: tf.transpose(tf.tensor2d(blocks, [c, heads * m])) }
  const p: Params = Object.fromEntries(["q", "k", "v", "o"].flatMap((w) => [
    [`a.${w}.w`, tf.variable(tf.randomNormal([c, c], 0, 0.1, "float32", 1))],
    [`a.${w}.b`, tf.variable(tf.zeros([c]))]
  ]))
  const kv = tf.randomNormal([b, m, c], 0, 1, "float32", 2) as tf.Tensor3D
  // The first 7 tokens real, the rest padding, as a short prompt.
  const keyBias = maskBias(tf.tensor2d(Array.from({ length: b * m }, (_, i) => (i % m < 7 ? 1 : 0)), [b, m]))
  console.log(`Cross-attention at batch 8 (12 tokens, 4 heads, 64 channels) on **${backend.name}**, ms wall, median of 20 interleaved repetitions. Command: \`npx tsx bench/attention.ts\`\n`)
  console.log("| resolution | kept: forward | block-diagonal: forward | kept: forward + backward | block-diagonal: forward + backward | max difference (output, gradients) |")
  console.log("|---|---|---|---|---|---|")
  for (const res of [16, 8]) {
    const q = tf.randomNormal([b, res * res, c], 0, 1, "float32", 3) as tf.Tensor3D
    const kept = () => attention(p, "a", q, kv, heads, keyBias)
    const bd = () => blockDiagonal(p, "a", q, kv, heads, keyBias, mask)
    const up = tf.randomNormal([b, res * res, c], 0, 1, "float32", 4)
    const grads = (f: () => tf.Tensor) => tf.variableGrads(() => tf.sum(tf.mul(f(), up)) as tf.Scalar)
    const g1 = grads(kept)
    const g2 = grads(bd)
    const diff = tf.tidy(() =>
      Math.max(
        tf.max(tf.abs(tf.sub(kept(), bd()))).dataSync()[0],
        ...Object.keys(g1.grads).map((k) => tf.max(tf.abs(tf.sub(g1.grads[k], g2.grads[k]))).dataSync()[0])
      )
    )
    tf.dispose([g1.value, g2.value, ...Object.values(g1.grads), ...Object.values(g2.grads)])
    const forward = (f: () => tf.Tensor) => () => tf.tidy(() => void f().dataSync())
    const both = (f: () => tf.Tensor) => () => {
      const g = grads(f)
      g.value.dataSync()
      tf.dispose([g.value, ...Object.values(g.grads)])
    }
    const fw = race({ kept: forward(kept), bd: forward(bd) }, 20)
    const fb = race({ kept: both(kept), bd: both(bd) }, 20)
    console.log(`| ${res} px (${res * res} positions) | ${fw.kept.wall.toFixed(1)} | ${fw.bd.wall.toFixed(1)} | ${fb.kept.wall.toFixed(1)} | ${fb.bd.wall.toFixed(1)} | ${diff.toExponential(1)} |`)
    tf.dispose([q, up])
  }
}).pipe(Effect.provide(Backend.make(fromEnv())))

NodeRuntime.runMain(program)
