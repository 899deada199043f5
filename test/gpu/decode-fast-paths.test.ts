// GPU machine: the decode fast paths (GPTOSS_DECODE_FAST_PATHS=1: the split sampler at few rows, the fused router
// at T <= 16, the rope pass writing the paged KV cache; native/cuda/common.cuh) against the default paths, end to
// end in the engine: the same greedy tokens up to near ties and the same log-probs within bf16 noise, eager and with
// CUDA graphs, at 1 and 4 sequences (the sizes where every fast path runs), with temperature sampling too (the
// split sampler draws the single-block sampler's token from the same logits). When this and the fast paths' kernel
// tests (coreops1 rope cache write, coreops2 split sampler, moe-decode fused router) pass on a GPU, the fast paths
// become the default.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { presetConfig } from '../../src/model/config.ts';
import { GptOssModel } from '../../src/model/gptoss.ts';
import { createEngine, type GenerateRequest, type GenerateResponse } from '../../src/inference/engine.ts';
import { hasCuda } from '../helpers/cuda.ts';

const skip = hasCuda ? false : 'no CUDA device (addon built without CUDA or no GPU visible)';
const V = 512;

async function run(m: GptOssModel, reqs: GenerateRequest[], fast: boolean, enforceEager: boolean): Promise<GenerateResponse[]> {
  const before = process.env.GPTOSS_DECODE_FAST_PATHS;
  process.env.GPTOSS_DECODE_FAST_PATHS = fast ? '1' : '0';
  try {
    const e = await createEngine(m, { blockSize: 16, numBlocks: 256, maxNumSeqs: 8, enforceEager });
    const r = await e.generate(reqs);
    e.dispose();
    return r;
  } finally {
    if (before === undefined) delete process.env.GPTOSS_DECODE_FAST_PATHS;
    else process.env.GPTOSS_DECODE_FAST_PATHS = before;
  }
}

for (const n of [1, 4]) {
  for (const enforceEager of [true, false]) {
    test(`decode fast paths == default paths in the engine: ${n} sequence(s), ${enforceEager ? 'eager' : 'CUDA graphs'}`, { skip }, async () => {
      const cfg = presetConfig('gpt-oss-tiny-large', { vocabSize: V, eosTokenIds: [V - 1], padTokenId: 0, bosTokenId: null });
      const m = GptOssModel.random(cfg, 'cuda:0', { seed: 11, fast: true, biasStd: 0.02 });
      let s = 7 + n;
      const rnd = (): number => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) >>> 8;
      const prompts = Array.from({ length: n }, (_, i) => Array.from({ length: 10 + 7 * i }, () => rnd() % (V - 1)));
      const greedy: GenerateRequest[] = prompts.map((prompt) => ({ prompt, maxNewTokens: 40, temperature: 0, stopTokens: [] }));
      const sampled: GenerateRequest[] = prompts.map((prompt, i) => ({ prompt, maxNewTokens: 40, temperature: 1, seed: 100 + i, stopTokens: [] }));
      for (const reqs of [greedy, sampled]) {
        const a = await run(m, reqs, false, enforceEager);
        const b = await run(m, reqs, true, enforceEager);
        for (let i = 0; i < n; i++) {
          const x = a[i]!.samples[0]!;
          const y = b[i]!.samples[0]!;
          assert.equal(y.finishReason, x.finishReason);
          const t = x.tokens.findIndex((v, j) => v !== y.tokens[j]);
          const upto = t < 0 ? x.tokens.length : t;
          assert.ok(upto >= 8, `request ${i} (temperature ${reqs[i]!.temperature}): tokens differ already at ${t}`);
          for (let j = 0; j < upto; j++) {
            assert.ok(Math.abs(x.logprobs[j]! - y.logprobs[j]!) <= 0.02 + 0.01 * Math.abs(x.logprobs[j]!), `request ${i} token ${j}: log-prob ${y.logprobs[j]} vs ${x.logprobs[j]}`);
          }
          if (t >= 0) {
            // A later difference must be a near tie under the trainer's log-probs (another fp32 order in the router).
            const prefix = [...reqs[i]!.prompt, ...x.tokens.slice(0, t)];
            const [la, lb] = m.tokenLogprobs([[...prefix, x.tokens[t]!], [...prefix, y.tokens[t]!]]).map((lp) => lp[lp.length - 1]!);
            assert.ok(Math.abs(la! - lb!) < 0.1, `request ${i}: tokens differ at ${t} where the choices are not a near tie (${la} vs ${lb})`);
          }
        }
      }
      m.dispose();
    });
  }
}
