// `npm run train` with trainer.policy.fsdp_config.cpu_offload=true and trainer.placement.colocate_policy_ref=false
// on one CPU process: the sharded trainer over a group of one (ShardedPolicy with cpuOffload, the KL reference kept
// in host memory), against the default single-process policy on the same demo config. On the CPU the optimizer
// state is already in host memory, so the SFT warm start's loss and grad norm of every step equal the default's up
// to fp32 accumulation order (the sharded policy accumulates into flat per-unit buffers; the sharded tests bound
// that at 1e-5 over 3 steps); GRPO then runs with the frozen reference copy. And `npm run sft` refuses cpu_offload
// (it trains the single-process policy) instead of ignoring it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseMetricsJsonl } from '../../src/log/metrics.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLI = (name: string) => join(ROOT, 'src', 'cli', `${name}.ts`);
const dir = mkdtempSync(join(tmpdir(), 'train-offload-'));

/** 6 SFT steps (every one logged), then 2 GRPO steps of 4 prompts x 4 samples with the k3 KL term. */
function run(name: string, extra: string[]) {
  const args = [
    '-c',
    'demo-cpu',
    'trainer.sft.steps=6',
    'trainer.sft.log_interval=1',
    'trainer.sft.stop_at_reward=null',
    'trainer.sft.eval_interval=100',
    'trainer.eval_batch_size=8',
    'trainer.max_steps=2',
    'trainer.train_batch_size=4',
    'trainer.policy_mini_batch_size=4',
    'generator.n_samples_per_prompt=4',
    'trainer.eval_before_train=false',
    'trainer.eval_interval=0',
    'trainer.ckpt_interval=-1',
    'trainer.resume_mode=none',
    `trainer.ckpt_path=${join(dir, `ck-${name}`)}`,
    `trainer.metrics_path=${join(dir, `${name}.jsonl`)}`,
    ...extra,
  ];
  const r = spawnSync(process.execPath, ['--import', 'tsx', CLI('train'), ...args], { encoding: 'utf8', cwd: ROOT, env: { ...process.env, GPTOSS_PROGRESS: 'off', GPTOSS_LOG_LEVEL: 'info' } });
  const rows = (kind: string) => parseMetricsJsonl(readFileSync(join(dir, `${name}${kind === 'sft' ? '-sft' : ''}.jsonl`), 'utf8')).filter((x) => x.kind === kind);
  return { ...r, all: r.stdout + r.stderr, rows };
}

function rel(a: number, b: number): number {
  return Math.abs(a - b) / Math.max(Math.abs(b), 1e-12);
}

test('npm run train with cpu_offload and colocate_policy_ref=false (sharded trainer on one process) trains like the default', () => {
  const base = run('default', []);
  assert.equal(base.status, 0, base.all);
  assert.doesNotMatch(base.all, /sharded trainer on one process/);
  const off = run('offload', ['trainer.policy.fsdp_config.cpu_offload=true', 'trainer.placement.colocate_policy_ref=false']);
  assert.equal(off.status, 0, off.all);
  assert.match(off.all, /sharded trainer on one process \(trainer\.policy\.fsdp_config\.cpu_offload=true, trainer\.placement\.colocate_policy_ref=false\)/);
  assert.match(off.all, /"component":"dist","rank":0,"world":1/);
  const a = base.rows('sft');
  const b = off.rows('sft');
  assert.equal(a.length, 6);
  assert.equal(b.length, 6);
  for (let i = 0; i < 6; i++) {
    for (const k of ['loss', 'grad_norm']) {
      const x = b[i]![k] as number;
      const y = a[i]![k] as number;
      assert.ok(Number.isFinite(x) && rel(x, y) < 1e-4, `SFT step ${i + 1} ${k}: offload ${x} vs default ${y}`);
    }
  }
  // The weights moved (the comparison is not of an idle run).
  assert.ok(rel(a[5]!.loss as number, a[0]!.loss as number) > 1e-3, `SFT loss ${a[0]!.loss} -> ${a[5]!.loss}`);
  const g = off.rows('train');
  assert.equal(g.length, 2);
  for (const r of g) assert.ok(Number.isFinite(r.loss as number) && Number.isFinite(r.kl as number), JSON.stringify(r));
  assert.match(off.all, /done: 2 GRPO steps/);
});

test('npm run sft refuses cpu_offload (the single-process policy keeps its optimizer state on the device)', () => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', CLI('sft'), '-c', 'demo-cpu', 'trainer.policy.fsdp_config.cpu_offload=true', `trainer.ckpt_path=${join(dir, 'ck-sft')}`], { encoding: 'utf8', cwd: ROOT });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /trainer\.policy\.fsdp_config\.cpu_offload=true: npm run sft trains the single-process policy.*npm run train honours the key/);
});

test('npm run sft refuses offload_after_step (no generation phase; the single-process policy keeps its state on the device)', () => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', CLI('sft'), '-c', 'demo-cpu', 'trainer.policy.optimizer_config.offload_after_step=true', `trainer.ckpt_path=${join(dir, 'ck-sft-after')}`], { encoding: 'utf8', cwd: ROOT });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /trainer\.policy\.optimizer_config\.offload_after_step=true: npm run sft trains the single-process policy.*npm run train honours the key/);
});
