/**
 * The one training loop of the project: sharpening (`Sharpen.loop`),
 * pretraining and the clip reward (`TrainingLoop.supervised`, on the same
 * Optimizer, Checkpointer and metrics services as sharpening) and the lab's
 * base model (`TrainingLoop.run`) all run their steps here.
 *
 * A step runs inside `Effect.uninterruptibleMask`: only what it passes
 * through `restore` can be interrupted (sharpening's batch, paths and
 * rewards), and once its update has started, the update, the step count and
 * a due checkpoint complete together. An interruption (Ctrl-C) between or
 * inside the interruptible part runs `onInterrupt`, then writes a checkpoint
 * of the steps done if the last one is older, so nothing learned is lost and
 * nothing half-done is saved. At the end, a checkpoint is written if steps
 * were done since the last.
 *
 * @since 0.6.0
 */
import { Effect } from "effect"

/** Marks the part of a step that may be abandoned. */
export type Interruptible = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

export interface Options<E, R, EC, RC> {
  /** Steps done before this run (a resumed checkpoint's). */
  readonly start: number
  /** Whether to take another step after `done` steps (the length, a budget, a time limit). */
  readonly more: (done: number) => Effect.Effect<boolean, E, R>
  /** Step `index` (0-based); only what runs through `restore` may be abandoned. */
  readonly step: (index: number, restore: Interruptible) => Effect.Effect<void, E, R>
  /** Whether a checkpoint is due after `done` steps. */
  readonly due: (done: number) => boolean
  readonly checkpoint: (done: number) => Effect.Effect<void, EC, RC>
  /** Inside the step's atomic part, after its checkpoint (mark the state an interruption returns to). */
  readonly afterStep?: Effect.Effect<void, E, R>
  /** Between steps, interruptible (sample grids). */
  readonly between?: (done: number) => Effect.Effect<void, E, R>
  /** On interruption, before the last checkpoint (end a progress bar, undo an abandoned step's draws). */
  readonly onInterrupt?: Effect.Effect<void, never, R>
  /** At the end, before the last checkpoint. */
  readonly end?: Effect.Effect<void, never, R>
  /** The word for a step in the interruption's log line ("step", "iteration"). */
  readonly unit: string
}

/**
 * Run steps while `more`; returns the steps done (including `start`).
 *
 * @since 0.6.0
 */
export const run = <E, R, EC, RC>(o: Options<E, R, EC, RC>): Effect.Effect<number, E | EC, R | RC> =>
  Effect.gen(function*() {
    let done = o.start
    let saved = done
    const body = Effect.gen(function*() {
      while (yield* o.more(done)) {
        yield* Effect.uninterruptibleMask((restore) =>
          Effect.gen(function*() {
            yield* o.step(done, restore)
            done += 1
            if (o.due(done)) {
              yield* o.checkpoint(done)
              saved = done
            }
            if (o.afterStep !== undefined) yield* o.afterStep
          })
        )
        if (o.between !== undefined) yield* o.between(done)
        yield* Effect.yieldNow
      }
    })
    yield* body.pipe(
      Effect.onInterrupt(() =>
        Effect.gen(function*() {
          if (o.onInterrupt !== undefined) yield* o.onInterrupt
          if (done > saved) {
            yield* o.checkpoint(done).pipe(Effect.ignore)
            yield* Effect.logInfo(`interrupted: checkpoint written at ${o.unit} ${done}`)
          }
        })
      )
    )
    if (o.end !== undefined) yield* o.end
    if (done > saved) yield* o.checkpoint(done)
    return done
  })
