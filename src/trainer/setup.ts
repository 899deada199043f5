// setup.ts: from a Config to the pieces of a run: device, task environment (optionally on a compact vocabulary),
// policy model, generator, metrics logger. Shared by `npm run train`, `npm run sft` and library callers.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, isAbsolute, join } from 'node:path';
import { assertSupported, processCount, trainingWorldSize } from '../config/load.ts';
import type { Config } from '../config/schema.ts';
import { childLogger } from '../log/logger.ts';
import { MetricsLogger } from '../log/metrics.ts';
import { defaultDevice } from '../native.ts';
import { loadModel, presetConfig, randomModel, LoraAdapters, checkLoraSpec, type GptOssModel, type LoraSpec, type PresetName } from '../model/index.ts';
import { readConfigFile, type GptOssConfig } from '../model/config.ts';
import { resolveModelSource } from '../model/hub.ts';
import type { RandomInitOptions } from '../model/weights.ts';
import { checkpointSource, randomSource, type ParamSource } from '../model/param-source.ts';
import { FrozenGptOss, GptOssPolicy } from './gptoss-policy.ts';
import { LoraPolicy } from './lora-policy.ts';
import { LocalGenerator, engineOptionsFromConfig } from '../inference/local-generator.ts';
import type { Generator, LogprobModel, Policy, ResourceSampler } from './policy.ts';
import { memoryStats, resetPeakMemory, setBatchInvariant } from '../tensor.ts';
import { buildTaskEnv } from './env.ts';
import { DataError, type TaskEnv } from './task.ts';
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

/** A model path that names a preset shape with random weights (randomModelSpec). */
export interface RandomModelSpec {
  preset: PresetName;
  /** Fewer (or more) layers than the preset's (`:layers=N`): e.g. a gpt-oss-20b-shaped model that fits one GPU. */
  numLayers?: number;
}

const RANDOM_SUFFIX = /^(.+?):random(?::layers=(\d+))?$/;

/**
 * A random-initialised model path vs a directory / hub id (null): `tiny` (gpt-oss-tiny), `tiny:<preset>`, or
 * `<preset>:random[:layers=N]`, e.g. `gpt-oss-20b:random` (the full-size shape with random weights, for smoke
 * tests and benchmarks without the checkpoint) or `gpt-oss-20b:random:layers=2`. The preset name is checked where
 * the model is built (presetConfig lists the presets).
 */
export function randomModelSpec(path: string): RandomModelSpec | null {
  if (path === 'tiny') return { preset: 'gpt-oss-tiny' };
  if (path.startsWith('tiny:')) return { preset: path.slice(5) as PresetName };
  const m = RANDOM_SUFFIX.exec(path);
  if (m) return { preset: m[1] as PresetName, numLayers: m[2] === undefined ? undefined : Number(m[2]) };
  if (/:random\b/.test(path)) throw new SetupError(`trainer.policy.model.path=${path}: expected <preset>:random or <preset>:random:layers=N (e.g. gpt-oss-20b:random:layers=2)`);
  return null;
}

const VOCAB_FILE = 'vocab.json';

interface VocabFile {
  toOriginal: number[];
  /** The task the vocabulary was built from, as the config keys that chose it (for error messages). */
  task?: Record<string, unknown>;
}

/** The compact vocabulary saved beside a model (by an SFT run that used data.compact_vocab), if any. */
export function readVocabMap(modelDir: string): VocabMap | null {
  const p = join(modelDir, VOCAB_FILE);
  if (!existsSync(p)) return null;
  const ids = JSON.parse(readFileSync(p, 'utf8')) as VocabFile;
  return buildVocabMap([ids.toOriginal]);
}

/** The task settings a compact vocabulary was built for (the keys that decide which tokens it holds). */
export function vocabTaskKeys(c: Config): Record<string, unknown> {
  const keys: Record<string, unknown> = { 'environment.env_class': c.environment.env_class };
  if (c.environment.env_class === 'synthetic') {
    keys['data.synthetic.difficulty'] = c.data.synthetic.difficulty;
    keys['data.synthetic.reasoning'] = c.data.synthetic.reasoning;
  }
  return keys;
}

export function writeVocabMap(dir: string, v: VocabMap, task?: Record<string, unknown>): void {
  const file: VocabFile & { note: string } = { note: 'compact vocabulary: model id i is o200k_harmony id toOriginal[i]', toOriginal: Array.from(v.toOriginal), ...(task ? { task } : {}) };
  writeFileSync(join(dir, VOCAB_FILE), JSON.stringify(file));
}

