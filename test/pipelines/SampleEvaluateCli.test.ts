import { assert, describe, it } from "@effect/vitest"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { beforeAll } from "vitest"
import * as Png from "../../src/data/Png.ts"
import { runPipeline, saveTinyModel } from "../cli-helpers.ts"

const run = (script: string, args: ReadonlyArray<string>) => {
  const r = runPipeline(script, [...args, "--backend", "wasm"])
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

const errorLines = (stderr: string) => stderr.split("\n").filter((l) => l.startsWith("error:"))

describe("sample.ts and evaluate.ts", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "cli-"))
  const model = path.join(dir, "model")
  const prompts = path.join(dir, "prompts.txt")

  beforeAll(async () => {
    await saveTinyModel(model)
    fs.writeFileSync(prompts, "a red square\n\ntwo blue circles\na green triangle above a white square\n")
  })

  it("sample.ts writes one PNG per non-empty prompt line, a manifest and a grid", () => {
    const out = path.join(dir, "out")
    const r = run("sample.ts", ["--model", model, "--prompts", prompts, "--out", out, "--steps", "2", "--grid", path.join(dir, "grid.png")])
    assert.strictEqual(r.code, 0, r.stderr)
    const files = fs.readdirSync(out).sort()
    assert.deepStrictEqual(files, ["0000.png", "0001.png", "0002.png", "samples.json"])
    const png = Png.decodePng(fs.readFileSync(path.join(out, "0001.png")), "0001.png")
    assert.strictEqual(png._tag, "Success")
    const manifest = JSON.parse(fs.readFileSync(path.join(out, "samples.json"), "utf8"))
    assert.deepStrictEqual(manifest.samples.map((s: { prompt: string }) => s.prompt), ["a red square", "two blue circles", "a green triangle above a white square"])
    assert.strictEqual(manifest.options.nfePerImage, 4)
    assert.match(r.stdout, /overall\s+3/)
    assert.isTrue(fs.existsSync(path.join(dir, "grid.png")))
  })

  const failures: Array<[string, () => Array<string>, RegExp]> = [
    ["a missing model directory", () => ["--model", path.join(dir, "nope"), "--prompts", prompts, "--out", path.join(dir, "o1")], /ModelLoadError: model directory does not exist \(file: .*nope\)/],
    ["an empty prompt file", () => {
      fs.writeFileSync(path.join(dir, "empty.txt"), "\n\n")
      return ["--model", model, "--prompts", path.join(dir, "empty.txt"), "--out", path.join(dir, "o2")]
    }, /PromptFileError: .*no prompts.*empty\.txt/],
    ["an out-of-grammar line", () => {
      fs.writeFileSync(path.join(dir, "bad.txt"), "a red square\na blue hexagon\n")
      return ["--model", model, "--prompts", path.join(dir, "bad.txt"), "--out", path.join(dir, "o3")]
    }, /PromptParseError: .*bad\.txt:2: unexpected word "hexagon"/],
    ["an unwritable output directory", () => ["--model", model, "--prompts", prompts, "--out", "/etc/passwd/out"], /OutputError: output directory is not writable.*\/etc\/passwd\/out/]
  ]
  for (const [name, args, expected] of failures) {
    it(`sample.ts fails on ${name} with one line, exit 1, no stack, no output`, () => {
      const a = args()
      const r = run("sample.ts", [...a, "--steps", "2"])
      assert.strictEqual(r.code, 1)
      const lines = errorLines(r.stderr)
      assert.strictEqual(lines.length, 1, r.stderr)
      assert.match(lines[0], expected)
      assert.notMatch(r.stderr, /^\s+at /m)
      const out = a[a.indexOf("--out") + 1]
      assert.isFalse(fs.existsSync(path.join(out, "samples.json")))
    })
  }

  it("evaluate.ts prints a per-category table and writes JSON", () => {
    const json = path.join(dir, "eval.json")
    const r = run("evaluate.ts", ["--model", model, "--prompts", prompts, "--steps", "2", "--json", json, "--clip", path.join(dir, "no-clip")])
    // An explicitly requested clip model that does not exist is an error ...
    assert.strictEqual(r.code, 1)
    assert.match(errorLines(r.stderr)[0], /no-clip/)
    // ... while without --clip (and no default model) the clip column is omitted.
    const r2 = runPipeline("evaluate.ts", ["--model", model, "--prompts", prompts, "--steps", "2", "--json", json, "--backend", "wasm"], { cwd: dir })
    assert.strictEqual(r2.status, 0, r2.stderr)
    assert.match(r2.stdout, /\| numeracy \| 1 \|/)
    const report = JSON.parse(fs.readFileSync(json, "utf8"))
    assert.strictEqual(report.reports[0].rows.at(-1).n, 3)
    assert.strictEqual(report.reports[0].nfePerImage, 4)
    assert.isUndefined(report.reports[0].samples[0].rewards)
    // --rewards: each image's scores under named rewards, the same images (verdicts unchanged).
    const scored = path.join(dir, "eval-rewards.json")
    const r3 = runPipeline("evaluate.ts", ["--model", model, "--prompts", prompts, "--steps", "2", "--json", scored, "--backend", "wasm", "--rewards", "aesthetic,compressibility"], { cwd: dir })
    assert.strictEqual(r3.status, 0, r3.stderr)
    assert.match(r3.stdout, /aesthetic, mean per image: \S+ -?\d+\.\d{3}/)
    const withRewards = JSON.parse(fs.readFileSync(scored, "utf8"))
    withRewards.reports[0].samples.forEach((s: { pass: boolean; rewards: Record<string, number> }, i: number) => {
      assert.deepStrictEqual(Object.keys(s.rewards).sort(), ["aesthetic", "compressibility"])
      for (const v of Object.values(s.rewards)) assert.isTrue(Number.isFinite(v))
      assert.strictEqual(s.pass, report.reports[0].samples[i].pass)
    })
    // Images differ, so their scores do (the scores are per image, not one number copied).
    assert.isAbove(new Set(withRewards.reports[0].samples.map((s: { rewards: Record<string, number> }) => s.rewards.compressibility)).size, 1)
    // An unknown reward fails before sampling, naming it.
    const r4 = run("evaluate.ts", ["--model", model, "--prompts", prompts, "--steps", "2", "--json", path.join(dir, "bad.json"), "--rewards", "nosuch"])
    assert.strictEqual(r4.code, 1)
    assert.match(errorLines(r4.stderr)[0], /unknown reward "nosuch"/)
    assert.isFalse(fs.existsSync(path.join(dir, "bad.json")))
  })
})
