/**
 * The 2-D lab (docs/method.md): every method of the project on 8 Gaussians
 * on a ring, at one budget of training NFE, over several seeds, in a few
 * minutes. Trains the lab's base model first if --model does not exist.
 *
 *   npx tsx pipelines/lab.ts                                  # all methods, 3 seeds, table + plots in out/lab
 *   npx tsx pipelines/lab.ts --methods rlhf-image,raft --seeds 0
 *   npx tsx pipelines/lab.ts --grid pipelines/configs/lab-sweep.json --methods rlhf-image --seeds 0,1,2
 *   npx tsx pipelines/lab.ts --json out/lab.json
 *   npx tsx pipelines/lab.ts --help
 */
import { Console, Effect, FileSystem, Option, Schema } from "effect"
import { Command, Flag } from "effect/cli"
import { spawn } from "node:child_process"
import * as nodePath from "node:path"
import * as Main from "../src/cli/Main.ts"
import * as Progress from "../src/io/Progress.ts"
import * as Plot from "../src/eval/Plot.ts"
import * as AtomicFile from "../src/io/AtomicFile.ts"
import * as Lab from "../src/lab/Lab.ts"
import * as LabModel from "../src/lab/LabModel.ts"
import * as LabReward from "../src/lab/LabReward.ts"
import * as LabTable from "../src/lab/LabTable.ts"
import * as Denoiser from "../src/model/Denoiser.ts"
import * as Mlp from "../src/model/Mlp.ts"
import * as Weights from "../src/model/Weights.ts"
import * as SharpenConfig from "../src/sharpen/SharpenConfig.ts"
import { Backend, BackendName } from "../src/tensor/Backend.ts"
import * as Scoped from "../src/tensor/Scoped.ts"

/** One (method, settings, seed) run. */
const Job = Schema.Struct({ method: Schema.String, seed: Schema.Int, settings: Schema.Record(Schema.String, Schema.Unknown), label: Schema.String })
type Job = typeof Job.Type

const JobResult = Schema.Struct({
  label: Schema.String,
  method: Schema.String,
  seed: Schema.Int,
  reward: Schema.Number,
  inMode: Schema.Number,
  onRing: Schema.Number,
  iterations: Schema.Int,
  trainingNfe: Schema.Int,
  wallMs: Schema.Number,
  liveTensorsStart: Schema.Int,
  liveTensorsEnd: Schema.Int,
  curve: Schema.Array(Schema.Number),
  points: Schema.Array(Schema.Tuple([Schema.Number, Schema.Number]))
})
type JobResult = typeof JobResult.Type

const BEST_OF = 4


interface Options {
  readonly model: string
  readonly reward: LabReward.LabRewardName
  readonly budget: number
  readonly maxIterations: number
  readonly evalSamples: number
  readonly backend: BackendName
}

/** Run jobs in this process, one JSON line per result on stdout when `emit`. */
const runJobs = (jobs: ReadonlyArray<Job>, o: Options, onResult: (r: JobResult) => void) =>
  Effect.gen(function*() {
    const backend = Backend.make(o.backend)
    for (const job of jobs) {
      const method = Lab.methods.find((m) => m.name === job.method)
      if (method === undefined) return yield* Effect.die(new RangeError(`unknown lab method "${job.method}"`))
      const before = Lab.liveTensors()
      const r = yield* Lab.run(method, {
        modelDir: o.model,
        reward: o.reward,
        seed: job.seed,
        budget: o.budget,
        evalSamples: o.evalSamples,
        backend,
        overrides: { iterations: o.maxIterations, ...job.settings }
      })
      onResult({
        label: job.label,
        method: r.method,
        seed: r.seed,
        reward: r.reward,
        inMode: r.inMode,
        onRing: r.onRing,
        iterations: r.iterations,
        trainingNfe: r.trainingNfe,
        wallMs: r.wallMs,
        liveTensorsStart: before,
        liveTensorsEnd: Lab.liveTensors(),
        curve: r.records.map((x) => x.rewardMean),
        points: r.points.map(([x, y]) => [x, y] as const)
      })
    }
  })