function savedVocabTask(modelDir: string): Record<string, unknown> | undefined {
  try {
    return (JSON.parse(readFileSync(join(modelDir, VOCAB_FILE), 'utf8')) as VocabFile).task;
  } catch {
    return undefined;
  }
}

function looksLikePath(p: string): boolean {
  return isAbsolute(p) || p.startsWith('.') || p.startsWith('~') || existsSync(p) || existsSync(dirname(p)) && p.includes('/') && !/^[\w.-]+\/[\w.-]+(@[\w.-]+)?$/.test(p);
}

export interface RunPieces {
  device: string;
  env: TaskEnv;
  vocab: VocabMap | null;
  /** The model's config (the full model's, whatever part of it this process holds). */
  config: GptOssConfig;
  /**
   * One process: the model (policy and engine share it). Several: rank 0's tp=1 engine model, else null (rank 0 holds
   * no whole model: a tp>1 engine slice, or no engine at all).
   */
  model: GptOssModel | null;
  /**
   * One process: a GptOssPolicy over `model` (a LoraPolicy when trainer.policy.model.lora.rank > 0); several: rank
   * 0's driver of the sharded policy (distributed-run.ts).
   */
  policy: Policy;
  /** One process: a LocalGenerator over `model`; several: rank 0's pool of engines. */
  generator: Generator;
  /** The KL reference when trainer.ref.model.path is set (otherwise the GRPO loop copies the initial policy). */
  ref?: LogprobModel;
  /** Per-step peak memory of every rank's device and engine preemptions (the GRPO loop logs them). */
  resources?: ResourceSampler;
}

/**
 * One process's resource sampler: the device allocator's peak since the previous call (then reset) and the
 * engine's preemptions since the previous call (`preemptions` returns the engine's running total).
 */
export function deviceResources(device: string, preemptions: () => number): ResourceSampler {
  let last = preemptions();
  return async () => {
    const peak = memoryStats(device).peakAllocated;
    resetPeakMemory(device);
    const now = preemptions();
    const d = now - last;
    last = now;
    return { peakBytes: [peak], preemptions: d };
  };
}

/** The task (on its compact vocabulary where one applies) and what the model path names, before any weights. */
interface RunTask {
  device: string;
  env: TaskEnv;
  vocab: VocabMap | null;
  path: string;
  /** The preset config of a `<preset>:random` path (null: a directory or hub id). */
  randomConfig: GptOssConfig | null;
}

/** Checks the config, loads the task and maps it onto a compact vocabulary; errors name the config key at fault. */
async function prepareTask(c: Config): Promise<RunTask> {
  assertSupported(c); // a setting this version cannot honour is refused, never silently run as one process
  const device = resolveDevice(c);
  const path = c.trainer.policy.model.path;
  let env = await buildTaskEnv(c);
  let vocab: VocabMap | null = null;
  const random = randomModelSpec(path);
  let savedVocab: VocabMap | null = null;
  if (!random) {
    if (looksLikePath(path) && !existsSync(path)) {
      throw new SetupError(`trainer.policy.model.path: the model directory '${path}' does not exist`);
    }
    if (existsSync(path)) savedVocab = readVocabMap(path);
  }
  if (savedVocab || c.data.compact_vocab) {
    let r;
    try {
      r = compactTask(env, c.data.compact_vocab_extra, savedVocab ?? undefined);
    } catch (e) {
      if (!savedVocab) throw e;
      // The model was fine-tuned on a compact vocabulary of another task: it cannot read this task's tokens
      // (compactTask's DataError counts them and names the first); say which model and, if recorded, which task.
      const task = savedVocabTask(path);
      const madeFor = task ? ` (it was made for ${Object.entries(task).map(([k, v]) => `${k}=${v}`).join(' ')})` : '';
      throw new DataError(`trainer.policy.model.path=${path}: ${(e as Error).message.replace(/^vocab map: /, '')}${madeFor}`);
    }
    env = r.env;
    vocab = r.vocab;
    log.info({ tokens: vocab.size }, 'task mapped onto a compact vocabulary');
  }
  let randomConfig: GptOssConfig | null = null;
  if (random) {
    const { preset, numLayers } = random;
    if (numLayers !== undefined && !(numLayers >= 1)) throw new SetupError(`trainer.policy.model.path=${path}: layers=${numLayers} must be at least 1`);
    try {
      // On a compact vocabulary the special ids are remapped too (the stop tokens; no pad/bos).
      randomConfig = presetConfig(preset, {
        ...(vocab ? { vocabSize: vocab.size, eosTokenIds: env.stopTokenIds, padTokenId: null, bosTokenId: null } : {}),
        ...(numLayers !== undefined ? { numLayers } : {}),
      });
    } catch (e) {
      throw new SetupError(`trainer.policy.model.path=${path}: ${(e as Error).message}`);
    }
  }
  return { device, env, vocab, path, randomConfig };
}

