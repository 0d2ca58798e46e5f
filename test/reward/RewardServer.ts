/**
 * A real HTTP server on 127.0.0.1 (random port) for the remote-reward tests:
 * records every request and answers with a scripted handler.
 */
import { Effect } from "effect"
import { FetchHttpClient } from "effect/http"
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import { IMAGE_LENGTH } from "../../src/data/Image.ts"

export interface Recorded {
  readonly method: string
  readonly path: string
  readonly headers: http.IncomingHttpHeaders
  readonly body: any
  /** 1-based request number. */
  readonly n: number
}

export interface Answer {
  readonly status?: number
  /** A string is sent as is; anything else as JSON. */
  readonly body?: unknown
  readonly delayMs?: number
}

export interface TestServer {
  readonly url: string
  readonly requests: Array<Recorded>
  /** Most requests in flight at once. */
  readonly maxInFlight: () => number
  readonly close: () => Promise<void>
}

export const startServer = (handler: (req: Recorded) => Answer): Promise<TestServer> =>
  new Promise((resolve) => {
    const requests: Array<Recorded> = []
    let inFlight = 0
    let maxInFlight = 0
    const server = http.createServer((req, res) => {
      inFlight++
      maxInFlight = Math.max(maxInFlight, inFlight)
      const chunks: Array<Buffer> = []
      req.on("data", (c: Buffer) => chunks.push(c))
      req.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8")
        let body: unknown = text
        try {
          body = JSON.parse(text)
        } catch {
          // keep the text
        }
        const rec: Recorded = { method: req.method ?? "", path: req.url ?? "", headers: req.headers, body, n: requests.length + 1 }
        requests.push(rec)
        const answer = handler(rec)
        const send = () => {
          inFlight--
          if (res.destroyed) return
          const payload = typeof answer.body === "string" ? answer.body : JSON.stringify(answer.body ?? {})
          res.writeHead(answer.status ?? 200, { "content-type": "application/json" })
          res.end(payload)
        }
        if (answer.delayMs === undefined) send()
        else setTimeout(send, answer.delayMs)
      })
    })
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as AddressInfo).port
      resolve({
        url: `http://127.0.0.1:${port}`,
        requests,
        maxInFlight: () => maxInFlight,
        close: () =>
          new Promise<void>((done) => {
            server.closeAllConnections()
            server.close(() => done())
          })
      })
    })
  })

/** A flat test image of one value. */
export const img = (v: number) => new Float32Array(IMAGE_LENGTH).fill(v)

/** Retry settings that keep tests fast. */
export const fast = { retries: 2, backoffMs: 5, maxBackoffMs: 20, timeoutMs: 2000 }

/** Runs `f` with a server answering by `handler`, closing it afterwards. */
export const withServer = <A, E>(handler: (req: Recorded) => Answer, f: (server: TestServer) => Effect.Effect<A, E, any>) =>
  Effect.acquireUseRelease(
    Effect.promise(() => startServer(handler)),
    (server) => f(server).pipe(Effect.provide(FetchHttpClient.layer)),
    (server) => Effect.promise(() => server.close())
  ) as Effect.Effect<A, E>