/** Split jobs over `workers` child processes of this script (each one core). */
const runParallel = (jobs: ReadonlyArray<Job>, o: Options, workers: number, onResult: (r: JobResult) => void) =>
  Effect.promise((signal) =>
    Promise.all(Array.from({ length: workers }, (_, w) => jobs.filter((_, i) => i % workers === w)).filter((js) => js.length > 0).map((share) =>
      new Promise<void>((resolve, reject) => {
        const args = [...process.execArgv, process.argv[1], "--worker-jobs", JSON.stringify(share), "--model", o.model, "--reward", o.reward, "--budget", String(o.budget), "--max-iterations", String(o.maxIterations), "--eval-samples", String(o.evalSamples), "--backend", o.backend]
        const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, SHARPEN_CHILD: "1" } })
        // Ctrl-C (interruption) or the parent's exit stops the workers too.
        const stop = () => child.exitCode === null && child.kill("SIGTERM")
        signal.addEventListener("abort", stop)
        process.once("exit", stop)
        let buffer = ""
        child.stdout.on("data", (d: Buffer) => {
          buffer += d.toString()
          let nl: number
          while ((nl = buffer.indexOf("\n")) >= 0) {
            const line = buffer.slice(0, nl)
            buffer = buffer.slice(nl + 1)
            if (line.startsWith("{")) onResult(Schema.decodeUnknownSync(JobResult)(JSON.parse(line)))
          }
        })
        child.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`lab worker exited with ${code}`))))
      })
    ))
  )

/** The lab's base model: load it, or train and save it. */
const ensureBase = (o: Options, retrain: boolean) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    if (!retrain && (yield* fs.exists(nodePath.join(o.model, Weights.CONFIG_FILE)))) return
    yield* Console.error(`training the lab's base model into ${o.model} (${LabModel.pretrainDefaults.steps} steps)`)
    const model = yield* Scoped.acquireWith(() => Denoiser.init(Mlp.labConfig, 0), Denoiser.dispose)
    const loss = yield* LabModel.pretrain(model, LabModel.pretrainDefaults)
    yield* Denoiser.save(o.model, model, { trainedBy: "pipelines/lab.ts", steps: String(LabModel.pretrainDefaults.steps), finalLoss: loss.toFixed(5) })
  }).pipe(Effect.provide(Backend.make(o.backend)), Effect.scoped)

/** The fields of a stored lab.json that a table needs. */
const StoredLab = Schema.Struct({
  command: Schema.String,
  reward: Schema.String,
  budget: Schema.Number,
  base: Schema.Struct({ reward: Schema.Number, inMode: Schema.Number, onRing: Schema.Number }),
  bestOfN: Schema.optional(Schema.Struct({ n: Schema.Int, reward: Schema.Number, inMode: Schema.Number, onRing: Schema.Number })),
  methods: Schema.Array(Schema.Struct({
    name: Schema.String,
    seeds: Schema.Array(Schema.Struct({
      seed: Schema.Int,
      reward: Schema.Number,
      inMode: Schema.Number,
      onRing: Schema.Number,
      trainingNfe: Schema.Number,
      iterations: Schema.Number,
      wallMs: Schema.Number
    }))
  }))
})

/**
 * A stored run's table rendered again from each seed's numbers (tables
 * written before the lab reported the sample SD): table.md and lab.json's
 * rows are rewritten, the seeds' numbers and the plots are left as they are.
 */
