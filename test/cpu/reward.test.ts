// Reward rules on a table of tricky completions: the peer's strict rule, its normalised variant, the flexible
// rule (normalised and peer), and the harmony-aware rule (final channel only).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  canonicalNumber,
  flexibleReward,
  getRewardFn,
  gsm8kReward,
  harmonyReward,
  strictReward,
  type RewardFn,
  type RewardResult,
} from '../../src/reward/index.ts';
import { completionMessages, getTokenizer, parseText, renderCompletion } from '../../src/tokenizer/index.ts';

type Row = [completion: string, truth: string, reward: number, extracted: string | undefined];

function check(fn: RewardFn, rows: Row[], label: string): void {
  for (const [text, truth, reward, extracted] of rows) {
    const r = fn(text, truth);
    assert.equal(r.reward, reward, `${label}: ${JSON.stringify(text)} vs ${truth} -> ${JSON.stringify(r)}`);
    assert.equal(r.extracted, extracted, `${label}: ${JSON.stringify(text)} extracted`);
  }
}

test('strict rule (the peer): first "#### N", commas and $ stripped, exact string match', () => {
  check(gsm8kReward, [
    ['She sold 48 + 24 = 72 clips.\n#### 72', '72', 1, '72'],
    ['#### 1,234', '1234', 1, '1234'],
    ['#### -5', '-5', 1, '-5'],
    ['#### 18 dollars', '18', 1, '18'],
    ['#### 72%', '72', 1, '72'],
    ['#### 5\n#### 7', '7', 0, '5'], // the first one counts
    ['#### 72.', '72', 0, '72.'], // trailing period kept by the peer
    ['#### 3.50', '3.5', 0, '3.50'],
    ['#### $18', '18', 0, undefined], // the peer pattern needs a digit, sign, comma or point after "#### "
    ['####72', '72', 0, undefined],
    ['The answer is 72', '72', 0, undefined],
    ['#### ,', '72', 0, ''],
  ], 'strict');
  assert.deepEqual(gsm8kReward('#### 9', '9'), { reward: 1, extracted: '9', reason: 'match' });
  assert.deepEqual(gsm8kReward('#### 8', '9'), { reward: 0, extracted: '8', reason: 'mismatch' });
  assert.deepEqual(gsm8kReward('nothing', '9'), { reward: 0, reason: 'no-answer' });
  // Score and format score.
  const scored = strictReward({ score: 2, formatScore: 0.1 });
  assert.equal(scored('#### 9', '9').reward, 2);
  assert.equal(scored('#### 8', '9').reward, 0.1);
  assert.equal(scored('no', '9').reward, 0);
});

test('strict rule, normalised: currency, signs, trailing periods, decimals compared by value', () => {
  check(strictReward({ normalize: true }), [
    ['#### $18', '18', 1, '18'],
    ['#### 72.', '72', 1, '72'],
    ['#### 3.50', '3.5', 1, '3.5'],
    ['####72', '72', 1, '72'],
    ['#### $1,234.50', '1234.5', 1, '1234.5'],
    ['#### -$5', '-5', 1, '-5'],
    ['#### $-5', '-5', 1, '-5'],
    ['#### \u22127', '-7', 1, '-7'],
    ['#### -0', '0', 1, '0'],
    ['#### 0.0', '0', 1, '0'],
    ['#### 007', '7', 1, '7'],
    ['#### 18 dollars.', '18', 1, '18'],
    ['#### 1,000', '1,000', 1, '1000'], // the truth is normalised too
    ['#### .5', '0.5', 1, '0.5'],
    ['#### 5\n#### 7', '7', 0, '5'],
    ['#### five', '5', 0, undefined],
  ], 'strict-normalized');
});

test('flexible rule: the last number, normalised', () => {
  check(flexibleReward(), [
    ['So she has 72 apples.', '72', 1, '72'],
    ['The total is $1,234.50.', '1234.5', 1, '1234.5'],
    ['x = -5', '-5', 1, '-5'],
    ['5-3=2', '2', 1, '2'],
    ['from 10-3 we get', '3', 1, '3'], // a minus after a digit is an operator
    ['well-5 maybe', '5', 1, '5'], // ... and after a letter a hyphen
    ['The temperature is -12 degrees', '-12', 1, '-12'],
    ['items 3,4,5', '5', 1, '5'], // not a thousands separator
    ['It costs 12 dollars per 3 hours', '12', 0, '3'],
    ['about .5 of it', '0.5', 1, '0.5'],
    ['#### 72\n\nThe end.', '72', 1, '72'],
    ['In 2024 she had 7.', '7', 1, '7'],
    ['1,234,567 people', '1234567', 1, '1234567'],
    ['no numbers at all', '1', 0, undefined],
  ], 'flexible');
});

