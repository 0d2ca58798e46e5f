/**
 * What the pipeline CLI tests share: the repo root, the tsx loader, running
 * `pipelines/<script>` as a child process, and a tiny untrained model.
 */
import { NodeServices } from "@effect/platform-node"
import { Effect } from "effect"
import { spawnSync } from "node:child_process"
import * as path from "node:path"
import * as Denoiser from "../src/model/Denoiser.ts"
import { useCpu } from "./helpers.ts"
import { tiny32 } from "./sharpen-helpers.ts"

export const root = path.resolve(import.meta.dirname, "..")
// Absolute, so child processes may run in another working directory.
export const tsxLoader = import.meta.resolve("tsx")

/**
 * Runs `pipelines/<script>` as `npx tsx` does, synchronously. SHARPEN_BACKEND
 * is cleared so the script's own `--backend` flag decides.
 */
export const runPipeline = (script: string, args: ReadonlyArray<string>, options: { readonly cwd?: string } = {}) =>
  spawnSync(process.execPath, ["--import", tsxLoader, path.join(root, "pipelines", script), ...args], {
    cwd: options.cwd ?? root,
    encoding: "utf8",
    env: { ...process.env, SHARPEN_BACKEND: "" }
  })

/** Saves an untrained `tiny32` model directory, for pipelines that need one. */
export const saveTinyModel = async (dir: string): Promise<void> => {
  await useCpu()
  const m = Denoiser.init(tiny32, 0)
  await Effect.runPromise(Denoiser.save(dir, m).pipe(Effect.provide(NodeServices.layer)))
  Denoiser.dispose(m)
}
