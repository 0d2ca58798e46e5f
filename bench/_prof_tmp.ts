import * as tf from "@tensorflow/tfjs-core"
import * as TrainingBench from "./TrainingBench.ts"
import { defaultConfig } from "../src/model/UNetConfig.ts"
import { initialise } from "../src/tensor/Backend.ts"
await initialise("wasm")
const bench = TrainingBench.make(defaultConfig, 8)
for (let k = 0; k < 2; k++) bench.step()
const info = await tf.profile(bench.step)
const by = new Map<string, { ms: number; calls: number }>()
for (const k of info.kernels) {
  const key = `${k.name} ${JSON.stringify(k.inputShapes)}`
  const e = by.get(key) ?? { ms: 0, calls: 0 }
  e.ms += k.kernelTimeMs as number; e.calls++; by.set(key, e)
}
const filter = process.argv[2]
const rows = [...by.entries()].filter(([k]) => filter === undefined || k.startsWith(filter)).sort((a, b) => b[1].ms - a[1].ms).slice(0, 400)
for (const [k, e] of rows) console.log(e.ms.toFixed(1).padStart(7), String(e.calls).padStart(5), k)
