/// <reference types="@webgpu/types" />
/**
 * WebGPU under Node through Dawn (the npm package `webgpu`): the adapter
 * probe and the `navigator.gpu` that tfjs-backend-webgpu looks for.
 *
 * Dawn drives Vulkan, Metal or D3D12, so one path covers every GPU vendor.
 * Where no adapter exists Dawn returns `null` and says why only on stderr,
 * so a failed probe is repeated in a child process whose stderr is read.
 *
 * @since 0.2.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Schema } from "effect"
import { spawnSync } from "node:child_process"
import { createRequire } from "node:module"

const require = createRequire(import.meta.url)

/**
 * What the adapter says of itself, and whether it is a software one (a CPU
 * rasteriser such as Mesa's lavapipe, or Dawn's fallback adapter).
 *
 * @since 0.2.0
 */
export interface AdapterInfo {
  readonly vendor: string
  readonly architecture: string
  readonly device: string
  readonly description: string
  readonly software: boolean
}

/** @since 0.2.0 */
export type Probe =
  | { readonly _tag: "Found"; readonly adapter: AdapterInfo }
  | { readonly _tag: "NotFound"; readonly reason: string }

/** Software Vulkan drivers by the names they give themselves. */
const SOFTWARE = /llvmpipe|lavapipe|swiftshader|softpipe|software|warp|cpu/i

const describe = (adapter: GPUAdapter): AdapterInfo => {
  const info = adapter.info
  const text = `${info.vendor} ${info.architecture} ${info.device} ${info.description}`
  return {
    vendor: info.vendor,
    architecture: info.architecture,
    device: info.device,
    description: info.description,
    software: adapter.isFallbackAdapter === true || SOFTWARE.test(text)
  }
}

/** One-line form for logs. */
export const format = (a: AdapterInfo): string =>
  [a.description || a.device, a.vendor && `vendor ${a.vendor}`, a.architecture && `architecture ${a.architecture}`]
    .filter(Boolean).join(", ") + (a.software ? " (software)" : "")

let instance: GPU | undefined

/**
 * Dawn's `GPU` object, created once, and installed as `navigator.gpu`.
 * Since Node 21 `navigator` is a read-only global, hence `defineProperty`.
 * tfjs-backend-webgpu registers itself only when `navigator.gpu` exists at
 * its import, so import it after this ran (see {@link loadBackend}).
 *
 * @since 0.2.0
 */
export const gpu = (): GPU => {
  if (instance !== undefined) return instance
  const dawn = require("webgpu") as { create: (flags: Array<string>) => GPU; globals: object }
  // The WebGPU classes (GPUBufferUsage, ...) must be globals for tfjs.
  Object.assign(globalThis, dawn.globals)
  instance = dawn.create([])
  const nav = (globalThis as { navigator?: object }).navigator
  if (nav === undefined) {
    Object.defineProperty(globalThis, "navigator", { value: { gpu: instance }, configurable: true, writable: true })
  } else {
    Object.defineProperty(nav, "gpu", { value: instance, configurable: true, writable: true })
  }
  return instance
}

const firstLine = (e: unknown): string => (e instanceof Error ? e.message : String(e)).split("\n")[0]!

/** Dawn's reasons, from stderr of a child process that asks for an adapter. */
const reasonFromChild = (): string => {
  const script = [
    "import { create } from 'webgpu';",
    "const a = await create([]).requestAdapter({ powerPreference: 'high-performance' });",
    "process.exit(a === null ? 1 : 0)"
  ].join("\n")
  const child = spawnSync(process.execPath, ["--input-type=module", "-e", script], {
    cwd: import.meta.dirname,
    encoding: "utf8",
    timeout: 30_000
  })
  const lines = (child.stderr ?? "").split("\n").map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("at ") && !/^Warning:\s*$/.test(l))
  return lines.length > 0
    ? `Dawn found no adapter: ${lines.slice(0, 4).join("; ")}`
    : "Dawn found no adapter and gave no reason"
}

/**
 * Ask Dawn for its high-performance adapter.
 *
 * @since 0.2.0
 */
export const probe = async (): Promise<Probe> => {
  let g: GPU
  try {
    g = gpu()
  } catch (e) {
    return { _tag: "NotFound", reason: `the webgpu package does not load: ${firstLine(e)}` }
  }
  try {
    const adapter = await g.requestAdapter({ powerPreference: "high-performance" })
    if (adapter !== null) return { _tag: "Found", adapter: describe(adapter) }
  } catch (e) {
    return { _tag: "NotFound", reason: firstLine(e) }
  }
  return { _tag: "NotFound", reason: reasonFromChild() }
}

/**
 * Register tfjs's webgpu backend (once). Returns the adapter, or why none.
 * `softwareOk` false refuses a software adapter (what `auto` wants: a CPU
 * rasteriser is far slower than wasm).
 *
 * @since 0.2.0
 */
export const loadBackend = async (softwareOk: boolean): Promise<Probe> => {
  const found = await probe()
  if (found._tag === "NotFound") return found
  if (!softwareOk && found.adapter.software) {
    return { _tag: "NotFound", reason: `only a software adapter: ${format(found.adapter)}` }
  }
  try {
    require("@tensorflow/tfjs-backend-webgpu")
  } catch (e) {
    return { _tag: "NotFound", reason: `@tensorflow/tfjs-backend-webgpu does not load: ${firstLine(e)}` }
  }
  return found
}

/**
 * GPU memory as tfjs's webgpu backend counts it: bytes of live tensors, and
 * bytes of buffers allocated (its pool keeps released buffers for reuse and
 * never shrinks during a run, so this is the peak the device held).
 * Undefined on the other backends.
 *
 * @since 0.2.0
 */
export const memory = (): { readonly inUse: number; readonly allocated: number } | undefined => {
  const m = tf.memory() as tf.MemoryInfo & { numBytesInGPU?: number; numBytesAllocatedInGPU?: number }
  return m.numBytesInGPU === undefined ? undefined : { inUse: m.numBytesInGPU, allocated: m.numBytesAllocatedInGPU ?? m.numBytesInGPU }
}

/**
 * The GPU rejected work that tfjs submitted (an invalid pipeline, a limit
 * exceeded). tfjs does not notice: the kernel's output stays zeros. So every
 * host read checks for these and fails, rather than train on wrong numbers.
 *
 * @since 0.2.0
 */
export class GpuValidationError extends Schema.TaggedError<GpuValidationError>()("GpuValidationError", {
  messages: Schema.Array(Schema.String)
}) {
  override get message() {
    return `the GPU rejected work, so results computed since the last read are wrong: ${this.messages.slice(0, 3).join("; ")}${this.messages.length > 3 ? ` (and ${this.messages.length - 3} more)` : ""}`
  }
}

let pending: Array<string> = []

/** Collect the device's uncaptured errors (Backend does this when it loads webgpu). */
export const watch = (device: GPUDevice): void => {
  device.addEventListener("uncapturederror", (e) => {
    pending.push((e as GPUUncapturedErrorEvent).error.message.split("\n")[0]!)
  })
}

/** Throws {@link GpuValidationError} if the device reported errors since the last call. */
export const throwPending = (): void => {
  if (pending.length === 0) return
  const messages = pending
  pending = []
  throw new GpuValidationError({ messages })
}
