// The engine against the static path and step-by-step recomputation on the fixture model (sliding window 8):
// mixed prompt lengths, outputs past the window, different finish steps, chunked prefill, requests joining
// mid-flight, preemption under a tiny pool, shared prompts, log-probs vs tokenLogprobs, bad input, sleep/wake.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadModel } from '../../src/model/index.ts';
import type { GptOssModel } from '../../src/model/gptoss.ts';
import { packSequences, disposeBatch } from '../../src/model/batch.ts';
import { generate } from '../../src/inference/generate.ts';
import { createEngine, type GenerateRequest } from '../../src/inference/engine.ts';
import { FIXTURE_DIR } from '../helpers/fixtures.ts';
import { Tensor } from '../../src/tensor.ts';

let modelP: Promise<GptOssModel> | null = null;
const fixture = (): Promise<GptOssModel> => (modelP ??= loadModel(FIXTURE_DIR, { device: 'cpu' }));

function prompts(lengths: number[], seed = 12345): number[][] {
  let s = seed;
  const rnd = (): number => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) >>> 8) % 250;
  return lengths.map((n) => Array.from({ length: n }, rnd));
}

/** Greedy continuation by full forwards without a cache (argmax of the last row, ties to the lowest id). */
function recompute(model: GptOssModel, prompt: number[], steps: number): number[] {
  const seq = [...prompt];
  const V = model.config.vocabSize;
  for (let t = 0; t < steps; t++) {
    const b = packSequences([seq], model.device);
    const r = model.forward(b, { returnLogits: true });
    const row = r.logits!.toFloat32().subarray((seq.length - 1) * V, seq.length * V);
    let best = 0;
    for (let v = 1; v < V; v++) if (row[v]! > row[best]!) best = v;
    seq.push(best);
    disposeBatch(b);
    for (const x of [r.logits!, r.logprobs, r.entropy]) x.dispose();
  }
  return seq.slice(prompt.length);
}

test('greedy: engine == static path == recomputation (mixed lengths, past the window, chunked prefill, different ends)', async () => {
  const model = await fixture();
  const ps = prompts([5, 19, 3, 11]);
  const maxNew = [14, 6, 17, 1];
  const engine = await createEngine(model, { blockSize: 4, numBlocks: 64, maxNumBatchedTokens: 7, maxNumSeqs: 3 });
  const out = await engine.generate(ps.map((prompt, i) => ({ prompt, maxNewTokens: maxNew[i]!, temperature: 0, stopTokens: [] })));
  for (let i = 0; i < ps.length; i++) {
    const s = out[i]!.samples[0]!;
    assert.equal(s.finishReason, 'length');
    const stat = generate(model, [ps[i]!], { maxNewTokens: maxNew[i]!, temperature: 0, stopTokens: [] })[0]!;
    assert.deepEqual(s.tokens, stat.tokens, `prompt ${i}: engine vs static path`);
    assert.deepEqual(s.tokens, recompute(model, ps[i]!, maxNew[i]!), `prompt ${i}: engine vs recomputation`);
    for (let t = 0; t < s.logprobs.length; t++) assert.ok(Math.abs(s.logprobs[t]! - stat.logprobs[t]!) < 2e-2, `logprob ${i}/${t}`);
  }
  const st = engine.stats();
  assert.ok(st.steps > Math.max(...maxNew), 'more steps than the longest output: chunked prefill and max_num_seqs waves');
  assert.equal(st.heldBlocks, 0);
  engine.dispose();
});

