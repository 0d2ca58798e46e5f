/**
 * The wasm backend's heap is wasm32 memory: it grows on demand up to 4 GiB
 * and no further. Running out shows two ways, neither an ordinary error:
 * XNNPACK cannot create an operator and tfjs only prints "XNN status ...
 * Got status 6" and goes on (the convolution's output, and so the
 * gradient, is then wrong), or an allocation fails and the module aborts
 * ("Aborted()", "memory access out of bounds"), after which the backend is
 * unusable. {@link guard} turns both into {@link WasmHeapExhausted}, naming
 * the work, its batch and the limit.
 *
 * The default UNet's pretraining step takes about 60 MiB of heap per row
 * at 32 px: batch 64 fits, 80 does not (docs/performance.md).
 *
 * @since 0.4.0
 */
import * as tf from "@tensorflow/tfjs-core"
import { Effect, Schema } from "effect"

/** getHeapMax() of tfjs-backend-wasm 4.22's build: 4 GiB less one 64 KiB page. */
export const heapLimitBytes = 4294901760

const mib = (bytes: number) => Math.round(bytes / 2 ** 20)

/**
 * The wasm heap ran out during `what` (at `rows` UNet rows when known).
 *
 * @since 0.4.0
 */
export class WasmHeapExhausted extends Schema.TaggedError<WasmHeapExhausted>()("WasmHeapExhausted", {
  what: Schema.String,
  rows: Schema.optional(Schema.Number),
  heapBytes: Schema.Number,
  limitBytes: Schema.Number,
  detail: Schema.String
}) {
  override get message() {
    return `the wasm heap ran out during ${this.what}${this.rows === undefined ? "" : ` at batch ${this.rows} (UNet rows)`}: ` +
      `heap ${mib(this.heapBytes)} MiB, limit ${mib(this.limitBytes)} MiB (${this.detail}); ` +
      "use a smaller batch or fewer rows per gradient part (--micro-batch-rows)"
  }
}

/** Current size of the wasm heap in bytes (0 on other backends). */
export const heapBytes = (): number => {
  const b = tf.engine().backendName === "wasm" ? (tf.backend() as unknown as { wasm?: { HEAPU8?: Uint8Array } }) : undefined
  return b?.wasm?.HEAPU8?.length ?? 0
}

// XNNPACK failures of the current guard. tfjs-backend-wasm prints them
// through the console.warn it bound when its module was created, so the hook
// must be in place before the backend initialises (Backend.initialise does it).
let reports: Array<string> | undefined
let hooked = false

/**
 * Route tfjs-backend-wasm's XNNPACK warnings to {@link guard} (and still
 * print them). Idempotent; call before the wasm backend initialises.
 *
 * @since 0.4.0
 */
export const hookWarnings = (): void => {
  if (hooked) return
  hooked = true
  const warn = console.warn
  console.warn = (...args: Array<unknown>) => {
    const text = args.map(String).join(" ")
    if (reports !== undefined && /XNN status|status 6/.test(text)) reports.push(text)
    warn.apply(console, args)
  }
}

const isAbort = (e: unknown) =>
  e instanceof Error && /Aborted\(|memory access out of bounds|Out of memory|Cannot enlarge memory/i.test(e.message)

/**
 * Run `f`; if the wasm heap ran out meanwhile, throw {@link WasmHeapExhausted}
 * instead of returning (after `release` frees what `f` returned).
 *
 * @since 0.4.0
 */
export const guard = <A>(what: string, rows: number | undefined, f: () => A, release?: (a: A) => void): A => {
  const outer = reports
  reports = []
  const fail = (detail: string) => new WasmHeapExhausted({ what, rows, heapBytes: heapBytes(), limitBytes: heapLimitBytes, detail })
  try {
    let result: A
    try {
      result = f()
    } catch (e) {
      if (isAbort(e)) {
        const first = (e as Error).message.split("\n")[0].replace(/\s*Build with -sASSERTIONS.*$/, "")
        throw fail(`the module failed: "${first}"; the wasm backend is unusable until the process restarts`)
      }
      throw e
    }
    if (reports.length > 0) {
      release?.(result)
      throw fail(`XNNPACK could not create an operator: "${reports[0].slice(0, 120)}"`)
    }
    return result
  } finally {
    reports = outer
  }
}

/**
 * {@link guard} as an Effect: heap exhaustion is a typed failure, anything
 * else `f` throws a defect.
 *
 * @since 0.4.0
 */
export const guarded = <A>(what: string, rows: number | undefined, f: () => A, release?: (a: A) => void): Effect.Effect<A, WasmHeapExhausted> =>
  Effect.suspend(() => {
    try {
      return Effect.succeed(guard(what, rows, f, release))
    } catch (e) {
      return e instanceof WasmHeapExhausted ? Effect.fail(e) : Effect.die(e)
    }
  })