/** The init of a `<preset>:random` model: seeded by trainer.seed, per tensor (randomParam). */
function randomInit(c: Config): RandomInitOptions {
  return { seed: c.trainer.seed, std: 0.02 };
}

function checkVocabSize(t: RunTask, config: GptOssConfig): void {
  if (t.vocab && config.vocabSize !== t.vocab.size) {
    throw new SetupError(`trainer.policy.model.path=${t.path}: the model has a vocabulary of ${config.vocabSize} but its vocab.json maps ${t.vocab.size} tokens`);
  }
}

/** What a process of a distributed run builds its part from: the task, and the model's parameters as a source. */
export interface RunSource {
  device: string;
  env: TaskEnv;
  vocab: VocabMap | null;
  config: GptOssConfig;
  /** Read one tensor (or slice) at a time (param-source.ts); the caller closes it. */
  source: ParamSource;
}

/**
 * As setupRun, without building the model: the task and a ParamSource over the model's parameters (the
 * checkpoint folder, downloaded first for a hub id, or the seeded random weights), so that each rank of a
 * distributed run reads only what it keeps. `device` overrides the config's (a rank's own).
 */
export async function openRunSource(c: Config): Promise<RunSource> {
  const t = await prepareTask(c);
  if (t.randomConfig) {
    log.info({ device: t.device, vocab: t.randomConfig.vocabSize }, 'random-initialised model (each rank draws its own parts)');
    return { device: t.device, env: t.env, vocab: t.vocab, config: t.randomConfig, source: randomSource(t.randomConfig, randomInit(c)) };
  }
  let source: ParamSource;
  try {
    const dir = await resolveModelSource(t.path, {});
    source = checkpointSource(readConfigFile(join(dir, 'config.json')), dir);
  } catch (e) {
    throw new SetupError(`trainer.policy.model.path=${t.path}: cannot load the model: ${(e as Error).message}`);
  }
  try {
    checkVocabSize(t, source.config);
  } catch (e) {
    source.close();
    throw e;
  }
  return { device: t.device, env: t.env, vocab: t.vocab, config: source.config, source };
}

/** Loads the task and the model; errors name the config key at fault. */
/** The trained model's options from the config, for the single-process model and the sharded policy alike. */
export function trainingModelOptions(c: Config): { recompute: boolean; keepAttention: boolean; deterministic: boolean } {
  return {
    recompute: c.trainer.gradient_checkpointing,
    keepAttention: c.trainer.gradient_checkpointing_keep_attention,
    deterministic: c.trainer.deterministic,
  };
}

export async function setupRun(c: Config): Promise<RunPieces & { model: GptOssModel }> {
  setBatchInvariant(c.trainer.batch_invariant); // before any kernel runs (engines, graphs, the trainer)
  const t = await prepareTask(c);
  const { device, env, vocab, path } = t;
  // The adapter spec (dropout targets, dropout on CUDA) is refused before a model is loaded.
  const spec = loraSpecOf(c);
  if (spec) {
    try {
      checkLoraSpec(spec);
    } catch (e) {
      throw new SetupError((e as Error).message);
    }
  }
  let model: GptOssModel;
  const t0 = Date.now();
  if (t.randomConfig) {
    const cfg = t.randomConfig;
    model = randomModel(cfg, { device, ...randomInit(c), deterministic: c.trainer.deterministic });
    log.info({ device, params: model.weights.numParameters(), vocab: cfg.vocabSize }, 'random-initialised model');
  } else {
    try {
      model = await loadModel(path, { device, ...trainingModelOptions(c) });
    } catch (e) {
      throw new SetupError(`trainer.policy.model.path=${path}: cannot load the model: ${(e as Error).message}`);
    }
    checkVocabSize(t, model.config);
  }
  log.info({ ms: Date.now() - t0, device }, 'model ready');
  let policy: GptOssPolicy;
  if (spec) {
    // bf16 adapters on a GPU (the GEMMs' operand dtype; fp32 masters in the policy), f32 on the CPU.
    policy = new LoraPolicy(model, LoraAdapters.init(model.config, spec, device, { seed: c.trainer.seed, dtype: device === 'cpu' ? 'f32' : 'bf16' }), {
      loraplusLrRatio: c.trainer.policy.model.lora.loraplus_lr_ratio,
      dropoutSeed: c.trainer.seed,
    });
    log.info({ rank: spec.rank, alpha: spec.alpha, targets: spec.targets, trainable: policy.numParameters(), base: model.weights.numParameters() }, 'LoRA adapters on a frozen base');
  } else policy = new GptOssPolicy(model);
  const generator = new LocalGenerator(model, engineOptionsFromConfig(c));
  let ref: LogprobModel | undefined;
  const refPath = c.trainer.ref.model.path;
  if (refPath && c.trainer.algorithm.use_kl_loss) {
    try {
      ref = new FrozenGptOss(await loadModel(refPath, { device }));
    } catch (e) {
      throw new SetupError(`trainer.ref.model.path=${refPath}: cannot load the reference model: ${(e as Error).message}`);
    }
  }
  return { device, env, vocab, config: model.config, model, policy, generator, ref, resources: deviceResources(device, () => generator.stats()?.preemptions ?? 0) };
}