const retable = (dir: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const file = nodePath.join(dir, "lab.json")
    const raw = JSON.parse(yield* fs.readFileString(file)) as Record<string, unknown>
    const stored = Schema.decodeUnknownSync(StoredLab)(raw)
    const rows = stored.methods.map((m) => LabTable.summarize(m.name, m.seeds))
    const seeds = [...new Set(stored.methods.flatMap((m) => m.seeds.map((s) => s.seed)))].sort((a, b) => a - b)
    const note = (name: string) => Lab.methods.find((m) => m.name === name.split(" ")[0])?.note ?? ""
    const md = [
      `# Lab: reward "${stored.reward}", budget ${stored.budget} training NFE per run, seeds ${seeds.join(", ")}`,
      "",
      `Command: \`${stored.command}\`; table rendered again from lab.json by \`npx tsx pipelines/lab.ts --retable ${dir}\` (the runs' numbers unchanged). ${LabTable.LEGEND}`,
      "",
      LabTable.render(stored.base, rows, stored.bestOfN),
      "",
      ...rows.map((r) => `- **${r.name}**: ${note(r.name)}`)
    ].join("\n") + "\n"
    yield* Console.log(md)
    yield* AtomicFile.writeText(nodePath.join(dir, "table.md"), md)
    yield* AtomicFile.writeText(file, JSON.stringify({ ...raw, methods: rows }, null, 2) + "\n")
  })

