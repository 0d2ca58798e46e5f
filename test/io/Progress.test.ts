import { assert, describe, it } from "@effect/vitest"
import * as Progress from "../../src/io/Progress.ts"

/** A non-terminal stream that keeps what is written (the log-line mode of CI and nohup). */
const capture = () => {
  const lines: Array<string> = []
  const stream = { isTTY: false, write: (s: string) => lines.push(s) } as unknown as NodeJS.WriteStream
  return { lines, stream }
}

describe("Progress", () => {
  it("logs every logEvery steps when steps advance one at a time", () => {
    const { lines, stream } = capture()
    const bar = Progress.make({ label: "run", total: 10, logEvery: 5, stream })
    for (let i = 1; i <= 10; i++) bar.tick(i)
    assert.deepStrictEqual(lines.map((l) => l.split(" ")[1]), ["5/10", "10/10"])
  })

  it("logs when a jump crosses a multiple of logEvery (a bar over training NFE), and at the end", () => {
    const { lines, stream } = capture()
    const bar = Progress.make({ label: "rlhf training NFE", total: 20000, logEvery: 1000, stream })
    // Iterations of about 940 NFE never land on a multiple of 1000.
    for (const spent of [940, 1880, 2820, 3760, 4700, 20000]) bar.tick(spent)
    assert.deepStrictEqual(lines.map((l) => l.split(" ")[3]), ["1880/20000", "2820/20000", "3760/20000", "4700/20000", "20000/20000"])
  })

  it("a resumed bar logs from where it starts, not the steps before", () => {
    const { lines, stream } = capture()
    const bar = Progress.make({ label: "run", total: 100, start: 57, logEvery: 10, stream })
    bar.tick(58)
    bar.tick(61)
    assert.deepStrictEqual(lines.map((l) => l.split(" ")[1]), ["61/100"])
  })
})
