/**
 * The ShapeWorld-32 canvas: 32 x 32 RGB, row-major HWC, and conversions
 * between the three pixel encodings the project uses.
 *
 * - bytes: `Uint8Array`, 0..255 (renderer output, PNG files, the verifier's
 *   own working form);
 * - unit: `Float32Array` in [0, 1];
 * - signed: `Float32Array` in [-1, 1] (what the diffusion model sees).
 *
 * Float images are quantised to 8 bits by rounding so that an image judged in
 * memory is judged exactly as it would be after a PNG round trip.
 *
 * @since 0.1.0
 */

/** Canvas side in pixels. */
export const SIZE = 32
/** Colour channels (RGB, no alpha). */
export const CHANNELS = 3
/** Values in one image: SIZE * SIZE * CHANNELS. */
export const IMAGE_LENGTH = SIZE * SIZE * CHANNELS

/** Numeric range of a float image. */
export type FloatRange = "unit" | "signed"

const clamp01 = (v: number) => (v < 0 ? 0 : v > 1 ? 1 : Number.isNaN(v) ? 0 : v)

/**
 * Quantises a float image to bytes (clamping out-of-range values; NaN → 0).
 *
 * @since 0.1.0
 */
export const toBytes = (image: Float32Array, range: FloatRange = "unit"): Uint8Array => {
  const out = new Uint8Array(image.length)
  if (range === "unit") {
    for (let i = 0; i < image.length; i++) out[i] = Math.round(clamp01(image[i]) * 255)
  } else {
    for (let i = 0; i < image.length; i++) out[i] = Math.round(clamp01((image[i] + 1) / 2) * 255)
  }
  return out
}

/**
 * Bytes to floats in the given range, written into `out` at `offset` when
 * given (the dataset fills one batch buffer without per-image allocation).
 *
 * @since 0.1.0
 */
export const fromBytes = (
  bytes: Uint8Array,
  range: FloatRange = "unit",
  out: Float32Array = new Float32Array(bytes.length),
  offset = 0
): Float32Array => {
  if (range === "unit") {
    for (let i = 0; i < bytes.length; i++) out[offset + i] = bytes[i] / 255
  } else {
    for (let i = 0; i < bytes.length; i++) out[offset + i] = bytes[i] / 127.5 - 1
  }
  return out
}

/**
 * Accepts either encoding the verifier and PNG writer take: bytes as they are,
 * floats in [0, 1] quantised.
 *
 * @since 0.1.0
 */
export const asBytes = (image: Uint8Array | Float32Array): Uint8Array =>
  image instanceof Uint8Array ? image : toBytes(image, "unit")