test('sampled: a request gets the same samples alone, with others joining mid-flight, and under preemption', async () => {
  const model = await fixture();
  const ps = prompts([6, 13, 9, 4], 777);
  const req = (i: number): GenerateRequest => ({ prompt: ps[i]!, maxNewTokens: 10 + 3 * i, temperature: 1, topP: 0.95, topK: 40, seed: 100 + i, stopTokens: [] });
  const alone: number[][] = [];
  {
    const e = await createEngine(model, { blockSize: 4, numBlocks: 64 });
    for (let i = 0; i < ps.length; i++) alone.push((await e.generate([req(i)]))[0]!.samples[0]!.tokens);
    e.dispose();
  }
  // Requests 2 and 3 join after request 0 and 1 produced a few tokens.
  const e = await createEngine(model, { blockSize: 4, numBlocks: 64 });
  let joined: Promise<{ samples: { tokens: number[] }[] }[]> | null = null;
  let seen = 0;
  const first = e.generate([req(0), req(1)], {
    onToken: () => {
      if (++seen === 5) joined = e.generate([req(2), req(3)]);
    },
  });
  const r01 = await first;
  assert.ok(joined, 'the second call started mid-flight');
  const r23 = await joined!;
  assert.deepEqual([...r01, ...r23].map((r) => r.samples[0]!.tokens), alone);
  e.dispose();
  // A pool of 9 blocks of 4 tokens: the longest sequence needs 7, all four together 18.
  const tiny = await createEngine(model, { blockSize: 4, numBlocks: 9 });
  const rt = await tiny.generate(ps.map((_, i) => req(i)));
  assert.ok(tiny.stats().preemptions > 0, 'the tiny pool preempts');
  assert.deepEqual(rt.map((r) => r.samples[0]!.tokens), alone);
  assert.equal(tiny.stats().heldBlocks, 0);
  tiny.dispose();
});

test('sliding-window layers keep only their window: a 3-block sliding pool gives the same tokens', async () => {
  const model = await fixture(); // window 8: blocks of 4 -> a decoding sequence holds 3 sliding blocks
  const ps = prompts([6, 23, 9], 31);
  const reqs = ps.map((prompt, i) => ({ prompt, maxNewTokens: 20 + i, temperature: 1, seed: 3 + i, stopTokens: [] }));
  const roomy = await createEngine(model, { blockSize: 4, numBlocks: 64 });
  assert.equal(roomy.stats().numSlidingBlocks, 64, 'default: capped at the full pool');
  const ref = (await roomy.generate(reqs)).map((r) => r.samples[0]!.tokens);
  roomy.dispose();
  const small = await createEngine(model, { blockSize: 4, numBlocks: 64, numSlidingBlocks: 3 });
  assert.deepEqual((await small.generate(reqs)).map((r) => r.samples[0]!.tokens), ref);
  assert.equal(small.stats().heldBlocks, 0);
  small.dispose();
  const tooSmall = await createEngine(model, { blockSize: 4, numBlocks: 64, numSlidingBlocks: 2 });
  const [bad] = await tooSmall.generate([reqs[0]!]);
  assert.match(bad!.samples[0]!.error!, /needs 3 KV blocks of 4 tokens; the sliding-window pool has 2/);
  tooSmall.dispose();
});

test('shared prompts: n samples == n requests with seeds seed..seed+n-1; the prompt is computed once either way', async () => {
  const model = await fixture();
  const [p] = prompts([21], 99);
  const e = await createEngine(model, { blockSize: 4, numBlocks: 64, enablePrefixCaching: false });
  const grouped = await e.generate([{ prompt: p!, n: 4, maxNewTokens: 8, temperature: 1, seed: 5, stopTokens: [] }]);
  const prefill = e.stats().prefillTokens;
  // One prompt prefill (21 tokens) plus, per other sample, the tokens after the last shareable full block (20, 21).
  assert.equal(prefill, 21 + 3 * 1);
  // Equal prompts of separate requests share the same way (prefix caching off: only live blocks are shared).
  const separate = await e.generate([0, 1, 2, 3].map((k) => ({ prompt: p!, maxNewTokens: 8, temperature: 1, seed: 5 + k, stopTokens: [] })));
  assert.equal(e.stats().prefillTokens - prefill, 21 + 3 * 1);
  assert.deepEqual(grouped[0]!.samples.map((s) => s.tokens), separate.map((r) => r.samples[0]!.tokens));
  assert.equal(new Set(grouped[0]!.samples.map((s) => s.tokens.join())).size, 4, 'different seeds differ');
  e.dispose();
});

