/**
 * Writing a bench's report into a markdown file: only the block between its
 * markers is replaced, the prose around it kept.
 */
import { Effect } from "effect"
import * as fs from "node:fs"
import * as AtomicFile from "../src/io/AtomicFile.ts"

export const write = (file: string, name: string, report: string) =>
  Effect.suspend(() => {
    const begin = `<!-- bench:${name}:begin -->`
    const end = `<!-- bench:${name}:end -->`
    const old = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : ""
    const block = `${begin}\n${report}\n${end}`
    const i = old.indexOf(begin)
    const j = old.indexOf(end)
    const next = i >= 0 && j > i ? old.slice(0, i) + block + old.slice(j + end.length) : `${old}${old === "" ? "" : "\n"}${block}\n`
    return AtomicFile.writeText(file, next)
  })
