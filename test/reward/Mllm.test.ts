import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Effect, Result } from "effect"
import { FetchHttpClient } from "effect/http"
import { PNG } from "pngjs"
import * as Mllm from "../../src/reward/Mllm.ts"
import { type Answer, fast, img, type Recorded, withServer } from "./RewardServer.ts"


const chat = (content: string): Answer => ({
  body: { id: "x", object: "chat.completion", choices: [{ index: 0, message: { role: "assistant", content }, finish_reason: "stop" }] }
})

const grade = (overall: number) =>
  JSON.stringify({
    accuracy_to_prompt: { score: 8, explanation: "The red square is there." },
    creativity_and_originality: { score: 3, explanation: "Literal." },
    visual_quality_and_realism: { score: 7, explanation: "Clean." },
    consistency_and_cohesion: { score: 9, explanation: "Coherent." },
    emotional_or_thematic_resonance: { score: 5, explanation: "Neutral." },
    overall_score: overall
  })

/** The prompt text the grader was asked about. */
const promptOf = (req: Recorded): string => /Text prompt: (".*")/.exec(req.body.messages[1].content[0].text)![1]

describe("mllm grader against a real OpenAI-compatible server", () => {
  it.live("sends the Appendix C rubric, the prompt and a PNG data URL; normalises overall to [0, 1]", () =>
    withServer(() => chat(grade(7.5)), (server) =>
      Effect.gen(function*() {
        const reward = yield* Mllm.make({ baseUrl: `${server.url}/v1/`, model: "gpt-4o-mini", apiKeyEnv: "GRADER_KEY", ...fast })
        const r = yield* reward.score([img(0.5)], ["a red square"])
        assert.deepStrictEqual(r, [0.75])
        assert.deepStrictEqual(reward.metadata.range, [0, 1])
        const req = server.requests[0]
        assert.strictEqual(req.method, "POST")
        assert.strictEqual(req.path, "/v1/chat/completions")
        assert.strictEqual(req.headers["authorization"], "Bearer sk-grader")
        assert.strictEqual(req.body.model, "gpt-4o-mini")
        assert.strictEqual(req.body.temperature, 0)
        const [system, user] = req.body.messages
        assert.strictEqual(system.role, "system")
        assert.strictEqual(system.content, Mllm.RUBRIC)
        for (const aspect of ["Accuracy to Prompt", "Creativity and Originality", "Visual Quality and Realism", "Consistency and Cohesion", "Emotional or Thematic Resonance", "Overall Score"]) {
          assert.include(system.content, aspect)
        }
        assert.strictEqual(user.role, "user")
        assert.strictEqual(user.content[0].type, "text")
        assert.include(user.content[0].text, "\"a red square\"")
        assert.include(user.content[0].text, "overall_score")
        assert.strictEqual(user.content[1].type, "image_url")
        const url: string = user.content[1].image_url.url
        assert.isTrue(url.startsWith("data:image/png;base64,"))
        const png = PNG.sync.read(Buffer.from(url.slice("data:image/png;base64,".length), "base64"))
        assert.strictEqual(png.width, 256)
        assert.strictEqual(png.height, 256)
        assert.strictEqual(png.data[0], 128)
      }).pipe(Effect.provideService(ConfigProvider.ConfigProvider, ConfigProvider.fromEnv({ env: { GRADER_KEY: "sk-grader" } })))))

  it.live("reads answers in a ```json fence, plain numbers per aspect, and falls back to the mean of aspects", () =>
    withServer((req) => {
      switch (promptOf(req)) {
        case "\"fenced\"":
          return chat("Here is my evaluation:\n```json\n" + grade(9) + "\n```\nThanks.")
        case "\"numbers\"":
          return chat(`{"accuracy_to_prompt": 10, "creativity_and_originality": 0, "visual_quality_and_realism": 10, "consistency_and_cohesion": 10, "emotional_or_thematic_resonance": 0, "overall_score": 6}`)
        default:
          return chat(`{"accuracy_to_prompt": {"score": 10}, "creativity_and_originality": {"score": 0}, "visual_quality_and_realism": {"score": 5}, "consistency_and_cohesion": {"score": 5}, "emotional_or_thematic_resonance": {"score": 5}}`)
      }
    }, (server) =>
      Effect.gen(function*() {
        const reward = yield* Mllm.make({ baseUrl: server.url, upscale: 1, ...fast })
        const r = yield* reward.score([img(0), img(0), img(0)], ["fenced", "numbers", "no overall"])
        assert.deepStrictEqual(r, [0.9, 0.6, 0.5])
        // No apiKeyEnv: no Authorization header (local servers).
        assert.isUndefined(server.requests[0].headers["authorization"])
      })))

  it.live("malformed answers are RewardProtocolError naming the field and the image index", () =>
    withServer((req) => {
      switch (promptOf(req)) {
        case "\"prose\"":
          return chat("The image shows a red square. I would rate it highly.")
        case "\"range\"":
          return chat(grade(85))
        case "\"incomplete\"":
          return chat(`{"accuracy_to_prompt": 3}`)
        case "\"wrong type\"":
          return chat(`{"overall_score": "high"}`)
        case "\"no choices\"":
          return { body: { choices: [] } }
        default:
          return chat(grade(5))
      }
    }, (server) =>
      Effect.gen(function*() {
        const reward = yield* Mllm.make({ baseUrl: server.url, ...fast })
        const fail = (prompt: string) => Effect.flip(reward.score([img(0), img(0)], ["fine", prompt]))
        const prose = yield* fail("prose")
        assert.strictEqual(prose._tag, "RewardProtocolError")
        assert.strictEqual((prose as { index?: number }).index, 1)
        assert.strictEqual((prose as { field?: string }).field, "choices[0].message.content")
        assert.match(prose.message, /no JSON object/)
        const range = yield* fail("range")
        assert.strictEqual((range as { field?: string }).field, "overall_score")
        assert.match(range.message, /85 is outside \[0, 10\]/)
        const incomplete = yield* fail("incomplete")
        assert.match(incomplete.message, /no overall_score/)
        const wrongType = yield* fail("wrong type")
        assert.match(wrongType.message, /rubric's format/)
        const noChoices = yield* fail("no choices")
        assert.strictEqual((noChoices as { field?: string }).field, "choices")
      })))

  it.live("retries after a 500; a 401 is rejected at once with the body excerpt", () =>
    withServer((req) => {
      if (req.headers["authorization"] === "Bearer wrong") return { status: 401, body: `{"error": {"message": "Incorrect API key provided"}}` }
      return req.n === 1 ? { status: 500, body: "upstream error" } : chat(grade(10))
    }, (server) =>
      Effect.gen(function*() {
        const reward = yield* Mllm.make({ baseUrl: server.url, ...fast })
        assert.deepStrictEqual(yield* reward.score([img(0)], ["p"]), [1])
        assert.strictEqual(server.requests.length, 2)
        const bad = yield* Mllm.make({ baseUrl: server.url, apiKeyEnv: "WRONG_KEY", ...fast }).pipe(
          Effect.provideService(ConfigProvider.ConfigProvider, ConfigProvider.fromEnv({ env: { WRONG_KEY: "wrong" } }))
        )
        const e = yield* Effect.flip(bad.score([img(0)], ["p"]))
        assert.strictEqual(e._tag, "RewardRejected")
        assert.match(e.message, /HTTP 401 .*Incorrect API key/)
        assert.strictEqual(server.requests.length, 3)
      })))

  it.live("times out slow answers; grades `concurrency` images at a time", () =>
    withServer((req) => ({ ...chat(grade(4)), delayMs: promptOf(req) === "\"slow\"" ? 3000 : 40 }), (server) =>
      Effect.gen(function*() {
        const reward = yield* Mllm.make({ baseUrl: server.url, concurrency: 2, ...fast, timeoutMs: 5000 })
        const r = yield* reward.score([img(0), img(0), img(0), img(0)], ["a", "b", "c", "d"])
        assert.deepStrictEqual(r, [0.4, 0.4, 0.4, 0.4])
        assert.strictEqual(server.maxInFlight(), 2)
        const impatient = yield* Mllm.make({ baseUrl: server.url, timeoutMs: 300, retries: 0 })
        const e = yield* Effect.flip(impatient.score([img(0)], ["slow"]))
        assert.strictEqual(e._tag, "RewardTimeout")
      })))

  it("extracts JSON from plain text, fences and surrounding prose", () => {
    assert.deepStrictEqual(Mllm.extractJson(`{"a": 1}`), Result.succeed({ a: 1 }))
    assert.deepStrictEqual(Mllm.extractJson("```json\n{\"a\": 2}\n```"), Result.succeed({ a: 2 }))
    assert.deepStrictEqual(Mllm.extractJson("```\n{\"a\": 3}\n```"), Result.succeed({ a: 3 }))
    assert.deepStrictEqual(Mllm.extractJson("Sure! {\"a\": 4} Hope this helps."), Result.succeed({ a: 4 }))
    assert.isTrue(Result.isFailure(Mllm.extractJson("no json here")))
  })

  it.effect("invalid options are a config error", () =>
    Effect.gen(function*() {
      const e = yield* Effect.flip(Mllm.make({ baseUrl: "not a url" }))
      assert.strictEqual(e._tag, "RewardConfigError")
      const e2 = yield* Effect.flip(Mllm.make({ concurrency: 0 }))
      assert.match(e2.message, /invalid options/)
    }).pipe(Effect.provide(FetchHttpClient.layer)))
})
