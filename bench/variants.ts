/**
 * AdamW step time of architecture variants of the default UNet, in one run
 * (median of 6 steps at batch 8).
 *
 *   npx tsx bench/variants.ts
 *
 * The figures in docs/model.md (patched first level) and docs/performance.md
 * (cross-attention at 16 px) come from this command.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect } from "effect"
import * as TrainingBench from "./TrainingBench.ts"
import * as Denoiser from "../src/model/Denoiser.ts"
import { type Architecture, defaultConfig } from "../src/model/UNetConfig.ts"
import { Backend, fromEnv } from "../src/tensor/Backend.ts"

const variants: Record<string, Partial<Architecture>> = {
  "default": {},
  "cross-attention at 8 px only": { attentionResolutions: [8] },
  "2 res blocks per level": { numResBlocks: 2 },
  "base channels 48": { baseChannels: 48 },
  "patch 2, base channels 64": { patchSize: 2, baseChannels: 64 }
}

const program = Effect.gen(function*() {
  const backend = yield* Backend
  console.log(`AdamW step at batch 8 on **${backend.name}**, median of 6:\n`)
  console.log("| variant | parameters | GFLOP / forward | step ms |")
  console.log("|---|---|---|---|")
  for (const [name, v] of Object.entries(variants)) {
    const config = { ...defaultConfig, architecture: { ...defaultConfig.architecture, ...v } }
    const bench = TrainingBench.make(config, 8)
    const ts: Array<number> = []
    for (let k = 0; k < 6; k++) {
      const t0 = performance.now()
      yield* Effect.promise(() => bench.step())
      ts.push(performance.now() - t0)
    }
    ts.sort((a, b) => a - b)
    console.log(`| ${name} | ${Denoiser.parameterCount(bench.model).toLocaleString("en-US")} | ${(Denoiser.flopsPerForward(config, 8) / 1e9).toFixed(2)} | ${ts[3].toFixed(0)} |`)
    bench.dispose()
  }
}).pipe(Effect.provide(Backend.make(fromEnv())))

NodeRuntime.runMain(program)
