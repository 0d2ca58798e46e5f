/**
 * Prints the WebGPU adapter Dawn finds (exit 0), or why there is none
 * (exit 1). `--json` prints the adapter's fields instead.
 *
 *   npx tsx scripts/webgpu-probe.ts
 */
import * as WebGpu from "../src/tensor/WebGpu.ts"

const found = await WebGpu.probe()
if (found._tag === "NotFound") {
  console.error(found.reason)
  process.exit(1)
}
console.log(process.argv.includes("--json") ? JSON.stringify(found.adapter) : WebGpu.format(found.adapter))
process.exit(0)
