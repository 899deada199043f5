// synthetic.ts: a seeded arithmetic task in the GSM8K format, for tests and for the CPU demonstration that
// GRPO learns. Each example has a question, a worked solution ending with `#### N` (like a GSM8K answer), the
// ground truth N, and a reference harmony completion for SFT:
//   <|channel|>analysis<|message|>3 + 4 = 7<|end|><|start|>assistant<|channel|>final<|message|>#### 7<|return|>
// The 'tiny' preset (single-digit additions, a fixed sentence template, one-step reasoning, short answers) is
// learnable by a very small model; harder presets add operations, steps and word problems.
import { completionMessages, renderCompletion, type Message } from '../tokenizer/harmony.ts';
import { gsm8kPrompt } from './gsm8k.ts';
import type { PromptRecord } from './dataset.ts';

export const SYNTHETIC_DATA_SOURCE = 'skyrl-gptoss/synthetic-arithmetic';

export type SyntheticOp = '+' | '-' | '*';

export interface SyntheticDifficulty {
  /** Operands are drawn uniformly from [minOperand, maxOperand]. */
  minOperand: number;
  maxOperand: number;
  /** Number of operations (1: `a + b`; 2: `(a + b) - c`; ...). */
  steps: number;
  ops: readonly SyntheticOp[];
  /** 'plain': "What is 3 + 4?"; 'word': a short story about a person and objects. */
  style: 'plain' | 'word';
  /** Allow negative intermediate results (otherwise subtractions are drawn so the result stays >= 0). */
  allowNegative: boolean;
}

export const SYNTHETIC_PRESETS: Readonly<Record<'tiny' | 'easy' | 'medium' | 'hard', SyntheticDifficulty>> = {
  tiny: { minOperand: 0, maxOperand: 9, steps: 1, ops: ['+'], style: 'plain', allowNegative: false },
  easy: { minOperand: 1, maxOperand: 20, steps: 1, ops: ['+', '-'], style: 'word', allowNegative: false },
  medium: { minOperand: 1, maxOperand: 12, steps: 2, ops: ['+', '-', '*'], style: 'word', allowNegative: false },
  hard: { minOperand: 1, maxOperand: 99, steps: 3, ops: ['+', '-', '*'], style: 'word', allowNegative: false },
};

export interface SyntheticOptions {
  /** Number of examples. */
  count: number;
  /** Default 0. Train and test of the same seed draw from different streams. */
  seed?: number;
  split?: 'train' | 'test';
  /** A preset name or a full difficulty (default 'tiny'). */
  difficulty?: keyof typeof SYNTHETIC_PRESETS | SyntheticDifficulty;
  /**
   * Append the GSM8K instruction (` Let's think step by step and output the final answer after "####".`) to the
   * prompt (default false for 'tiny', which keeps prompts short; true otherwise).
   */
  instruction?: boolean;
}

export interface SyntheticExample {
  split: 'train' | 'test';
  index: number;
  question: string;
  /** The prompt text (question, plus the GSM8K instruction when enabled). */
  prompt: string;
  /** Reasoning lines, one per operation (`3 + 4 = 7`). */
  reasoning: string;
  /** GSM8K-style solution: the reasoning, then `#### N`. */
  answer: string;
  groundTruth: string;
}