/** The LoRA spec of trainer.policy.model.lora, or null when rank is 0 (full fine-tuning). */
export function loraSpecOf(c: Config): LoraSpec | null {
  const l = c.trainer.policy.model.lora;
  if (l.rank === 0) return null;
  return { rank: l.rank, alpha: l.alpha, dropout: l.dropout, targets: l.target_modules };
}

export function metricsPath(c: Config): string {
  return c.trainer.metrics_path ?? join('runs', 'metrics', `${c.trainer.run_name}.jsonl`);
}

/** The SFT phase's metrics file: beside the GRPO one, `<name>-sft.jsonl`. */
export function sftMetricsPath(c: Config): string {
  return metricsPath(c).replace(/(\.jsonl)?$/, '-sft.jsonl');
}

/** The SFT phase's checkpoints: `<trainer.ckpt_path>/sft`. */
export function sftCheckpointRoot(c: Config): string {
  return join(c.trainer.ckpt_path, 'sft');
}

/** The metrics logger of a run's GRPO phase (default) or SFT phase (`phase: 'sft'`: sftMetricsPath, W&B run `<run>-sft`). */
export async function createMetrics(c: Config, o: { phase?: 'grpo' | 'sft'; console?: boolean } = {}): Promise<MetricsLogger> {
  const loggers = Array.isArray(c.trainer.logger) ? c.trainer.logger : [c.trainer.logger];
  const sft = o.phase === 'sft';
  const m = new MetricsLogger({
    path: sft ? sftMetricsPath(c) : metricsPath(c),
    console: o.console ?? true,
    wandb: loggers.includes('wandb') ? { project: c.trainer.project_name, name: sft ? `${c.trainer.run_name}-sft` : c.trainer.run_name, config: c } : null,
    // Every row says which layout produced it: processes (trainer ranks, plus the engines' own when not colocated),
    // trainer ranks, inference engines, ranks per engine, colocated or not.
    constant: {
      'dist/world_size': processCount(c),
      'dist/trainer_ranks': trainingWorldSize(c),
      'dist/colocated': c.trainer.placement.colocate_all ? 1 : 0,
      'dist/num_engines': c.generator.num_inference_engines,
      'dist/engine_tp': c.generator.inference_engine_tensor_parallel_size,
    },
  });
  await m.init();
  return m;
}

/**
 * A repeat within this window is the same Ctrl-C: `npm run` relays the terminal's SIGINT to its child, which as a
 * member of the foreground process group has already received it, so one key press arrives twice.
 */
const SAME_INTERRUPT_MS = 1000;

/**
 * SIGINT/SIGTERM -> abort signal (the loops save a checkpoint and return); a second Ctrl-C (after
 * SAME_INTERRUPT_MS) exits at once. Returns a disposer that removes the handlers.
 */
export function interruptSignal(): { signal: AbortSignal; dispose: () => void } {
  const ac = new AbortController();
  let firstAt = 0;
  const handler = (sig: NodeJS.Signals) => {
    if (ac.signal.aborted) {
      if (Date.now() - firstAt < SAME_INTERRUPT_MS) return;
      log.error('second %s: exiting without saving', sig);
      process.exit(130);
    }
    firstAt = Date.now();
    log.warn('%s: stopping at the next safe point (the running generation or update finishes), saving a checkpoint, then exiting (press Ctrl-C again to quit at once)', sig);
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
