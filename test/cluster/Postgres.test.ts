import { describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { beforeAll } from "vitest"
import { useWasm } from "../helpers.ts"
import * as Postgres from "./postgres.ts"
import { jobsEqualOneThread, killNineResends } from "./scenarios.ts"

// The same scenarios as ClusterJobs.test.ts on PostgreSQL runner storage
// (postgres://, @effect/sql-pg), each on a throwaway server; skipped where
// PostgreSQL's server binaries are not installed.
describe.skipIf(!Postgres.available)("jobs on effect/cluster runners with PostgreSQL storage (2 runner processes on loopback)", () => {
  beforeAll(async () => {
    delete process.env.SHARPEN_CLUSTER_SECRET
    await useWasm()
  })

  it.live("give the one-thread results of every job", () =>
    Effect.gen(function*() {
      const { url } = yield* Postgres.server
      yield* jobsEqualOneThread(url)
    }).pipe(Effect.scoped), 240_000)

  it.live("kill -9 of a runner with a job in flight: the job is sent again to the other runner, and the result is unchanged", () =>
    Effect.gen(function*() {
      const { url } = yield* Postgres.server
      yield* killNineResends(url)
    }).pipe(Effect.scoped), 300_000)
})
