// preflight.ts: the checks a run makes before it spends time, shared by the real run and `--dry-run` so that a dry
// run passes only where the run would start: the device exists, the data is there, the model's vocabulary holds
// every token the task uses, and the checkpoint the run would resume from is readable. Each failure is one line
// that names the setting at fault (a SetupError, DataError or CheckpointError: the CLIs print it and exit 2).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Config } from '../config/schema.ts';
import { Checkpoint } from '../model/safetensors.ts';
import { checkCudaDevice, chooseBackend, DeviceError } from '../native.ts';
import { CheckpointError, readTrainerState, resolveResume } from './checkpoint.ts';
import { DataError, type TaskEnv } from './task.ts';

/** trainer.device (and GPTOSS_DEVICE for auto) names a device this build and machine have. */
export function checkDevice(c: Config): void {
  const d = c.trainer.device;
  if (d === 'cpu') return;
  if (d === 'auto') {
    chooseBackend(process.env.GPTOSS_DEVICE); // throws a DeviceError for a GPTOSS_DEVICE it cannot honour
    return;
  }
  const m = /^cuda(?::(\d+))?$/.exec(d);
  if (!m) throw new DeviceError(`trainer.device=${d}: expected auto, cpu, cuda or cuda:N`);
  checkCudaDevice(`trainer.device=${d}`, m[1] ? Number(m[1]) : 0);
}

/** Every token id of the task (prompts, references, stop tokens) fits the model's vocabulary. */
export function checkVocabularyFit(env: TaskEnv, vocabSize: number, modelPath: string): void {
  let worst = -1;
  let where = '';
  const scan = (ids: Int32Array | number[], what: string) => {
    for (const id of ids) {
      if (id >= vocabSize && id > worst) {
        worst = id;
        where = what;
      }
    }
  };
  scan(env.stopTokenIds, 'the stop tokens');
  for (const [split, xs] of [['train', env.train], ['validation', env.val]] as const) {
    for (const ex of xs) {
      scan(ex.prompt, `the prompt of ${split} example ${ex.id}`);
      if (ex.reference) scan(ex.reference, `the reference answer of ${split} example ${ex.id}`);
    }
  }
  if (worst >= 0) {
    throw new DataError(
      `trainer.policy.model.path=${modelPath}: the model's vocabulary has ${vocabSize} tokens but task '${env.name}' uses token id ${worst} (in ${where}); ` +
        'use a model with the o200k_harmony vocabulary (201,088 tokens), or data.compact_vocab=true for a tiny random-initialised model',
    );
  }
}

/** The data can feed the run: GRPO needs a training batch; SFT needs reference answers. */
export function checkData(c: Config, env: TaskEnv, kind: 'grpo' | 'sft'): void {
  if (env.train.length === 0) throw new DataError(`the training split of task '${env.name}' is empty (check data.train_data and data.max_train_samples)`);
  if (kind === 'grpo' && env.train.length < c.trainer.train_batch_size) {
    throw new DataError(`the training split has ${env.train.length} prompts, fewer than trainer.train_batch_size=${c.trainer.train_batch_size}`);
  }
  if (kind === 'sft' && !env.train.some((e) => e.reference)) throw new DataError(`task '${env.name}' has no reference answers to fine-tune on`);
}

function openAndClose(dir: string): void {
  Checkpoint.open(dir).close();
}

/**
 * The checkpoint the run would resume from (trainer.resume_mode) is complete and its model and optimizer files
 * open (headers, shard list, sizes). Returns its folder, or null when the run starts fresh.
 */
export function checkResume(c: Config): string | null {
  const t = c.trainer;
  const dir = resolveResume(t.resume_mode, t.ckpt_path, t.resume_path);
  if (!dir) return null;
  readTrainerState(dir);
  const part = (sub: string, what: string) => {
    try {
      openAndClose(sub);
    } catch (e) {
      const msg = (e as Error).message.replace(/\s*\n\s*/g, '; ');
      throw new CheckpointError(`cannot resume from ${dir}: its ${what} is unreadable (${msg}); delete that checkpoint folder or set trainer.resume_mode=none`, e);
    }
  };
  part(dir, 'model');
  if (existsSync(join(dir, 'optimizer'))) part(join(dir, 'optimizer'), 'optimizer state');
  return dir;
}

/** Everything above that needs the loaded task and model (the device is checked before loading). */
export function preflightRun(c: Config, run: { env: TaskEnv; model: { config: { vocabSize: number } } }, kind: 'grpo' | 'sft'): { resumeFrom: string | null } {
  checkData(c, run.env, kind);
  checkVocabularyFit(run.env, run.model.config.vocabSize, c.trainer.policy.model.path);
  return { resumeFrom: kind === 'grpo' ? checkResume(c) : null };
}
