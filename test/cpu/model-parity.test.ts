// GPT-OSS model vs Hugging Face transformers on the gptoss-tiny fixture (CPU): logits, token log-probs, every
// hidden state and every parameter gradient within BF16 noise; recompute gives the same gradients.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runFixtureParity, checkParity } from '../helpers/model-parity.ts';

test('fixture parity on cpu: logits, log-probs, hidden states, all gradients', async () => {
  const run = await runFixtureParity('cpu');
  checkParity(run);
});

test('per-layer activation recompute gives the same gradients', async () => {
  const a = await runFixtureParity('cpu');
  const b = await runFixtureParity('cpu', { recompute: true });
  for (let i = 0; i < a.reports.length; i++) {
    assert.equal(a.reports[i]!.name, b.reports[i]!.name);
    assert.ok(Math.abs(a.reports[i]!.relL2 - b.reports[i]!.relL2) < 1e-6, `${a.reports[i]!.name}: ${a.reports[i]!.relL2} vs ${b.reports[i]!.relL2}`);
  }
});
