// tokenizer.ts: o200k_harmony, the GPT-OSS tokenizer, on top of the o200k_base byte-pair ranks of the
// `gpt-tokenizer` npm package.
//
// gpt-tokenizer does the pre-tokenisation regex and the BPE merges of ordinary text. We handle special tokens
// ourselves: its own special-token search (3.4.0) only finds a special token at the very start of a chunk
// (a sticky regex), so `<|start|>user<|message|>` would come out with `<|message|>` spelled as plain text. We
// also decode ourselves, from each token's bytes, with a fresh UTF-8 decoder per call (its decoder is a shared
// streaming TextDecoder that keeps a truncated multi-byte tail across calls).
//
// Building the tokenizer (loading 200k ranks, building the maps) takes a few hundred milliseconds: use the
// singleton from getTokenizer().
import { createRequire } from 'node:module';
import {
  NUM_ORDINARY_TOKENS,
  SPECIAL_PATTERN,
  VOCAB_SIZE,
  isSpecialId,
  specialIdToText,
  specialTextToId,
} from './specials.ts';

/** What encode() does with text that spells a special token. */
export interface EncodeOptions {
  /**
   * Special tokens that may appear in the text as themselves: `true` for all of them, or a set of their texts
   * (`'<|start|>'`...). Any other special-token text makes encode() throw (use encodeOrdinary() to encode it as
   * plain characters). Default: none.
   */
  allowSpecial?: boolean | ReadonlySet<string>;
}

export interface DecodeOptions {
  /** Drop special tokens (structural and reserved) from the output. Default false (they appear as `<|name|>`). */
  skipSpecialTokens?: boolean;
}

/** The slice of gpt-tokenizer's GptEncoding that we use (ordinary-text encoding). */
interface OrdinaryEncoder {
  encode(text: string, opts?: { allowedSpecial?: Set<string>; disallowedSpecial?: Set<string> | 'all' }): number[];
}
type RawRanks = ReadonlyArray<string | readonly number[]>;

// An empty disallowed set turns off gpt-tokenizer's special-token handling entirely (plain BPE of every char).
const NO_SPECIALS = { disallowedSpecial: new Set<string>() };

export class HarmonyTokenizer {
  /** 201,088: ids 0..199997 are o200k_base ranks, 199998..201087 special tokens. */
  readonly vocabSize = VOCAB_SIZE;
  private readonly encoder: OrdinaryEncoder;
  private readonly ranks: RawRanks;
  private readonly bytesCache: Array<Uint8Array | undefined>;
  private readonly utf8 = new TextEncoder();

  /** Prefer getTokenizer(); this builds a new instance (slow). */
  constructor() {
    // Loaded synchronously (and only when a tokenizer is first built) through the package's CommonJS build.
    const require = createRequire(import.meta.url);
    const ranks = (require('gpt-tokenizer/cjs/bpeRanks/o200k_base') as { default: RawRanks }).default;
    const { GptEncoding } = require('gpt-tokenizer/cjs/GptEncoding') as {
      GptEncoding: { getEncodingApi(name: string, getRanks: () => RawRanks): OrdinaryEncoder };
    };
    if (ranks.length !== NUM_ORDINARY_TOKENS) {
      throw new Error(`HarmonyTokenizer: expected ${NUM_ORDINARY_TOKENS} o200k_base ranks, gpt-tokenizer has ${ranks.length}`);
    }
    // o200k_base and o200k_harmony share ranks and the split regex; o200k_base has the smaller special table,
    // which keeps gpt-tokenizer's per-chunk special search cheap (we never let it match specials anyway).
    this.encoder = GptEncoding.getEncodingApi('o200k_base', () => ranks);
    this.ranks = ranks;
    this.bytesCache = new Array<Uint8Array | undefined>(VOCAB_SIZE);
  }

  /** Encodes text as ordinary characters only: special-token texts become their plain BPE pieces. */
  encodeOrdinary(text: string): number[] {
    if (text.length === 0) return [];
    return this.encoder.encode(text, NO_SPECIALS);
  }

  /**
   * Encodes text. Special-token texts listed in opts.allowSpecial become their ids; any other special-token
   * text throws (so user text cannot smuggle structure in by accident; encodeOrdinary() encodes it as text).
   */
  encode(text: string, opts: EncodeOptions = {}): number[] {
    const allow = opts.allowSpecial ?? false;
    const out: number[] = [];
    let last = 0;
    for (const m of text.matchAll(SPECIAL_PATTERN)) {
      const id = specialTextToId(m[0]);
      if (id === undefined) continue; // looks like one (`<|foo|>`) but is not: ordinary text
      const allowed = allow === true || (allow !== false && allow.has(m[0]));
      if (!allowed) {
        throw new Error(
          `encode: text contains the special token ${m[0]} at offset ${m.index}; pass { allowSpecial: true } ` +
            `for rendered harmony text, or use encodeOrdinary() to encode it as plain characters`,
        );
      }
      if (m.index! > last) out.push(...this.encodeOrdinary(text.slice(last, m.index)));
      out.push(id);
      last = m.index! + m[0].length;
    }
    if (last < text.length) out.push(...this.encodeOrdinary(last === 0 ? text : text.slice(last)));
    return out;
  }

  /** The bytes of one token (a special token's bytes are its `<|name|>` text). Throws on ids outside the vocab. */
  tokenBytes(id: number): Uint8Array {
    const cached = this.bytesCache[id];
    if (cached !== undefined) return cached;
    if (!Number.isInteger(id) || id < 0 || id >= VOCAB_SIZE) {
      throw new RangeError(`HarmonyTokenizer: token id ${id} is outside the vocabulary [0, ${VOCAB_SIZE})`);
    }
    let bytes: Uint8Array;
    if (id < NUM_ORDINARY_TOKENS) {
      const r = this.ranks[id]!;
      bytes = typeof r === 'string' ? this.utf8.encode(r) : Uint8Array.from(r);
    } else {
      bytes = this.utf8.encode(specialIdToText(id)!);
    }
    this.bytesCache[id] = bytes;
    return bytes;
  }

  /** Decodes ids to text (invalid UTF-8, e.g. a truncated multi-byte character, becomes U+FFFD). */
  decode(ids: Iterable<number>, opts: DecodeOptions = {}): string {
    const parts: Uint8Array[] = [];
    let total = 0;
    for (const id of ids) {
      if (opts.skipSpecialTokens && isSpecialId(id)) continue;
      const b = this.tokenBytes(id);
      parts.push(b);
      total += b.length;
    }
    const buf = new Uint8Array(total);
    let off = 0;
    for (const b of parts) {
      buf.set(b, off);
      off += b.length;
    }
    return new TextDecoder('utf-8').decode(buf);
  }

  /** Whether an id is a special token (structural or reserved). */
  isSpecial(id: number): boolean {
    return isSpecialId(id);
  }

  /** The id of a special token text (`'<|end|>'` -> 200007), or undefined. */
  specialId(text: string): number | undefined {
    return specialTextToId(text);
  }

  /** Text of one token, for display (a lone partial UTF-8 byte shows as U+FFFD). */
  idToString(id: number): string {
    return specialIdToText(id) ?? new TextDecoder('utf-8').decode(this.tokenBytes(id));
  }
}

let singleton: HarmonyTokenizer | undefined;

/** The process-wide o200k_harmony tokenizer, built on first use. */
export function getTokenizer(): HarmonyTokenizer {
  singleton ??= new HarmonyTokenizer();
  return singleton;
}
