/**
 * Moved to src/optim/Checkpointer.ts (shared with pretraining and the clip
 * reward); this re-export keeps the importers not yet updated
 * (src/experiments/, src/sharpen/SharpenLayers.ts) building. Import from
 * src/optim/Checkpointer.ts.
 *
 * @since 0.1.0
 * @deprecated since 0.7.0: src/optim/Checkpointer.ts
 */
export * from "../optim/Checkpointer.ts"
