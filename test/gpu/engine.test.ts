// GPU machine: the engine on CUDA (paged attention and per-row sampling kernels) against the static path and the
// trainer's log-probs, on a random gpt-oss-tiny-large model (head_dim 64, window 128, vocabulary cut to 512):
// mixed prompt lengths, outputs past the window, chunked prefill, preemption, shared prompts, sleep/wake.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { memoryStats, Tensor } from '../../src/tensor.ts';
import { presetConfig } from '../../src/model/config.ts';
import { GptOssModel } from '../../src/model/gptoss.ts';
import { generate } from '../../src/inference/generate.ts';
import { createEngine } from '../../src/inference/engine.ts';
import { hasCuda } from '../helpers/cuda.ts';

const skip = hasCuda ? false : 'no CUDA device (addon built without CUDA or no GPU visible)';
const DEV = 'cuda:0';
const V = 512;

function model(): GptOssModel {
  const cfg = presetConfig('gpt-oss-tiny-large', { vocabSize: V, eosTokenIds: [V - 1], padTokenId: 0, bosTokenId: null });
  return GptOssModel.random(cfg, DEV, { seed: 3, fast: true, biasStd: 0.02 });
}

function prompts(lengths: number[], seed: number): number[][] {
  let s = seed;
  const rnd = (): number => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) >>> 8) % (V - 1);
  return lengths.map((n) => Array.from({ length: n }, rnd));
}

/**
 * Greedy tokens of two runs agree up to the first position where they differ, and there the two choices are a
 * near tie under the trainer's log-probs (bf16 rounding of different kernels may flip a tie, nothing more).
 */
function assertGreedyAgree(m: GptOssModel, prompt: number[], a: number[], b: number[], what: string): void {
  assert.equal(a.length, b.length, `${what}: lengths`);
  const t = a.findIndex((x, i) => x !== b[i]);
  if (t < 0) return;
  const prefix = [...prompt, ...a.slice(0, t)];
  const [la, lb] = m.tokenLogprobs([[...prefix, a[t]!], [...prefix, b[t]!]]).map((lp) => lp[lp.length - 1]!);
  assert.ok(Math.abs(la! - lb!) < 0.05, `${what}: first difference at ${t} is not a near tie (${la} vs ${lb})`);
}

test('cuda engine greedy == static path (mixed lengths, past the window, chunked prefill, preemption)', { skip }, async () => {
  const m = model();
  const ps = prompts([5, 300, 37, 129, 1], 11);
  const maxNew = [200, 40, 150, 7, 90];
  const stat = ps.map((p, i) => generate(m, [p], { maxNewTokens: maxNew[i]!, temperature: 0, stopTokens: [] })[0]!.tokens);
  for (const opts of [
    { blockSize: 16, numBlocks: 512, maxNumBatchedTokens: 64 },
    { blockSize: 16, numBlocks: 24, numSlidingBlocks: 9, maxNumBatchedTokens: 512 }, // 384 tokens: preempts; sliding: the minimum
  ]) {
    const e = await createEngine(m, opts);
    const out = await e.generate(ps.map((prompt, i) => ({ prompt, maxNewTokens: maxNew[i]!, temperature: 0, stopTokens: [] })));
    out.forEach((r, i) => assertGreedyAgree(m, ps[i]!, r.samples[0]!.tokens, stat[i]!, `prompt ${i}, ${JSON.stringify(opts)}`));
    if (opts.numBlocks === 24) assert.ok(e.stats().preemptions > 0, 'the small pool preempts');
    assert.equal(e.stats().heldBlocks, 0);
    e.dispose();
  }
  m.dispose();
});

test('cuda engine log-probs vs tokenLogprobs: mean gap <= 0.01; n samples share the prompt', { skip }, async () => {
  const m = model();
  const ps = prompts([150, 120], 5);
  const e = await createEngine(m, { blockSize: 16, numBlocks: 256 });
  const out = await e.generate(ps.map((prompt, i) => ({ prompt, n: 4, maxNewTokens: 200, temperature: 1, seed: 10 * i, stopTokens: [] })));
  // Two prompts: each prefilled once plus, per other sample, the tokens after its last shareable full block.
  assert.equal(e.stats().prefillTokens, 150 + 3 * (150 - 144) + 120 + 3 * (120 - 112));
  let sum = 0;
  let n = 0;
  out.forEach((r, i) => {
    for (const s of r.samples) {
      const lp = m.tokenLogprobs([[...ps[i]!, ...s.tokens]])[0]!.slice(ps[i]!.length - 1);
      s.logprobs.forEach((x, t) => {
        sum += Math.abs(x - lp[t]!);
        n++;
      });
    }
  });
  assert.ok(sum / n <= 0.01, `mean |engine - tokenLogprobs| = ${sum / n}`);
  await e.sleep();
  await e.wake();
  const again = await e.generate([{ prompt: ps[0]!, maxNewTokens: 20, temperature: 0, stopTokens: [] }]);
  assert.equal(again[0]!.samples[0]!.tokens.length, 20);
  e.dispose();
  m.dispose();
});

test('cuda sleep({ weights: true }) gives the weights\' device memory back; wake restores the same greedy tokens', { skip }, async () => {
  const m = model();
  const e = await createEngine(m, { blockSize: 16, numBlocks: 64 });
  const req = { prompt: prompts([40], 9)[0]!, maxNewTokens: 24, temperature: 0, stopTokens: [] };
  const before = (await e.generate([req]))[0]!.samples[0]!.tokens;
  const weightBytes = [...m.weights.params.values()].reduce((a, t) => a + t.numel * 2, 0);
  const reserved0 = memoryStats(DEV).reserved;
  await e.sleep({ weights: true });
  const reserved1 = memoryStats(DEV).reserved;
  // The weights (and the KV pool) went back to the driver: at least the weights' bytes less reserved.
  assert.ok(reserved0 - reserved1 >= weightBytes, `reserved ${reserved0} -> ${reserved1}, weights ${weightBytes} bytes`);
  await e.wake();
  assert.deepEqual((await e.generate([req]))[0]!.samples[0]!.tokens, before);
  e.dispose();
  m.dispose();
});

test('cuda wake() sizes the pool again from the memory free then (a colocated trainer may hold more than at creation)', { skip }, async () => {
  const m = model();
  const e = await createEngine(m, { blockSize: 16, gpuMemoryUtilization: 0.5 });
  const req = { prompt: prompts([40], 11)[0]!, maxNewTokens: 16, temperature: 0, stopTokens: [] };
  const before = (await e.generate([req]))[0]!.samples[0]!.tokens;
  const blocks0 = e.stats().numBlocks;
  await e.sleep();
  // What a trainer's first optimizer step adds (AdamW moments): here a quarter of the pool's bytes, held across wake.
  const held = Tensor.empty([Math.floor(blocks0 / 4), 16 * 2 * 2 * 64 * m.config.numLayers], { dtype: 'bf16', device: DEV });
  await e.wake();
  const blocks1 = e.stats().numBlocks;
  assert.ok(blocks1 < blocks0, `the pool shrank: ${blocks0} -> ${blocks1} blocks`);
  assert.deepEqual((await e.generate([req]))[0]!.samples[0]!.tokens, before);
  await e.sleep();
  held.dispose();
  await e.wake();
  assert.ok(e.stats().numBlocks >= blocks1, 'and grows back when the memory is free again');
  e.dispose();
  m.dispose();
});
