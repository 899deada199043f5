// grpo.ts: the GRPO training loop, written against the Policy / Generator / TaskEnv interfaces.
//
// One step (trainer.train_batch_size prompts):
//   prompts -> n samples each (generator) -> rewards -> group advantages -> old log-probs (the trainer's own
//   forward, at the sampling temperature; compared with the generator's to report the gap) -> reference log-probs
//   (when the k3 KL loss is on) -> for each mini-batch (policy_mini_batch_size prompts): micro-batches of
//   micro_train_batch_size_per_gpu sequences, forward (packed when use_sample_packing) + PPO-clip/KL loss +
//   backward, gradients accumulated; loss normalisers are the mini-batch's, so accumulation equals one big batch
//   -> grad-norm clip -> AdamW (a step whose loss or grad norm is not finite is skipped and counted) -> metrics.
// Evaluation (greedy by default) on the validation split every eval_interval steps; checkpoints every
// ckpt_interval steps and when the run is interrupted (signal).
//
// In code: trainGrpo sets the run up (startRun: reference copy, resume) and loops over steps; grpoStep is the
// table of contents of one step: generateRollouts -> scoreRollouts -> oldAndRefLogprobs -> updatePolicy -> weight
// sync -> stepMetrics, each phase timed into time/<phase> (PhaseTimes).
import type { Config } from '../config/schema.ts';
import { childLogger } from '../log/logger.ts';
import { dumpEvalResults, exportDir, type EvalDumpRow } from '../log/eval-dump.ts';
import { MetricsLogger, Progress, type Metrics } from '../log/metrics.ts';
import { groupAdvantages, stats } from '../rl/advantages.ts';
import { policyLoss, policyTokenGradient, meanK3, type PolicyLossOptions } from '../rl/loss.ts';
import { CheckpointError, GRPO_RESUME_KEYS, resumeTraining, saveTrainingCheckpoint, type TrainerState } from './checkpoint.ts';
import type { Completion, Generator, LogprobModel, LogprobOutput, Policy, ResourceSample, ResourceSampler, SamplingParams, SequenceBatch } from './policy.ts';
import { epochOrder, Rng } from './rng.ts';
import { synchronize } from '../tensor.ts';
import { DataError, type TaskEnv, type TaskExample } from './task.ts';
import { episodeLimits, episodeMetrics, isMultiTurn, multiTurnRollouts, type EpisodeResult } from './multiturn.ts';

const log = childLogger('grpo');

export interface GrpoDeps {
  config: Config;
  policy: Policy;
  generator: Generator;
  env: TaskEnv;
  /** The frozen KL reference; default: a frozen copy of the policy taken before any resume. */
  ref?: LogprobModel;
  /** Sampled after every step: peak memory per rank (memory/peak_gb*) and engine preemptions (engine/preemptions). */
  resources?: ResourceSampler;
  metrics?: MetricsLogger;
  /** Abort (e.g. SIGINT): the loop saves a checkpoint at the next safe point and returns. */
  signal?: AbortSignal;
  /** Resume a checkpoint even when its model, batch or optimizer settings differ from config (`--force-resume`). */
  forceResume?: boolean;
  /** Called after each step with its metrics (tests, UIs). */
  onStep?: (step: number, m: Metrics) => void;
  onEval?: (step: number, m: Metrics) => void;
}

export interface GrpoResult {
  steps: number;
  skippedSteps: number;
  interrupted: boolean;
  lastCheckpoint: string | null;
  evals: Array<{ step: number; reward: number; accuracy: number }>;
}

/** Learning rate at optimizer step k (0-based) under the configured schedule. */
export function learningRate(opt: Config['trainer']['policy']['optimizer_config'], k: number, total: number): number {
  const warm = opt.num_warmup_steps;
  if (warm > 0 && k < warm) return (opt.lr * (k + 1)) / warm;
  switch (opt.scheduler) {
    case 'constant':
    case 'constant_with_warmup':
      return opt.lr;
    case 'linear':
      return opt.lr * Math.max(0, 1 - (k - warm) / Math.max(1, total - warm));
    case 'cosine':
      return opt.lr * 0.5 * (1 + Math.cos((Math.PI * Math.min(1, (k - warm) / Math.max(1, total - warm)))));
  }
}

/**
 * Lets the event loop run (signal handlers such as SIGINT, timers, W&B uploads). CPU ops are synchronous and
 * `await` of a settled promise is only a microtask, so without this a long run would never see Ctrl-C.
 */
export function yieldToEventLoop(): Promise<void> {
  return new Promise((r) => setImmediate(r));
}

function chunks<T>(xs: T[], n: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < xs.length; i += n) out.push(xs.slice(i, i + n));
  return out;
}

