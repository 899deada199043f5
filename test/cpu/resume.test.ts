// Resuming by default (trainer.resume_mode=latest), over the toy policy (test/helpers/toy.ts): a re-run continues
// the same run and its metrics file without duplicate steps; a changed model/batch/optimizer key is refused with
// the key named (unless forced); a damaged newest checkpoint falls back to the newest intact one; a fresh start
// (resume_mode=none) over existing checkpoints is refused, and an earlier run's metrics file is moved aside, never
// appended to; max_steps beyond the data adds epochs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig, type ConfigInput } from '../../src/config/index.ts';
import { planGrpoSteps, trainGrpo } from '../../src/trainer/grpo.ts';
import { checkpointDamage, CheckpointError, findLatestCheckpoint, listCheckpoints, readTrainerState } from '../../src/trainer/checkpoint.ts';
import { MetricsLogger, parseMetricsJsonl } from '../../src/log/metrics.ts';
import { ToyGenerator, ToyPolicy, toyTask } from '../helpers/toy.ts';

process.env.GPTOSS_PROGRESS = 'off';

function cfg(dir: string, extra: string[] = []) {
  const base: ConfigInput = {
    trainer: {
      ckpt_path: join(dir, 'ckpts'),
      train_batch_size: 8,
      policy_mini_batch_size: 4,
      micro_train_batch_size_per_gpu: 4,
      micro_forward_batch_size_per_gpu: 8,
      eval_interval: 0,
      eval_before_train: false,
      ckpt_interval: 2,
      max_ckpts_to_keep: -1,
      epochs: 4,
      max_steps: 4,
      policy: { optimizer_config: { lr: 0.05, weight_decay: 0 } },
      algorithm: { use_kl_loss: false },
    },
    generator: { n_samples_per_prompt: 4, sampling_params: { max_generate_length: 3 }, eval_sampling_params: { max_generate_length: 3 } },
  };
  return loadConfig({ config: null, base, overrides: extra });
}

async function train(dir: string, extra: string[] = [], o: { force?: boolean; metrics?: string } = {}) {
  const policy = new ToyPolicy(5);
  const metrics = o.metrics ? new MetricsLogger({ path: o.metrics, console: false }) : undefined;
  const r = await trainGrpo({ config: cfg(dir, extra), policy, generator: new ToyGenerator(policy), env: toyTask(), metrics, forceResume: o.force });
  return { r, policy };
}

const trainSteps = (path: string) => parseMetricsJsonl(readFileSync(path, 'utf8')).filter((r) => r.kind === 'train').map((r) => r.step);

test('a re-run resumes the latest checkpoint and continues the metrics file without duplicate steps', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'resume-'));
  const metrics = join(dir, 'm.jsonl');
  await train(dir, ['trainer.max_steps=3'], { metrics });
  assert.deepEqual(trainSteps(metrics), [1, 2, 3]);
  // The final save is at step 3; pretend the run died after logging step 3 but before that save.
  const ck3 = findLatestCheckpoint(join(dir, 'ckpts'))!;
  assert.equal(readTrainerState(ck3).step, 3);
  writeFileSync(join(dir, 'ckpts', 'latest'), 'global_step_2\n');
  const { r } = await train(dir, ['trainer.max_steps=5'], { metrics });
  // `latest` names step 2: the resume starts there, the rows of step 3 are dropped and redone.
  assert.equal(r.steps, 5);
  assert.deepEqual(trainSteps(metrics), [1, 2, 3, 4, 5]);
  // The same run and the same length again: nothing to do, nothing appended.
  await train(dir, ['trainer.max_steps=5'], { metrics });
  assert.deepEqual(trainSteps(metrics), [1, 2, 3, 4, 5]);
});

test('resuming with a changed model, batch or optimizer key is refused, naming the keys; --force-resume resumes anyway', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'resume-'));
  await train(dir, ['trainer.max_steps=2']);
  await assert.rejects(train(dir, ['trainer.max_steps=4', 'trainer.train_batch_size=16', 'trainer.policy_mini_batch_size=8']), (e: Error) => {
    assert.ok(e instanceof CheckpointError);
    assert.match(e.message, /trainer\.train_batch_size: 8 -> 16/);
    assert.match(e.message, /trainer\.policy_mini_batch_size: 4 -> 8/);
    assert.match(e.message, /--force-resume/);
    assert.doesNotMatch(e.message, /\n/, 'one line');
    return true;
  });
  await assert.rejects(train(dir, ['trainer.max_steps=4', 'trainer.policy.optimizer_config.lr=0.1']), /trainer\.policy\.optimizer_config\.lr: 0\.05 -> 0\.1/);
  await assert.rejects(train(dir, ['trainer.max_steps=4', 'trainer.policy.model.path=tiny:gpt-oss-tiny-large']), /trainer\.policy\.model\.path: "tiny" -> "tiny:gpt-oss-tiny-large"/);
  // Keys that only change how the same run is carried out may change.
  const ok = await train(dir, ['trainer.max_steps=3', 'trainer.micro_train_batch_size_per_gpu=2', 'trainer.ckpt_interval=1']);
  assert.equal(ok.r.steps, 3);
  const forced = await train(dir, ['trainer.max_steps=4', 'trainer.policy.optimizer_config.lr=0.1'], { force: true });
  assert.equal(forced.r.steps, 4);
});

