// Every temporary of forward / backward / generate / tokenLogprobs is disposed explicitly (not left to the GC,
// which on a GPU would hold device memory for an unknown time). Tensor tracking records each Tensor object not
// yet disposed with its creation stack; after a warm-up step, further steps must leave nothing new behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadModel } from '../../src/model/index.ts';
import { packSequences, disposeBatch } from '../../src/model/batch.ts';
import { generate } from '../../src/inference/generate.ts';
import { Tensor, liveTensors, trackTensors } from '../../src/tensor.ts';
import { FIXTURE_DIR } from '../helpers/fixtures.ts';

/** After a warm-up call of step, two more calls must leave no new undisposed tensor (tracking must be on). */
function assertNoLeaks(step: () => void): void {
  step();
  const before = new Set(liveTensors().map((x) => x.tensor));
  step();
  step();
  const leaked = liveTensors().filter((x) => !before.has(x.tensor));
  const where = leaked.slice(0, 5).map((x) => `${x.tensor.toString()}\n${x.stack.split('\n').slice(2, 6).join('\n')}`);
  assert.equal(leaked.length, 0, `undisposed tensors after two more steps:\n${where.join('\n')}`);
}

test('forward/backward/generate/tokenLogprobs leave no undisposed tensors behind', async () => {
  trackTensors(true);
  try {
    const model = await loadModel(FIXTURE_DIR, { device: 'cpu' });
    const step = (): void => {
      const b = packSequences([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [3, 4, 5]], 'cpu');
      const r = model.forward(b, { train: true, releaseBatch: true });
      const d = Tensor.from(new Float32Array(b.numTokens).fill(-1), [b.numTokens], { device: 'cpu' });
      const g = model.backward(r.state!, d);
      for (const t of g.values()) t.dispose();
      for (const t of [d, r.logprobs, r.entropy]) t.dispose();
      generate(model, [[1, 2, 3], [4, 5]], { maxNewTokens: 5, temperature: 0 });
      model.tokenLogprobs([[1, 2, 3]]);
    };
    assertNoLeaks(step);
    model.dispose();
  } finally {
    trackTensors(false);
  }
});

test('the fused LM-head backward (lossGradient, several token chunks, also one that throws) leaves nothing behind', async () => {
  trackTensors(true);
  try {
    const model = await loadModel(FIXTURE_DIR, { device: 'cpu' });
    model.lmHeadTokenChunk = 4;
    const step = (): void => {
      const b = packSequences([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [3, 4, 5]], 'cpu');
      const grads = new Map<string, Tensor>();
      const r = model.forward(b, { train: true, releaseBatch: true, lossGradient: { grad: (_t0, lp) => new Float32Array(lp.length).fill(-1), grads } });
      const g = model.backward(r.state!, null, grads);
      for (const t of g.values()) t.dispose();
      for (const t of [r.logprobs, r.entropy]) t.dispose();
      const b2 = packSequences([[1, 2, 3, 4, 5, 6]], 'cpu');
      const grads2 = new Map<string, Tensor>();
      assert.throws(() => model.forward(b2, { train: true, lossGradient: { grad: (t0) => { if (t0 > 0) throw new Error('stop'); return new Float32Array(4); }, grads: grads2 } }), /stop/);
      for (const t of grads2.values()) t.dispose();
      disposeBatch(b2);
    };
    assertNoLeaks(step);
    model.dispose();
  } finally {
    trackTensors(false);
  }
});