test('engine log-probs == the trainer tokenLogprobs on prompt + output (temperature 1, no cuts)', async () => {
  const model = await fixture();
  const ps = prompts([7, 15], 4242);
  const e = await createEngine(model, { blockSize: 4, numBlocks: 64 });
  const out = await e.generate(ps.map((prompt, i) => ({ prompt, n: 2, maxNewTokens: 12, temperature: 1, seed: i, stopTokens: [] })));
  let worst = 0;
  out.forEach((r, i) => {
    for (const s of r.samples) {
      const full = [...ps[i]!, ...s.tokens];
      const lp = model.tokenLogprobs([full])[0]!.slice(ps[i]!.length - 1);
      s.logprobs.forEach((x, t) => (worst = Math.max(worst, Math.abs(x - lp[t]!))));
    }
  });
  assert.ok(worst < 2e-2, `max |engine - tokenLogprobs| = ${worst}`);
  e.dispose();
});

test('bad input: each request gets its own error, the others are served, nothing stays held', async () => {
  const model = await fixture();
  const e = await createEngine(model, { blockSize: 4, numBlocks: 8, maxModelLen: 40 });
  const good: GenerateRequest = { prompt: [1, 2, 3], maxNewTokens: 4, temperature: 0, stopTokens: [] };
  const bad: [GenerateRequest, RegExp][] = [
    [{ prompt: Array(40).fill(1), maxNewTokens: 1 }, /prompt has 40 tokens; the model length is 40/],
    [{ prompt: [1], n: 0, maxNewTokens: 1 }, /n must be an integer >= 1, got 0/],
    [{ prompt: [1], maxNewTokens: 0 }, /maxNewTokens must be an integer >= 1, got 0/],
    [{ prompt: [1, 256], maxNewTokens: 1 }, /prompt token 1 is 256, outside the vocabulary \[0, 256\)/],
    [{ prompt: [1, -1], maxNewTokens: 1 }, /prompt token 1 is -1/],
    [{ prompt: [], maxNewTokens: 1 }, /prompt is empty/],
    [{ prompt: Array(30).fill(1), maxNewTokens: 5 }, /a sequence of 35 tokens needs 9 KV blocks of 4 tokens; the pool has 8/],
    [{ prompt: [1], maxNewTokens: 1, topP: 0 }, /topP must be in \(0, 1\], got 0/],
  ];
  const out = await e.generate([good, ...bad.map(([r]) => r), good]);
  const expect = (await e.generate([good]))[0]!.samples[0]!.tokens;
  assert.deepEqual(out[0]!.samples[0]!.tokens, expect);
  assert.deepEqual(out.at(-1)!.samples[0]!.tokens, expect);
  bad.forEach(([, re], i) => {
    const s = out[i + 1]!.samples[0]!;
    assert.equal(s.finishReason, 'error');
    assert.match(s.error!, re);
  });
  assert.equal(e.stats().heldBlocks, 0);
  e.dispose();
  await assert.rejects(e.generate([good]), /the engine is disposed/);
});

test('sleep frees the pool, wake restores it; updateWeights takes new weights by name and drops cached blocks', async () => {
  const model = await fixture();
  const e = await createEngine(model, { blockSize: 4, numBlocks: 32 });
  const req: GenerateRequest = { prompt: prompts([9], 5)[0]!, maxNewTokens: 6, temperature: 0, stopTokens: [] };
  const before = (await e.generate([req]))[0]!.samples[0]!.tokens;
  await e.sleep();
  await assert.rejects(e.generate([req]), /asleep/);
  await e.wake();
  assert.deepEqual((await e.generate([req]))[0]!.samples[0]!.tokens, before);
  // Other weights change the output (and the prompt's cached blocks are not reused); the old ones, given as f32
  // (exact for bf16 values), bring it back.
  const name = 'model.layers.0.self_attn.v_proj.weight';
  const w = model.weights.params.get(name)!;
  const { cast, scale } = await import('../../src/ops/elementwise.ts');
  const f = cast(w, 'f32');
  const changed = scale(f, -3);
  await e.updateWeights(new Map([[name, changed]]));
  assert.notDeepEqual((await e.generate([req]))[0]!.samples[0]!.tokens, before);
  await e.updateWeights(new Map([[name, f]]));
  f.dispose();
  changed.dispose();
  assert.deepEqual((await e.generate([req]))[0]!.samples[0]!.tokens, before);
  await assert.rejects(e.updateWeights(new Map([['nope', w]])), /the model has no parameter 'nope'/);
  e.dispose();
});

