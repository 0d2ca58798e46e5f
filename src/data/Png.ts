/**
 * PNG files for ShapeWorld-32 images (32 x 32, 8-bit RGB, non-interlaced,
 * as the spec requires of the project's files) and labelled contact sheets.
 *
 * Decoding accepts 8- or 16-bit RGB and RGBA (16-bit is rescaled to 8 bits
 * by pngjs); other colour types (grey, palette) are rejected. Choice: a pixel
 * that is not opaque is composited over the black background,
 * c' = round(c * alpha / 255), so transparency reads as background.
 *
 * Contact sheets upscale each tile (nearest neighbour, default 3x) and write
 * its label under it in a built-in 3 x 5 pixel font (a-z, 0-9, space and
 * . , : ; - _ / % ( ) ! ? + = ' # < > [ ] *; upper case is drawn as lower
 * case, anything else as "?"), word-wrapped to the tile's width.
 *
 * @since 0.1.0
 */
import { Effect, FileSystem, Result, Schema } from "effect"
import { PNG } from "pngjs"
import { asBytes, CHANNELS, SIZE } from "./Image.ts"

/**
 * A file is not a readable 32 x 32 RGB(A) PNG, or could not be read/written.
 *
 * @since 0.1.0
 */
export class PngError extends Schema.TaggedError<PngError>()("PngError", {
  file: Schema.String,
  message: Schema.String
}) {}

const SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]

/** Packs RGB bytes (w x h x 3, row-major) into an 8-bit RGB PNG. */
const encodeRgb = (rgb: Uint8Array, width: number, height: number): Buffer => {
  if (rgb.length !== width * height * CHANNELS) {
    throw new RangeError(`expected ${width}x${height}x${CHANNELS} = ${width * height * CHANNELS} values, got ${rgb.length}`)
  }
  const png = new PNG({ width, height })
  for (let p = 0; p < width * height; p++) {
    png.data[p * 4] = rgb[p * 3]
    png.data[p * 4 + 1] = rgb[p * 3 + 1]
    png.data[p * 4 + 2] = rgb[p * 3 + 2]
    png.data[p * 4 + 3] = 255
  }
  return PNG.sync.write(png, { colorType: 2, inputColorType: 6, inputHasAlpha: true, bitDepth: 8 })
}

/**
 * Encodes one 32 x 32 image (bytes, or floats in [0, 1]) as an RGB PNG.
 *
 * @since 0.1.0
 */
export const encodePng = (image: Uint8Array | Float32Array): Buffer => encodeRgb(asBytes(image), SIZE, SIZE)

/**
 * Decodes a 32 x 32 RGB or RGBA PNG to RGB bytes (row-major HWC). `file`
 * names the source in errors.
 *
 * @since 0.1.0
 */
export const decodePng = (bytes: Uint8Array, file = "<memory>"): Result.Result<Uint8Array, PngError> => {
  const fail = (message: string) => Result.fail(new PngError({ file, message: `${file}: ${message}` }))
  if (bytes.length < SIGNATURE.length || SIGNATURE.some((b, i) => bytes[i] !== b)) {
    return fail("not a PNG (missing PNG signature)")
  }
  let png: ReturnType<typeof PNG.sync.read>
  try {
    png = PNG.sync.read(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength))
  } catch (e) {
    return fail(`corrupt PNG (${e instanceof Error ? e.message : String(e)})`)
  }
  const colorType = png.colorType as number
  if (colorType !== 2 && colorType !== 6) {
    const names: Record<number, string> = { 0: "greyscale", 3: "palette", 4: "greyscale with alpha" }
    return fail(`unsupported colour type ${names[colorType] ?? colorType} (expected RGB or RGBA)`)
  }
  if (png.width !== SIZE || png.height !== SIZE) {
    return fail(`wrong size ${png.width}x${png.height} (expected ${SIZE}x${SIZE})`)
  }
  const out = new Uint8Array(SIZE * SIZE * CHANNELS)
  for (let p = 0; p < SIZE * SIZE; p++) {
    const a = png.data[p * 4 + 3]
    for (let c = 0; c < 3; c++) {
      const v = png.data[p * 4 + c]
      out[p * 3 + c] = a === 255 ? v : Math.round((v * a) / 255)
    }
  }
  return Result.succeed(out)
}

