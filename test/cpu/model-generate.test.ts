// Generation with the KV cache against recomputation without it; sampling options; padded vs packed batches.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadModel } from '../../src/model/index.ts';
import type { GptOssModel } from '../../src/model/gptoss.ts';
import { packSequences, packPadded, unpackToPadded, disposeBatch } from '../../src/model/batch.ts';
import { generate } from '../../src/inference/generate.ts';
import { FIXTURE_DIR } from '../helpers/fixtures.ts';

function prompts(): number[][] {
  let s = 12345;
  const rnd = (): number => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) >>> 8) % 250;
  return [5, 11, 3].map((n) => Array.from({ length: n }, rnd));
}

/** Greedy next token by a full forward over `seq` (no cache): argmax of the last row, ties to the lowest id. */
function recomputeNext(model: GptOssModel, seq: number[]): { token: number; logprob: number } {
  const b = packSequences([seq], model.device);
  const r = model.forward(b, { returnLogits: true });
  const all = r.logits!.toFloat32();
  const V = model.config.vocabSize;
  const row = all.subarray((seq.length - 1) * V, seq.length * V);
  let best = 0;
  for (let v = 1; v < V; v++) if (row[v]! > row[best]!) best = v;
  let m = -Infinity;
  for (const z of row) m = Math.max(m, z);
  let sum = 0;
  for (const z of row) sum += Math.exp(z - m);
  disposeBatch(b);
  for (const t of [r.logits!, r.logprobs, r.entropy]) t.dispose();
  return { token: best, logprob: row[best]! - m - Math.log(sum) };
}

test('greedy generation with the KV cache equals recomputation without it (crossing the sliding window)', async () => {
  const model = await loadModel(FIXTURE_DIR, { device: 'cpu' });
  const ps = prompts();
  const out = generate(model, ps, { maxNewTokens: 14, temperature: 0, stopTokens: [] });
  assert.equal(out.length, 3);
  for (let i = 0; i < ps.length; i++) {
    assert.equal(out[i]!.tokens.length, 14);
    assert.equal(out[i]!.finishReason, 'length');
    const seq = [...ps[i]!];
    for (let t = 0; t < 14; t++) {
      const ref = recomputeNext(model, seq);
      assert.equal(out[i]!.tokens[t], ref.token, `prompt ${i} step ${t}`);
      assert.ok(Number.isFinite(out[i]!.logprobs[t]!) && out[i]!.logprobs[t]! <= 1e-6);
      seq.push(out[i]!.tokens[t]!);
    }
  }
  model.dispose();
});

test('sampling is seeded; stop tokens end a sequence; max new tokens caps it', async () => {
  const model = await loadModel(FIXTURE_DIR, { device: 'cpu' });
  const ps = prompts();
  const a = generate(model, ps, { maxNewTokens: 8, temperature: 1, topP: 0.9, topK: 50, seed: 7, stopTokens: [] });
  const b = generate(model, ps, { maxNewTokens: 8, temperature: 1, topP: 0.9, topK: 50, seed: 7, stopTokens: [] });
  assert.deepEqual(a, b);
  const c = generate(model, ps, { maxNewTokens: 8, temperature: 1, seed: 8, stopTokens: [] });
  assert.notDeepEqual(a.map((r) => r.tokens), c.map((r) => r.tokens));
  // GRPO samples n completions of one prompt in one batch: they must differ.
  const same = generate(model, [ps[1]!, ps[1]!, ps[1]!, ps[1]!], { maxNewTokens: 8, temperature: 1, seed: 3, stopTokens: [] });
  assert.ok(new Set(same.map((r) => r.tokens.join(','))).size > 1, 'identical prompts in one batch sampled identically');
  const greedy = generate(model, ps, { maxNewTokens: 6, temperature: 0, stopTokens: [] });
  const stopTok = greedy[0]!.tokens[2]!;
  const s = generate(model, ps, { maxNewTokens: 6, temperature: 0, stopTokens: [stopTok] });
  const firstStop = greedy[0]!.tokens.indexOf(stopTok);
  assert.deepEqual(s[0]!.tokens, greedy[0]!.tokens.slice(0, firstStop + 1));
  assert.equal(s[0]!.finishReason, 'stop');
  model.dispose();
});

test('tokenLogprobs: packed, padded and one-by-one agree', async () => {
  const model = await loadModel(FIXTURE_DIR, { device: 'cpu' });
  const ps = prompts();
  const lp = model.tokenLogprobs(ps);
  assert.deepEqual(lp.map((x) => x.length), ps.map((p) => p.length - 1));
  for (let i = 0; i < ps.length; i++) {
    const one = model.tokenLogprobs([ps[i]!])[0]!;
    for (let t = 0; t < one.length; t++) assert.ok(Math.abs(one[t]! - lp[i]![t]!) < 1e-5);
  }
  const S = 11;
  const padded = new Int32Array(3 * S).fill(255);
  ps.forEach((p, i) => padded.set(p, i * S));
  const pb = packPadded(padded, 3, S, ps.map((p) => p.length), 'cpu');
  const r = model.forward(pb);
  const v = r.logprobs.toFloat32();
  for (let i = 0; i < ps.length; i++) for (let t = 0; t < ps[i]!.length - 1; t++) assert.ok(Math.abs(v[pb.offsets[i]! + t]! - lp[i]![t]!) < 1e-5);
  const back = unpackToPadded(pb, v, S, NaN);
  assert.equal(back.length, 3 * S);
  assert.equal(back[1 * S + 0], v[pb.offsets[1]!]);
  assert.ok(Number.isNaN(back[2 * S + 3]!));
  disposeBatch(pb);
  model.dispose();
});
