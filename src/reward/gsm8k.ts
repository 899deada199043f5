// gsm8k.ts: rule-based rewards for `#### N` answers (GSM8K and the synthetic task).
//
// - strict (the peer's rule, the default): the first `#### N` in the completion, N matching `-?[0-9.,]+`, with
//   commas and `$` removed, must equal the ground truth as a string: 1.0, else 0 (also 0 when there is none).
//   `{normalize: true}` also accepts `####72`, `#### $1,234.50`, `#### 72.` and compares numbers by value
//   (`3.50` = `3.5`, `-0` = `0`).
// - flexible: the last number anywhere in the completion. Normalised by default (thousands separators only in
//   groups of three, trailing periods and units ignored, `5-3` read as 5 and 3); `{normalize: false}` is the
//   peer's flexible rule (last `-?[0-9.,]+` match that is not `.`, compared as is).
// - harmony: the answer is read from the final channel of a harmony completion only (analysis scratch work does
//   not count), then scored with the strict (default) or flexible rule, normalised by default.
import { finalMessage, parseText, parseTokens, type ParseResult } from '../tokenizer/parser.ts';

/** What a reward function may use besides the completion text. */
export interface RewardContext {
  /** The completion's token ids (the harmony rule parses them instead of the text). */
  completionTokens?: readonly number[];
  /** An already parsed completion. */
  parsed?: ParseResult;
  dataSource?: string;
  extraInfo?: Readonly<Record<string, unknown>>;
}

export type RewardReason = 'match' | 'mismatch' | 'no-answer' | 'no-final-channel' | 'truncated-final';

export interface RewardResult {
  reward: number;
  /** The answer read from the completion, when one was found (after normalisation). */
  extracted?: string;
  reason: RewardReason;
}

/** A reward function: the trainer accepts any implementation. */
export type RewardFn = (completionText: string, groundTruth: string, ctx?: RewardContext) => RewardResult;

export interface RuleOptions {
  /** Reward of a correct answer (default 1). */
  score?: number;
  /** Reward of a well-formed but wrong answer (default 0). */
  formatScore?: number;
  normalize?: boolean;
}

/**
 * A number's canonical decimal string: commas, spaces, `$` and a leading `+` removed, the Unicode minus read as
 * `-`, leading zeros and trailing fractional zeros dropped, `-0` -> `0`. Undefined when it is not a number.
 */
export function canonicalNumber(s: string): string | undefined {
  let t = s.trim().replace(/[\s,$€£]/g, '').replace(/\u2212/g, '-');
  if (t.endsWith('.')) t = t.slice(0, -1);
  const m = /^([+-]?)(\d*)(?:\.(\d*))?$/.exec(t);
  if (!m || (m[2] === '' && (m[3] ?? '') === '')) return undefined;
  const int = m[2]!.replace(/^0+(?=\d)/, '') || '0';
  const frac = (m[3] ?? '').replace(/0+$/, '');
  const body = frac ? `${int}.${frac}` : int;
  const zero = /^0(\.0*)?$/.test(body);
  return m[1] === '-' && !zero ? `-${body}` : body;
}

/** The peer's strict extraction: first `#### N`, commas and `$` removed. */
export function extractStrict(text: string): string | undefined {
  const m = /#### (-?[0-9.,]+)/.exec(text);
  return m ? m[1]!.replace(/,/g, '').replace(/\$/g, '') : undefined;
}

/** Normalised strict extraction: first `####` followed by a number (sign, currency, separators allowed). */
export function extractStrictNormalized(text: string): string | undefined {
  const m = /####\s*([+\-\u2212]?)\s*[$€£]?\s*([+\-\u2212]?)(\d[\d,]*(?:\.\d+)?|\.\d+)/.exec(text);
  if (!m) return undefined;
  const neg = m[1] === '-' || m[1] === '\u2212' || m[2] === '-' || m[2] === '\u2212';
  return canonicalNumber(`${neg ? '-' : ''}${m[3]}`);
}

/** The peer's flexible extraction: the last `-?[0-9.,]+` that is not `.`. */
export function extractFlexible(text: string): string | undefined {
  const all = text.match(/-?[0-9.,]+/g);
  if (!all) return undefined;
  for (let i = all.length - 1; i >= 0; i--) if (all[i] !== '' && all[i] !== '.') return all[i];
  return undefined;
}

// A number: optional sign, digits with comma groups of exactly three (else plain digits), optional decimals;
// a trailing period is not part of it. A `-` right after a letter or digit is an operator or a hyphen, not a sign.
const NUMBER = /[-\u2212]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|[-\u2212]?\.\d+/g;

