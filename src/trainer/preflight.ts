// preflight.ts: the checks a run makes before it spends time, shared by the real run and `--dry-run` so that a dry
// run passes only where the run would start: the device exists, the data is there, the model's vocabulary holds
// every token the task uses, and the checkpoint the run would resume is intact and was written under the same
// settings (the very rules the run resumes by: planResume in checkpoint.ts). Each failure is one line that names
// the setting at fault (a DeviceError, DataError or CheckpointError: the CLIs print it and exit 2).
import type { Config } from '../config/schema.ts';
import { checkCudaDevice, chooseBackend, DeviceError } from '../native.ts';
import { GRPO_RESUME_KEYS, planResume, SFT_RESUME_KEYS, type Resumed } from './checkpoint.ts';
import { sftCheckpointRoot } from './setup.ts';
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

/**
 * What the run would resume, by the same rules as the run itself (planResume: the newest intact checkpoint, damaged
 * ones skipped, the model, batch and optimizer settings compared unless forced), or null for a fresh start. Refuses
 * what the run would refuse, as one line: a checkpoint written under other settings, a fresh start
 * (trainer.resume_mode=none) over existing checkpoints, a folder whose checkpoints are all damaged.
 */
export function checkResume(c: Config, o: { phase?: 'GRPO' | 'SFT'; force?: boolean } = {}): Resumed | null {
  const phase = o.phase ?? 'GRPO';
  const root = phase === 'GRPO' ? c.trainer.ckpt_path : sftCheckpointRoot(c);
  return planResume({ config: c, root, phase, keys: phase === 'GRPO' ? GRPO_RESUME_KEYS : SFT_RESUME_KEYS, force: o.force });
}

/** For a dry run's report: `would resume GRPO from step 12 (<dir>)` or `would start fresh (<why>)`. */
export function describeResume(c: Config, r: Resumed | null, phase: 'GRPO' | 'SFT'): string {
  if (r) return `would resume ${phase} from step ${r.state.step} (${r.dir})`;
  const root = phase === 'GRPO' ? c.trainer.ckpt_path : sftCheckpointRoot(c);
  return `would start fresh (${c.trainer.resume_mode === 'none' ? 'trainer.resume_mode=none' : `no ${phase} checkpoint in ${root}`})`;
}

/** What a run would resume (null: a fresh start) in each phase it would run. */
export interface ResumePlan {
  grpo: Resumed | null;
  /** The SFT phase's checkpoint, when that phase would run: `npm run sft`, or a warm start before GRPO has one. */
  sft: Resumed | null;
}

/**
 * Everything above that needs the loaded task and model (the device is checked before loading), and what would be
 * resumed. `kind` is the command: 'grpo' (`npm run train`: GRPO, after an SFT warm start when
 * trainer.sft.warm_start and GRPO has no checkpoint yet, as runTraining does) or 'sft' (`npm run sft`).
 */
export function preflightRun(
  c: Config,
  run: { env: TaskEnv; config: { vocabSize: number } },
  kind: 'grpo' | 'sft',
  o: { force?: boolean } = {},
): ResumePlan {
  checkData(c, run.env, kind);
  checkVocabularyFit(run.env, run.config.vocabSize, c.trainer.policy.model.path);
  if (kind === 'sft') return { grpo: null, sft: checkResume(c, { phase: 'SFT', force: o.force }) };
  const grpo = checkResume(c, { phase: 'GRPO', force: o.force });
  const sft = c.trainer.sft.warm_start && !grpo ? checkResume(c, { phase: 'SFT', force: o.force }) : null;
  return { grpo, sft };
}
