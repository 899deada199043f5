// The synthetic arithmetic task: deterministic per seed, correct answers at every difficulty, GSM8K-format
// solutions and records, and short harmony reference completions that the rewards accept.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  SYNTHETIC_PRESETS,
  extractGsm8kAnswer,
  generateSynthetic,
  mulberry32,
  readPromptDataset,
  syntheticCompletion,
  syntheticCompletionText,
  syntheticRecord,
  writeJsonl,
  type SyntheticExample,
} from '../../src/data/index.ts';
import { gsm8kReward, harmonyReward } from '../../src/reward/index.ts';
import { finalText, getTokenizer, parseText, renderCompletion } from '../../src/tokenizer/index.ts';

/** Re-checks every reasoning line `a op b = c` and that the chain ends at the ground truth. */
function checkArithmetic(ex: SyntheticExample): void {
  const lines = ex.reasoning.split('\n');
  let prev: number | undefined;
  for (const line of lines) {
    const m = /^(-?\d+) ([+\-*]) (-?\d+) = (-?\d+)$/.exec(line);
    assert.ok(m, `reasoning line ${JSON.stringify(line)}`);
    const [a, op, b, c] = [Number(m[1]), m[2], Number(m[3]), Number(m[4])];
    assert.equal(op === '+' ? a + b : op === '-' ? a - b : a * b, c, line);
    if (prev !== undefined) assert.equal(a, prev, 'each step starts from the previous result');
    prev = c;
  }
  assert.equal(String(prev), ex.groundTruth);
  assert.equal(ex.answer, `${ex.reasoning}\n#### ${ex.groundTruth}`);
  assert.equal(extractGsm8kAnswer(ex.answer), ex.groundTruth);
  assert.equal(gsm8kReward(ex.answer, ex.groundTruth).reward, 1);
}

test('mulberry32 is deterministic and uniform enough', () => {
  const a = mulberry32(42);
  const b = mulberry32(42);
  const xs = Array.from({ length: 1000 }, () => a());
  assert.deepEqual(xs, Array.from({ length: 1000 }, () => b()));
  assert.ok(xs.every((x) => x >= 0 && x < 1));
  const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
  assert.ok(Math.abs(mean - 0.5) < 0.05, `mean ${mean}`);
});

test('generation is deterministic per (seed, split) and differs across seeds and splits', () => {
  const a = generateSynthetic({ count: 50, seed: 7 });
  assert.deepEqual(a, generateSynthetic({ count: 50, seed: 7 }));
  assert.notDeepEqual(a, generateSynthetic({ count: 50, seed: 8 }));
  assert.notDeepEqual(a.map((x) => x.question), generateSynthetic({ count: 50, seed: 7, split: 'test' }).map((x) => x.question));
  // A longer run extends a shorter one.
  assert.deepEqual(generateSynthetic({ count: 80, seed: 7 }).slice(0, 50), a);
  assert.deepEqual(a.map((x) => x.index), [...Array(50).keys()]);
});

test('tiny: single-digit additions with a fixed template, learnable short answers', () => {
  const xs = generateSynthetic({ count: 500, seed: 1 });
  const answers = new Set<string>();
  for (const ex of xs) {
    assert.match(ex.question, /^What is \d \+ \d\?$/);
    assert.equal(ex.prompt, ex.question); // no long instruction for the tiny task
    checkArithmetic(ex);
    assert.ok(Number(ex.groundTruth) >= 0 && Number(ex.groundTruth) <= 18);
    answers.add(ex.groundTruth);
  }
  assert.equal(answers.size, 19, 'every sum 0..18 occurs');
  // The reference completion is a handful of tokens.
  const ids = renderCompletion(syntheticCompletion(xs[0]!)).tokens();
  assert.ok(ids.length <= 24, `${ids.length} tokens`);
});

test('every preset produces correct arithmetic; word problems and the GSM8K instruction', () => {
  for (const name of Object.keys(SYNTHETIC_PRESETS) as Array<keyof typeof SYNTHETIC_PRESETS>) {
    const d = SYNTHETIC_PRESETS[name];
    for (const ex of generateSynthetic({ count: 300, seed: 3, difficulty: name })) {
      checkArithmetic(ex);
      assert.equal(ex.reasoning.split('\n').length, d.steps);
      if (!d.allowNegative) assert.ok(!ex.reasoning.includes('= -'), `${name}: ${ex.reasoning}`);
      if (d.style === 'word') assert.match(ex.question, /^\w+ has \d+ \w+\..* How many \w+ does \w+ have now\?$/);
      if (name !== 'tiny') assert.ok(ex.prompt.endsWith(' Let\'s think step by step and output the final answer after "####".'));
    }
  }
  // A custom difficulty with negatives allowed, plain style, several steps.
  const custom = generateSynthetic({
    count: 200,
    seed: 5,
    difficulty: { minOperand: 0, maxOperand: 30, steps: 3, ops: ['-', '*'], style: 'plain', allowNegative: true },
    instruction: true,
  });
  for (const ex of custom) {
    checkArithmetic(ex);
    assert.match(ex.question, /^What is \(\(\d+ [-*] \d+\) [-*] \d+\) [-*] \d+\?$/);
  }
  assert.ok(custom.some((ex) => ex.groundTruth.startsWith('-')), 'negatives occur');
  assert.throws(() => generateSynthetic({ count: 1, difficulty: 'extreme' as 'tiny' }), /unknown difficulty/);
  assert.throws(
    () => generateSynthetic({ count: 1, difficulty: { minOperand: 5, maxOperand: 1, steps: 1, ops: ['+'], style: 'plain', allowNegative: false } }),
    /bad difficulty/,
  );
});

test('reference completions are harmony that the rewards accept', () => {
  const tok = getTokenizer();
  const h = harmonyReward();
  for (const ex of generateSynthetic({ count: 100, seed: 2, difficulty: 'medium' })) {
    const text = syntheticCompletionText(ex);
    assert.ok(text.startsWith('<|channel|>analysis<|message|>'));
    assert.ok(text.endsWith(`<|start|>assistant<|channel|>final<|message|>#### ${ex.groundTruth}<|return|>`));
    const parsed = parseText(text);
    assert.deepEqual(parsed.errors, []);
    assert.equal(finalText(parsed), `#### ${ex.groundTruth}`);
    assert.equal(h(text, ex.groundTruth).reward, 1);
    assert.equal(h('', ex.groundTruth, { completionTokens: tok.encode(text, { allowSpecial: true }) }).reward, 1);
    assert.equal(gsm8kReward(text, ex.groundTruth).reward, 1);
  }
  const ex = generateSynthetic({ count: 1 })[0]!;
  assert.equal(syntheticCompletionText(ex, { reasoning: false }), `<|channel|>final<|message|>#### ${ex.groundTruth}<|return|>`);
});

test('records have the GSM8K dataset shape', () => {
  const xs = generateSynthetic({ count: 5, seed: 9, split: 'test' });
  const recs = xs.map(syntheticRecord);
  assert.deepEqual(recs[0], {
    data_source: 'skyrl-gptoss/synthetic-arithmetic',
    prompt: [{ role: 'user', content: xs[0]!.prompt }],
    env_class: 'gsm8k',
    reward_spec: { method: 'rule', ground_truth: xs[0]!.groundTruth },
    extra_info: { split: 'test', index: 0, answer: xs[0]!.answer, question: xs[0]!.question },
  });
  const file = join(mkdtempSync(join(tmpdir(), 'gptoss-syn-')), 'v.jsonl');
  writeJsonl(file, recs);
  assert.deepEqual(readPromptDataset(file), recs);
});
