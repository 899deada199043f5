// The GRPO loop over a plain-TypeScript bigram policy (test/helpers/toy.ts): it learns, skips NaN steps, resumes
// exactly, survives a failed checkpoint save, and saves on interrupt.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig, type ConfigInput } from '../../src/config/index.ts';
import { trainGrpo } from '../../src/trainer/grpo.ts';
import { findLatestCheckpoint, readTrainerState } from '../../src/trainer/checkpoint.ts';
import { MetricsLogger, parseMetricsJsonl } from '../../src/log/metrics.ts';
import { ToyGenerator, ToyPolicy, toyTask } from '../helpers/toy.ts';

process.env.GPTOSS_PROGRESS = 'off';

function cfg(dir: string, extra: string[] = []) {
  const base: ConfigInput = {
    trainer: {
      ckpt_path: join(dir, 'ckpts'),
      resume_mode: 'none',
      train_batch_size: 8,
      policy_mini_batch_size: 4,
      micro_train_batch_size_per_gpu: 5,
      micro_forward_batch_size_per_gpu: 7,
      eval_interval: 5,
      eval_before_train: true,
      ckpt_interval: -1,
      epochs: 4,
      max_steps: 20,
      policy: { optimizer_config: { lr: 0.05, weight_decay: 0 } },
      algorithm: { use_kl_loss: true, kl_loss_coef: 0.001 },
    },
    generator: { n_samples_per_prompt: 4, sampling_params: { max_generate_length: 3 }, eval_sampling_params: { max_generate_length: 3 } },
  };
  return loadConfig({ config: null, base, overrides: extra });
}

test('GRPO on the toy task raises held-out accuracy and logs every metric', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'grpo-'));
  const policy = new ToyPolicy(3);
  const metrics = new MetricsLogger({ path: join(dir, 'm.jsonl'), console: false });
  const r = await trainGrpo({ config: cfg(dir), policy, generator: new ToyGenerator(policy), env: toyTask(), metrics });
  assert.equal(r.steps, 20);
  const first = r.evals[0]!.accuracy;
  const last = r.evals[r.evals.length - 1]!.accuracy;
  assert.ok(last >= first + 0.5, `accuracy ${first} -> ${last}: ${JSON.stringify(r.evals)}`);
  const rows = parseMetricsJsonl(readFileSync(join(dir, 'm.jsonl'), 'utf8'));
  const train = rows.filter((x) => x.kind === 'train');
  assert.equal(train.length, 20);
  for (const k of ['reward/mean', 'reward/accuracy', 'adv/mean', 'adv/std', 'kl', 'entropy', 'clip_frac', 'grad_norm', 'lr', 'response_len/mean', 'tokens_per_s', 'time/generate', 'time/old_logprobs', 'logprob_gap/abs_mean', 'skipped_steps']) {
    assert.equal(typeof train[0]![k], 'number', `metric ${k}`);
  }
  // The toy generator and trainer compute the same distribution: the gap is ~0.
  assert.ok((train[0]!['logprob_gap/abs_max'] as number) < 1e-5);
  assert.ok(rows.some((x) => x.kind === 'eval' && typeof x['eval/accuracy'] === 'number'));
});

test('a NaN loss skips the optimizer step and counts it', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'grpo-'));
  const policy = new ToyPolicy(3);
  policy.nanOnForward.add(0); // first micro-batch of the first mini-batch
  const before = Float64Array.from(policy.W);
  const steps: number[] = [];
  const r = await trainGrpo({
    config: cfg(dir, ['trainer.max_steps=1', 'trainer.eval_before_train=false', 'trainer.train_batch_size=4']),
    policy,
    generator: new ToyGenerator(policy),
    env: toyTask(),
    onStep: (_s, m) => steps.push(m.step_skipped!, m.skipped_steps!),
  });
  assert.equal(r.skippedSteps, 1);
  assert.deepEqual(steps, [1, 1]);
  assert.deepEqual(policy.W, before, 'the skipped step must not change the weights');
});