/** mulberry32: a small, fast, seedable PRNG (uniform in [0, 1)). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const NAMES = ['Ava', 'Ben', 'Chloe', 'Dan', 'Emma', 'Finn', 'Grace', 'Hugo', 'Iris', 'Jack', 'Kira', 'Leo', 'Maya', 'Noah', 'Olivia', 'Sam'];
const ITEMS = ['apples', 'marbles', 'stickers', 'books', 'cookies', 'pencils', 'shells', 'coins', 'cards', 'balloons'];

function apply(op: SyntheticOp, x: number, y: number): number {
  return op === '+' ? x + y : op === '-' ? x - y : x * y;
}

function opWord(op: SyntheticOp): string {
  return op === '*' ? '*' : op;
}

/** Generates `count` examples deterministically from (seed, split, difficulty). */
export function generateSynthetic(opts: SyntheticOptions): SyntheticExample[] {
  const split = opts.split ?? 'train';
  const presetName = typeof opts.difficulty === 'string' ? opts.difficulty : opts.difficulty === undefined ? 'tiny' : undefined;
  const d = presetName !== undefined ? SYNTHETIC_PRESETS[presetName] : (opts.difficulty as SyntheticDifficulty);
  if (!d) throw new Error(`generateSynthetic: unknown difficulty ${JSON.stringify(opts.difficulty)} (presets: ${Object.keys(SYNTHETIC_PRESETS).join(', ')})`);
  if (!(d.maxOperand >= d.minOperand) || d.steps < 1 || d.ops.length === 0) {
    throw new Error(`generateSynthetic: bad difficulty ${JSON.stringify(d)} (need maxOperand >= minOperand, steps >= 1, some ops)`);
  }
  const withInstruction = opts.instruction ?? presetName !== 'tiny';
  const rand = mulberry32(((opts.seed ?? 0) * 2 + (split === 'test' ? 1 : 0)) ^ 0x9e3779b9);
  const int = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const out: SyntheticExample[] = [];
  for (let index = 0; index < opts.count; index++) {
    let value = int(d.minOperand, d.maxOperand);
    const first = value;
    const steps: Array<{ op: SyntheticOp; y: number; before: number; after: number }> = [];
    for (let s = 0; s < d.steps; s++) {
      const op = pick(d.ops);
      let y = int(d.minOperand, d.maxOperand);
      if (op === '-' && !d.allowNegative && y > value) y = int(Math.min(d.minOperand, value), value);
      if (op === '*' && d.maxOperand > 12) y = int(Math.max(d.minOperand, 2), Math.max(2, Math.min(9, d.maxOperand)));
      const after = apply(op, value, y);
      steps.push({ op, y, before: value, after });
      value = after;
    }
    const reasoning = steps.map((s) => `${s.before} ${opWord(s.op)} ${s.y} = ${s.after}`).join('\n');
    let question: string;
    if (d.style === 'plain') {
      let expr = String(first);
      steps.forEach((s, i) => {
        expr = i === 0 ? `${expr} ${opWord(s.op)} ${s.y}` : `(${expr}) ${opWord(s.op)} ${s.y}`;
      });
      question = `What is ${expr}?`;
    } else {
      const name = pick(NAMES);
      const item = pick(ITEMS);
      const n = (k: number) => `${k} ${k === 1 ? item.slice(0, -1) : item}`;
      const parts = [`${name} has ${n(first)}.`];
      for (const s of steps) {
        if (s.op === '+') parts.push(`Then ${name} gets ${s.y} more ${s.y === 1 ? item.slice(0, -1) : item}.`);
        else if (s.op === '-') parts.push(`Then ${name} gives away ${n(s.y)}.`);
        else parts.push(`Then the number of ${item} ${name} has becomes ${s.y} times as many.`);
      }
      parts.push(`How many ${item} does ${name} have now?`);
      question = parts.join(' ');
    }
    const groundTruth = String(value);
    out.push({
      split,
      index,
      question,
      prompt: withInstruction ? gsm8kPrompt(question) : question,
      reasoning,
      answer: `${reasoning}\n#### ${groundTruth}`,
      groundTruth,
    });
  }
  return out;
}

/** The reference completion of an example as harmony messages (analysis = reasoning, final = `#### N`). */
export function syntheticCompletion(ex: SyntheticExample, opts: { reasoning?: boolean } = {}): Message[] {
  return completionMessages(opts.reasoning ?? true ? ex.reasoning : null, `#### ${ex.groundTruth}`);
}

/** The reference completion as text (what the model writes after `<|start|>assistant`). */
export function syntheticCompletionText(ex: SyntheticExample, opts: { reasoning?: boolean } = {}): string {
  return renderCompletion(syntheticCompletion(ex, opts)).text;
}

/** The prompt-dataset record of an example (same shape as GSM8K's; scored by the same `#### N` rules). */
export function syntheticRecord(ex: SyntheticExample): PromptRecord {
  return {
    data_source: SYNTHETIC_DATA_SOURCE,
    prompt: [{ role: 'user', content: ex.prompt }],
    env_class: 'gsm8k',
    reward_spec: { method: 'rule', ground_truth: ex.groundTruth },
    extra_info: { split: ex.split, index: ex.index, answer: ex.answer, question: ex.question },
  };
}
