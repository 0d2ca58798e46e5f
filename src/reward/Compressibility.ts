/**
 * JPEG compressibility rewards, as in DDPO (Black et al. 2023,
 * kvablack/ddpo-pytorch `rewards.py`): each image is quantised to 8 bits
 * (round(x * 255)), encoded as a baseline JPEG at quality 95, and its size is
 * measured in kB (bytes / 1000).
 *
 * - `incompressibility` = +size (kB): rewards detail and noise;
 * - `compressibility` = -size (kB): rewards flat, simple images.
 *
 * The encoder is jpeg-js (pure JS; 4:4:4, standard tables). Its sizes are not
 * byte-identical to PIL's, but the ordering of images is what the reward
 * uses. On 32 x 32 images the headers dominate: a blank canvas is about
 * 0.64 kB, a one-object render about 0.9 kB, uniform noise about 3.1 kB.
 * The range is [-Infinity, 0] and [0, Infinity] (no a-priori bound is
 * claimed).
 *
 * Speed: jpeg-js's `encode` builds a new encoder (about 100 ms of table
 * set-up) per call; its encoder class is not exported, so we evaluate the
 * library's own encoder source once to get the class and reuse one encoder
 * per quality (same bytes, about 5 ms per image). If that ever fails (a
 * different jpeg-js layout), we fall back to the public `encode`.
 *
 * @since 0.1.0
 */
import { Effect, Layer } from "effect"
import jpeg from "jpeg-js"
import { readFileSync } from "node:fs"
import { createRequire } from "node:module"
import { SIZE, toBytes } from "../data/Image.ts"
import { make as makeReward, Reward, type RewardMetadata, type RewardService } from "./Reward.ts"

/** DDPO's JPEG quality. */
export const JPEG_QUALITY = 95

/** Which direction. */
export type Direction = "compressibility" | "incompressibility"

interface Encoder {
  encode(image: { data: Buffer; width: number; height: number }, quality: number): Uint8Array
}

const encoderClass = ((): (new(quality: number) => Encoder) | undefined => {
  try {
    const require = createRequire(import.meta.url)
    const source = readFileSync(require.resolve("jpeg-js/lib/encoder.js"), "utf8")
    const found: unknown = new Function("module", `${source}\n;return typeof JPEGEncoder === "function" ? JPEGEncoder : undefined`)({
      exports: {}
    })
    return typeof found === "function" ? (found as new(quality: number) => Encoder) : undefined
  } catch {
    return undefined
  }
})()

const encoders = new Map<number, Encoder>()

/** JPEG bytes of RGBA data, with a reused encoder when available. */
const encodeJpeg = (rgba: Buffer, quality: number): Uint8Array => {
  if (encoderClass === undefined) return jpeg.encode({ data: rgba, width: SIZE, height: SIZE }, quality).data
  let encoder = encoders.get(quality)
  if (encoder === undefined) encoders.set(quality, (encoder = new encoderClass(quality)))
  return encoder.encode({ data: rgba, width: SIZE, height: SIZE }, quality)
}

/**
 * The JPEG size of one image in [0, 1] in kB (bytes / 1000), at `quality`.
 *
 * @since 0.1.0
 */
export const jpegKilobytes = (image: Float32Array, quality = JPEG_QUALITY): number => {
  const rgb = toBytes(image, "unit")
  const rgba = Buffer.alloc(SIZE * SIZE * 4)
  for (let p = 0; p < SIZE * SIZE; p++) {
    rgba[p * 4] = rgb[p * 3]
    rgba[p * 4 + 1] = rgb[p * 3 + 1]
    rgba[p * 4 + 2] = rgb[p * 3 + 2]
    rgba[p * 4 + 3] = 255
  }
  return encodeJpeg(rgba, quality).length / 1000
}

/**
 * Metadata of each direction.
 *
 * @since 0.1.0
 */
export const metadata: { readonly [D in Direction]: RewardMetadata } = {
  compressibility: { name: "compressibility", range: [-Infinity, 0], differentiable: false, relativeCost: 2 },
  incompressibility: { name: "incompressibility", range: [0, Infinity], differentiable: false, relativeCost: 2 }
}

/**
 * The compressibility (or incompressibility) reward service.
 *
 * @since 0.1.0
 */
export const make = (direction: Direction = "compressibility", quality = JPEG_QUALITY): RewardService => {
  const sign = direction === "compressibility" ? -1 : 1
  return makeReward(metadata[direction], (images) => Effect.sync(() => images.map((img) => sign * jpegKilobytes(img, quality))))
}

/**
 * The reward as a layer.
 *
 * @since 0.1.0
 */
export const layer = (direction: Direction = "compressibility", quality = JPEG_QUALITY): Layer.Layer<Reward> =>
  Layer.succeed(Reward, make(direction, quality))
