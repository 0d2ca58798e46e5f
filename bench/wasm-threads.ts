/**
 * Probe: can tfjs-backend-wasm's threaded SIMD binary (XNNPACK with a
 * pthread pool) run under Node? Prints what the backend reports and whether
 * a convolution actually uses more than one core (CPU time / wall time).
 *
 *   npx tsx bench/wasm-threads.ts            # the threaded binary, 2 threads
 *   npx tsx bench/wasm-threads.ts --plain    # the single-threaded SIMD binary, for comparison
 *
 * Two things stop the threaded binary under Node, and this script works
 * around both: tfjs reports no thread support when IS_NODE
 * (WASM_HAS_MULTITHREAD_SUPPORT, tfjs issue 3830), which the flag can
 * override; and the pthread workers are started from blob: URLs, which
 * Node's worker_threads refuse (ERR_WORKER_PATH), so the worker script is
 * written to a file and its Blob import of the main script replaced by the
 * module's path. The finding is in docs/performance.md.
 */
import "@tensorflow/tfjs"
import * as tf from "@tensorflow/tfjs-core"
import * as wasm from "@tensorflow/tfjs-backend-wasm"
import * as fs from "node:fs"
import { createRequire } from "node:module"
import * as os from "node:os"
import * as path from "node:path"

const plain = process.argv.includes("--plain")
const threads = 2

if (!plain) {
  const require = createRequire(import.meta.url)
  const mainJs = require.resolve("@tensorflow/tfjs-backend-wasm/wasm-out/tfjs-backend-wasm-threaded-simd.js")
  const { wasmWorkerContents } = require(path.join(path.dirname(mainJs), "tfjs-backend-wasm-threaded-simd.worker.js")) as { wasmWorkerContents: string }
  const workerFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "tfjs-wasm-threads-")), "worker.js")
  // As tfjs does before making its Blob: the embedded source has raw newlines inside string literals.
  fs.writeFileSync(
    workerFile,
    wasmWorkerContents.replace(/\n/g, "\\n")
      .replace("URL.createObjectURL(e.data.urlOrBlob)", JSON.stringify(mainJs))
      .replace("URL.revokeObjectURL(objectUrl)", "0")
  )
  const createObjectURL = URL.createObjectURL
  URL.createObjectURL = (b: Blob) => (b.type === "application/javascript" ? workerFile : createObjectURL(b))
  tf.env().set("WASM_HAS_MULTITHREAD_SUPPORT", true)
  wasm.setThreadsCount(threads)
}

const ok = await tf.setBackend("wasm")
await tf.ready()
const x = tf.randomNormal([8, 32, 32, 64]) as tf.Tensor4D
const k = tf.randomNormal([3, 3, 64, 64]) as tf.Tensor4D
for (let i = 0; i < 3; i++) tf.conv2d(x, k, 1, "same").dataSync()
const ts: Array<number> = []
const cpu0 = process.cpuUsage()
const wall0 = performance.now()
for (let i = 0; i < 20; i++) {
  const t0 = performance.now()
  // void: tf.tidy walks what its function returns, a typed array element by element
  tf.tidy(() => void tf.conv2d(x, k, 1, "same").dataSync())
  ts.push(performance.now() - t0)
}
const cpu = process.cpuUsage(cpu0)
const wall = performance.now() - wall0
ts.sort((a, b) => a - b)
console.log([
  `binary: ${plain ? "SIMD, single-threaded" : `threaded SIMD, setThreadsCount(${threads})`}; setBackend: ${ok}`,
  `XNNPACK threads reported (getThreadsCount): ${wasm.getThreadsCount()}; OS threads in the process: ${fs.readdirSync("/proc/self/task").length}`,
  `conv 8x32x32x64 -> 64 (3x3): median ${ts[10].toFixed(1)} ms of 20; CPU time / wall time ${((cpu.user + cpu.system) / 1000 / wall).toFixed(2)}`,
  `1-min load average ${os.loadavg()[0].toFixed(2)}`
].join("\n"))
process.exit(0)
