/**
 * The safetensors format (huggingface/safetensors): 8-byte little-endian
 * header length, a JSON header naming each tensor's dtype, shape and byte
 * range, then the raw little-endian data. Only F32 is written; F32 is read.
 *
 * Decoding checks everything a truncated or foreign file can get wrong and
 * names the tensor and the numbers in the error.
 *
 * @since 0.1.0
 */
import { Schema } from "effect"

/**
 * A tensor as stored: shape and float32 values, row-major.
 *
 * @since 0.1.0
 */
export interface StoredTensor {
  readonly shape: ReadonlyArray<number>
  readonly data: Float32Array
}

/**
 * A safetensors file is malformed, truncated, or not what was expected.
 *
 * @since 0.1.0
 */
export class SafetensorsError extends Schema.TaggedError<SafetensorsError>()("SafetensorsError", {
  file: Schema.String,
  tensor: Schema.optional(Schema.String),
  message: Schema.String
}) {}

const HeaderEntry = Schema.Struct({
  dtype: Schema.String,
  shape: Schema.Array(Schema.Int),
  data_offsets: Schema.Tuple([Schema.Int, Schema.Int])
})

export const encode = (
  tensors: Readonly<Record<string, StoredTensor>>,
  metadata: Readonly<Record<string, string>> = {}
): Uint8Array => {
  const header: Record<string, unknown> = {}
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata
  let offset = 0
  const names = Object.keys(tensors).sort()
  for (const name of names) {
    const t = tensors[name]
    const bytes = t.data.length * 4
    header[name] = { dtype: "F32", shape: t.shape, data_offsets: [offset, offset + bytes] }
    offset += bytes
  }
  let json = JSON.stringify(header)
  // Pad the header with spaces so the data starts 8-byte aligned (as the
  // reference writer does), which lets readers view it as Float32 in place.
  while ((8 + Buffer.byteLength(json)) % 8 !== 0) json += " "
  const headerBytes = Buffer.from(json, "utf8")
  const out = new Uint8Array(8 + headerBytes.length + offset)
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true)
  out.set(headerBytes, 8)
  let pos = 8 + headerBytes.length
  for (const name of names) {
    const d = tensors[name].data
    out.set(new Uint8Array(d.buffer, d.byteOffset, d.byteLength), pos)
    pos += d.byteLength
  }
  return out
}

/**
 * Decode a safetensors byte buffer. `file` only labels errors.
 *
 * @since 0.1.0
 */
export const decode = (
  bytes: Uint8Array,
  file: string
): { tensors: Record<string, StoredTensor>; metadata: Record<string, string> } | SafetensorsError => {
  if (bytes.length < 8) return new SafetensorsError({ file, message: `file has ${bytes.length} bytes, fewer than the 8-byte header length` })
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const n = Number(view.getBigUint64(0, true))
  if (n > bytes.length - 8) {
    return new SafetensorsError({ file, message: `header length ${n} exceeds the file (${bytes.length} bytes): truncated or not safetensors` })
  }
  let header: Record<string, unknown>
  try {
    header = JSON.parse(Buffer.from(bytes.subarray(8, 8 + n)).toString("utf8"))
  } catch (e) {
    return new SafetensorsError({ file, message: `header is not valid JSON: ${(e as Error).message}` })
  }
  const dataStart = 8 + n
  const dataLength = bytes.length - dataStart
  const tensors: Record<string, StoredTensor> = {}
  let metadata: Record<string, string> = {}
  for (const [name, raw] of Object.entries(header)) {
    if (name === "__metadata__") {
      metadata = raw as Record<string, string>
      continue
    }
    const entry = Schema.decodeUnknownOption(HeaderEntry)(raw)
    if (entry._tag === "None") return new SafetensorsError({ file, tensor: name, message: "header entry lacks dtype/shape/data_offsets" })
    const { dtype, shape, data_offsets: [start, end] } = entry.value
    if (dtype !== "F32") return new SafetensorsError({ file, tensor: name, message: `dtype ${dtype} is not supported (F32 only)` })
    const count = shape.reduce((a, b) => a * b, 1)
    if (end - start !== count * 4) {
      return new SafetensorsError({ file, tensor: name, message: `shape [${shape.join(", ")}] needs ${count * 4} bytes, offsets give ${end - start}` })
    }
    if (start < 0 || end > dataLength) {
      return new SafetensorsError({ file, tensor: name, message: `data [${start}, ${end}) lies outside the ${dataLength} data bytes: file truncated` })
    }
    // Copy: the source buffer may not be 4-byte aligned.
    const data = new Float32Array(count)
    new Uint8Array(data.buffer).set(bytes.subarray(dataStart + start, dataStart + end))
    tensors[name] = { shape, data }
  }
  return { tensors, metadata }
}