/**
 * Reads and decodes a 32 x 32 PNG file.
 *
 * @since 0.1.0
 */
export const readPng = Effect.fnUntraced(function*(path: string) {
  const fs = yield* FileSystem.FileSystem
  const bytes = yield* fs.readFile(path).pipe(
    Effect.mapError((e) => new PngError({ file: path, message: `${path}: cannot read (${e.message})` }))
  )
  return yield* Effect.fromResult(decodePng(bytes, path))
})

/**
 * Writes PNG bytes (from `encodePng` or `grid`) to a file.
 *
 * @since 0.1.0
 */
export const writePngFile = Effect.fnUntraced(function*(path: string, png: Uint8Array) {
  const fs = yield* FileSystem.FileSystem
  yield* fs.writeFile(path, png).pipe(
    Effect.mapError((e) => new PngError({ file: path, message: `${path}: cannot write (${e.message})` }))
  )
})

// ---------------------------------------------------------------- contact sheets

// 3 x 5 glyphs, rows top to bottom, "#" = ink.
const GLYPHS: Record<string, string> = {
  a: ".#.#.#####.##.#", b: "##.#.###.#.###.", c: ".###..#..#...##", d: "##.#.##.##.###.",
  e: "####..##.#..###", f: "####..##.#..#..", g: ".###..#.##.#.##", h: "#.##.#####.##.#",
  i: "###.#..#..#.###", j: "..#..#..##.#.#.", k: "#.##.###.#.##.#", l: "#..#..#..#..###",
  m: "#.########.##.#", n: "##.#.##.##.##.#", o: ".#.#.##.##.#.#.", p: "##.#.###.#..#..",
  q: ".#.#.##.###..##", r: "##.#.###.#.##.#", s: ".###...#...###.", t: "###.#..#..#..#.",
  u: "#.##.##.##.####", v: "#.##.##.##.#.#.", w: "#.##.########.#", x: "#.##.#.#.#.##.#",
  y: "#.##.#.#..#..#.", z: "###..#.#.#..###", "0": "####.##.##.####", "1": ".#.##..#..#.###",
  "2": "##...#.#.#..###", "3": "##...#.#...###.", "4": "#.##.####..#..#", "5": "####..##...###.",
  "6": ".###..####.####", "7": "###..#.#..#..#.", "8": "####.#####.####", "9": "####.####..###.",
  " ": "...............", ".": ".............#.", ",": "..........#.#..", ":": "....#.....#....",
  ";": "....#.....#.#..", "-": "......###......", _: "............###", "/": "..#..#.#.#..#..",
  "%": "#.#..#.#.#..#.#", "(": ".#.#..#..#...#.", ")": ".#...#..#..#.#.", "!": ".#..#..#.....#.",
  "?": "##...#.#.....#.", "+": "....#.###.#....", "=": "...###...###...", "'": ".#..#..........",
  "#": "#.#####.#####.#", "<": "..#.#.#...#...#", ">": "#...#...#.#.#..", "[": "##.#..#..#..##.",
  "]": ".##..#..#..#.##", "*": "...#.#.#.#.#..."
}

/** Glyph cell: 3 px wide + 1 px spacing, 5 px tall + 1 px line spacing. */
const GLYPH_W = 3
const GLYPH_H = 5

