import { assert, describe, it } from "@effect/vitest"
import * as Aggregate from "../../src/trajectory/Aggregate.ts"

// m = 2 steps, n = 3 trajectories, B = 2 items: row r = i*B + b.
const perStep = [
  [0.1, 0.9, 0.5, 0.2, 0.35, 0.4],
  [0.2, 0.8, 0.7, 0.1, 0.0, 0.6]
]

describe("Aggregate", () => {
  it("sums (Eq. 8), averages, takes the last or discounts per trajectory", () => {
    const close = (a: Array<Array<number>>, b: Array<Array<number>>) =>
      a.forEach((row, i) => row.forEach((v, j) => assert.closeTo(v, b[i][j], 1e-12)))
    close(Aggregate.aggregate(perStep, 3, 2, { kind: "sum" }), [[0.3, 1.7], [1.2, 0.3], [0.35, 1.0]])
    close(Aggregate.aggregate(perStep, 3, 2, { kind: "mean" }), [[0.15, 0.85], [0.6, 0.15], [0.175, 0.5]])
    close(Aggregate.aggregate(perStep, 3, 2, { kind: "last" }), [[0.2, 0.8], [0.7, 0.1], [0.0, 0.6]])
    close(Aggregate.aggregate(perStep, 3, 2, { kind: "discounted", gamma: 0.5 }), [[0.25, 1.25], [0.95, 0.2], [0.175, 0.8]])
  })

  it("selects the argmax and argmin trajectory per item", () => {
    const scores = Aggregate.aggregate(perStep, 3, 2, { kind: "sum" })
    assert.deepStrictEqual(Aggregate.argmax(scores), [1, 0])
    assert.deepStrictEqual(Aggregate.argmin(scores), [0, 1])
  })
})
