import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Effect, Logger } from "effect"
import { FetchHttpClient } from "effect/http"
import { toBytes } from "../../src/data/Image.ts"
import { decodePng } from "../../src/data/Png.ts"
import * as Http from "../../src/reward/Http.ts"
import * as Registry from "../../src/reward/Registry.ts"
import { type Answer, fast, img, type Recorded, startServer, withServer } from "./RewardServer.ts"


const echoMean = (req: Recorded): Answer => ({
  body: {
    rewards: (req.body.images as Array<string>).map((b64) => {
      const bytes = decodePng(Buffer.from(b64, "base64"))
      if (bytes._tag !== "Success") throw new Error("bad png")
      return bytes.success[0] / 255
    })
  }
})

describe("http reward against a real server", () => {
  it.live("POSTs prompts and base64 PNGs as JSON and answers the rewards in order", () =>
    withServer(echoMean, (server) =>
      Effect.gen(function*() {
        const reward = yield* Http.make({ url: `${server.url}/score`, ...fast })
        const images = [img(0), img(0.5), img(1)]
        const r = yield* reward.score(images, ["a red square", "b", "c"])
        assert.deepStrictEqual(r, [0, 128 / 255, 1])
        assert.strictEqual(server.requests.length, 1)
        const req = server.requests[0]
        assert.strictEqual(req.method, "POST")
        assert.strictEqual(req.path, "/score")
        assert.match(String(req.headers["content-type"]), /application\/json/)
        assert.isUndefined(req.headers["authorization"])
        assert.deepStrictEqual(Object.keys(req.body).sort(), ["images", "prompts"])
        assert.deepStrictEqual(req.body.prompts, ["a red square", "b", "c"])
        // The PNG is the image, exactly (8-bit quantised).
        const png = decodePng(Buffer.from(req.body.images[1], "base64"))
        assert.strictEqual(png._tag, "Success")
        assert.deepStrictEqual(Array.from((png as { success: Uint8Array }).success), Array.from(toBytes(images[1])))
        assert.deepStrictEqual(reward.metadata, { name: "http", range: [-Infinity, Infinity], differentiable: false, relativeCost: 50 })
      })))

  it.live("sends the bearer token from the named environment variable; a missing variable is a config error", () =>
    withServer(echoMean, (server) =>
      Effect.gen(function*() {
        const reward = yield* Http.make({ url: server.url, apiKeyEnv: "SCORER_KEY", ...fast })
        yield* reward.score([img(0)], ["p"])
        assert.strictEqual(server.requests[0].headers["authorization"], "Bearer sk-test-123")
        const e = yield* Effect.flip(Http.make({ url: server.url, apiKeyEnv: "NOT_SET_ANYWHERE" }))
        assert.strictEqual(e._tag, "RewardConfigError")
        assert.match(e.message, /NOT_SET_ANYWHERE/)
      }).pipe(Effect.provideService(ConfigProvider.ConfigProvider, ConfigProvider.fromEnv({ env: { SCORER_KEY: "sk-test-123" } })))))

  it.live("splits big batches into requests of batchSize, at most `concurrency` in flight, in order", () =>
    withServer((req) => ({ ...echoMean(req), delayMs: 30 }), (server) =>
      Effect.gen(function*() {
        const reward = yield* Http.make({ url: server.url, batchSize: 2, concurrency: 2, ...fast })
        const values = [0, 51, 102, 153, 204].map((v) => v / 255)
        const r = yield* reward.score(values.map(img), values.map((_, i) => `p${i}`))
        assert.deepStrictEqual(r.map((v) => Math.round(v * 255)), [0, 51, 102, 153, 204])
        assert.deepStrictEqual(server.requests.map((q) => q.body.prompts.length), [2, 2, 1].slice(0, server.requests.length))
        assert.strictEqual(server.requests.length, 3)
        assert.isAtMost(server.maxInFlight(), 2)
      })))

  it.live("retries after a 500 and succeeds", () =>
    withServer((req) => (req.n === 1 ? { status: 500, body: "boom" } : echoMean(req)), (server) =>
      Effect.gen(function*() {
        const reward = yield* Http.make({ url: server.url, ...fast })
        assert.deepStrictEqual(yield* reward.score([img(1)], ["p"]), [1])
        assert.strictEqual(server.requests.length, 2)
      })))

  it.live("persistent 503 is RewardRejected with status and body excerpt after retries; 400 is not retried", () =>
    withServer((req) => (req.path === "/bad" ? { status: 400, body: "{\"detail\": \"prompts missing\"}" } : { status: 503, body: "model is loading" }), (server) =>
      Effect.gen(function*() {
        const reward = yield* Http.make({ url: server.url, ...fast })
        const e = yield* Effect.flip(reward.score([img(0)], ["p"]))
        assert.strictEqual(e._tag, "RewardRejected")
        if (e._tag !== "RewardRejected") return
        assert.strictEqual(e.status, 503)
        assert.strictEqual(e.body, "model is loading")
        assert.strictEqual(e.url, server.url)
        assert.strictEqual(server.requests.length, 3)
        const bad = yield* Http.make({ url: `${server.url}/bad`, ...fast })
        const e2 = yield* Effect.flip(bad.score([img(0)], ["p"]))
        assert.strictEqual(e2._tag, "RewardRejected")
        assert.match(e2.message, /HTTP 400 .*prompts missing/)
        assert.strictEqual(server.requests.length, 4)
      })))

  it.live("a server slower than the timeout is RewardTimeout", () =>
    withServer((req) => ({ ...echoMean(req), delayMs: 1500 }), (server) =>
      Effect.gen(function*() {
        const reward = yield* Http.make({ url: server.url, timeoutMs: 150, retries: 1, backoffMs: 5 })
        const e = yield* Effect.flip(reward.score([img(0)], ["p"]))
        assert.strictEqual(e._tag, "RewardTimeout")
        assert.match(e.message, /150 ms/)
        assert.strictEqual(server.requests.length, 2)
      })))

  it.live("every failed attempt prints one line (timeout or error, retrying or giving up)", () => {
    const logs: Array<string> = []
    return withServer((req) => (req.n === 1 ? { ...echoMean(req), delayMs: 1500 } : req.n === 2 ? { status: 503, body: "busy" } : echoMean(req)), (server) =>
      Effect.gen(function*() {
        const reward = yield* Http.make({ url: server.url, timeoutMs: 150, retries: 3, backoffMs: 5 })
        yield* reward.score([img(0)], ["p"])
        assert.strictEqual(logs.length, 2, logs.join("\n"))
        assert.match(logs[0], /^reward http \(http:\/\/127\.0\.0\.1:\d+\): attempt 1 of 4: no answer within 150 ms; retrying$/)
        assert.match(logs[1], /attempt 2 of 4: HTTP 503 .*busy; retrying$/)
        // The last attempt says it gives up.
        const once = yield* Http.make({ url: `${server.url}/x`, timeoutMs: 50, retries: 0 })
        server.requests.length = 0
        yield* Effect.flip(once.score([img(0)], ["p"]))
        assert.match(logs[2], /attempt 1 of 1: no answer within 50 ms; giving up$/)
      }).pipe(Effect.provide(Logger.layer([Logger.make((o) => logs.push(String(o.message)))]))))
  })

  it.live("protocol errors name the field and the image index; never a silent zero", () =>
    withServer((req) => {
      const n = (req.body.images as Array<string>).length
      switch (req.path) {
        case "/short":
          return { body: { rewards: [1] } }
        case "/null": {
          // Only the request holding images 2-3 (prompts "c", "d") answers null, at its 2nd image.
          const second = (req.body.prompts as Array<string>)[0] === "c"
          return { body: { rewards: Array.from({ length: n }, (_, i) => (second && i === 1 ? null : 0.5)) } }
        }
        case "/nan":
          return { body: `{"rewards": [0.5, NaN]}` }
        case "/missing":
          return { body: { scores: [1, 2] } }
        default:
          return { body: "not json at all" }
      }
    }, (server) =>
      Effect.gen(function*() {
        const run = (path: string, batchSize = 32) =>
          Effect.flatMap(Http.make({ url: `${server.url}${path}`, batchSize, ...fast }), (r) =>
            Effect.flip(r.score([img(0), img(0), img(0), img(0)], ["a", "b", "c", "d"])))
        const short = yield* run("/short")
        assert.strictEqual(short._tag, "RewardProtocolError")
        assert.match(short.message, /expected 4 rewards, got 1/)
        // Index in the whole batch, with requests of 2 images: the 2nd request's 2nd image is image 3.
        const nul = yield* run("/null", 2)
        assert.strictEqual(nul._tag, "RewardProtocolError")
        assert.strictEqual((nul as { field?: string }).field, "rewards")
        assert.strictEqual((nul as { index?: number }).index, 3)
        assert.match(nul.message, /rewards\[1\] of this request \(image 3\)/)
        const nan = yield* run("/nan")
        assert.strictEqual((nan as { field?: string }).field, "body")
        assert.match(nan.message, /NaN/)
        const missing = yield* run("/missing")
        assert.match(missing.message, /no "rewards" array/)
        const junk = yield* run("/junk")
        assert.strictEqual((junk as { field?: string }).field, "body")
        // Protocol errors are not retried: one request each (the /null batch sent 2).
        assert.strictEqual(server.requests.length, 6)
      })))

  it.live("an unreachable server is RewardUnavailable naming the URL", () =>
    Effect.gen(function*() {
      const server = yield* Effect.promise(() => startServer(() => ({})))
      const url = server.url
      yield* Effect.promise(() => server.close())
      const reward = yield* Http.make({ url, retries: 1, backoffMs: 5 })
      const e = yield* Effect.flip(reward.score([img(0)], ["p"]))
      assert.strictEqual(e._tag, "RewardUnavailable")
      assert.strictEqual((e as { url?: string }).url, url)
      assert.match(e.message, /cannot reach/)
    }).pipe(Effect.provide(FetchHttpClient.layer)))

  it.live("the registry builds it by name (--base-url is the endpoint) and requires the URL", () =>
    withServer(echoMean, (server) =>
      Effect.gen(function*() {
        const reward = yield* Registry.make({ reward: "http", baseUrl: server.url, retries: 0 })
        assert.deepStrictEqual(yield* reward.score([img(1)], ["p"]), [1])
        const e = yield* Effect.flip(Registry.make({ reward: "http" }))
        assert.strictEqual(e._tag, "RewardConfigError")
        const e2 = yield* Effect.flip(Registry.make({ reward: "http", baseUrl: "ftp://x" }))
        assert.match(e2.message, /not an http/)
      }).pipe(Effect.scoped, Effect.provide(NodeServices.layer))))
})
