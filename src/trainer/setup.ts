// setup.ts: from a Config to the pieces of a run: device, task environment (optionally on a compact vocabulary),
// policy model, generator, metrics logger. Shared by `npm run train`, `npm run sft` and library callers.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, isAbsolute, join } from 'node:path';
import type { Config } from '../config/schema.ts';
import { childLogger } from '../log/logger.ts';
import { MetricsLogger } from '../log/metrics.ts';
import { defaultDevice } from '../native.ts';
import { loadModel, presetConfig, randomModel, type GptOssModel, type PresetName } from '../model/index.ts';
import { FrozenGptOss, GptOssPolicy } from './gptoss-policy.ts';
import { LocalGenerator, engineOptionsFromConfig } from '../inference/local-generator.ts';
import type { LogprobModel } from './policy.ts';
import { buildTaskEnv } from './env.ts';
import type { TaskEnv } from './task.ts';
import { buildVocabMap, compactTask, type VocabMap } from './vocab.ts';

const log = childLogger('setup');

export class SetupError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SetupError';
  }
}

export function resolveDevice(c: Config): string {
  const d = c.trainer.device;
  if (d === 'auto') return defaultDevice();
  if (d === 'cuda') return 'cuda:0';
  return d;
}

/** `tiny` or `tiny:<preset>` (random init) vs a directory / hub id. */
export function tinyPreset(path: string): PresetName | null {
  if (path === 'tiny') return 'gpt-oss-tiny';
  if (path.startsWith('tiny:')) return path.slice(5) as PresetName;
  return null;
}

const VOCAB_FILE = 'vocab.json';

/** The compact vocabulary saved beside a model (by an SFT run that used data.compact_vocab), if any. */
export function readVocabMap(modelDir: string): VocabMap | null {
  const p = join(modelDir, VOCAB_FILE);
  if (!existsSync(p)) return null;
  const ids = JSON.parse(readFileSync(p, 'utf8')) as { toOriginal: number[] };
  return buildVocabMap([ids.toOriginal]);
}

export function writeVocabMap(dir: string, v: VocabMap): void {
  writeFileSync(join(dir, VOCAB_FILE), JSON.stringify({ note: 'compact vocabulary: model id i is o200k_harmony id toOriginal[i]', toOriginal: Array.from(v.toOriginal) }));
}

function looksLikePath(p: string): boolean {
  return isAbsolute(p) || p.startsWith('.') || p.startsWith('~') || existsSync(p) || existsSync(dirname(p)) && p.includes('/') && !/^[\w.-]+\/[\w.-]+(@[\w.-]+)?$/.test(p);
}

export interface RunPieces {
  device: string;
  env: TaskEnv;
  vocab: VocabMap | null;
  model: GptOssModel;
  policy: GptOssPolicy;
  generator: LocalGenerator;
  /** The KL reference when trainer.ref.model.path is set (otherwise the GRPO loop copies the initial policy). */
  ref?: LogprobModel;
}

/** Loads the task and the model; errors name the config key at fault. */
export async function setupRun(c: Config): Promise<RunPieces> {
  const device = resolveDevice(c);
  const path = c.trainer.policy.model.path;
  let env = await buildTaskEnv(c);
  let vocab: VocabMap | null = null;
  const preset = tinyPreset(path);
  let savedVocab: VocabMap | null = null;
  if (!preset) {
    if (looksLikePath(path) && !existsSync(path)) {
      throw new SetupError(`trainer.policy.model.path: the model directory '${path}' does not exist`);
    }
    if (existsSync(path)) savedVocab = readVocabMap(path);
  }
  if (savedVocab || c.data.compact_vocab) {
    const r = compactTask(env, c.data.compact_vocab_extra, savedVocab ?? undefined);
    env = r.env;
    vocab = r.vocab;
    log.info({ tokens: vocab.size }, 'task mapped onto a compact vocabulary');
  }
  let model: GptOssModel;
  const t0 = Date.now();
  if (preset) {
    let cfg;
    try {
      // On a compact vocabulary the special ids are remapped too (the stop tokens; no pad/bos).
      cfg = presetConfig(preset, vocab ? { vocabSize: vocab.size, eosTokenIds: env.stopTokenIds, padTokenId: null, bosTokenId: null } : {});
    } catch (e) {
      throw new SetupError(`trainer.policy.model.path=${path}: ${(e as Error).message}`);
    }
    model = randomModel(cfg, { device, seed: c.trainer.seed, std: 0.02, deterministic: c.trainer.deterministic });
    log.info({ preset, device, params: model.weights.numParameters(), vocab: cfg.vocabSize }, 'random-initialised model');
  } else {
    try {
      model = await loadModel(path, { device, recompute: c.trainer.gradient_checkpointing, deterministic: c.trainer.deterministic });
    } catch (e) {
      throw new SetupError(`trainer.policy.model.path=${path}: cannot load the model: ${(e as Error).message}`);
    }
    if (vocab && model.config.vocabSize !== vocab.size) {
      throw new SetupError(`trainer.policy.model.path=${path}: the model has a vocabulary of ${model.config.vocabSize} but its vocab.json maps ${vocab.size} tokens`);
    }
  }
  log.info({ ms: Date.now() - t0, device }, 'model ready');
  const policy = new GptOssPolicy(model);
  const generator = new LocalGenerator(model, engineOptionsFromConfig(c.generator));
  let ref: LogprobModel | undefined;
  const refPath = c.trainer.ref.model.path;
  if (refPath && c.trainer.algorithm.use_kl_loss) {
    try {
      ref = new FrozenGptOss(await loadModel(refPath, { device }));
    } catch (e) {
      throw new SetupError(`trainer.ref.model.path=${refPath}: cannot load the reference model: ${(e as Error).message}`);
    }
  }
  return { device, env, vocab, model, policy, generator, ref };
}

export function metricsPath(c: Config): string {
  return c.trainer.metrics_path ?? join('runs', 'metrics', `${c.trainer.run_name}.jsonl`);
}

export async function createMetrics(c: Config): Promise<MetricsLogger> {
  const loggers = Array.isArray(c.trainer.logger) ? c.trainer.logger : [c.trainer.logger];
  const m = new MetricsLogger({
    path: metricsPath(c),
    console: true,
    wandb: loggers.includes('wandb') ? { project: c.trainer.project_name, name: c.trainer.run_name, config: c } : null,
  });
  await m.init();
  return m;
}

/**
 * SIGINT/SIGTERM -> abort signal (the loops save a checkpoint and return); a second Ctrl-C exits at once.
 * Returns a disposer that removes the handlers.
 */
export function interruptSignal(): { signal: AbortSignal; dispose: () => void } {
  const ac = new AbortController();
  const handler = (sig: NodeJS.Signals) => {
    if (ac.signal.aborted) {
      log.error('second %s: exiting without saving', sig);
      process.exit(130);
    }
    log.warn('%s: finishing the current micro-batch, saving a checkpoint, then exiting (press Ctrl-C again to quit at once)', sig);
    ac.abort();
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  return {
    signal: ac.signal,
    dispose: () => {
      process.off('SIGINT', handler);
      process.off('SIGTERM', handler);
    },
  };
}
