// Proof that GRPO learns (CI, CPU): on the synthetic arithmetic task ("What is 3 + 4?" in harmony, answered
// `<|channel|>final<|message|>#### 7<|return|>`), a tiny random-initialised GPT-OSS-architecture model (2 layers,
// hidden 64, 4 experts top-2; the task's tokens on a compact vocabulary, see src/trainer/vocab.ts) is warm-started
// by SFT on reference solutions (600 steps: the format is learnt, about half the sums are right), then trained
// with GRPO (16 prompts x 8 samples per step, lr 3e-4, k3 KL 0.001). Held-out reward (100 problems of the test
// split, 4 samples each at the training temperature 1.0, the distribution GRPO optimises) must rise by at least
// 15 points over the SFT model. About 3-4 minutes on 2 CPU cores; the curve is printed and written to
// runs/ci/grpo-learns.jsonl. GRPO_LEARNS_* environment variables change the recipe for experiments.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../../src/config/index.ts';
import { setupRun } from '../../src/trainer/setup.ts';
import { trainSft } from '../../src/trainer/sft.ts';
import { evaluate, trainGrpo } from '../../src/trainer/grpo.ts';
import { MetricsLogger } from '../../src/log/metrics.ts';

process.env.GPTOSS_PROGRESS = 'off';

const SFT_STEPS = Number(process.env.GRPO_LEARNS_SFT_STEPS ?? 600);
const GRPO_STEPS = Number(process.env.GRPO_LEARNS_STEPS ?? 250);
const GRPO_LR = process.env.GRPO_LEARNS_LR ?? '3e-4';
const N_SAMPLES = process.env.GRPO_LEARNS_N ?? '8';
const SFT_LR = Number(process.env.GRPO_LEARNS_SFT_LR ?? 3e-3);

test('GRPO raises held-out reward by >= 15 points after an SFT warm start (tiny GPT-OSS, synthetic task, CPU)', { timeout: 15 * 60_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'grpo-learns-'));
  mkdirSync('runs/ci', { recursive: true });
  const config = loadConfig({
    config: null,
    overrides: [
      'environment.env_class=synthetic',
      'data.compact_vocab=true',
      `data.synthetic.reasoning=${process.env.GRPO_LEARNS_REASONING ?? 'false'}`,
      'data.synthetic.num_train=2000',
      'data.synthetic.num_val=100',
      'trainer.device=cpu',
      'trainer.policy.model.path=tiny',
      'trainer.seed=42',
      '+generator.chat_template_kwargs={reasoning_effort: low, current_date: "2025-06-28"}',
      `generator.n_samples_per_prompt=${N_SAMPLES}`,
      'generator.sampling_params.max_generate_length=12',
      `generator.sampling_params.temperature=${process.env.GRPO_LEARNS_T ?? '1.0'}`,
      'generator.eval_sampling_params.max_generate_length=12',
      `generator.eval_sampling_params.temperature=${process.env.GRPO_LEARNS_EVAL_T ?? '1.0'}`,
      `generator.eval_n_samples_per_prompt=${process.env.GRPO_LEARNS_EVAL_N ?? '4'}`,
      'trainer.train_batch_size=16',
      'trainer.policy_mini_batch_size=16',
      'trainer.micro_train_batch_size_per_gpu=64',
      'trainer.micro_forward_batch_size_per_gpu=128',
      'trainer.eval_batch_size=100',
      'trainer.eval_before_train=true',
      'trainer.eval_interval=25',
      `trainer.max_steps=${GRPO_STEPS}`,
      'trainer.epochs=10',
      `trainer.policy.optimizer_config.lr=${GRPO_LR}`,
      'trainer.policy.optimizer_config.weight_decay=0',
      'trainer.algorithm.use_kl_loss=true',
      'trainer.algorithm.kl_loss_coef=0.001',
      'trainer.resume_mode=none',
      'trainer.ckpt_interval=-1',
      `trainer.ckpt_path=${join(dir, 'ckpts')}`,
      'trainer.micro_train_batch_size_per_gpu=64',
    ],
  });
  const t0 = Date.now();
  const run = await setupRun(config);
  const metrics = new MetricsLogger({ path: 'runs/ci/grpo-learns.jsonl', console: false });
  const sft = await trainSft({ config, policy: run.policy, env: run.env, metrics }, { steps: SFT_STEPS, batchSize: 32, lr: SFT_LR });
  const tSft = (Date.now() - t0) / 1000;
  const val = run.env.val;
  const before = await evaluate(run.generator, run.env, val, config, 1);
  metrics.log(0, { 'eval/reward': before.reward, 'eval/accuracy': before.accuracy }, 'eval');
  const curve: string[] = [`SFT ${SFT_STEPS} steps (loss ${sft.finalLoss.toFixed(3)}, ${tSft.toFixed(0)} s): held-out reward ${before.reward.toFixed(2)}`];
  const r = await trainGrpo({
    config: { ...config, trainer: { ...config.trainer, eval_before_train: false } },
    policy: run.policy,
    generator: run.generator,
    env: run.env,
    metrics,
    onStep: (s, m) => {
      if (s % 25 === 0) curve.push(`GRPO step ${s}: train reward ${m['reward/mean']!.toFixed(2)}, kl ${m.kl!.toFixed(4)}, ${m['time/step']!.toFixed(1)} s/step`);
    },
    onEval: (s, m) => curve.push(`GRPO step ${s}: held-out reward ${m['eval/reward']!.toFixed(2)}`),
  });
  const after = await evaluate(run.generator, run.env, val, config, 2);
  const total = (Date.now() - t0) / 1000;
  curve.push(`final held-out reward ${after.reward.toFixed(2)} (from ${before.reward.toFixed(2)}), ${r.steps} GRPO steps, total ${total.toFixed(0)} s`);
  console.log(curve.join('\n'));
  metrics.log(r.steps, { 'final/before': before.reward, 'final/after': after.reward, 'time/total': total }, 'eval');
  await metrics.close();
  assert.equal(r.skippedSteps, 0);
  assert.ok(after.reward - before.reward >= 0.15, `held-out reward ${before.reward} -> ${after.reward}: less than +15 points\n${curve.join('\n')}`);
});
