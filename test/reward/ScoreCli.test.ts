import { assert, describe, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll } from "vitest"
import { encodePng } from "../../src/data/Png.ts"
import { parseOrThrow } from "../../src/data/Prompt.ts"
import { render } from "../../src/data/Render.ts"
import { verify } from "../../src/data/Verifier.ts"
import { Rng } from "../../src/tensor/Random.ts"
import { root, tsxLoader } from "../cli-helpers.ts"
import { startServer, type TestServer } from "./RewardServer.ts"


/** Runs pipelines/score.ts as a child process (what `npx tsx pipelines/score.ts` does). */
const score = (args: ReadonlyArray<string>) =>
  new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, ["--import", tsxLoader, path.join(root, "pipelines", "score.ts"), ...args], {
      cwd: root,
      env: { ...process.env, SHARPEN_BACKEND: "" }
    })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (d) => (stdout += d))
    child.stderr.on("data", (d) => (stderr += d))
    child.on("close", (code) => resolve({ code, stdout, stderr }))
  })

describe("pipelines/score.ts", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "score-cli-"))
  const images = path.join(dir, "images")
  const partial = path.join(dir, "partial")
  const promptFile = path.join(dir, "prompts.txt")
  // The last image renders another prompt, so one image fails.
  const prompts = ["a red square", "two blue circles", "a green triangle to the left of a white square", "a yellow circle"]
  const rendered = ["a red square", "two blue circles", "a green triangle to the left of a white square", "a red circle"]
  let server: TestServer
  let results: Array<{ code: number | null; stdout: string; stderr: string }> = []

  beforeAll(async () => {
    fs.mkdirSync(images)
    fs.mkdirSync(partial)
    const rng = Rng.fromSeed(11)
    rendered.forEach((text, i) => {
      const png = encodePng(render(parseOrThrow(text), rng))
      fs.writeFileSync(path.join(images, `${String(i).padStart(4, "0")}.png`), png)
      if (i < 2) fs.writeFileSync(path.join(partial, `${String(i).padStart(4, "0")}.png`), png)
    })
    // Empty lines are skipped, as in every prompt file.
    fs.writeFileSync(promptFile, prompts.join("\n\n") + "\n")
    server = await startServer((req) => ({ body: { rewards: (req.body.prompts as Array<string>).map((p) => p.length) } }))
    // The three runs in parallel: process start-up dominates.
    results = await Promise.all([
      score(["--reward", "compositional", "--prompts", promptFile, "--images", images]),
      score(["--reward", "compositional", "--prompts", promptFile, "--images", partial]),
      score(["--reward", "http", "--base-url", `${server.url}/score`, "--prompts", promptFile, "--images", images])
    ])
  })
  afterAll(() => server.close())

  it("prints one JSON line per image and a summary line; agrees with the verifier", () => {
    const { code, stdout, stderr } = results[0]
    assert.strictEqual(code, 0, stderr)
    const lines = stdout.trim().split("\n").map((l) => JSON.parse(l))
    assert.strictEqual(lines.length, prompts.length + 1)
    const rng = Rng.fromSeed(11)
    prompts.forEach((p, i) => {
      const expected = verify(parseOrThrow(p), render(parseOrThrow(rendered[i]), rng)).pass ? 1 : 0
      assert.deepStrictEqual(lines[i], { index: i, prompt: p, reward: expected })
    })
    assert.deepStrictEqual(lines.slice(0, 4).map((l) => l.reward), [1, 1, 1, 0])
    const summary = lines[prompts.length].summary
    assert.strictEqual(summary.reward, "compositional")
    assert.strictEqual(summary.n, 4)
    assert.strictEqual(summary.mean, 0.75)
    assert.deepStrictEqual(summary.range, [0, 1])
  })

  it("a missing image exits 1 with a one-line error naming the file, no stack trace", () => {
    const { code, stdout, stderr } = results[1]
    assert.strictEqual(code, 1)
    assert.strictEqual(stdout, "")
    const lines = stderr.trim().split("\n")
    assert.strictEqual(lines.length, 1, stderr)
    assert.match(lines[0], /^error: ImagesError: missing image 2 .*\(path: .*partial\/0002\.png\)$/)
  })

  it("scores through an http reward server", () => {
    const { code, stdout, stderr } = results[2]
    assert.strictEqual(code, 0, stderr)
    const lines = stdout.trim().split("\n").map((l) => JSON.parse(l))
    assert.deepStrictEqual(lines.slice(0, 4).map((l) => l.reward), prompts.map((p) => p.length))
    assert.strictEqual(lines[4].summary.reward, "http")
    assert.deepStrictEqual(lines[4].summary.range, [null, null])
    assert.strictEqual(server.requests.length, 1)
  })
})
