/**
 * The set-up every pipeline script shares: the `--backend` and `--model`
 * flags, the tensor backend layer, the denoiser on it, and the clip model
 * (reward and evaluation), loaded for the caller's scope.
 *
 * @since 0.6.0
 */
import { Effect, Layer } from "effect"
import { Flag } from "effect/cli"
import * as Denoiser from "../model/Denoiser.ts"
import * as ClipModel from "../reward/ClipModel.ts"
import { Backend, BackendName } from "../tensor/Backend.ts"
import * as Scoped from "../tensor/Scoped.ts"

/** The base generator every script starts from. */
export const DEFAULT_MODEL = "models/shapeworld-base"

/** The clip reward model (reward and evaluation). */
export const DEFAULT_CLIP_MODEL = "models/shapeworld-clip"

/**
 * `--backend` (default `auto`, or `SHARPEN_BACKEND`).
 *
 * @since 0.6.0
 */
export const backendFlag = Flag.Literals("backend", BackendName.literals).pipe(
  Flag.withDescription("tensor backend (auto: SHARPEN_BACKEND, else tfjs-node-gpu, tfjs-node, webgpu on a hardware adapter, wasm, cpu; docs/runtime.md)"),
  Flag.withDefault("auto" as const)
)

/**
 * `--model`: a model directory.
 *
 * @since 0.6.0
 */
export const modelFlag = (description = "model directory", fallback = DEFAULT_MODEL) =>
  Flag.String("model").pipe(Flag.withDescription(description), Flag.withDefault(fallback))

/**
 * The backend a `--backend` value names (`Backend.fromFlag`), fresh for
 * each use so a test or a second command in one process gets its own.
 *
 * @since 0.6.0
 */
export const backend = (flag: BackendName) => Layer.fresh(Backend.fromFlag(flag))

/**
 * The denoiser of `model` on the `--backend` (weights checked at load),
 * with the backend it runs on.
 *
 * @since 0.6.0
 */
export const denoiser = (model: string, flag: BackendName) => Denoiser.Denoiser.fromDir(model, false).pipe(Layer.provideMerge(Backend.fromFlag(flag)))

/**
 * The clip model of `dir`, released with the caller's scope.
 *
 * @since 0.6.0
 */
export const clip = (dir: string) =>
  Effect.flatMap(ClipModel.loadFiles(dir), (c) => Scoped.acquireWith(() => ClipModel.fromStored(c.config, c.weights, false), ClipModel.dispose))
