import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Logger } from "effect"
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as AtomicFile from "../../src/io/AtomicFile.ts"
import * as RunLock from "../../src/io/RunLock.ts"

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), "lock-"))

/** The pid of a process that has exited. */
const deadPid = () => spawnSync(process.execPath, ["-e", "0"]).pid!

describe("RunLock", () => {
  it.effect("holds the directory for its scope: a second taker fails naming the owner; released after", () =>
    Effect.gen(function*() {
      const dir = tmp()
      const file = path.join(dir, RunLock.LOCK)
      yield* Effect.scoped(Effect.gen(function*() {
        yield* RunLock.acquire(dir)
        assert.strictEqual(JSON.parse(fs.readFileSync(file, "utf8")).pid, process.pid)
        const second = yield* Effect.exit(Effect.scoped(RunLock.acquire(dir)))
        assert.isTrue(Exit.isFailure(second))
        const error = Exit.isFailure(second) ? (second.cause.reasons[0] as { error?: { _tag: string; message: string } }).error : undefined
        assert.strictEqual(error?._tag, "RunDirectoryLocked")
        assert.include(error?.message, `process ${process.pid}`)
        // The failed taker did not remove the owner's lock.
        assert.isTrue(fs.existsSync(file))
      }))
      assert.isFalse(fs.existsSync(file))
      // Also released when the scope fails.
      yield* Effect.exit(Effect.scoped(Effect.andThen(RunLock.acquire(dir), Effect.fail("boom"))))
      assert.isFalse(fs.existsSync(file))
    }).pipe(Effect.provide(NodeServices.layer)))

  it.effect("a stale lock (owner no longer running) is reported and taken over", () =>
    Effect.gen(function*() {
      const dir = tmp()
      const file = path.join(dir, RunLock.LOCK)
      const dead = deadPid()
      assert.isFalse(RunLock.isRunning(dead))
      fs.writeFileSync(file, JSON.stringify({ pid: dead, host: os.hostname(), started: "2026-01-01T00:00:00Z" }))
      const logs: Array<string> = []
      yield* Effect.scoped(Effect.gen(function*() {
        yield* RunLock.acquire(dir)
        assert.strictEqual(JSON.parse(fs.readFileSync(file, "utf8")).pid, process.pid)
      })).pipe(Effect.provide(Logger.layer([Logger.make((o) => logs.push(String(o.message)))])))
      assert.isFalse(fs.existsSync(file))
      assert.isTrue(logs.some((l) => l.includes(`stale lock of process ${dead}`)), logs.join("\n"))
    }).pipe(Effect.provide(NodeServices.layer)))

  it.effect("AtomicFile.removeStale removes the temporaries of interrupted writes, nothing else", () =>
    Effect.gen(function*() {
      const dir = tmp()
      fs.mkdirSync(path.join(dir, "run", "ckpt-0000001"), { recursive: true })
      const stale = [path.join(dir, "config.json.123.1700000000000.tmp"), path.join(dir, "run", "ckpt-0000001", "policy.safetensors.9.1700000000001.tmp")]
      for (const f of stale) fs.writeFileSync(f, "x")
      const keep = [path.join(dir, "config.json"), path.join(dir, "notes.tmp"), path.join(dir, "run", "ckpt-0000001", "policy.safetensors")]
      for (const f of keep) fs.writeFileSync(f, "x")
      const removed = yield* AtomicFile.removeStale(dir)
      assert.deepStrictEqual([...removed].sort(), [...stale].sort())
      for (const f of stale) assert.isFalse(fs.existsSync(f))
      for (const f of keep) assert.isTrue(fs.existsSync(f))
    }).pipe(Effect.provide(NodeServices.layer)))
})
