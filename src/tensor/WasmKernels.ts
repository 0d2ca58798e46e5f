/**
 * Kernel replacements for tfjs-backend-wasm, installed by `Backend` when it
 * loads wasm.
 *
 * Identity: tfjs clones every tensor it saves for the backward pass (inputs
 * of Multiply, Conv2D, custom gradients, ...) through the Identity kernel,
 * and wasm's Identity copies the data (about 1,000 copies in a UNet
 * training step, each also held in the heap until the backward pass). Tensors
 * are immutable and the wasm backend counts references (its Reshape already
 * shares data), so Identity can share the data as the cpu backend's does.
 *
 * @since 0.4.0
 */
import * as tf from "@tensorflow/tfjs-core"

/**
 * Whether the replacement shares data (true) or runs wasm's own copying
 * Identity. Only bench/fusion.ts turns it off, to time both.
 *
 * @since 0.4.0
 */
export const speedups = { shareIdentity: true }

interface WasmBackend {
  incRef(dataId: object): void
}

let installed = false

/**
 * Replace wasm's Identity kernel (idempotent). Call after the wasm backend
 * is registered.
 *
 * @since 0.4.0
 */
export const install = (): void => {
  if (installed) return
  const own = tf.getKernel("Identity", "wasm")
  if (own === undefined) return
  installed = true
  tf.unregisterKernel("Identity", "wasm")
  tf.registerKernel({
    kernelName: "Identity",
    backendName: "wasm",
    kernelFunc: (args) => {
      const x = args.inputs.x as tf.TensorInfo
      if (!speedups.shareIdentity || x.dtype === "string") return own.kernelFunc(args)
      ;(args.backend as unknown as WasmBackend).incRef(x.dataId)
      return { dataId: x.dataId, shape: x.shape, dtype: x.dtype }
    }
  })
}
