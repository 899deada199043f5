// Every temporary of forward / backward / generate / tokenLogprobs is disposed explicitly (not left to the GC,
// which on a GPU would hold device memory for an unknown time). Tensor tracking records each Tensor object not
// yet disposed with its creation stack; after a warm-up step, further steps must leave nothing new behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadModel } from '../../src/model/index.ts';
import { packSequences } from '../../src/model/batch.ts';
import { generate } from '../../src/inference/generate.ts';
import { Tensor, liveTensors, trackTensors } from '../../src/tensor.ts';
import { FIXTURE_DIR } from '../helpers/fixtures.ts';

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
    step();
    const before = new Set(liveTensors().map((x) => x.tensor));
    step();
    step();
    const leaked = liveTensors().filter((x) => !before.has(x.tensor));
    const where = leaked.slice(0, 5).map((x) => `${x.tensor.toString()}\n${x.stack.split('\n').slice(2, 6).join('\n')}`);
    assert.equal(leaked.length, 0, `undisposed tensors after two more steps:\n${where.join('\n')}`);
    model.dispose();
  } finally {
    trackTensors(false);
  }
});