const command = Command.make(
  "lab",
  {
    model: Flag.String("model").pipe(Flag.withDescription("the lab's base model directory (trained here if missing)"), Flag.withDefault("models/lab-ring")),
    retrain: Flag.Boolean("retrain").pipe(Flag.withDescription("train the base model again even if --model exists"), Flag.withDefault(false)),
    reward: Flag.Literals("reward", LabReward.LabRewardName.literals).pipe(Flag.withDescription("mode: closeness to mode 0; x: the x coordinate"), Flag.withDefault("mode" as const)),
    methods: Flag.String("methods").pipe(Flag.withDescription(`comma-separated methods (default all: ${Lab.methods.map((m) => m.name).join(", ")}, best-of-${BEST_OF})`), Flag.optional),
    seeds: Flag.String("seeds").pipe(Flag.withDescription("comma-separated seeds"), Flag.withDefault("0,1,2")),
    budget: Flag.Int("budget").pipe(Flag.withDescription("training NFE per run (sampling plus the objective's model evaluations)"), Flag.withDefault(Lab.LAB_BUDGET)),
    maxIterations: Flag.Int("max-iterations").pipe(Flag.withDescription("iteration cap (methods with cheap iterations stop here first)"), Flag.withDefault(Lab.LAB_MAX_ITERATIONS)),
    evalSamples: Flag.Int("eval-samples").pipe(Flag.withDescription("fresh DDIM-50 samples per evaluation"), Flag.withDefault(4000)),
    grid: Flag.String("grid").pipe(Flag.withDescription("JSON file, or inline JSON: a list of settings objects; every method runs at each (a sweep)"), Flag.optional),
    settings: Flag.String("settings").pipe(Flag.withDescription("JSON settings over every method's (e.g. '{\"lr\":3e-5}')"), Flag.optional),
    workers: Flag.Int("workers").pipe(Flag.withDescription("processes (one core each)"), Flag.withDefault(2)),
    out: Flag.String("out").pipe(Flag.withDescription("directory of table.md, lab.json and the plots"), Flag.withDefault("out/lab")),
    json: Flag.String("json").pipe(Flag.withDescription("also write the table as JSON here"), Flag.optional),
    backend: Flag.Literals("backend", BackendName.literals).pipe(Flag.withDefault("wasm" as const)),
    retable: Flag.String("retable").pipe(Flag.withDescription("render DIR/lab.json's table again (sample SD) into DIR/table.md; trains nothing"), Flag.optional),
    workerJobs: Flag.String("worker-jobs").pipe(Flag.withDescription("(internal) run these jobs and print results as JSON lines"), Flag.optional)
  },
  Effect.fn(function*(f) {
    const o: Options = { model: f.model, reward: f.reward, budget: f.budget, maxIterations: f.maxIterations, evalSamples: f.evalSamples, backend: f.backend }
    if (Option.isSome(f.workerJobs)) {
      const jobs = Schema.decodeUnknownSync(Schema.Array(Job))(JSON.parse(f.workerJobs.value))
      return yield* runJobs(jobs, o, (r) => process.stdout.write(JSON.stringify(r) + "\n"))
    }
    const started = performance.now()
    const fs = yield* FileSystem.FileSystem
    if (Option.isSome(f.retable)) return yield* retable(f.retable.value)
    yield* ensureBase(o, f.retrain)
    const names = Option.isSome(f.methods) ? f.methods.value.split(",").map((s) => s.trim()) : [...Lab.methods.map((m) => m.name), `best-of-${BEST_OF}`]
    const unknown = names.find((n) => n !== `best-of-${BEST_OF}` && !Lab.methods.some((m) => m.name === n))
    if (unknown !== undefined) return yield* Effect.fail(new Error(`unknown method "${unknown}" (known: ${Lab.methods.map((m) => m.name).join(", ")}, best-of-${BEST_OF})`))
    const seeds = f.seeds.split(",").map((s) => Number(s.trim()))
    const common = Option.isSome(f.settings) ? JSON.parse(f.settings.value) as Record<string, unknown> : {}
    // A grid file, or the list itself (a command line that states its sweep).
    const grid: ReadonlyArray<Record<string, unknown>> = Option.isSome(f.grid)
      ? JSON.parse(f.grid.value.trimStart().startsWith("[") ? f.grid.value : yield* fs.readFileString(f.grid.value))
      : [{}]
    for (const line of [common, ...grid].flatMap((l, i) => SharpenConfig.deprecations(l, i === 0 ? "--settings" : "--grid"))) yield* Console.error(line)
    const labelOf = (m: string, g: Record<string, unknown>) => (Object.keys(g).length === 0 ? m : `${m} ${JSON.stringify(g)}`)
    // Validate every setting before anything runs.
    for (const n of names.filter((n) => n !== `best-of-${BEST_OF}`)) {
      for (const g of grid) {
        const method = Lab.methods.find((m) => m.name === n)!
        Lab.configOf(method, { seed: 0, budget: o.budget, overrides: { ...common, ...g } })
        Lab.objectiveOf(method, { overrides: { ...common, ...g } })
      }
    }
    const jobs: Array<Job> = names.filter((n) => n !== `best-of-${BEST_OF}`).flatMap((method) =>
      grid.flatMap((g) => seeds.map((seed) => ({ method, seed, settings: { ...common, ...g }, label: labelOf(method, g) })))
    )
    yield* Console.error(`lab: ${jobs.length} runs (${names.length} methods x ${grid.length} settings x ${seeds.length} seeds), budget ${o.budget} training NFE, ${f.workers} workers`)
    const bar = Progress.make({ label: "lab", total: jobs.length, logEvery: 1 })
    const results: Array<JobResult> = []
    const onResult = (r: JobResult) => {
      results.push(r)
      bar.tick(results.length, { [r.label.split(" ")[0]]: r.reward })
    }
    if (f.workers <= 1) yield* runJobs(jobs, o, onResult)
    else yield* runParallel(jobs, o, f.workers, onResult)
    bar.end()

    // Base model and the inference-time row, on the same evaluation samples.
    const { base, best } = yield* Effect.gen(function*() {
      const files = yield* Weights.load(o.model)
      const model = yield* Scoped.acquireWith(() => Denoiser.fromStored(files.config, files.weights, false), Denoiser.dispose)
      const base = yield* Lab.base(model, o.reward, o.evalSamples)
      return { base, best: Lab.measured(yield* LabModel.bestOfN(model, o.evalSamples, BEST_OF, Lab.EVAL_SEED, o.reward), o.reward) }
    }).pipe(Effect.provide(Backend.make(o.backend)), Effect.scoped)

    const labels = [...new Set(jobs.map((j) => j.label))]
    const rows = labels.map((l) => LabTable.summarize(l, results.filter((r) => r.label === l)))
    const withBest = names.includes(`best-of-${BEST_OF}`)
    const note = (name: string) => Lab.methods.find((m) => m.name === name.split(" ")[0])?.note ?? ""
    const table = LabTable.render(base, rows, withBest ? { n: BEST_OF, ...best } : undefined)
    // Arguments quoted as a shell needs them (an inline --grid holds braces and quotes).
    const quoted = process.argv.slice(2).map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", "'\\''")}'`))
    const commandLine = `npx tsx pipelines/lab.ts ${quoted.join(" ")}`.trim()
    const wall = (performance.now() - started) / 1000
    const md = [
      `# Lab: reward "${o.reward}", budget ${o.budget} training NFE per run, seeds ${seeds.join(", ")}`,
      "",
      `Command: \`${commandLine}\` (${wall.toFixed(0)} s on ${f.workers} workers). ${LabTable.LEGEND} ${o.evalSamples} fresh DDIM-50 samples per evaluation, the same for every model.`,
      "",
      table,
      "",
      ...rows.map((r) => `- **${r.name}**: ${note(r.name)}`)
    ].join("\n") + "\n"
    yield* Console.log(md)

    const json = {
      command: commandLine,
      reward: o.reward,
      budget: o.budget,
      base: { reward: base.reward, inMode: base.inMode, onRing: base.onRing },
      ...(withBest ? { bestOfN: { n: BEST_OF, reward: best.reward, inMode: best.inMode, onRing: best.onRing } } : {}),
      methods: rows
    }
    yield* fs.makeDirectory(f.out, { recursive: true })
    yield* AtomicFile.writeText(nodePath.join(f.out, "table.md"), md)
    yield* AtomicFile.writeText(nodePath.join(f.out, "lab.json"), JSON.stringify(json, null, 2) + "\n")
    if (Option.isSome(f.json)) yield* AtomicFile.writeText(f.json.value, JSON.stringify(json, null, 2) + "\n")

    // Training reward per iteration (mean over seeds; methods that call no reward left out) and the samples after training.
    const curveRows = labels.flatMap((l) => {
      const rs = results.filter((r) => r.label === l)
      const len = Math.min(...rs.map((r) => r.curve.length))
      const rows = Array.from({ length: len }, (_, i) => ({ method: l, iteration: i + 1, reward: rs.reduce((a, r) => a + r.curve[i], 0) / rs.length }))
      return rows.every((r) => r.reward === 0) ? [] : rows
    })
    const rewardSvg = yield* Effect.promise(() =>
      Plot.lineSvg({ title: `Mean reward of each iteration's samples (mean over seeds): ${o.reward}`, x: "iteration", y: "reward", rows: curveRows, series: "method", smooth: 10, width: 640, scheme: "category20" })
    )
    const firstSeed = (l: string) => results.filter((r) => r.label === l).sort((a, b) => a.seed - b.seed)[0]
    const scatterRows = [
      ...base.points.map(([x, y]) => ({ method: "base", x, y })),
      ...(withBest ? best.points.map(([x, y]) => ({ method: `best-of-${BEST_OF}`, x, y })) : []),
      ...labels.flatMap((l) => firstSeed(l).points.map(([x, y]) => ({ method: l, x, y })))
    ]
    const scatterSvg = yield* Effect.promise(() => Plot.scatterSvg({ title: `Samples after training (seed ${seeds[0]}; mode 0 is at (2, 0))`, x: "x", y: "y", rows: scatterRows, facet: "method", domain: [-2.6, 2.6] }))
    for (const [name, svg] of [["reward", rewardSvg], ["samples", scatterSvg]] as const) {
      yield* AtomicFile.writeText(nodePath.join(f.out, `${name}.svg`), svg)
      yield* AtomicFile.writeFile(nodePath.join(f.out, `${name}.png`), Plot.svgToPng(svg))
    }
    yield* Console.error(`wrote ${f.out}/table.md, lab.json, reward.png, samples.png (${wall.toFixed(0)} s)`)
  })
).pipe(Command.withDescription("The 2-D lab: every method at one training-NFE budget over seeds; a table and plots in seconds"))

Main.run(command)
