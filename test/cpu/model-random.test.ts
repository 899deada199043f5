// `--model <preset>:random[:layers=N]` (a preset's shape with random weights, e.g. gpt-oss-20b:random for smoke
// tests and benchmarks without the checkpoint), and the error of a hub model that is not in the cache: it names
// where it looked and the exact command that downloads it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../../src/config/load.ts';
import { presetConfig } from '../../src/model/config.ts';
import { modelConfigOf } from '../../src/cli/plan.ts';
import { randomModelSpec, setupRun } from '../../src/trainer/setup.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

test('model paths that name a random-initialised preset shape', () => {
  assert.deepEqual(randomModelSpec('tiny'), { preset: 'gpt-oss-tiny' });
  assert.deepEqual(randomModelSpec('tiny:gpt-oss-tiny-256'), { preset: 'gpt-oss-tiny-256' });
  assert.deepEqual(randomModelSpec('gpt-oss-20b:random'), { preset: 'gpt-oss-20b', numLayers: undefined });
  assert.deepEqual(randomModelSpec('gpt-oss-20b:random:layers=2'), { preset: 'gpt-oss-20b', numLayers: 2 });
  assert.equal(randomModelSpec('unsloth/gpt-oss-20b-BF16'), null);
  assert.equal(randomModelSpec('./runs/model'), null);
  assert.throws(() => randomModelSpec('gpt-oss-20b:random:4'), /trainer\.policy\.model\.path=gpt-oss-20b:random:4: expected <preset>:random or <preset>:random:layers=N/);
});

test('gpt-oss-20b:random is the full-size shape (the planner reads it without any file)', async () => {
  assert.deepEqual(await modelConfigOf('gpt-oss-20b:random'), presetConfig('gpt-oss-20b'));
  const two = await modelConfigOf('gpt-oss-20b:random:layers=2');
  assert.equal(two.numLayers, 2);
  assert.deepEqual(two.layerTypes, ['sliding_attention', 'full_attention']);
  assert.equal(two.hiddenSize, 2880);
  await assert.rejects(modelConfigOf('gpt-oss-7b:random'), /--model gpt-oss-7b:random: unknown preset 'gpt-oss-7b'/);
});

test('a run builds <preset>:random:layers=N with random weights; an unknown preset names the key', async () => {
  const c = loadConfig({ config: 'demo-cpu', overrides: ['trainer.policy.model.path=gpt-oss-tiny:random:layers=3'] });
  const run = await setupRun(c);
  assert.equal(run.model.config.numLayers, 3);
  assert.equal(run.model.config.hiddenSize, presetConfig('gpt-oss-tiny').hiddenSize);
  run.generator.dispose();
  run.policy.dispose();
  const bad = { ...c, trainer: { ...c.trainer, policy: { ...c.trainer.policy, model: { ...c.trainer.policy.model, path: 'gpt-oss-7b:random' } } } };
  await assert.rejects(setupRun(bad), /trainer\.policy\.model\.path=gpt-oss-7b:random: unknown gpt-oss preset 'gpt-oss-7b'/);
});

test('a hub model absent from the cache (offline): the error says where it looked and the command that downloads it', () => {
  const cache = mkdtempSync(join(tmpdir(), 'hf-empty-'));
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'src/cli/train.ts'), '--model', 'unsloth/gpt-oss-20b-BF16', '-c', 'demo-cpu', 'trainer.sft.warm_start=false', 'data.compact_vocab=false', '--dry-run'], {
    encoding: 'utf8',
    cwd: ROOT,
    env: { ...process.env, HF_HUB_CACHE: cache, HF_HUB_OFFLINE: '1' },
  });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, new RegExp(`not in the Hugging Face cache at ${cache.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/models--unsloth--gpt-oss-20b-BF16 \\(revision main\\)`));
  assert.match(r.stderr, /`npx gptoss download unsloth\/gpt-oss-20b-BF16` \(or `huggingface-cli download unsloth\/gpt-oss-20b-BF16`\)/);
  // The command it names exists and says the same offline.
  const d = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'src/cli/main.ts'), 'download', 'unsloth/gpt-oss-20b-BF16'], { encoding: 'utf8', cwd: ROOT, env: { ...process.env, HF_HUB_CACHE: cache, HF_HUB_OFFLINE: '1' } });
  assert.equal(d.status, 1);
  assert.match(d.stderr, /not in the Hugging Face cache/);
  const u = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'src/cli/main.ts'), 'download', 'not-a-hub-id'], { encoding: 'utf8', cwd: ROOT });
  assert.equal(u.status, 2);
  assert.match(u.stderr, /gptoss download: 'not-a-hub-id' is not a hub id/);
});