test('sleep({ weights: true }) pages the weights out (ops refuse them, naming the tensor) and wake brings them back', async () => {
  const model = await fixture();
  const e = await createEngine(model, { blockSize: 4, numBlocks: 32 });
  const req: GenerateRequest = { prompt: prompts([9], 5)[0]!, maxNewTokens: 6, temperature: 0, stopTokens: [] };
  const before = (await e.generate([req]))[0]!.samples[0]!.tokens;
  await e.sleep({ weights: true });
  const params = [...model.weights.params.values()];
  assert.ok(params.every((t) => t.pagedOut), 'every weight (q/k/v views included) is paged out');
  await assert.rejects(e.generate([req]), /asleep/);
  await assert.rejects(e.updateWeights(new Map()), /paged out/);
  // The model shared with a trainer refuses to run on paged-out weights with an error that names the tensor.
  assert.throws(() => model.logits(Tensor.zeros([1, model.config.hiddenSize], { dtype: 'bf16' })), /is paged out to host memory/);
  await e.wake();
  assert.ok(params.every((t) => !t.pagedOut));
  assert.deepEqual((await e.generate([req]))[0]!.samples[0]!.tokens, before, 'the same greedy tokens after the round trip');
  // A plain sleep keeps the weights on the device.
  await e.sleep();
  assert.ok(params.every((t) => !t.pagedOut));
  await e.wake();
  e.dispose();
});

test('an engine leaves no undisposed tensors behind', async () => {
  const model = await fixture();
  const { trackTensors, liveTensors } = await import('../../src/tensor.ts');
  trackTensors(true);
  try {
    const e = await createEngine(model, { blockSize: 4, numBlocks: 16, maxNumBatchedTokens: 5 });
    await e.generate([{ prompt: [1, 2, 3, 4, 5, 6, 7], n: 2, maxNewTokens: 5, temperature: 1, seed: 1, stopTokens: [] }]);
    e.dispose();
    assert.deepEqual(liveTensors().map((t) => t.stack.split('\n').slice(1, 4).join(' | ')), []);
  } finally {
    trackTensors(false);
  }
});

test('disposing the engine from a token callback ends every sample as abort, with no error after it', async () => {
  const model = await fixture();
  const engine = await createEngine(model, { blockSize: 4, numBlocks: 96, maxNumSeqs: 8, maxNumBatchedTokens: 32 });
  const rejections: unknown[] = [];
  const onRejection = (e: unknown): void => void rejections.push(e);
  process.on('unhandledRejection', onRejection);
  try {
    let seen = 0;
    // Four sequences decode in one step: the dispose comes from the callback of the first of them, so the step's
    // remaining callbacks find their sequences ended.
    const reqs: GenerateRequest[] = [0, 1, 2, 3].map((i) => ({ prompt: [1 + i, 2, 3, 4, 5], maxNewTokens: 20, temperature: 0, stopTokens: [] }));
    const out = await engine.generate(reqs, { onToken: () => void (++seen === 5 && engine.dispose()) });
    for (const r of out) assert.equal(r.samples[0]!.finishReason, 'abort');
    await new Promise((r) => setTimeout(r, 20)); // the step loop's promise settles
    assert.deepEqual(rejections, []);
  } finally {
    process.off('unhandledRejection', onRejection);
  }
});
