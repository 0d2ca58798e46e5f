/**
 * The job protocol ({@link JobProtocol}) as an `effect/cluster` entity, so
 * that the jobs of a run can go to runner processes on other machines.
 *
 * The entity's protocol is a thin wire form of `JobRpcs`: the same requests
 * with the same payload and reply types, where each float array travels as
 * its bytes (little-endian float32, as every host this runs on) instead of
 * through structured clone; the worker-thread form is left as it is. The
 * cluster serialises messages with `RpcSerialization`'s SchemaBinary codec,
 * which has no layout for a declared `Float32Array`. To it is added
 * `Hello`, the handshake a trainer makes with each runner before any job:
 * it names the model config (the runner builds its replica from it) and the
 * package version, and carries the shared secret in a header
 * ({@link secretHeader}; never in a payload, never logged).
 *
 * Every message is Schema-decoded data: no code travels.
 *
 * @since 0.8.0
 */
import { Schema, SchemaTransformation } from "effect"
import { Entity } from "effect/cluster"
import { Rpc, RpcGroup } from "effect/rpc"
import * as crypto from "node:crypto"
import * as Weights from "../model/Weights.ts"
import { Floats, JobRpcs, MovedFloats } from "../parallel/JobProtocol.ts"

const Float32 = Schema.declare((u): u is Float32Array => u instanceof Float32Array, { expected: "Float32Array" })

/**
 * A float array on the wire: its bytes. Decoding copies them into an
 * aligned buffer (a decoded byte view may start at any offset).
 */
export const WireFloats = Schema.Uint8Array.pipe(Schema.decodeTo(
  Float32,
  SchemaTransformation.transform<Float32Array, Uint8Array>({
    decode: (bytes) => {
      // A copy into a buffer of its own (a Node Buffer's slice() is a view of its pool).
      const own = new Uint8Array(bytes.byteLength)
      own.set(bytes)
      return new Float32Array(own.buffer)
    },
    encode: (floats: Float32Array) => new Uint8Array(floats.buffer, floats.byteOffset, floats.byteLength)
  })
))

/** A schema with every `Floats`/`MovedFloats` inside it replaced by {@link WireFloats} (structs, arrays, optional keys). */
const wire = (s: Schema.Top): Schema.Top => {
  if (s === Floats || s === MovedFloats) return WireFloats
  const any = s as unknown as { readonly schema?: Schema.Top; readonly value?: Schema.Top; readonly fields?: Schema.Struct.Fields }
  if (s.ast.context?.isOptional === true && any.schema !== undefined) return Schema.optionalKey(wire(any.schema))
  if (s.ast._tag === "Arrays" && any.value !== undefined) return Schema.Array(wire(any.value))
  if (s.ast._tag === "Objects" && any.fields !== undefined && !("identifier" in any)) {
    return Schema.Struct(Object.fromEntries(Object.entries(any.fields).map(([k, f]) => [k, wire(f as Schema.Top)])))
  }
  return s
}

type JobRpc = RpcGroup.Rpcs<typeof JobRpcs>

/**
 * The package version a trainer and its runners must share (their job
 * protocol and kernels are this package's).
 */
export const packageVersion = "0.1.0"

/** The header that carries the shared secret (`SHARPEN_CLUSTER_SECRET`). */
export const secretHeader = "x-sharpen-cluster-secret"

/**
 * The header that names a job's weights by content hash ({@link weightsDigest}).
 * A job with it and empty `params` asks the runner for the weights it cached
 * under that hash; a job with it and the weights has the runner cache them.
 */
export const weightsHeader = "x-sharpen-weights"

/** How a job fails when its runner has not cached the weights it names: the trainer sends them. */
export const weightsNotCached = "has not cached the weights"

/** The content hash of a flat weight array (SHA-256 of its bytes, hex). */
export const weightsDigest = (params: Float32Array): string =>
  crypto.createHash("sha256").update(new Uint8Array(params.buffer, params.byteOffset, params.byteLength)).digest("hex")

/**
 * A runner refused a trainer: no or a wrong shared secret, another package
 * version. `runner` names it (host:port).
 *
 * @since 0.8.0
 */
export class RunnerRefused extends Schema.TaggedError<RunnerRefused>()("RunnerRefused", {
  runner: Schema.String,
  reason: Schema.String
}) {}

/** What a runner says about itself. */
export const RunnerInfo = Schema.Struct({
  runner: Schema.String,
  backend: Schema.String,
  device: Schema.String,
  pid: Schema.Int,
  version: Schema.String
})
export type RunnerInfo = typeof RunnerInfo.Type

/**
 * The handshake: the model config the trainer's jobs are for and its
 * package version; the runner builds (or keeps) its replica of that model.
 */
export const Hello = Rpc.make("Hello", {
  payload: { config: Weights.AnyConfig, version: Schema.String },
  success: RunnerInfo,
  error: RunnerRefused
})

const wireRpcs = [...JobRpcs.requests.values()].map((rpc) =>
  Rpc.make(rpc._tag, { payload: wire(rpc.payloadSchema), success: wire(rpc.successSchema), error: rpc.errorSchema })
)

/**
 * `JobRpcs` in wire form, and `Hello`. Its request and reply types are
 * `JobRpcs`' (only the encoded side differs), so a client of it is a client
 * of the job protocol.
 *
 * @since 0.8.0
 */
export const ClusterJobRpcs = (RpcGroup.make(...wireRpcs) as unknown as RpcGroup.RpcGroup<JobRpc>).add(Hello)

/**
 * The job protocol as a cluster entity. A runner serves it; a trainer
 * reaches one runner through an entity id that hashes to a shard the
 * runner owns (`ClusterJobs`).
 *
 * @since 0.8.0
 */
export const JobEntity = Entity.fromRpcGroup("SharpenJobs", ClusterJobRpcs)
