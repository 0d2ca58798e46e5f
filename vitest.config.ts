import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // tfjs keeps one global engine per process; isolate files in forks so
    // backend choice and tensor counts of one file never leak into another.
    pool: "forks",
    maxWorkers: 2
  }
})
