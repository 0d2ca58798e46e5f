/**
 * Line plots (loss and reward curves) rendered headless with Vega-Lite to
 * SVG, and rasterised to PNG with resvg for places that want a bitmap.
 *
 * @since 0.1.0
 */
import { Resvg } from "@resvg/resvg-js"
import * as vega from "vega"
import * as vl from "vega-lite"

export interface LinePlot {
  readonly title: string
  readonly x: string
  readonly y: string
  /** One row per point; `series` (if present) colours separate lines. */
  readonly rows: ReadonlyArray<Record<string, number | string>>
  readonly series?: string
  readonly logY?: boolean
  readonly width?: number
  readonly height?: number
  /** Draw a moving average of this many points over the raw line. */
  readonly smooth?: number
  /** Mark every point (a series of one point is otherwise invisible). */
  readonly points?: boolean
  /** Vega colour scheme of the series (default category10; "category20" for many series). */
  readonly scheme?: string
}

export const lineSvg = async (p: LinePlot): Promise<string> => {
  const color = p.series !== undefined
    ? { color: { field: p.series, type: "nominal" as const, ...(p.scheme !== undefined ? { scale: { scheme: p.scheme } } : {}) } }
    : {}
  const base = {
    x: { field: p.x, type: "quantitative" as const },
    y: { field: p.y, type: "quantitative" as const, scale: p.logY ? { type: "log" as const } : { zero: false } },
    ...color
  }
  const layers: Array<object> = [{ mark: { type: "line", opacity: p.smooth !== undefined && p.smooth > 1 ? 0.35 : 1, ...(p.points ? { point: { size: 60 } } : {}) }, encoding: base }]
  if (p.smooth && p.smooth > 1) {
    layers.push({
      transform: [{
        window: [{ op: "mean", field: p.y, as: `${p.y} (avg)` }],
        frame: [-(p.smooth - 1), 0],
        ...(p.series !== undefined ? { groupby: [p.series] } : {})
      }],
      mark: { type: "line", strokeWidth: 2 },
      encoding: { ...base, y: { ...base.y, field: `${p.y} (avg)`, title: p.y } }
    })
  }
  const spec = vl.compile({
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: p.title,
    width: p.width ?? 480,
    height: p.height ?? 260,
    data: { values: p.rows as Array<Record<string, number | string>> },
    layer: layers,
    // Long series names ("... (paper)" vs "... (image-level)") must not be cut to one prefix.
    config: { legend: { labelLimit: 400 } }
  } as never).spec
  const view = new vega.View(vega.parse(spec), { renderer: "none" })
  const svg = await view.toSVG()
  view.finalize()
  return svg
}

export const svgToPng = (svg: string, zoom = 2): Uint8Array =>
  new Resvg(svg, { background: "white", fitTo: { mode: "zoom", value: zoom } }).render().asPng()

export interface ScatterPlot {
  readonly title: string
  readonly x: string
  readonly y: string
  readonly rows: ReadonlyArray<Record<string, number | string>>
  /** One small panel per value of this field. */
  readonly facet: string
  readonly columns?: number
  /** Side of each square panel, px. */
  readonly size?: number
  /** Fixed axis range [min, max] for x and y (panels then compare). */
  readonly domain?: readonly [number, number]
}

/** Faceted scatter plots (the lab's samples per method). */
export const scatterSvg = async (p: ScatterPlot): Promise<string> => {
  const scale = p.domain === undefined ? {} : { scale: { domain: [...p.domain] } }
  const spec = vl.compile({
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: p.title,
    data: { values: p.rows as Array<Record<string, number | string>> },
    facet: { field: p.facet, type: "nominal", sort: null, title: null },
    columns: p.columns ?? 4,
    spec: {
      width: p.size ?? 160,
      height: p.size ?? 160,
      mark: { type: "circle", size: 6, opacity: 0.5 },
      encoding: {
        x: { field: p.x, type: "quantitative", ...scale },
        y: { field: p.y, type: "quantitative", ...scale }
      }
    }
  } as never).spec
  const view = new vega.View(vega.parse(spec), { renderer: "none" })
  const svg = await view.toSVG()
  view.finalize()
  return svg
}
