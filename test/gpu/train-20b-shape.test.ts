// `npm run train` on one GPU with a gpt-oss-20b-shaped model (`--model gpt-oss-20b:random:layers=N`: the real
// hidden size, heads, 32 experts and 201,088-token vocabulary, random weights, N of the 24 layers so that the
// trainer and its engine fit one 80 GB GPU), world 1, the seed's config (configs/gsm8k-gptoss-20b.yaml) reduced to
// one process: a few GRPO steps on GSM8K, then the per-phase times, throughput and peak memory of each step printed
// (and written to runs/gpu/train-20b-shape.json, or $TRAIN_20B_OUT) for the closing note. TRAIN_20B_LAYERS
// (default 2) and TRAIN_20B_STEPS (default 3) change the run.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseMetricsJsonl } from '../../src/log/metrics.ts';
import { hasCuda } from '../helpers/cuda.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const LAYERS = Number(process.env.TRAIN_20B_LAYERS || 2);
const STEPS = Number(process.env.TRAIN_20B_STEPS || 3);
const OUT = process.env.TRAIN_20B_OUT || 'runs/gpu/train-20b-shape.json';

test(`npm run train, world 1, gpt-oss-20b:random:layers=${LAYERS}: ${STEPS} GRPO steps with per-phase times`, { skip: hasCuda ? false : 'no CUDA device', timeout: 20 * 60_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'train-20b-'));
  const metrics = join(dir, 'metrics.jsonl');
  const args = [
    '--model', `gpt-oss-20b:random:layers=${LAYERS}`,
    '-c', 'gsm8k-gptoss-20b',
    'trainer.device=cuda',
    // One process: one GPU holds the trainer and a tp=1 engine.
    'trainer.placement.policy_num_gpus_per_node=1',
    'trainer.placement.ref_num_gpus_per_node=1',
    'generator.num_inference_engines=1',
    'generator.inference_engine_tensor_parallel_size=1',
    'trainer.policy.optimizer_config.offload_after_step=false',
    'trainer.logger=console',
    `trainer.max_steps=${STEPS}`,
    'trainer.train_batch_size=8',
    'trainer.policy_mini_batch_size=8',
    'trainer.micro_train_batch_size_per_gpu=8',
    'trainer.micro_forward_batch_size_per_gpu=16',
    'generator.n_samples_per_prompt=4',
    'generator.sampling_params.max_generate_length=256',
    'trainer.eval_before_train=false',
    'trainer.eval_interval=0',
    'trainer.ckpt_interval=-1',
    'trainer.resume_mode=none',
    `trainer.ckpt_path=${join(dir, 'ckpts')}`,
    `trainer.metrics_path=${metrics}`,
  ];
  // From the sources through tsx, or the compiled CLI when this file runs from dist/ (the GPU machine has no tsx).
  const cli = import.meta.url.endsWith('.js') ? [join(ROOT, 'src/cli/train.js')] : ['--import', 'tsx', join(ROOT, 'src/cli/train.ts')];
  const r = spawnSync(process.execPath, [...cli, ...args], { encoding: 'utf8', cwd: ROOT, env: { ...process.env, GPTOSS_PROGRESS: 'off' } });
  assert.equal(r.status, 0, r.stderr.slice(-4000));
  const rows = parseMetricsJsonl(readFileSync(metrics, 'utf8')).filter((x) => x.kind === 'train');
  assert.equal(rows.length, STEPS);
  const keys = ['time/step', 'time/generate', 'time/old_logprobs', 'time/ref_logprobs', 'time/train', 'time/train_forward', 'time/train_backward', 'time/optimizer', 'time/weight_sync', 'tokens_per_s/generate', 'tokens_per_s/train_per_gpu', 'memory/peak_gb', 'engine/preemptions', 'response_len/mean'];
  const table = rows.map((row) => Object.fromEntries([['step', row.step], ...keys.map((k) => [k, row[k]])]));
  for (const row of table) {
    for (const k of keys.filter((x) => x !== 'engine/preemptions' && x !== 'time/old_logprobs')) assert.ok(typeof row[k] === 'number' && (row[k] as number) > 0, `step ${row.step}: ${k} = ${row[k]}`);
    // A 20b-shaped model with this many layers holds well over 10 GB on the GPU.
    assert.ok((row['memory/peak_gb'] as number) > 10, `step ${row.step}: peak ${row['memory/peak_gb']} GB`);
  }
  console.log(`gpt-oss-20b:random:layers=${LAYERS}, world 1, one GPU, per step:`);
  console.table(table);
  mkdirSync(dirname(OUT), { recursive: true });
  writeFileSync(OUT, JSON.stringify({ model: `gpt-oss-20b:random:layers=${LAYERS}`, steps: table }, null, 2));
});
