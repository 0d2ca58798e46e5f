/**
 * Moved to src/optim/Metrics.ts (shared with pretraining and the clip
 * reward); this re-export keeps the importers not yet updated building
 * (src/experiments/, src/cli/SharpenCli.ts, src/sharpen/SharpenLayers.ts,
 * src/lab/Lab.ts). Import from src/optim/Metrics.ts.
 *
 * @since 0.1.0
 * @deprecated since 0.7.0: src/optim/Metrics.ts
 */
export * from "../optim/Metrics.ts"
