// Config keys that used to be accepted and ignored and now work: data.shuffle and trainer.dump_eval_results.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../../src/config/index.ts';
import { trainGrpo } from '../../src/trainer/grpo.ts';
import { epochOrder } from '../../src/trainer/rng.ts';
import type { SamplingParams } from '../../src/trainer/policy.ts';
import { ToyGenerator, ToyPolicy, toyTask } from '../helpers/toy.ts';

process.env.GPTOSS_PROGRESS = 'off';

function cfg(dir: string, extra: string[]) {
  return loadConfig({
    config: null,
    base: {
      trainer: { ckpt_path: join(dir, 'ckpts'), resume_mode: 'none', train_batch_size: 4, policy_mini_batch_size: 4, ckpt_interval: -1, max_steps: 2, eval_interval: 2, eval_before_train: true },
      generator: { n_samples_per_prompt: 2, sampling_params: { max_generate_length: 3 }, eval_sampling_params: { max_generate_length: 3 } },
    },
    overrides: extra,
  });
}

/** The prompts of each training generate call (evaluations use greedy sampling, temperature 0). */
class RecordingGenerator extends ToyGenerator {
  readonly trainPrompts: Int32Array[][] = [];
  override async generate(prompts: Int32Array[], params: SamplingParams, onProgress?: (n: number) => void) {
    if (params.temperature > 0) this.trainPrompts.push(prompts);
    return super.generate(prompts, params, onProgress);
  }
}

test('data.shuffle=false trains on the prompts in file order; true permutes them per epoch', async () => {
  assert.deepEqual(epochOrder(1, 0, 5, false), [0, 1, 2, 3, 4]);
  assert.notDeepEqual(epochOrder(1, 0, 50, true), epochOrder(1, 0, 50, false));
  assert.notDeepEqual(epochOrder(1, 0, 50, true), epochOrder(1, 1, 50, true), 'a new permutation each epoch');
  const dir = mkdtempSync(join(tmpdir(), 'grpo-opt-'));
  try {
    const env = toyTask();
    for (const shuffle of [false, true]) {
      const policy = new ToyPolicy(3);
      const gen = new RecordingGenerator(policy);
      await trainGrpo({ config: cfg(dir, [`data.shuffle=${shuffle}`]), policy, generator: gen, env });
      const firstStep = gen.trainPrompts[0]!.filter((_, i) => i % 2 === 0).map((p) => Array.from(p).join(','));
      const inFileOrder = env.train.slice(0, 4).map((e) => Array.from(e.prompt).join(','));
      if (shuffle) assert.notDeepEqual(firstStep, inFileOrder);
      else assert.deepEqual(firstStep, inFileOrder);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('trainer.dump_eval_results writes every evaluation completion under trainer.export_path', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'grpo-opt-'));
  try {
    const env = toyTask();
    const policy = new ToyPolicy(3);
    const exportPath = join(dir, 'export');
    await trainGrpo({ config: cfg(dir, ['trainer.dump_eval_results=true', `trainer.export_path=${exportPath}`]), policy, generator: new ToyGenerator(policy), env });
    for (const step of [0, 2]) {
      const file = join(exportPath, 'dumped_evals', `global_step_${step}_evals.jsonl`);
      assert.ok(existsSync(file), file);
      const rows = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      assert.equal(rows.length, env.val.length, 'one row per validation prompt (eval_n_samples_per_prompt 1)');
      for (const k of ['id', 'answer', 'completion', 'reward', 'correct', 'finishReason']) assert.ok(k in rows[0]!, k);
    }
    const off = join(dir, 'export-off');
    await trainGrpo({ config: cfg(dir, [`trainer.export_path=${off}`]), policy, generator: new ToyGenerator(policy), env });
    assert.equal(existsSync(off), false, 'nothing dumped unless asked');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
