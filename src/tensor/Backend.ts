/**
 * Which tfjs backend runs the tensors.
 *
 * `auto` tries, in order, tfjs-node-gpu (CUDA), tfjs-node (native CPU),
 * webgpu on a hardware adapter (Dawn: Vulkan, Metal or D3D12), wasm and the
 * pure-JS cpu backend, and logs its choice once. `SHARPEN_BACKEND` or an
 * explicit name overrides it; a name that cannot load fails with
 * {@link BackendUnavailable}, listing what can and why each failed. An
 * explicit `webgpu` takes a software adapter too (Mesa's lavapipe: exact
 * but slow, how CI tests the GPU path); `auto` does not.
 *
 * The native packages are optional dependencies: they download libtensorflow
 * at install time, and npm silently drops them where that fails (offline,
 * no CUDA). Where they installed, `auto` picks them up with no change. The
 * webgpu packages are optional too; Dawn's binary ships inside `webgpu`.
 *
 * @since 0.1.0
 */
import { Context, Effect, Layer, Schema } from "effect"
import { createRequire } from "node:module"
// The union package registers every gradient and the cpu backend; tfjs-core
// alone (its CommonJS entry, which Node loads) registers no gradients.
import "@tensorflow/tfjs"
import * as tf from "@tensorflow/tfjs-core"
import * as WasmHeap from "./WasmHeap.ts"
import * as WasmKernels from "./WasmKernels.ts"
import * as WebGpu from "./WebGpu.ts"

// Before any wasm module exists: it binds console.warn when created, and its
// XNNPACK out-of-memory reports arrive only there (see WasmHeap).
WasmHeap.hookWarnings()

export const BackendName = Schema.Literals(["auto", "tensorflow-gpu", "tensorflow", "webgpu", "wasm", "cpu"])
export type BackendName = typeof BackendName.Type

/**
 * The requested backend cannot be loaded here.
 *
 * @since 0.1.0
 */
export class BackendUnavailable extends Schema.TaggedError<BackendUnavailable>()("BackendUnavailable", {
  requested: Schema.String,
  available: Schema.Array(Schema.String),
  reason: Schema.String
}) {
  override get message() {
    return `backend "${this.requested}" is unavailable (${this.reason}); available here: ${this.available.join(", ")}`
  }
}

const require = createRequire(import.meta.url)

/** tfjs name of each concrete backend and the package that provides it. */
const candidates = [
  { name: "tensorflow-gpu", tfName: "tensorflow", pkg: "@tensorflow/tfjs-node-gpu" },
  { name: "tensorflow", tfName: "tensorflow", pkg: "@tensorflow/tfjs-node" },
  { name: "webgpu", tfName: "webgpu", pkg: "@tensorflow/tfjs-backend-webgpu" },
  { name: "wasm", tfName: "wasm", pkg: "@tensorflow/tfjs-backend-wasm" },
  { name: "cpu", tfName: "cpu", pkg: "@tensorflow/tfjs-backend-cpu" }
] as const

/** The adapter webgpu runs on, once it was initialised. */
let adapter: WebGpu.AdapterInfo | undefined

const tryLoad = async (c: (typeof candidates)[number], softwareOk: boolean): Promise<string | undefined> => {
  try {
    if (c.name === "webgpu") {
      const found = await WebGpu.loadBackend(softwareOk)
      if (found._tag === "NotFound") return found.reason
      adapter = found.adapter
    } else {
      // The native packages only exist where their install succeeded.
      require(c.pkg)
    }
    const ok = await tf.setBackend(c.tfName)
    if (!ok) return `tf.setBackend("${c.tfName}") returned false`
    await tf.ready()
    if (c.tfName === "wasm") WasmKernels.install()
    if (c.tfName === "webgpu") WebGpu.watch((tf.backend() as unknown as { device: GPUDevice }).device)
    return undefined
  } catch (e) {
    return e instanceof Error ? e.message.split("\n")[0] : String(e)
  }
}

/** Backends whose package resolves here (cheap: no initialisation). */
export const installed = (): Array<string> =>
  candidates.filter((c) => {
    try {
      require.resolve(c.pkg)
      return true
    } catch {
      return false
    }
  }).map((c) => c.name)

/**
 * Initialise a backend by name. Promise-based so that scripts and tests
 * without an Effect runtime can call it too.
 *
 * @since 0.1.0
 */
export const initialise = async (
  requested: BackendName
): Promise<{ name: string; adapter?: WebGpu.AdapterInfo } | BackendUnavailable> => {
  const order = requested === "auto" ? candidates : candidates.filter((c) => c.name === requested)
  const reasons: Array<string> = []
  for (const c of order) {
    const reason = await tryLoad(c, requested !== "auto")
    if (reason === undefined) return c.name === "webgpu" && adapter !== undefined ? { name: c.name, adapter } : { name: c.name }
    reasons.push(`${c.name}: ${reason}`)
  }
  return new BackendUnavailable({ requested, available: installed(), reason: reasons.join("; ") })
}

/**
 * Whether worker threads speed a backend up. The JS backends (wasm, cpu)
 * run one thread each, so a pool of threads multiplies them; native
 * TensorFlow is multi-threaded already, and on a GPU backend each thread
 * would open the device and fight the others over it, so there the work
 * runs in this process with larger batches.
 *
 * @since 0.2.0
 */
export const usesWorkerThreads = (name: string): boolean => name === "wasm" || name === "cpu"

/** Backends that compute on a GPU. */
export const isGpu = (name: string): boolean => name === "webgpu" || name === "tensorflow-gpu"

/** `SHARPEN_BACKEND` if set, else `fallback` (a CLI's `--backend`, "auto" by default). */
export const fromEnv = (fallback: BackendName = "auto"): BackendName => {
  const v = process.env.SHARPEN_BACKEND
  return v !== undefined && v !== "" ? (v as BackendName) : fallback
}

/**
 * The active backend. Its layer initialises tfjs once per process.
 *
 * @since 0.1.0
 */
export class Backend extends Context.Service<Backend, {
  /** Backend actually running ("wasm", "cpu", "webgpu", "tensorflow", ...). */
  readonly name: string
  /** The GPU adapter, on webgpu. */
  readonly adapter?: WebGpu.AdapterInfo
}>()("sharpen/tensor/Backend") {
  static readonly make = (requested: BackendName) =>
    Layer.effect(
      Backend,
      Effect.gen(function*() {
        if (!Schema.is(BackendName)(requested)) {
          return yield* new BackendUnavailable({ requested, available: installed(), reason: "unknown backend name" })
        }
        const result = yield* Effect.promise(() => initialise(requested))
        if (result instanceof BackendUnavailable) return yield* result
        const on = result.adapter !== undefined ? ` on ${WebGpu.format(result.adapter)}` : ""
        yield* Effect.logInfo(`tensor backend: ${result.name}${on}${requested === "auto" ? " (auto)" : ""}`)
        return Backend.of(result.adapter !== undefined ? { name: result.name, adapter: result.adapter } : { name: result.name })
      })
    )

  /** `auto` unless `SHARPEN_BACKEND` says otherwise. */
  static readonly layer = Layer.suspend(() => Backend.make(fromEnv()))

  /** A CLI's `--backend`, unless `SHARPEN_BACKEND` says otherwise. */
  static readonly fromFlag = (flag: BackendName) => Layer.suspend(() => Backend.make(fromEnv(flag)))

  /** The pure-JS backend: slow but exact, for tests that compare numerics. */
  static readonly layerCpu = Backend.make("cpu")
}
