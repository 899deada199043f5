// specials.ts: the special tokens of o200k_harmony, the tokenizer of GPT-OSS.
//
// o200k_harmony = the o200k_base byte-pair ranks (ids 0..199997) plus special tokens at 199998..201087. Nine of
// them structure the harmony chat format; every other id in the range is `<|reserved_N|>` (N = the id), except
// 200018, which o200k_base already names `<|endofprompt|>` (tiktoken and the model's tokenizer.json agree on
// that name; `<|reserved_200018|>` is accepted as an alias when encoding).

/** Number of o200k_base mergeable ranks (ordinary tokens are ids 0..199997). */
export const NUM_ORDINARY_TOKENS = 199_998;
/** Vocabulary size of o200k_harmony (the embedding / lm_head rows of gpt-oss). */
export const VOCAB_SIZE = 201_088;

/** The harmony structural tokens at their ids. */
export const SPECIAL_TOKENS = {
  startoftext: 199_998,
  endoftext: 199_999,
  return: 200_002,
  constrain: 200_003,
  channel: 200_005,
  start: 200_006,
  end: 200_007,
  message: 200_008,
  call: 200_012,
  endofprompt: 200_018,
} as const;

export type SpecialTokenName = keyof typeof SPECIAL_TOKENS;

/** `<|name|>` for a structural token name. */
export function specialText(name: SpecialTokenName): string {
  return `<|${name}|>`;
}

/** Stop tokens for generation: `<|return|>` (final answer) and `<|call|>` (tool call); never `<|end|>`. */
export const STOP_TOKEN_IDS: readonly number[] = [SPECIAL_TOKENS.return, SPECIAL_TOKENS.call];
/** End-of-sequence id of gpt-oss (`<|return|>`) and its padding id (`<|endoftext|>`). */
export const EOS_TOKEN_ID = SPECIAL_TOKENS.return;
export const PAD_TOKEN_ID = SPECIAL_TOKENS.endoftext;

const namedById = new Map<number, string>(
  Object.entries(SPECIAL_TOKENS).map(([name, id]) => [id, `<|${name}|>`]),
);

/** True for ids 199998..201087 (structural or reserved). */
export function isSpecialId(id: number): boolean {
  return Number.isInteger(id) && id >= NUM_ORDINARY_TOKENS && id < VOCAB_SIZE;
}

/** The text of a special id (`<|start|>`, `<|reserved_200014|>`), or undefined for ordinary/out-of-range ids. */
export function specialIdToText(id: number): string | undefined {
  if (!isSpecialId(id)) return undefined;
  return namedById.get(id) ?? `<|reserved_${id}|>`;
}

/** The id of a special token's text, or undefined when the text is not one (`<|reserved_200018|>` -> 200018). */
export function specialTextToId(text: string): number | undefined {
  const m = /^<\|([a-z]+|reserved_(\d+))\|>$/.exec(text);
  if (!m) return undefined;
  if (m[2] !== undefined) {
    const id = Number(m[2]);
    // Only ids that carry no structural name are reserved_ (plus the 200018 alias tiktoken also defines).
    if (!isSpecialId(id) || (namedById.has(id) && id !== SPECIAL_TOKENS.endofprompt)) return undefined;
    if (m[2] !== String(id)) return undefined; // no leading zeros
    return id;
  }
  return (SPECIAL_TOKENS as Record<string, number>)[m[1]!];
}

/** Matches every string that looks like a special token; callers confirm with specialTextToId. */
export const SPECIAL_PATTERN = /<\|(?:[a-z]+|reserved_\d+)\|>/g;

/** All (text, id) pairs of the special vocabulary, in id order (200018 once, as `<|endofprompt|>`). */
export function allSpecialTokens(): Array<[string, number]> {
  const out: Array<[string, number]> = [];
  for (let id = NUM_ORDINARY_TOKENS; id < VOCAB_SIZE; id++) out.push([specialIdToText(id)!, id]);
  return out;
}