test('a damaged newest checkpoint falls back to the newest intact one', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'resume-'));
  const root = join(dir, 'ckpts');
  await train(dir, ['trainer.max_steps=6']);
  assert.deepEqual(listCheckpoints(root).map((c) => c.step), [6, 4, 2]);
  // A truncated file in the newest (caught by the size manifest in COMPLETE).
  const model6 = join(root, 'global_step_6', 'model.json');
  truncateSync(model6, Math.floor(statSync(model6).size / 2));
  assert.match(checkpointDamage(join(root, 'global_step_6'))!, /model\.json has \d+ bytes where \d+ were written/);
  // Garbage of the right size in the next (caught when the policy cannot load it).
  const model4 = join(root, 'global_step_4', 'model.json');
  writeFileSync(model4, 'x'.repeat(statSync(model4).size));
  assert.equal(checkpointDamage(join(root, 'global_step_4')), null);
  const { r } = await train(dir, ['trainer.max_steps=6']);
  // Resumed from step 2 and trained steps 3..6 again.
  assert.equal(r.steps, 6);
  assert.equal(r.lastCheckpoint, join(root, 'global_step_6'));
  assert.equal(checkpointDamage(join(root, 'global_step_6')), null, 'step 6 was saved again, intact');
  // Every checkpoint damaged: a one-line refusal that names them.
  const all = mkdtempSync(join(tmpdir(), 'resume-'));
  await train(all, ['trainer.max_steps=2', 'trainer.ckpt_interval=0']);
  writeFileSync(join(all, 'ckpts', 'global_step_2', 'trainer_state.json'), '{"step": 2, "epo');
  await assert.rejects(train(all, ['trainer.max_steps=4']), /no intact GRPO checkpoint to resume in .*global_step_2 \(trainer_state\.json has 16 bytes/);
});

test('a fresh start (resume_mode=none) over existing checkpoints is refused; an earlier run\'s metrics file is moved aside', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'resume-'));
  const metrics = join(dir, 'm.jsonl');
  await train(dir, ['trainer.max_steps=2'], { metrics });
  await assert.rejects(train(dir, ['trainer.max_steps=2', 'trainer.resume_mode=none'], { metrics }), /trainer\.resume_mode=none but .* already holds GRPO checkpoints \(newest: step 2\)/);
  // A run that left no checkpoint (ckpt_interval=-1): the next run starts fresh and does not append to its metrics.
  const other = mkdtempSync(join(tmpdir(), 'resume-'));
  const m2 = join(other, 'm.jsonl');
  await train(other, ['trainer.max_steps=2', 'trainer.ckpt_interval=-1'], { metrics: m2 });
  await train(other, ['trainer.max_steps=3', 'trainer.ckpt_interval=-1'], { metrics: m2 });
  assert.deepEqual(trainSteps(m2), [1, 2, 3]);
  assert.ok(existsSync(join(other, 'm.1.jsonl')));
  assert.deepEqual(trainSteps(join(other, 'm.1.jsonl')), [1, 2]);
});

test('max_steps beyond the data adds epochs and says so', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'resume-'));
  // 64 prompts / 8 per step = 8 steps per epoch; 20 steps need 3 epochs.
  const p = planGrpoSteps(cfg(dir, ['trainer.epochs=1', 'trainer.max_steps=20']), 64);
  assert.deepEqual({ epochs: p.epochs, totalSteps: p.totalSteps }, { epochs: 3, totalSteps: 20 });
  assert.match(p.note!, /trainer\.max_steps=20 is more than trainer\.epochs=1 of 8 steps .*running 3 epochs/);
  assert.equal(planGrpoSteps(cfg(dir, ['trainer.epochs=1', 'trainer.max_steps=5']), 64).note, undefined);
  const { r } = await train(dir, ['trainer.epochs=1', 'trainer.max_steps=20', 'trainer.ckpt_interval=0']);
  assert.equal(r.steps, 20);
});