function concat(a: Int32Array, b: Int32Array): Int32Array {
  const out = new Int32Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

/** Log-probs of many sequences in micro-batches (no grad). */
async function batchedLogprobs(
  model: LogprobModel,
  batch: SequenceBatch,
  micro: number,
  opts: { entropy: boolean; temperature: number; packed: boolean },
  progress?: Progress,
): Promise<LogprobOutput> {
  const lp: Float32Array[] = [];
  const ent: Float32Array[] = [];
  for (let i = 0; i < batch.sequences.length; i += micro) {
    const sub = { sequences: batch.sequences.slice(i, i + micro), promptLens: batch.promptLens.slice(i, i + micro) };
    const r = await model.logprobs(sub, opts);
    lp.push(...r.logprobs);
    if (r.entropy) ent.push(...r.entropy);
    progress?.tick(sub.sequences.length);
  }
  return { logprobs: lp, entropy: opts.entropy ? ent : undefined };
}

export interface EvalResult {
  reward: number;
  accuracy: number;
  responseLength: number;
  samples: Array<{ id: string; completion: string; reward: number }>;
  /** Every completion, when evaluate() was asked for them (trainer.dump_eval_results). */
  all?: EvalDumpRow[];
}

/** Greedy (by default) evaluation on examples. */
export async function evaluate(
  generator: Generator,
  env: TaskEnv,
  examples: TaskExample[],
  config: Config,
  seed: number,
  opts: { keepAll?: boolean } = {},
): Promise<EvalResult> {
  const g = config.generator;
  const ep = g.eval_sampling_params;
  const n = g.eval_n_samples_per_prompt;
  const params: SamplingParams = {
    maxTokens: ep.max_generate_length ?? g.sampling_params.max_generate_length,
    temperature: ep.temperature,
    topP: ep.top_p,
    topK: ep.top_k,
    seed,
    stopTokenIds: [...env.stopTokenIds, ...g.sampling_params.stop_token_ids],
  };
  let rSum = 0;
  let cSum = 0;
  let lenSum = 0;
  let count = 0;
  const samples: EvalResult['samples'] = [];
  const all: EvalDumpRow[] | undefined = opts.keepAll ? [] : undefined;
  const progress = new Progress('eval', examples.length * n, { unit: 'seq' });
  for (const batch of chunks(examples, config.trainer.eval_batch_size)) {
    const prompts = batch.flatMap((e) => Array.from({ length: n }, () => e.prompt));
    // Multi-turn environments: whole episodes (their reward is the environment's, per zero_reward_on_non_stop).
    const episodes = isMultiTurn(env) ? (await multiTurnRollouts(generator, env, batch, n, episodeLimits(g, params.maxTokens), params)).episodes : null;
    const outs = episodes ? episodes.map((e) => e.completion) : await generator.generate(prompts, params);
    outs.forEach((c, i) => {
      const ex = batch[Math.floor(i / n)]!;
      const r = episodes ? (g.zero_reward_on_non_stop && c.finishReason !== 'stop' ? { reward: 0, correct: false } : episodes[i]!.reward) : env.reward(ex, c.tokens, c.finishReason);
      rSum += r.reward;
      cSum += r.correct ? 1 : 0;
      lenSum += c.tokens.length;
      count++;
      const text = () => (env.decode ? env.decode(c.tokens) : Array.from(c.tokens).join(' '));
      if (samples.length < 4) samples.push({ id: ex.id, completion: text(), reward: r.reward });
      all?.push({ id: ex.id, answer: ex.answer, completion: text(), reward: r.reward, correct: r.correct, finishReason: c.finishReason });
    });
    progress.tick(prompts.length);
  }
  progress.finish();
  return { reward: count ? rSum / count : 0, accuracy: count ? cSum / count : 0, responseLength: count ? lenSum / count : 0, samples, ...(all ? { all } : {}) };
}

/**
 * Steps and epochs of a GRPO run: every epoch when trainer.max_steps is null; else max_steps, adding epochs when
 * the data holds fewer steps than that (with a note saying so, which the loop logs at its start).
 */
export function planGrpoSteps(config: Config, trainPrompts: number): { stepsPerEpoch: number; epochs: number; totalSteps: number; note?: string } {
  const t = config.trainer;
  const stepsPerEpoch = Math.floor(trainPrompts / t.train_batch_size);
  if (t.max_steps === null) return { stepsPerEpoch, epochs: t.epochs, totalSteps: stepsPerEpoch * t.epochs };
  const needed = Math.ceil(t.max_steps / Math.max(1, stepsPerEpoch));
  if (needed <= t.epochs) return { stepsPerEpoch, epochs: t.epochs, totalSteps: Math.min(t.max_steps, stepsPerEpoch * t.epochs) };
  return {
    stepsPerEpoch,
    epochs: needed,
    totalSteps: t.max_steps,
    note: `trainer.max_steps=${t.max_steps} is more than trainer.epochs=${t.epochs} of ${stepsPerEpoch} steps (${trainPrompts} prompts / ${t.train_batch_size} per step) hold: running ${needed} epochs`,
  };
}

/** Throws a DataError when the task cannot feed a step (empty split, fewer prompts than a batch). */
export function checkGrpoInputs(config: Config, env: TaskEnv): void {
  const t = config.trainer;
  if (env.train.length === 0) throw new DataError(`GRPO: the training set of task '${env.name}' is empty (check data.train_data / data.max_train_samples)`);
  if (env.train.length < t.train_batch_size) {
    throw new DataError(`GRPO: the training set has ${env.train.length} prompts, fewer than trainer.train_batch_size=${t.train_batch_size}`);
  }
}

// ---- the run ------------------------------------------------------------------------------------------------------
/** What every phase reads: the dependencies, settings derived from the config, and the resumable state. */
interface GrpoRun {
  d: GrpoDeps;
  config: Config;
  t: Config['trainer'];
  alg: Config['trainer']['algorithm'];
  g: Config['generator'];
  /** Samples per prompt. */
  n: number;
  /** The k3 KL loss is on (then `ref` is set). */
  useKl: boolean;
  ref: LogprobModel | undefined;
  /** The reference was copied here (and is disposed at the end). */
  ownRef: boolean;
  /** Step, epoch and data position; updated as steps complete. */
  state: TrainerState;
  /** Skipped and taken optimizer steps over the whole run (saved in checkpoints). */
  counters: { skippedSteps: number; optimizerSteps: number };
  rng: Rng;
  totalSteps: number;
  /** Epochs of the run: trainer.epochs, or more when max_steps needs them (planGrpoSteps). */
  epochs: number;
  /** The step this attempt resumed from (0 for a fresh run). */
  resumedStep: number;
  /** Optimizer steps of the whole run (the LR schedule's length). */
  totalOptSteps: number;
  /** Temperature of the trainer's log-probs: the sampling temperature (1 for greedy sampling). */
  lpTemperature: number;
  evalExamples: TaskExample[];
  evals: GrpoResult['evals'];
  lastCheckpoint: string | null;
  lastSavedStep: number;
  interrupted: boolean;
  /** GRPO steps done of totalSteps, with the rate and ETA (ticks once per completed step). */
  overall: Progress;
}

/** Per-phase wall times of one step (s), logged as time/<phase>; a phase run several times adds up. */
class PhaseTimes {
  readonly times: Record<string, number> = {};
  /**
   * device: the policy's. On a GPU the ops of a phase only enqueue work, so each phase ends by waiting for the
   * device: its time is its own GPU work, not left to be paid by whichever later phase reads a result first (a few
   * synchronisations per step; the device would be waited for at the step's end anyway).
   */
  constructor(private readonly device: string) {}
  async time<T>(name: string, f: () => Promise<T>): Promise<T> {
    const a = performance.now();
    const r = await f();
    synchronize(this.device);
    this.times[name] = (this.times[name] ?? 0) + (performance.now() - a) / 1000;
    return r;
  }
}

/** Whether the training forwards take the loss gradient (trainer.fused_lm_head_backward: true, or 'auto' and the policy has it). */
export function usesFusedLmHead(key: boolean | 'auto', policy: Pick<Policy, 'fusedLmHeadBackward'>): boolean {
  return key === true || (key === 'auto' && policy.fusedLmHeadBackward === true);
}

/**
 * Sets a run up: the KL reference (a frozen copy of the initial weights, taken before any checkpoint is loaded),
 * then the resume (trainer state, policy weights and optimizer, generator weights) when the config asks for one.
 */
async function startRun(d: GrpoDeps): Promise<GrpoRun> {
  const { config, policy, generator, env } = d;
  const t = config.trainer;
  const alg = t.algorithm;
  const useKl = alg.use_kl_loss && alg.kl_loss_coef > 0;
  if (t.fused_lm_head_backward === true && !policy.fusedLmHeadBackward) {
    throw new Error("trainer.fused_lm_head_backward=true: this policy has no fused LM-head backward (forward(mb, { lossGradient })); set it false or 'auto'");
  }
  // The reference must be the initial weights: copy before loading any checkpoint.
  let ref: LogprobModel | undefined = d.ref;
  let ownRef = false;
  if (useKl && !ref) {
    ref = await policy.frozenCopy();
    ownRef = true;
  }

  let state: TrainerState = { step: 0, epoch: 0, dataPosition: 0, rng: new Rng(t.seed).state(), counters: { skippedSteps: 0, optimizerSteps: 0 } };
  const resumed = await resumeTraining({ config, root: t.ckpt_path, phase: 'GRPO', keys: GRPO_RESUME_KEYS, policy, generator, metricsPath: d.metrics?.path, force: d.forceResume });
  if (resumed) state = resumed.state;
  const resumeDir = resumed?.dir ?? null;
  const counters = { skippedSteps: 0, optimizerSteps: 0, ...state.counters };
  const rng = Rng.fromState(state.rng);

  const plan = planGrpoSteps(config, env.train.length);
  if (plan.note) log.info(plan.note);
  const totalSteps = plan.totalSteps;
  const miniPerStep = t.train_batch_size / t.policy_mini_batch_size;
  const sampling = config.generator.sampling_params;
  return {
    d,
    config,
    t,
    alg,
    g: config.generator,
    n: config.generator.n_samples_per_prompt,
    useKl,
    ref,
    ownRef,
    state,
    counters,
    rng,
    totalSteps,
    epochs: plan.epochs,
    resumedStep: resumed?.state.step ?? 0,
    totalOptSteps: totalSteps * miniPerStep * t.update_epochs_per_batch,
    lpTemperature: sampling.temperature > 0 ? sampling.temperature : 1,
    evalExamples: t.eval_max_samples ? env.val.slice(0, t.eval_max_samples) : env.val,
    evals: [],
    lastCheckpoint: resumeDir,
    lastSavedStep: resumeDir ? state.step : -1,
    interrupted: false,
    // The run's overall progress: leads the terminal's status line and the per-step metrics line (step k/N, ETA).
    overall: new Progress('GRPO step', totalSteps, { unit: 'step', overall: true, startAt: state.step }),
  };
}

/** Evaluates on the validation examples (if any), logs eval/* and time/eval, and records the result. */
async function runEval(run: GrpoRun, step: number): Promise<void> {
  const { d, t } = run;
  if (run.evalExamples.length === 0) return;
  const t0 = performance.now();
  const r = await evaluate(d.generator, d.env, run.evalExamples, run.config, t.seed + 7919 * step, { keepAll: t.dump_eval_results });
  if (r.all) log.info({ file: dumpEvalResults(exportDir(t), step, r.all) }, 'evaluation completions dumped');
  const m: Metrics = { 'eval/reward': r.reward, 'eval/accuracy': r.accuracy, 'eval/response_len': r.responseLength, 'time/eval': (performance.now() - t0) / 1000 };
  run.evals.push({ step, reward: r.reward, accuracy: r.accuracy });
  d.metrics?.log(step, m, 'eval');
  if (r.samples[0]) log.debug({ sample: r.samples[0] }, 'eval sample');
  d.onEval?.(step, m);
}

/**
 * Saves a training checkpoint (policy, optimizer, trainer state with the RNG and counters). A failed save is
 * logged and the run goes on, except when it was interrupted (then that checkpoint is the last chance: it throws).
 */
async function saveCheckpoint(run: GrpoRun): Promise<void> {
  const { t, d } = run;
  const st: TrainerState = { ...run.state, rng: run.rng.state(), counters: run.counters, config: run.config };
  try {
    run.lastCheckpoint = await saveTrainingCheckpoint({ root: t.ckpt_path, state: st, writeModel: (dir) => d.policy.save(dir), keep: t.max_ckpts_to_keep });
    run.lastSavedStep = run.state.step;
    log.info({ dir: run.lastCheckpoint }, 'checkpoint saved');
  } catch (e) {
    if (e instanceof CheckpointError) log.error(e.message);
    else throw e;
    if (run.interrupted) throw e;
  }
}

// ---- the phases of a step -------------------------------------------------------------------------------------------
/** The rollout phase's output. */
interface Rollouts {
  /** n copies of each example's prompt, example by example. */
  prompts: Int32Array[];
  /** One completion per prompt. */
  completions: Completion[];
  /** Response tokens sampled. */
  genTokens: number;
  /** Multi-turn environments: the episode behind each completion (its reward, loss mask, turns, tool calls). */
  episodes?: EpisodeResult[];
}

/** Rollout: n samples of each example's prompt from the generator (timed as 'generate'). */
async function generateRollouts(run: GrpoRun, step: number, examples: TaskExample[], times: PhaseTimes): Promise<Rollouts> {
  const { d, t, n } = run;
  const sampling = run.g.sampling_params;
  const prompts = examples.flatMap((e) => Array.from({ length: n }, () => e.prompt));
  const params: SamplingParams = {
    maxTokens: sampling.max_generate_length,
    temperature: sampling.temperature,
    topP: sampling.top_p,
    topK: sampling.top_k,
    seed: sampling.seed ?? (t.seed * 1000003 + step * 7919) >>> 0,
    stopTokenIds: [...d.env.stopTokenIds, ...sampling.stop_token_ids],
  };
  if (isMultiTurn(d.env)) {
    const env = d.env;
    const mt = await times.time('generate', () => multiTurnRollouts(d.generator, env, examples, n, episodeLimits(run.g, params.maxTokens), params));
    return { ...mt, genTokens: mt.episodes.reduce((a, e) => a + e.mask.reduce((x, y) => x + y, 0), 0) };
  }
  const genProgress = new Progress(`step ${step} generate`, prompts.length * params.maxTokens, { unit: 'tok' });
  let lastDone = 0;
  const completions: Completion[] = await times.time('generate', () =>
    d.generator.generate(prompts, params, (done) => {
      genProgress.tick(done - lastDone);
      lastDone = done;
    }),
  );
  genProgress.finish();
  return { prompts, completions, genTokens: completions.reduce((a, c) => a + c.tokens.length, 0) };
}

/** The scoring phase's output. */
interface Scored {
  /** Per completion. */
  rewards: Float32Array;
  /** Completions judged correct, and those that ended on a stop token. */
  correct: number;
  stopped: number;
  adv: ReturnType<typeof groupAdvantages>;
  /** Completions that take part in the update (indices into the rollouts). */
  keep: number[];
  /** Prompt + completion of each kept one. */
  batch: SequenceBatch;
  /** Advantage of each sequence of `batch`. */
  advantages: number[];
}

/**
 * Rewards and advantages: the task's reward per completion (0 where zero_reward_on_non_stop applies), group
 * advantages over each prompt's n samples, then the sequences the update uses (non-empty; optionally not in a
 * zero-variance group, and only those that stopped).
 */
function scoreRollouts(run: GrpoRun, examples: TaskExample[], r: Rollouts): Scored {
  const { n, g, alg, d } = run;
  const { prompts, completions } = r;
  const rewards = new Float32Array(prompts.length);
  let correct = 0;
  let stopped = 0;
  completions.forEach((c, i) => {
    const ex = examples[Math.floor(i / n)]!;
    let rw = r.episodes ? r.episodes[i]!.reward : d.env.reward(ex, c.tokens, c.finishReason);
    if (g.zero_reward_on_non_stop && c.finishReason !== 'stop') rw = { reward: 0, correct: false };
    rewards[i] = rw.reward;
    if (rw.correct) correct++;
    if (c.finishReason === 'stop') stopped++;
  });
  const groupIds = Int32Array.from(prompts, (_, i) => Math.floor(i / n));
  const adv = groupAdvantages(rewards, groupIds, { normByStd: alg.advantage_estimator === 'grpo' && alg.grpo_norm_by_std });

  let keep = prompts.map((_, i) => i).filter((i) => completions[i]!.tokens.length > 0);
  if (alg.zero_variance_filter) {
    const gs = adv.groupStd;
    keep = keep.filter((i) => n === 1 || gs[groupIds[i]!]! > 0);
  }
  if (g.apply_overlong_filtering) keep = keep.filter((i) => completions[i]!.finishReason === 'stop');
  const batch: SequenceBatch = {
    sequences: keep.map((i) => concat(prompts[i]!, completions[i]!.tokens)),
    promptLens: keep.map((i) => prompts[i]!.length),
    // Multi-turn: only the model's own tokens enter the loss (environment messages and framing are masked).
    ...(r.episodes ? { lossMasks: keep.map((i) => r.episodes![i]!.mask) } : {}),
  };
  return { rewards, correct, stopped, adv, keep, batch, advantages: keep.map((i) => adv.advantages[i]!) };
}

/** The log-prob phase's output. */
interface StepLogprobs {
  /** The policy's log-probs (and entropy) of each kept response before the update. */
  old: LogprobOutput;
  /** The reference's, when the KL loss is on. */
  ref: LogprobOutput | undefined;
  /** Generator minus trainer log-prob of the same tokens: sum, sum of |diff|, max |diff|, count. */
  gap: { sum: number; abs: number; max: number; n: number };
  /** Sum and count of the old entropies. */
  entropy: { sum: number; n: number };
}

/**
 * Old and reference log-probs of the kept responses, in micro-batches without gradients (timed as 'old_logprobs'
 * and 'ref_logprobs'), plus the generator/trainer log-prob gap and the entropy they give.
 */
async function oldAndRefLogprobs(run: GrpoRun, step: number, r: Rollouts, s: Scored, times: PhaseTimes): Promise<StepLogprobs> {
  const { t, d, ref, useKl } = run;
  const fwdOpts = { entropy: true, temperature: run.lpTemperature, packed: t.use_sample_packing };
  const old = await times.time('old_logprobs', () =>
    batchedLogprobs(d.policy, s.batch, t.micro_forward_batch_size_per_gpu * (d.policy.dataParallelSize ?? 1), fwdOpts, new Progress(`step ${step} old log-probs`, s.batch.sequences.length, { unit: 'seq' })),
  );
  const refOut = useKl && ref ? await times.time('ref_logprobs', () => batchedLogprobs(ref, s.batch, t.micro_forward_batch_size_per_gpu * (d.policy.dataParallelSize ?? 1), { ...fwdOpts, entropy: false })) : undefined;
  const gap = { sum: 0, abs: 0, max: 0, n: 0 };
  s.keep.forEach((i, j) => {
    const a = r.completions[i]!.logprobs;
    const b = old.logprobs[j]!;
    const mask = s.batch.lossMasks?.[j];
    for (let k = 0; k < Math.min(a.length, b.length); k++) {
      if (mask && !mask[k]) continue; // environment tokens: not sampled, no generator log-prob
      const diff = a[k]! - b[k]!;
      if (!Number.isFinite(diff)) continue;
      gap.sum += diff;
      gap.abs += Math.abs(diff);
      gap.max = Math.max(gap.max, Math.abs(diff));
      gap.n++;
    }
  });
  const entropy = { sum: 0, n: 0 };
  (old.entropy ?? []).forEach((e, j) => {
    const mask = s.batch.lossMasks?.[j];
    e.forEach((v, k) => {
      if (mask && !mask[k]) return;
      entropy.sum += v;
      entropy.n++;
    });
  });
  return { old, ref: refOut, gap, entropy };
}

/** The update phase's output. */
interface UpdateStats {
  /** Sum of the micro-batch losses and the number of mini-batches. */
  lossSum: number;
  lossCount: number;
  /** Token counts and sums of the loss's per-token statistics. */
  sums: { tokens: number; clipped: number; dualClipped: number; kl: number; ratio: number };
  gradNormSum: number;
  gradNormCount: number;
  /** An optimizer step of this step was skipped (non-finite loss or grad norm). */
  stepSkipped: boolean;
  /** The learning rate of the last optimizer step (0 if none). */
  lr: number;
}

/**
 * Policy update: update_epochs_per_batch passes over the kept sequences; per mini-batch (policy_mini_batch_size
 * prompts' sequences, consecutive groups) micro-batches of forward + PPO-clip/KL loss + backward (timed as
 * 'train_forward' / 'train_backward') accumulate gradients, normalised by the mini-batch's counts; then grad-norm
 * clip and AdamW ('optimizer'). A mini-batch with a non-finite loss or grad norm skips its optimizer step (counted).
 * Gradients are dropped at the end.
 */
async function updatePolicy(run: GrpoRun, step: number, s: Scored, lps: StepLogprobs, times: PhaseTimes): Promise<UpdateStats> {
  const { t, alg, d, n, useKl, counters } = run;
  const policy = d.policy;
  const { batch, advantages } = s;
  const { old, ref: refOut } = lps;
  const seqPerMini = t.policy_mini_batch_size * n;
  const u: UpdateStats = { lossSum: 0, lossCount: 0, sums: { tokens: 0, clipped: 0, dualClipped: 0, kl: 0, ratio: 0 }, gradNormSum: 0, gradNormCount: 0, stepSkipped: false, lr: 0 };
  const trainProgress = new Progress(`step ${step} train`, batch.sequences.length * t.update_epochs_per_batch, { unit: 'seq' });
  for (let ue = 0; ue < t.update_epochs_per_batch; ue++) {
    // Mini-batches are consecutive prompt groups (the peer does not shuffle within a step either).
    const idx = batch.sequences.map((_, i) => i);
    for (const mini of chunks(idx, seqPerMini)) {
      policy.zeroGrad();
      let normTokens = 0;
      for (const i of mini) {
        const mask = batch.lossMasks?.[i];
        normTokens += mask ? mask.reduce((a, b) => a + b, 0) : batch.sequences[i]!.length - batch.promptLens[i]!;
      }
      const norm = { tokens: normTokens, sequences: mini.length };
      let bad = false;
      for (const micro of chunks(mini, t.micro_train_batch_size_per_gpu * (policy.dataParallelSize ?? 1))) {
        await yieldToEventLoop();
        const mb: SequenceBatch = { sequences: micro.map((i) => batch.sequences[i]!), promptLens: micro.map((i) => batch.promptLens[i]!) };
        const lossInput = {
          oldLogprobs: micro.map((i) => old.logprobs[i]!),
          refLogprobs: refOut ? micro.map((i) => refOut.logprobs[i]!) : undefined,
          advantages: micro.map((i) => advantages[i]!),
          mask: batch.lossMasks ? micro.map((i) => batch.lossMasks![i]!) : undefined,
        };
        const lossOpts: PolicyLossOptions = {
          epsClipLow: alg.eps_clip_low,
          epsClipHigh: alg.eps_clip_high,
          policyLossType: alg.policy_loss_type,
          clipRatioC: alg.clip_ratio_c,
          lossReduction: alg.loss_reduction,
          maxSeqLen: run.g.sampling_params.max_generate_length,
          klCoef: useKl ? alg.kl_loss_coef : 0,
          norm,
        };
        // trainer.fused_lm_head_backward: the forward takes the per-token loss gradient and runs the LM head's
        // backward itself (its time then counts as 'train_forward'); the loss below gives the same dLogprobs
        // (policyTokenGradient's, bit for bit) and the metrics.
        const fused = usesFusedLmHead(t.fused_lm_head_backward, policy);
        const lossGradient = fused ? policyTokenGradient(lossInput, lossOpts) : undefined;
        const fwd = await times.time('train_forward', () => policy.forward(mb, { entropy: false, temperature: run.lpTemperature, packed: t.use_sample_packing, lossGradient }));
        const res = policyLoss({ logprobs: fwd.logprobs, ...lossInput }, lossOpts);
        if (!Number.isFinite(res.loss)) {
          fwd.release(); // with fused, the LM head gradient already taken is dropped with the mini-batch (zeroGrad)
          bad = true;
          break;
        }
        await times.time('train_backward', () => (fused ? fwd.backward() : fwd.backward(res.dLogprobs)));
        u.lossSum += res.loss;
        u.sums.tokens += res.sums.tokens;
        u.sums.clipped += res.sums.clipped;
        u.sums.dualClipped += res.sums.dualClipped;
        u.sums.kl += res.sums.kl;
        u.sums.ratio += res.sums.ratio;
        trainProgress.tick(micro.length);
      }
      u.lossCount++;
      let clip = { norm: NaN, finite: false, clipped: false };
      if (!bad) clip = await policy.clipGradNorm(t.policy.optimizer_config.max_grad_norm);
      if (bad || !clip.finite) {
        u.stepSkipped = true;
        counters.skippedSteps++;
        policy.zeroGrad();
        log.warn({ step, reason: bad ? 'non-finite loss' : `non-finite grad norm ${clip.norm}` }, 'optimizer step skipped (total skipped: %d)', counters.skippedSteps);
        continue;
      }
      u.gradNormSum += clip.norm;
      u.gradNormCount++;
      u.lr = learningRate(t.policy.optimizer_config, counters.optimizerSteps, run.totalOptSteps);
      const o = t.policy.optimizer_config;
      await times.time('optimizer', async () => policy.optimizerStep({ lr: u.lr, beta1: o.adam_betas[0], beta2: o.adam_betas[1], eps: o.eps, weightDecay: o.weight_decay }, counters.optimizerSteps + 1));
      counters.optimizerSteps++;
    }
  }
  trainProgress.finish();
  policy.zeroGrad();
  return u;
}

/** The step's metrics (reward/*, adv/*, loss, kl, entropy, clip fractions, grad norm, lr, lengths, gap, throughput, time/*). */
function stepMetrics(run: GrpoRun, r: Rollouts, s: Scored, lps: StepLogprobs, u: UpdateStats, times: PhaseTimes, elapsed: number, res: ResourceSample | undefined): Metrics {
  const { useKl, counters, state } = run;
  const { sums } = u;
  const rs = stats(s.rewards);
  const as = stats(s.adv.advantages);
  const ls = stats(r.completions.map((c) => c.tokens.length));
  const trainTokens = s.batch.sequences.reduce((a, q) => a + q.length, 0);
  const m: Metrics = {
    'reward/mean': rs.mean,
    'reward/std': rs.std,
    'reward/accuracy': s.correct / r.prompts.length,
    'adv/mean': as.mean,
    'adv/std': as.std,
    'adv/min': as.min,
    'adv/max': as.max,
    'groups/zero_variance': s.adv.zeroVarianceGroups,
    loss: u.lossCount ? u.lossSum / Math.max(1, u.lossCount) : NaN,
    kl: useKl ? (sums.tokens ? sums.kl / sums.tokens : 0) : lps.ref ? meanK3(lps.old.logprobs, lps.ref.logprobs) : 0,
    entropy: lps.entropy.n ? lps.entropy.sum / lps.entropy.n : 0,
    clip_frac: sums.tokens ? sums.clipped / sums.tokens : 0,
    dual_clip_frac: sums.tokens ? sums.dualClipped / sums.tokens : 0,
    ratio_mean: sums.tokens ? sums.ratio / sums.tokens : 1,
    grad_norm: u.gradNormCount ? u.gradNormSum / u.gradNormCount : NaN,
    lr: u.lr,
    'response_len/mean': ls.mean,
    'response_len/max': ls.max,
    'response/stop_frac': s.stopped / r.prompts.length,
    'logprob_gap/mean': lps.gap.n ? lps.gap.sum / lps.gap.n : 0,
    'logprob_gap/abs_mean': lps.gap.n ? lps.gap.abs / lps.gap.n : 0,
    'logprob_gap/abs_max': lps.gap.max,
    skipped_steps: counters.skippedSteps,
    step_skipped: u.stepSkipped ? 1 : 0,
    'tokens_per_s/generate': times.times.generate ? r.genTokens / times.times.generate : 0,
    tokens_per_s: trainTokens / elapsed,
    'time/step': elapsed,
    epoch: state.epoch,
  };
  if (r.episodes) Object.assign(m, episodeMetrics(r.episodes));
  for (const [k, v] of Object.entries(times.times)) m[`time/${k}`] = v;
  // The training phase as a whole (forward, backward, optimizer over every mini-batch and epoch), and its rate per
  // GPU: each rank trains its share of the sequences (dataParallelSize ranks).
  const train = (times.times.train_forward ?? 0) + (times.times.train_backward ?? 0) + (times.times.optimizer ?? 0);
  const ranks = run.d.policy.dataParallelSize ?? 1;
  m['time/train'] = train;
  m['tokens_per_s/train_per_gpu'] = train > 0 ? (trainTokens * run.t.update_epochs_per_batch) / train / ranks : 0;
  if (res) {
    res.peakBytes.forEach((b, rank) => (m[`memory/peak_gb/rank_${rank}`] = b / 1e9));
    m['memory/peak_gb'] = Math.max(...res.peakBytes) / 1e9;
    m['engine/preemptions'] = res.preemptions;
  }
  return m;
}

/**
 * One GRPO step on `examples` (train_batch_size prompts): rollout -> rewards and advantages -> old/ref log-probs
 * -> policy update -> weight sync to the generator; advances the run's step and data position and returns the
 * step's metrics, or null when the signal aborted it before the update (the step is dropped).
 */
async function grpoStep(run: GrpoRun, examples: TaskExample[]): Promise<Metrics | null> {
  const stepT0 = performance.now();
  const times = new PhaseTimes(run.d.policy.device);
  const step = run.state.step + 1;
  const rollouts = await generateRollouts(run, step, examples, times);
  // Interrupted before the update: the step is dropped (state and data position stay at the last step).
  if (run.d.signal?.aborted) return null;
  const scored = scoreRollouts(run, examples, rollouts);
  const lps = await oldAndRefLogprobs(run, step, rollouts, scored, times);
  if (run.d.signal?.aborted) return null;
  const update = await updatePolicy(run, step, scored, lps, times);
  await times.time('weight_sync', () => run.d.generator.updateWeights(run.d.policy));
  run.state.step = step;
  run.state.dataPosition += run.t.train_batch_size;
  const elapsed = (performance.now() - stepT0) / 1000;
  const res = await run.d.resources?.();
  return stepMetrics(run, rollouts, scored, lps, update, times, elapsed, res);
}

// ---- the loop -------------------------------------------------------------------------------------------------------
/**
 * Trains with GRPO until max_steps (or the epochs) are done or the signal aborts: each step takes the next
 * train_batch_size prompts of the epoch's order (shuffled unless data.shuffle=false); evaluation every
 * eval_interval steps (and before training with eval_before_train), checkpoints every ckpt_interval steps, at the
 * end and on interrupt.
 */
export async function trainGrpo(d: GrpoDeps): Promise<GrpoResult> {
  checkGrpoInputs(d.config, d.env);
  const run = await startRun(d);
  const { t, state } = run;
  const env = d.env;

  if (t.eval_before_train && state.step === 0) await runEval(run, 0);
  // The first step's peaks count from here (not the setup's).
  await d.resources?.();

  let order = epochOrder(t.seed, state.epoch, env.train.length, run.config.data.shuffle);
  while (state.step < run.totalSteps && state.epoch < run.epochs) {
    await yieldToEventLoop();
    if (d.signal?.aborted) {
      run.interrupted = true;
      break;
    }
    if (state.dataPosition + t.train_batch_size > env.train.length) {
      state.epoch++;
      state.dataPosition = 0;
      if (state.epoch >= run.epochs) break;
      order = epochOrder(t.seed, state.epoch, env.train.length, run.config.data.shuffle);
    }
    const examples = order.slice(state.dataPosition, state.dataPosition + t.train_batch_size).map((i) => env.train[i]!);
    const m = await grpoStep(run, examples);
    if (!m) {
      run.interrupted = true;
      break;
    }
    const step = state.step;
    run.overall.tick();
    d.metrics?.log(step, m, 'train');
    d.onStep?.(step, m);

    await yieldToEventLoop();
    if (t.eval_interval > 0 && step % t.eval_interval === 0 && !d.signal?.aborted) await runEval(run, step);
    if (t.ckpt_interval > 0 && step % t.ckpt_interval === 0) await saveCheckpoint(run);
    if (d.signal?.aborted) {
      run.interrupted = true;
      break;
    }
  }
  if (run.interrupted && run.lastSavedStep === state.step) {
    log.warn('interrupted at step %d, whose checkpoint %s is already saved', state.step, run.lastCheckpoint);
  } else if (run.interrupted) {
    log.warn('interrupted: saving a checkpoint at step %d', state.step);
    await saveCheckpoint(run);
  } else if (t.ckpt_interval >= 0 && state.step > 0 && run.lastSavedStep !== state.step) {
    await saveCheckpoint(run); // the final state (ckpt_interval -1: never, except on interrupt)
  }
  // The final evaluation, unless this attempt ran no step (a resumed run that was already complete).
  if (!run.interrupted && t.eval_interval > 0 && state.step % t.eval_interval !== 0 && state.step > run.resumedStep) await runEval(run, state.step);
  run.overall.finish();
  if (run.ownRef) run.ref?.dispose();
  return { steps: state.step, skippedSteps: run.counters.skippedSteps, interrupted: run.interrupted, lastCheckpoint: run.lastCheckpoint, evals: run.evals };
}
