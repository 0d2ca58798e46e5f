/**
 * Word-level tokenizer over a fixed vocabulary stored in the model's config.
 *
 * Token 0 pads, token 1 is the learned null prompt used for classifier-free
 * guidance (an empty prompt encodes to it), real words start at 2.
 *
 * @since 0.1.0
 */
import { Schema } from "effect"

export const NULL_TOKEN = 1

/**
 * A prompt contains a word the model's vocabulary does not have, or is too long.
 *
 * @since 0.1.0
 */
export class TokenizeError extends Schema.TaggedError<TokenizeError>()("TokenizeError", {
  prompt: Schema.String,
  message: Schema.String
}) {}

/**
 * Encoded prompts: token ids and a 0/1 mask, both row-major [batch, maxLen].
 *
 * @since 0.1.0
 */
export interface Tokens {
  readonly ids: Int32Array
  readonly mask: Float32Array
  readonly batch: number
  readonly maxLen: number
}

export const encode = (
  vocabulary: ReadonlyArray<string>,
  maxLen: number,
  prompts: ReadonlyArray<string>
): Tokens => {
  const index = new Map(vocabulary.map((w, i) => [w, i + 2]))
  const ids = new Int32Array(prompts.length * maxLen)
  const mask = new Float32Array(prompts.length * maxLen)
  prompts.forEach((prompt, b) => {
    const words = prompt.trim() === "" ? [] : prompt.trim().split(/\s+/)
    if (words.length > maxLen) {
      throw new TokenizeError({ prompt, message: `prompt has ${words.length} words, the model reads at most ${maxLen}` })
    }
    if (words.length === 0) {
      ids[b * maxLen] = NULL_TOKEN
      mask[b * maxLen] = 1
      return
    }
    words.forEach((w, i) => {
      const id = index.get(w)
      if (id === undefined) {
        throw new TokenizeError({ prompt, message: `unknown word "${w}" at position ${i + 1}` })
      }
      ids[b * maxLen + i] = id
      mask[b * maxLen + i] = 1
    })
  })
  return { ids, mask, batch: prompts.length, maxLen }
}
