/**
 * The GPU tests' gate. They never skip silently: without a WebGPU adapter
 * they fail with the command that installs one, unless
 * SHARPEN_SKIP_GPU_TESTS=1 says to skip them (vitest then lists them as
 * skipped).
 */
import * as tf from "@tensorflow/tfjs-core"
import * as WebGpu from "../src/tensor/WebGpu.ts"
import { BackendUnavailable, initialise } from "../src/tensor/Backend.ts"

export const skipGpu = process.env.SHARPEN_SKIP_GPU_TESTS === "1"

export const INSTALL = "bash scripts/install-vulkan.sh"

/** The adapter, or an error naming the command that installs one. */
export const requireAdapter = async (): Promise<WebGpu.AdapterInfo> => {
  const found = await WebGpu.probe()
  if (found._tag === "NotFound") {
    throw new Error(`no WebGPU adapter (${found.reason}). Install Mesa's CPU Vulkan driver with \`${INSTALL}\`, or set SHARPEN_SKIP_GPU_TESTS=1 to skip the GPU tests.`)
  }
  return found.adapter
}

/** Initialise webgpu (a software adapter is fine) and wasm in this process; returns the adapter. */
export const useBoth = async (): Promise<WebGpu.AdapterInfo> => {
  const adapter = await requireAdapter()
  const gpu = await initialise("webgpu")
  if (gpu instanceof BackendUnavailable) throw gpu
  const wasm = await initialise("wasm")
  if (wasm instanceof BackendUnavailable) throw wasm
  return adapter
}

/** Run `f` with `backend` active. */
export const on = async <A>(backend: "wasm" | "webgpu", f: () => Promise<A>): Promise<A> => {
  await tf.setBackend(backend)
  return f()
}

/**
 * Largest |a - b| against the scale of a: the larger of its range and its
 * largest magnitude (a bias gradient sums thousands of terms into values
 * far from 0 that barely differ from each other, so its range alone would
 * ask for more digits than float32 has).
 */
export const relativeError = (a: Float32Array, b: Float32Array): { maxAbs: number; range: number } => {
  if (a.length !== b.length) throw new Error(`lengths differ: ${a.length} vs ${b.length}`)
  let maxAbs = 0
  let lo = Infinity
  let hi = -Infinity
  for (let i = 0; i < a.length; i++) {
    maxAbs = Math.max(maxAbs, Math.abs(a[i]! - b[i]!))
    lo = Math.min(lo, a[i]!)
    hi = Math.max(hi, a[i]!)
  }
  return { maxAbs, range: Math.max(hi - lo, Math.abs(hi), Math.abs(lo)) }
}
