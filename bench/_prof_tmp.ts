import * as tf from "@tensorflow/tfjs-core"
import * as TrainingBench from "./TrainingBench.ts"
import { defaultConfig } from "../src/model/UNetConfig.ts"
import { initialise } from "../src/tensor/Backend.ts"
await initialise("wasm")
const bench = TrainingBench.make(defaultConfig, 8)
for (let k = 0; k < 2; k++) await bench.step()
const by = new Map<string, { ms: number; calls: number }>()
for (let rep = 0; rep < 3; rep++) {
  const info = await tf.profile(bench.step)
  for (const k of info.kernels.filter((k) => tf.getKernel(k.name, "wasm") !== undefined)) {
    const key = `${k.name} ${JSON.stringify(k.inputShapes)}`
    const e = by.get(key) ?? { ms: 0, calls: 0 }
    e.ms += (k.kernelTimeMs as number) / 3; e.calls++; by.set(key, e)
  }
}
const total = [...by.values()].reduce((a, e) => a + e.ms, 0)
const byName = new Map<string, number>()
for (const [k, e] of by) byName.set(k.split(" ")[0], (byName.get(k.split(" ")[0]) ?? 0) + e.ms)
console.log("total", total.toFixed(0), [...byName.entries()].sort((a, b) => b[1] - a[1]).slice(0, 12).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(", "))
const filter = process.argv[2]
for (const [k, e] of [...by.entries()].filter(([k]) => filter === undefined || k.startsWith(filter)).sort((a, b) => b[1].ms - a[1].ms).slice(0, 25)) console.log(e.ms.toFixed(1).padStart(7), String(e.calls / 3).padStart(5), k)
