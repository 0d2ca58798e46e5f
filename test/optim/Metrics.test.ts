import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as fsNode from "node:fs"
import * as os from "node:os"
import * as nodePath from "node:path"
import { legacyRecords } from "../../src/optim/Checkpointer.ts"
import { StepMetrics, type StepRecord } from "../../src/optim/Metrics.ts"

const step = (iteration: number, extra: Partial<StepRecord> = {}): StepRecord => ({
  iteration,
  loss: 1 / iteration,
  lr: 1e-3,
  gradNorm: 0.5,
  wallMs: 10,
  liveTensors: 7,
  ...extra
})

const lines = (file: string) => fsNode.readFileSync(file, "utf8").split("\n").filter((l) => l !== "").map((l) => JSON.parse(l))

describe("StepMetrics", () => {
  it.effect("appends one JSON line per step and rewrites the file on reset (a resume)", () =>
    Effect.gen(function*() {
      const file = nodePath.join(fsNode.mkdtempSync(nodePath.join(os.tmpdir(), "step-metrics-")), "metrics.jsonl")
      yield* Effect.gen(function*() {
        const m = yield* StepMetrics
        yield* m.reset([])
        yield* m.log(step(1, { accuracy: 0.25, logitScale: 14 }))
        yield* m.log(step(2, { logitScale: 14.5 }))
        yield* m.log(step(3))
        assert.deepStrictEqual(lines(file), [step(1, { accuracy: 0.25, logitScale: 14 }), step(2, { logitScale: 14.5 }), step(3)])
        yield* m.reset([step(1)])
        assert.deepStrictEqual(lines(file), [step(1)])
        assert.deepStrictEqual(yield* m.records, [step(1)])
        yield* m.end
      }).pipe(Effect.provide(StepMetrics.jsonl(file, 3, "test")))
    }).pipe(Effect.provide(NodeServices.layer)))
})

describe("Checkpointer.legacyRecords", () => {
  it("turns an old supervised state's losses and accuracies into step records", () => {
    const rs = legacyRecords(
      { step: 12, rng: [1, 2, 3, 4], adamStep: 12, wallMs: 1200, losses: Array.from({ length: 12 }, (_, i) => i), accuracies: [0.1, 0.2], options: {} },
      (i) => i / 100
    )
    assert.deepStrictEqual(rs.map((r) => r.iteration), Array.from({ length: 12 }, (_, i) => i + 1))
    assert.deepStrictEqual(rs.map((r) => r.loss), Array.from({ length: 12 }, (_, i) => i))
    assert.deepStrictEqual(rs.map((r) => r.lr), Array.from({ length: 12 }, (_, i) => i / 100))
    assert.deepStrictEqual(rs.flatMap((r) => (r.accuracy === undefined ? [] : [[r.iteration, r.accuracy]])), [[1, 0.1], [11, 0.2]])
    assert.isTrue(rs.every((r) => r.wallMs === 100))
  })
})
