// gpt-oss-20b layer shapes on the CPU (1 layer, small vocabulary, a few tokens): forward + backward run and every
// parameter gets a finite gradient. Heavy (~6 GB of host memory): runs only with GPTOSS_BIG_TESTS=1.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor } from '../../src/tensor.ts';
import { presetConfig } from '../../src/model/config.ts';
import { GptOssModel } from '../../src/model/gptoss.ts';
import { packSequences, disposeBatch } from '../../src/model/batch.ts';
import { sumOfSquares } from '../../src/ops/optim.ts';

const skip = process.env.GPTOSS_BIG_TESTS === '1' ? false : 'set GPTOSS_BIG_TESTS=1 (needs ~6 GB of host memory)';

test('gpt-oss-20b layer shapes: forward + backward on cpu', { skip }, () => {
  const cfg = presetConfig('gpt-oss-20b', { numLayers: 1, vocabSize: 1024, eosTokenIds: [1], padTokenId: 0, bosTokenId: null });
  const t0 = performance.now();
  const model = GptOssModel.random(cfg, 'cpu', { seed: 1, fast: true, biasStd: 0.02 });
  const tInit = performance.now() - t0;
  const seqs = [Array.from({ length: 9 }, (_, i) => (i * 37) % 1024), Array.from({ length: 5 }, (_, i) => (i * 91 + 3) % 1024)];
  const b = packSequences(seqs, 'cpu');
  const t1 = performance.now();
  const r = model.forward(b, { train: true });
  const lp = r.logprobs.toFloat32();
  const dl = new Float32Array(b.numTokens);
  b.offsets.forEach((o, s) => {
    for (let t = 0; t < b.lengths[s]! - 1; t++) dl[o + t] = -1;
  });
  const dT = Tensor.from(dl, [b.numTokens], { device: 'cpu' });
  const grads = model.backward(r.state!, dT);
  const tRun = performance.now() - t1;
  assert.equal(grads.size, model.weights.params.size);
  for (const [n, g] of grads) {
    assert.deepEqual(g.shape, model.weights.params.get(n)!.shape, n);
    assert.equal(g.dtype, 'f32', n);
  }
  const gn = Math.sqrt(sumOfSquares([...grads.values()]));
  console.log(`20b shapes, 1 layer, ${b.numTokens} tokens: init ${tInit.toFixed(0)} ms, fwd+bwd ${tRun.toFixed(0)} ms, mean logprob ${(lp.reduce((a, x) => a + x, 0) / lp.length).toFixed(3)}, grad norm ${gn.toExponential(3)}`);
  assert.ok(lp.every(Number.isFinite));
  assert.ok(Number.isFinite(gn) && gn > 0);
  for (const g of grads.values()) g.dispose();
  for (const t of [dT, r.logprobs, r.entropy]) t.dispose();
  disposeBatch(b);
  model.dispose();
});