/** Normalised flexible extraction: the last number in the text. */
export function extractFlexibleNormalized(text: string): string | undefined {
  let last: RegExpMatchArray | undefined;
  for (const m of text.matchAll(NUMBER)) last = m;
  if (!last) return undefined;
  let num = last[0];
  const before = last.index! > 0 ? text[last.index! - 1]! : '';
  if ((num[0] === '-' || num[0] === '\u2212') && /[\p{L}\p{N}]/u.test(before)) num = num.slice(1);
  return canonicalNumber(num);
}

function score(extracted: string | undefined, groundTruth: string, opts: RuleOptions, normalize: boolean): RewardResult {
  if (extracted === undefined) return { reward: 0, reason: 'no-answer' };
  const truth = normalize ? (canonicalNumber(groundTruth) ?? groundTruth.trim()) : groundTruth;
  const ok = extracted === truth;
  return { reward: ok ? (opts.score ?? 1) : (opts.formatScore ?? 0), extracted, reason: ok ? 'match' : 'mismatch' };
}

/** The strict rule (peer-exact unless normalize is set). */
export function strictReward(opts: RuleOptions = {}): RewardFn {
  const normalize = opts.normalize ?? false;
  return (text, truth) => score(normalize ? extractStrictNormalized(text) : extractStrict(text), truth, opts, normalize);
}

/** The flexible rule: last number (normalised unless normalize is false). */
export function flexibleReward(opts: RuleOptions = {}): RewardFn {
  const normalize = opts.normalize ?? true;
  return (text, truth) => score(normalize ? extractFlexibleNormalized(text) : extractFlexible(text), truth, opts, normalize);
}

export interface HarmonyRuleOptions extends RuleOptions {
  /** How to read the final channel's answer (default 'strict'). */
  inner?: 'strict' | 'flexible';
  /** Score 0 when the final message was cut off (no `<|return|>`/`<|end|>`); default false. */
  requireComplete?: boolean;
  /**
   * When the completion has no harmony structure at all: 'zero' (default) scores 0 with reason
   * 'no-final-channel'; 'whole-text' scores the whole text.
   */
  unstructured?: 'zero' | 'whole-text';
}

/**
 * The final-channel text of a completion, from (in order) ctx.parsed, ctx.completionTokens, text with special
 * tokens spelled out, or text decoded with special tokens skipped (`analysis...assistantfinal...`).
 */
export function finalChannelText(text: string, ctx: RewardContext = {}): { text: string; complete: boolean } | 'unstructured' | undefined {
  let parsed = ctx.parsed;
  if (!parsed && ctx.completionTokens) parsed = parseTokens(ctx.completionTokens);
  if (!parsed && /<\|(?:channel|message|start)\|>/.test(text)) parsed = parseText(text);
  if (parsed) {
    const m = finalMessage(parsed);
    return m ? { text: m.content, complete: m.end !== 'none' } : undefined;
  }
  // Decoded with special tokens skipped, the structure survives as glued words.
  const i = text.lastIndexOf('assistantfinal');
  if (i >= 0) return { text: text.slice(i + 'assistantfinal'.length), complete: true };
  if (text.startsWith('final')) return { text: text.slice('final'.length), complete: true };
  if (text.startsWith('analysis')) return undefined;
  return 'unstructured';
}

/** The harmony-aware rule: the answer must be in the final channel. */
export function harmonyReward(opts: HarmonyRuleOptions = {}): RewardFn {
  const normalize = opts.normalize ?? true;
  const inner = (opts.inner ?? 'strict') === 'strict' ? strictReward({ ...opts, normalize }) : flexibleReward({ ...opts, normalize });
  return (text, truth, ctx) => {
    const f = finalChannelText(text, ctx);
    if (f === 'unstructured') {
      if ((opts.unstructured ?? 'zero') === 'whole-text') return inner(text, truth);
      return { reward: 0, reason: 'no-final-channel' };
    }
    if (f === undefined) return { reward: 0, reason: 'no-final-channel' };
    if (!f.complete && opts.requireComplete) return { reward: 0, reason: 'truncated-final' };
    return inner(f.text, truth);
  };
}

export type RewardName = 'strict' | 'flexible' | 'harmony';
export const REWARD_NAMES: readonly RewardName[] = ['strict', 'flexible', 'harmony'];

/** A reward function by name (config: `reward: strict` or `{name: harmony, inner: flexible}`). */
export function getRewardFn(spec: RewardName | ({ name: RewardName } & HarmonyRuleOptions)): RewardFn {
  const { name, ...opts } = typeof spec === 'string' ? { name: spec } : spec;
  switch (name) {
    case 'strict':
      return strictReward(opts);
    case 'flexible':
      return flexibleReward(opts);
    case 'harmony':
      return harmonyReward(opts);
    default:
      throw new Error(`unknown reward ${JSON.stringify(name)} (known: ${REWARD_NAMES.join(', ')})`);
  }
}

/** The peer's GSM8K reward (strict, exact string match): the default of the trainer. */
export const gsm8kReward: RewardFn = strictReward();