/** Breaks a label into lines of at most `width` characters, at spaces when possible. */
const wrap = (text: string, width: number): Array<string> => {
  const lines: Array<string> = []
  let line = ""
  for (const word of text.split(" ")) {
    let w = word
    while (w.length > width) {
      if (line !== "") lines.push(line), (line = "")
      lines.push(w.slice(0, width))
      w = w.slice(width)
    }
    if (line === "") line = w
    else if (line.length + 1 + w.length <= width) line += ` ${w}`
    else lines.push(line), (line = w)
  }
  if (line !== "" || lines.length === 0) lines.push(line)
  return lines
}

/**
 * Contact-sheet layout options.
 *
 * @since 0.1.0
 */
export interface GridOptions {
  /** Tile upscale factor (default 3). */
  readonly scale?: number
  /** Font upscale factor (default 1). */
  readonly fontScale?: number
  /** Pixels between and around tiles (default 2). */
  readonly padding?: number
}

const BACKGROUND = [48, 48, 48] as const
const INK = [225, 225, 225] as const

/**
 * Lays images out `cols` per row, each upscaled and labelled underneath, and
 * encodes the sheet as an RGB PNG.
 *
 * @since 0.1.0
 */
export const grid = (
  images: ReadonlyArray<Uint8Array | Float32Array>,
  labels?: ReadonlyArray<string>,
  cols = 8,
  options: GridOptions = {}
): Buffer => {
  const scale = options.scale ?? 3
  const fs = options.fontScale ?? 1
  const pad = options.padding ?? 2
  if (images.length === 0) throw new RangeError("grid needs at least one image")
  if (labels !== undefined && labels.length !== images.length) {
    throw new RangeError(`${images.length} images but ${labels.length} labels`)
  }
  const tile = SIZE * scale
  const perLine = Math.max(1, Math.floor((tile + fs) / ((GLYPH_W + 1) * fs)))
  const wrapped = (labels ?? []).map((l) => wrap(l.toLowerCase(), perLine))
  const labelLines = Math.max(0, ...wrapped.map((l) => l.length))
  const labelH = labelLines === 0 ? 0 : labelLines * (GLYPH_H + 1) * fs + 1
  const c = Math.max(1, Math.min(cols, images.length))
  const rows = Math.ceil(images.length / c)
  const cellW = tile + pad
  const cellH = tile + labelH + pad
  const width = pad + c * cellW
  const height = pad + rows * cellH
  const rgb = new Uint8Array(width * height * 3)
  for (let p = 0; p < width * height; p++) rgb.set(BACKGROUND, p * 3)
  const put = (x: number, y: number, r: number, g: number, b: number) => {
    const p = (y * width + x) * 3
    rgb[p] = r
    rgb[p + 1] = g
    rgb[p + 2] = b
  }
  images.forEach((image, k) => {
    const bytes = asBytes(image)
    if (bytes.length !== SIZE * SIZE * CHANNELS) throw new RangeError(`image ${k} has ${bytes.length} values`)
    const ox = pad + (k % c) * cellW
    const oy = pad + Math.floor(k / c) * cellH
    for (let y = 0; y < tile; y++) {
      for (let x = 0; x < tile; x++) {
        const s = (Math.floor(y / scale) * SIZE + Math.floor(x / scale)) * 3
        put(ox + x, oy + y, bytes[s], bytes[s + 1], bytes[s + 2])
      }
    }
    ;(wrapped[k] ?? []).forEach((line, li) => {
      for (let ci = 0; ci < line.length; ci++) {
        const glyph = GLYPHS[line[ci]] ?? GLYPHS["?"]
        const gx = ox + ci * (GLYPH_W + 1) * fs
        const gy = oy + tile + 1 + li * (GLYPH_H + 1) * fs
        for (let r = 0; r < GLYPH_H; r++) {
          for (let q = 0; q < GLYPH_W; q++) {
            if (glyph[r * GLYPH_W + q] !== "#") continue
            for (let dy = 0; dy < fs; dy++) for (let dx = 0; dx < fs; dx++) put(gx + q * fs + dx, gy + r * fs + dy, ...INK)
          }
        }
      }
    })
  })
  return encodeRgb(rgb, width, height)
}