test('resume_mode=latest continues exactly where an interrupted run stopped', async () => {
  const dirA = mkdtempSync(join(tmpdir(), 'grpo-'));
  const a = new ToyPolicy(5);
  await trainGrpo({ config: cfg(dirA, ['trainer.max_steps=6', 'trainer.eval_before_train=false']), policy: a, generator: new ToyGenerator(a), env: toyTask() });

  const dirB = mkdtempSync(join(tmpdir(), 'grpo-'));
  const b1 = new ToyPolicy(5);
  const ac = new AbortController();
  const r1 = await trainGrpo({
    config: cfg(dirB, ['trainer.max_steps=6', 'trainer.eval_before_train=false']),
    policy: b1,
    generator: new ToyGenerator(b1),
    env: toyTask(),
    signal: ac.signal,
    onStep: (s) => s === 3 && ac.abort(),
  });
  assert.equal(r1.interrupted, true);
  assert.equal(r1.steps, 3);
  const ck = findLatestCheckpoint(join(dirB, 'ckpts'))!;
  assert.equal(readTrainerState(ck).step, 3);
  // A fresh process: new policy from the same init (the KL reference), then resume.
  const b2 = new ToyPolicy(5);
  const r2 = await trainGrpo({ config: cfg(dirB, ['trainer.max_steps=6', 'trainer.eval_before_train=false', 'trainer.resume_mode=latest']), policy: b2, generator: new ToyGenerator(b2), env: toyTask() });
  assert.equal(r2.steps, 6);
  for (let i = 0; i < a.W.length; i++) assert.ok(Math.abs(a.W[i]! - b2.W[i]!) < 1e-12, `weight ${i}: ${a.W[i]} vs ${b2.W[i]}`);
});

test('a checkpoint save that fails (disk full) leaves the previous one intact and training goes on', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'grpo-'));
  const policy = new ToyPolicy(3);
  const r = await trainGrpo({
    config: cfg(dir, ['trainer.max_steps=4', 'trainer.ckpt_interval=2', 'trainer.eval_before_train=false']),
    policy,
    generator: new ToyGenerator(policy),
    env: toyTask(),
    onStep: (s) => {
      if (s === 3) policy.failSave = true;
    },
  });
  assert.equal(r.steps, 4);
  const root = join(dir, 'ckpts');
  const latest = findLatestCheckpoint(root)!;
  assert.match(latest, /global_step_2$/);
  assert.equal(readTrainerState(latest).step, 2);
  assert.ok(existsSync(join(latest, 'model.json')));
  assert.deepEqual(readdirSync(root).filter((n) => n.startsWith('.')), [], 'no temp folders left behind');
});

test('an empty dataset and a too-small one fail with a clear message', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'grpo-'));
  const policy = new ToyPolicy(3);
  await assert.rejects(trainGrpo({ config: cfg(dir), policy, generator: new ToyGenerator(policy), env: toyTask(0, 4) }), /training set of task 'toy' is empty/);
  await assert.rejects(trainGrpo({ config: cfg(dir), policy, generator: new ToyGenerator(policy), env: toyTask(3, 4) }), /3 prompts, fewer than trainer.train_batch_size=8/);
});

test('SFT on reference completions teaches the toy task', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'sft-'));
  const { trainSft } = await import('../../src/trainer/sft.ts');
  const policy = new ToyPolicy(9);
  const r = await trainSft({ config: cfg(dir), policy, env: toyTask(), generator: new ToyGenerator(policy) }, { steps: 150, batchSize: 8, lr: 0.1 });
  assert.equal(r.skippedSteps, 0);
  assert.ok(r.finalLoss < 0.5, `loss ${r.finalLoss}`);
  assert.equal(r.evals.at(-1)!.accuracy, 1);
});

test('SFT stopAtReward stops at the first evaluation that reaches the reward (a warm start with headroom)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'sft-'));
  const { trainSft } = await import('../../src/trainer/sft.ts');
  const policy = new ToyPolicy(9);
  const seen: number[] = [];
  const r = await trainSft(
    { config: cfg(dir), policy, env: toyTask(), generator: new ToyGenerator(policy), onEval: (s, m) => seen.push(s, m['eval/reward']!) },
    { steps: 150, batchSize: 8, lr: 0.001, evalEvery: 5, stopAtReward: 0.5 },
  );
  assert.ok(r.steps < 150 && r.steps % 5 === 0, `stopped at step ${r.steps}`);
  assert.ok(r.evals.at(-1)!.reward >= 0.5);
  assert.ok(r.evals.slice(0, -1).every((e) => e.reward < 0.5), JSON.stringify(r.evals));
  assert.equal(r.evals.at(-1)!.step, r.steps, 'no extra evaluation after the stop');
  assert.deepEqual(seen, r.evals.flatMap((e) => [e.step, e.reward]));
});
