/**
 * The import structure of `src/`: folder arrows, arrows back up a level and
 * file-level cycles, as issue #22 counts them. Pure function of the files on
 * disk (type-only imports included: they are arrows a reader follows too).
 *
 *   npx tsx scripts/import-graph.ts [--json] [--dot]
 */
import * as fs from "node:fs"
import * as path from "node:path"

export interface ImportGraph {
  readonly files: ReadonlyMap<string, ReadonlyArray<string>>
  readonly folders: ReadonlyArray<string>
  readonly arrows: ReadonlyArray<readonly [string, string]>
  readonly levels: ReadonlyMap<string, number>
  readonly upward: ReadonlyArray<readonly [string, string]>
  readonly cycles: ReadonlyArray<ReadonlyArray<string>>
  readonly lines: ReadonlyMap<string, number>
}

const IMPORT = /(?:^|\n)\s*(?:import|export)\s[^"';]*?from\s+["'](\.[^"']+)["']|import\(\s*["'](\.[^"']+)["']\s*\)/g

const walk = (dir: string): Array<string> =>
  fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? walk(path.join(dir, e.name)) : e.name.endsWith(".ts") ? [path.join(dir, e.name)] : []
  )

const folderOf = (file: string): string => {
  const parts = file.split("/")
  return parts.length > 1 ? parts[0] : "(top)"
}

/** Strongly connected components of size > 1 (Tarjan). */
const cyclesOf = (graph: ReadonlyMap<string, ReadonlyArray<string>>): Array<Array<string>> => {
  let index = 0
  const idx = new Map<string, number>()
  const low = new Map<string, number>()
  const stack: Array<string> = []
  const on = new Set<string>()
  const out: Array<Array<string>> = []
  const visit = (v: string): void => {
    idx.set(v, index)
    low.set(v, index++)
    stack.push(v)
    on.add(v)
    for (const w of graph.get(v) ?? []) {
      if (!idx.has(w)) {
        visit(w)
        low.set(v, Math.min(low.get(v)!, low.get(w)!))
      } else if (on.has(w)) low.set(v, Math.min(low.get(v)!, idx.get(w)!))
    }
    if (low.get(v) === idx.get(v)) {
      const scc: Array<string> = []
      let w: string
      do {
        w = stack.pop()!
        on.delete(w)
        scc.push(w)
      } while (w !== v)
      if (scc.length > 1) out.push(scc.sort())
    }
  }
  for (const v of graph.keys()) if (!idx.has(v)) visit(v)
  return out
}

export const read = (root: string): ImportGraph => {
  const src = path.join(root, "src")
  const files = new Map<string, Array<string>>()
  const lines = new Map<string, number>()
  for (const abs of walk(src).sort()) {
    const rel = path.relative(src, abs)
    const text = fs.readFileSync(abs, "utf8")
    lines.set(folderOf(rel), (lines.get(folderOf(rel)) ?? 0) + text.split("\n").length)
    const deps = new Set<string>()
    for (const m of text.matchAll(IMPORT)) {
      const spec = m[1] ?? m[2]
      const target = path.relative(src, path.resolve(path.dirname(abs), spec))
      if (!target.startsWith("..")) deps.add(target)
    }
    files.set(rel, [...deps])
  }
  const arrowSet = new Set<string>()
  for (const [file, deps] of files) {
    for (const dep of deps) {
      const a = folderOf(file)
      const b = folderOf(dep)
      if (a !== b) arrowSet.add(`${a}>${b}`)
    }
  }
  const arrows = [...arrowSet].sort().map((s) => s.split(">") as [string, string])
  const folders = [...new Set([...files.keys()].map(folderOf))].sort()
  // A folder's level is one above the highest level it imports, over the
  // folder graph with the arrows inside a folder cycle left out; an arrow that
  // points at a level not below its own runs back up.
  const folderGraph = new Map(folders.map((f) => [f, arrows.filter(([a]) => a === f).map(([, b]) => b)]))
  const inCycle = new Set(cyclesOf(folderGraph).flat())
  const levels = new Map<string, number>()
  const levelOf = (f: string, seen: Set<string>): number => {
    const known = levels.get(f)
    if (known !== undefined) return known
    seen.add(f)
    let level = 0
    for (const g of folderGraph.get(f) ?? []) {
      if (seen.has(g) || (inCycle.has(f) && inCycle.has(g) && reaches(folderGraph, g, f))) continue
      level = Math.max(level, levelOf(g, seen) + 1)
    }
    seen.delete(f)
    levels.set(f, level)
    return level
  }
  for (const f of folders) levelOf(f, new Set())
  const upward = arrows.filter(([a, b]) => levels.get(b)! >= levels.get(a)!)
  return { files, folders, arrows, levels, upward, cycles: cyclesOf(files), lines }
}
read.cyclesOf = cyclesOf

const reaches = (g: ReadonlyMap<string, ReadonlyArray<string>>, from: string, to: string): boolean => {
  const seen = new Set<string>()
  const todo = [from]
  while (todo.length > 0) {
    const v = todo.pop()!
    if (v === to) return true
    if (seen.has(v)) continue
    seen.add(v)
    todo.push(...(g.get(v) ?? []))
  }
  return false
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const g = read(process.cwd())
  const summary = {
    folders: g.folders.length,
    levels: Math.max(...g.levels.values()) + 1,
    arrows: g.arrows.length,
    pairs: (g.folders.length * (g.folders.length - 1)) / 2,
    upward: g.upward.map(([a, b]) => `${a} -> ${b}`),
    cycles: g.cycles,
    lines: Object.fromEntries(g.lines)
  }
  if (process.argv.includes("--json")) console.log(JSON.stringify(summary, null, 2))
  else if (process.argv.includes("--dot")) {
    console.log("digraph src {\n  rankdir=BT;")
    for (const [a, b] of g.arrows) console.log(`  "${a}" -> "${b}";`)
    console.log("}")
  } else {
    console.log(`folders ${summary.folders}, levels ${summary.levels}, arrows ${summary.arrows} of ${summary.pairs} pairs`)
    console.log(`arrows back up a level: ${g.upward.length}${g.upward.length ? ` (${summary.upward.join(", ")})` : ""}`)
    console.log(`import cycles: ${g.cycles.length}${g.cycles.map((c) => `\n  ${c.join(" ")}`).join("")}`)
    for (const f of [...g.folders].sort((a, b) => g.levels.get(a)! - g.levels.get(b)!)) {
      const deps = g.arrows.filter(([a]) => a === f).map(([, b]) => b)
      console.log(`  L${g.levels.get(f)} ${f.padEnd(12)} ${String(g.lines.get(f)).padStart(5)} lines  -> ${deps.join(" ")}`)
    }
  }
}
