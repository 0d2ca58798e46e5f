import { createRequire } from "node:module"
const require = createRequire(import.meta.url)
import { Effect } from "effect"
import { Command } from "effect/cli"
import * as Main from "../src/cli/Main.ts"
process.on("exit", (c) => require("node:fs").appendFileSync("/tmp/wt15exp/codes", `${process.pid} ${process.env.SHARPEN_CHILD} exit ${c}\n`))
Main.run(Command.make("s", {}, () => Effect.gen(function*() {
  for (let i = 0; ; i++) { yield* Effect.sleep("500 millis"); process.stderr.write(`tick ${i} pid ${process.pid}\n`) }
}).pipe(Effect.onInterrupt(() => Effect.sync(() => process.stderr.write("interrupted\n"))))))