test('flexible rule, peer variant: last "-?[0-9.,]+" compared as is', () => {
  check(flexibleReward({ normalize: false }), [
    ['So 72', '72', 1, '72'],
    ['answer is 72.', '72', 0, '72.'],
    ['1,234', '1234', 0, '1,234'],
    ['ends with a period 5 .', '5', 1, '5'],
    ['none', '1', 0, undefined],
  ], 'flexible-peer');
});

const tok = getTokenizer();
const completionText = (analysis: string | null, final: string, end: 'return' | 'none' = 'return') => {
  const msgs = completionMessages(analysis, final);
  msgs[msgs.length - 1]!.end = end;
  return renderCompletion(msgs).text;
};

test('harmony rule: the answer must be in the final channel', () => {
  const h = harmonyReward();
  const text = completionText('Scratch: maybe #### 5? No: 48 + 24 = 72.', '#### 72');
  // The peer's strict rule takes the first #### anywhere (here in the analysis); the harmony rule does not.
  assert.equal(gsm8kReward(text, '72').reward, 0);
  assert.deepEqual(h(text, '72'), { reward: 1, extracted: '72', reason: 'match' });
  // From token ids, and from a parsed completion.
  const ids = tok.encode(text, { allowSpecial: true });
  assert.equal(h('', '72', { completionTokens: ids }).reward, 1);
  assert.equal(h('', '72', { parsed: parseText(text) }).reward, 1);
  // Decoded with special tokens skipped.
  assert.equal(h(tok.decode(ids, { skipSpecialTokens: true }), '72').reward, 1);
  assert.equal(h('analysisthinking #### 5', '5').reason, 'no-final-channel');
  assert.equal(h('final#### 5', '5').reward, 1);
  // No final channel: truncated inside the analysis.
  assert.deepEqual(h('<|channel|>analysis<|message|>48 + 24 = 72 so #### 72', '72'), { reward: 0, reason: 'no-final-channel' });
  // A final message cut off before <|return|>: scored, unless requireComplete.
  const cut = completionText('48 + 24 = 72', '#### 72', 'none');
  assert.equal(h(cut, '72').reward, 1);
  assert.deepEqual(harmonyReward({ requireComplete: true })(cut, '72'), { reward: 0, reason: 'truncated-final' });
  // Plain text without harmony structure.
  assert.deepEqual(h('#### 72', '72'), { reward: 0, reason: 'no-final-channel' });
  assert.equal(harmonyReward({ unstructured: 'whole-text' })('#### 72', '72').reward, 1);
  // Normalised by default; flexible inside the final channel on request.
  assert.equal(h(completionText(null, '#### $72.'), '72').reward, 1);
  assert.equal(h(completionText(null, 'The answer is 72.'), '72').reason, 'no-answer');
  assert.equal(harmonyReward({ inner: 'flexible' })(completionText('7 + 8', 'The answer is 72.'), '72').reward, 1);
  // Malformed structure is tolerated: the final answer after a missing <|end|><|start|>assistant still counts.
  assert.equal(h('<|channel|>analysis<|message|>x<|channel|>final<|message|>#### 72<|return|>', '72').reward, 1);
});

test('rewards by name, and the RewardFn interface', () => {
  assert.equal(getRewardFn('strict')('#### 72.', '72').reward, 0);
  assert.equal(getRewardFn({ name: 'strict', normalize: true })('#### 72.', '72').reward, 1);
  assert.equal(getRewardFn('flexible')('it is 72.', '72').reward, 1);
  assert.equal(getRewardFn({ name: 'harmony', inner: 'flexible' })(completionText(null, 'it is 72'), '72').reward, 1);
  assert.throws(() => getRewardFn('exact' as 'strict'), /unknown reward "exact"/);
  // Anyone can implement the interface (e.g. a length penalty on top of the strict rule).
  const shaped: RewardFn = (text, truth, ctx): RewardResult => {
    const base = gsm8kReward(text, truth, ctx);
    return { ...base, reward: base.reward - 0.001 * (ctx?.completionTokens?.length ?? 0) };
  };
  assert.equal(shaped('#### 3', '3', { completionTokens: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] }).reward, 0.99);
});

test('canonical numbers', () => {
  const cases: Array<[string, string | undefined]> = [
    ['72', '72'],
    ['+72', '72'],
    ['0072.500', '72.5'],
    ['-0.0', '0'],
    ['1,234', '1234'],
    ['$ 5', '5'],
    ['72.', '72'],
    ['.25', '0.25'],
    ['\u22123', '-3'],
    ['', undefined],
    ['.', undefined],
    ['1.2.3', undefined],
    ['abc', undefined],
  ];
  for (const [s, want] of cases) assert.equal(canonicalNumber(s), want, s);
});
