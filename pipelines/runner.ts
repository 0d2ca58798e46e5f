/**
 * A runner for sharpening's jobs on other processes or machines
 * (docs/scaling.md): serves the job protocol as an effect/cluster runner,
 * registered in the runner storage named by --runners, until SIGINT or
 * SIGTERM.
 *
 *   npx tsx pipelines/runner.ts --listen 127.0.0.1:0 --runners sqlite:runs/runners.db
 *   npx tsx pipelines/runner.ts --listen 10.0.0.5:7001 --runners postgres://sharpen:PASSWORD@10.0.0.2:5432/sharpen
 *
 * SHARPEN_CLUSTER_SECRET (the same for the trainer and every runner) is
 * required on a non-loopback address; it is never printed.
 */
import { Console, Effect, Layer, Option } from "effect"
import { Command, Flag } from "effect/cli"
import * as Runner from "../src/cluster/Runner.ts"
import * as Storage from "../src/cluster/Storage.ts"
import * as Main from "../src/cli/Main.ts"
import * as Setup from "../src/cli/Setup.ts"
import { Backend } from "../src/tensor/Backend.ts"

/** "HOST:PORT", "[v6]:PORT", ":PORT" or "PORT" (host 127.0.0.1). */
const parseListen = (text: string): Effect.Effect<{ host: string; port: number }, Runner.RunnerStartFailed> => {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(text) ?? /^()()(\d+)$/.exec(text)
  const port = m === null ? NaN : Number(m[3])
  if (m === null || !Number.isInteger(port) || port < 0 || port > 65535) {
    return Effect.fail(new Runner.RunnerStartFailed({ message: `--listen ${text}: expected HOST:PORT (port 0: a free one)` }))
  }
  return Effect.succeed({ host: m[1] ?? (m[2] === "" || m[2] === undefined ? "127.0.0.1" : m[2]), port })
}

const command = Command.make(
  "runner",
  {
    listen: Flag.String("listen").pipe(Flag.withDescription("HOST:PORT to listen on (port 0: a free one; loopback unless told otherwise)"), Flag.withDefault("127.0.0.1:0")),
    runners: Flag.String("runners").pipe(Flag.withDescription("runner storage: sqlite:PATH (one host) or postgres://USER:PASSWORD@HOST:PORT/DB (several machines)")),
    advertise: Flag.String("advertise").pipe(Flag.withDescription("host the trainer and the other runners reach this runner at (default: the --listen host)"), Flag.optional),
    health: Flag.Literals("health", ["ping", "k8s"] as const).pipe(
      Flag.withDescription("how runners judge each other alive: ping over their sockets, or k8s (Kubernetes pod readiness: the pod's service account lists pods; advertise the pod IP)"),
      Flag.withDefault("ping")
    ),
    healthNamespace: Flag.String("health-namespace").pipe(Flag.withDescription("with --health k8s: the namespace of the runners' pods (default: all the account may list)"), Flag.optional),
    healthSelector: Flag.String("health-selector").pipe(Flag.withDescription("with --health k8s: a label selector of the runners' pods, e.g. app=sharpen-runner"), Flag.optional),
    backend: Setup.backendFlag
  },
  Effect.fn(function*(f) {
    const listen = yield* parseListen(f.listen)
    const health: Runner.Health = f.health === "k8s"
      ? { kind: "k8s", namespace: Option.getOrUndefined(f.healthNamespace), labelSelector: Option.getOrUndefined(f.healthSelector) }
      : { kind: "ping" }
    const runner = yield* Runner.make({ ...listen, advertise: Option.getOrUndefined(f.advertise), storage: f.runners, health })
    yield* Effect.gen(function*() {
      const backend = yield* Backend
      yield* Console.log(
        `runner listening on ${runner.address}; health ${f.health}; backend ${backend.name}; device ${Runner.deviceOf(backend)}; storage ${Storage.redact(f.runners)}; shared secret ${runner.secret ? "required" : `none (${Runner.secretEnv} unset: loopback only)`}; pid ${process.pid}`
      )
      yield* Effect.addFinalizer(() => Console.log(`runner ${runner.address} stopping`))
      return yield* Effect.never
    }).pipe(Effect.provide(runner.layer.pipe(Layer.provideMerge(Setup.backend(f.backend)))), Effect.scoped)
  })
).pipe(Command.withDescription("Serve sharpening's jobs (generation, gradients, reference errors, pretraining shards) as an effect/cluster runner."))

Main.run(command)
