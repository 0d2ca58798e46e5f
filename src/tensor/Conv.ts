/**
 * 2-D convolution (stride 1, "same" padding, odd square kernels) with a
 * gradient made only of forward convolutions.
 *
 * Why: tfjs-backend-wasm 4.22 has no `Conv2DBackpropFilter` kernel, so the
 * built-in gradient of `tf.conv2d` throws there. Both gradients below are
 * forward convolutions, which every backend runs fast:
 * - dx: convolve dy with the spatially flipped, in/out-transposed kernel.
 * - dK: treat the batch as the channel axis, so the filter gradient becomes
 *   one "valid" convolution of the padded input with dy as its kernel.
 *   On the reference 4-conv net this was 3x faster than im2col + matMul.
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs-core"
import * as HostRead from "./HostRead.ts"

type Conv = (x: tf.Tensor4D, kernel: tf.Tensor4D) => tf.Tensor4D

/**
 * Faster forms of the gradient, each tested equal to the general one:
 * {@link flipKernel} permuting the weights in JS on the backends that allow
 * it, and a 1x1 kernel's gradient as one GEMM. Only bench/fusion.ts turns
 * them off, to time both forms.
 *
 * @since 0.4.0
 */
export const speedups = { jsFlip: true, gemm1x1: true }

/** [kh, kw, ci, co] -> the kernel flipped spatially, in/out swapped: [kh, kw, co, ci]. */
export const flipKernel = (k: tf.Tensor4D): tf.Tensor4D => {
  // On the backends whose tensors live in JS-visible memory a read is a copy
  // (wasm) or free (cpu), and permuting the weights in JS is several times
  // faster than wasm's Reverse + Transpose kernels (bench/fusion.ts);
  // elsewhere (native, GPU) a read would be a download, so stay on the device.
  if (!speedups.jsFlip || !HostRead.isResident()) return tf.transpose(tf.reverse(k, [0, 1]), [0, 1, 3, 2])
  const [kh, kw, ci, co] = k.shape
  // Synchronous: this runs inside a gradient function, which cannot await.
  const src = HostRead.resident(k, "Conv.flipKernel")
  const out = new Float32Array(src.length)
  for (let i = 0; i < kh; i++) {
    for (let j = 0; j < kw; j++) {
      const from = ((kh - 1 - i) * kw + (kw - 1 - j)) * ci * co
      const to = (i * kw + j) * co * ci
      for (let c = 0; c < ci; c++) {
        for (let o = 0; o < co; o++) out[to + o * ci + c] = src[from + c * co + o]
      }
    }
  }
  return tf.tensor4d(out, [kh, kw, co, ci])
}

const convSame: Conv = tf.customGrad(((x: tf.Tensor4D, kernel: tf.Tensor4D, save: tf.GradSaveFunc) => {
  const [kh, kw] = kernel.shape
  if (kh !== kw || kh % 2 !== 1) {
    throw new Error(`conv2dSame needs an odd square kernel, got ${kh}x${kw}`)
  }
  save([x, kernel])
  return {
    value: tf.conv2d(x, kernel, 1, "same"),
    gradFunc: (dy: tf.Tensor4D, saved: Array<tf.Tensor>) => {
      const [xs, ks] = saved as [tf.Tensor4D, tf.Tensor4D]
      const p = (ks.shape[0] - 1) / 2
      // dx: flip spatially, swap in/out channels.
      const flipped = flipKernel(ks)
      const dx = tf.conv2d(dy, flipped, 1, "same")
      if (ks.shape[0] === 1 && speedups.gemm1x1) {
        // 1x1 (dense layers run as convolutions): dK = x^T dy, as a 1x1
        // convolution whose input channels are the rows, so XNNPACK runs one
        // GEMM; 2-3x faster than the general form's one-channel-per-tap
        // convolution below, and the same sums.
        const [b, h, w, ci] = xs.shape
        const rows = b * h * w
        const xT = tf.reshape(tf.transpose(tf.reshape(xs, [rows, ci])), [1, ci, 1, rows]) as tf.Tensor4D
        const dk = tf.conv2d(xT, tf.reshape(dy, [1, 1, rows, ks.shape[3]]) as tf.Tensor4D, 1, "valid")
        return [dx, tf.reshape(dk, ks.shape)]
      }
      // dK[i,j,ci,co] = sum_b,h,w xpad[b,h+i,w+j,ci] * dy[b,h,w,co]
      const xPad = p === 0 ? xs : tf.pad(xs, [[0, 0], [p, p], [p, p], [0, 0]])
      const xT = tf.transpose(xPad, [3, 1, 2, 0]) as tf.Tensor4D // [ci, H+2p, W+2p, B]
      const dyT = tf.transpose(dy, [1, 2, 0, 3]) as tf.Tensor4D // [H, W, B, co]
      const dkT = tf.conv2d(xT, dyT, 1, "valid") // [ci, kh, kw, co]
      const dk = tf.transpose(dkT, [1, 2, 0, 3])
      return [dx, dk]
    }
  }
}) as never) as unknown as Conv

/**
 * `conv2d(x, k, 1, "same")` whose gradient works on every tfjs backend.
 *
 * @since 0.1.0
 */
export const conv2dSame = (x: tf.Tensor4D, kernel: tf.Tensor4D): tf.Tensor4D => convSame(x, kernel)
