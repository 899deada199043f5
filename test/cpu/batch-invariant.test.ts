// Batch-invariant mode (setBatchInvariant, config trainer.batch_invariant; native/common/device.h) on the CPU: the
// switch and its config key (applied by a run, refused where it cannot hold), and the property it names on the CPU
// reference kernels, which have it either way: the trainer's log-probs of a sequence packed with others are bitwise
// those of the sequence alone, and the engine's log-probs (eager and over the CUDA-graph path's static buffers) are
// the trainer's up to the fp32 log-softmax sum; the benches' --batch-invariant flags. The CUDA kernels of the mode:
// test/gpu/batch-invariant.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setBatchInvariant, batchInvariant } from '../../src/tensor.ts';
import { loadConfig, unsupportedSettings } from '../../src/config/index.ts';
import { setupRun } from '../../src/trainer/setup.ts';
import { loadModel } from '../../src/model/index.ts';
import { createEngine } from '../../src/inference/engine.ts';
import { FIXTURE_DIR } from '../helpers/fixtures.ts';

test('setBatchInvariant switches the process-wide mode and reads back', () => {
  assert.equal(batchInvariant(), false);
  setBatchInvariant(true);
  assert.equal(batchInvariant(), true);
  setBatchInvariant(false);
  assert.equal(batchInvariant(), false);
});

test('trainer.batch_invariant: a run sets the mode; tensor-parallel engines and LoRA on CUDA are refused naming the keys', async () => {
  const c = loadConfig({ config: 'demo-cpu', overrides: ['trainer.batch_invariant=true'] });
  assert.deepEqual(unsupportedSettings(c), []);
  const run = await setupRun(c);
  try {
    assert.equal(batchInvariant(), true);
  } finally {
    run.generator.dispose();
    run.policy.dispose();
    setBatchInvariant(false);
  }
  const off = await setupRun(loadConfig({ config: 'demo-cpu' }));
  assert.equal(batchInvariant(), false);
  off.generator.dispose();
  off.policy.dispose();

  const tp = unsupportedSettings(loadConfig({ overrides: ['trainer.batch_invariant=true', 'trainer.placement.policy_num_gpus_per_node=2', 'generator.inference_engine_tensor_parallel_size=2'] }));
  assert.equal(tp.length, 1, tp.join(' | '));
  assert.match(tp[0]!, /^trainer\.batch_invariant=true with generator\.inference_engine_tensor_parallel_size=2: .*another order/);
  const lora = unsupportedSettings(loadConfig({ overrides: ['trainer.batch_invariant=true', 'trainer.policy.model.lora.rank=8', 'trainer.device=cuda'] }));
  assert.equal(lora.length, 1, lora.join(' | '));
  assert.match(lora[0]!, /^trainer\.batch_invariant=true with trainer\.policy\.model\.lora\.rank=8 on trainer\.device=cuda: /);
  assert.deepEqual(unsupportedSettings(loadConfig({ overrides: ['trainer.batch_invariant=true', 'trainer.policy.model.lora.rank=8', 'trainer.device=cpu'] })), []);
});

test('cpu reference: trainer packed == alone bitwise; engine log-probs == tokenLogprobs to fp32 rounding (eager and graph path)', async () => {
  const model = await loadModel(FIXTURE_DIR, { device: 'cpu' });
  let s = 4242;
  const rnd = (): number => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) >>> 8) % 250;
  const ps = [7, 15, 30].map((n) => Array.from({ length: n }, rnd));
  setBatchInvariant(true);
  try {
    for (const enforceEager of [true, false]) {
      const e = await createEngine(model, { blockSize: 4, numBlocks: 96, maxNumBatchedTokens: 16, enforceEager });
      const out = await e.generate(ps.map((prompt, i) => ({ prompt, n: 2, maxNewTokens: 20, temperature: 1, seed: i, stopTokens: [] })));
      const seqs = out.flatMap((r, i) => r.samples.map((x) => ({ prompt: ps[i]!, x })));
      const packed = model.tokenLogprobs(seqs.map(({ prompt, x }) => [...prompt, ...x.tokens]));
      let worst = 0;
      seqs.forEach(({ prompt, x }, j) => {
        const alone = model.tokenLogprobs([[...prompt, ...x.tokens]])[0]!;
        assert.deepEqual(packed[j], alone, `sequence ${j}: packed vs alone`);
        const lp = alone.slice(prompt.length - 1);
        x.logprobs.forEach((v, t) => (worst = Math.max(worst, Math.abs(v - lp[t]!))));
      });
      assert.ok(worst < 1e-5, `enforceEager ${enforceEager}: max |engine - tokenLogprobs| = ${worst}`);
      e.dispose();
    }
  } finally {
    setBatchInvariant(false);
  }
});

test('bench:generate --batch-invariant and bench:train-step --batch-invariant (CPU smoke forms): the mode in the header and the JSON', () => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-invariant-'));
  const env = { ...process.env, GPTOSS_DEVICE: 'cpu' };
  const g = spawnSync(process.execPath, ['--import', 'tsx', 'bench/generate.ts', '--batch-invariant', '--no-peer', '--no-static', '--batches', '1,2', '--json', join(dir, 'g.json')], { encoding: 'utf8', env });
  assert.equal(g.status, 0, g.stderr);
  assert.match(g.stdout, /gpt-oss generation, .*, batch-invariant kernels/);
  const gj = JSON.parse(readFileSync(join(dir, 'g.json'), 'utf8'));
  assert.equal(gj.batchInvariant, true);
  assert.ok(gj.grpo.logprobGap.tokens > 0 && gj.grpo.logprobGap.meanAbs < 1e-5, JSON.stringify(gj.grpo.logprobGap));
  const t = spawnSync(process.execPath, ['--import', 'tsx', 'bench/train-step.ts', '--batch-invariant', '--preset', 'gpt-oss-tiny-256', '--tokens', '32', '--steps', '1', '--json', join(dir, 't.json')], { encoding: 'utf8', env });
  assert.equal(t.status, 0, t.stderr);
  assert.match(t.stdout, /; batch-invariant kernels/);
  assert.equal(JSON.parse(readFileSync(join(dir, 't.json'), 'utf8')).batchInvariant, true);
});
