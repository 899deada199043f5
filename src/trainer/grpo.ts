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
import type { Config } from '../config/schema.ts';
import { childLogger } from '../log/logger.ts';
import { dumpEvalResults, exportDir, type EvalDumpRow } from '../log/eval-dump.ts';
import { MetricsLogger, Progress, type Metrics } from '../log/metrics.ts';
import { groupAdvantages, stats } from '../rl/advantages.ts';
import { policyLoss, meanK3 } from '../rl/loss.ts';
import { CheckpointError, readTrainerState, resolveResume, saveTrainingCheckpoint, type TrainerState } from './checkpoint.ts';
import type { Completion, Generator, LogprobModel, LogprobOutput, Policy, SamplingParams, SequenceBatch } from './policy.ts';
import { epochOrder, Rng } from './rng.ts';
import { DataError, type TaskEnv, type TaskExample } from './task.ts';

const log = childLogger('grpo');

export interface GrpoDeps {
  config: Config;
  policy: Policy;
  generator: Generator;
  env: TaskEnv;
  /** The frozen KL reference; default: a frozen copy of the policy taken before any resume. */
  ref?: LogprobModel;
  metrics?: MetricsLogger;
  /** Abort (e.g. SIGINT): the loop saves a checkpoint at the next safe point and returns. */
  signal?: AbortSignal;
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
    const outs = await generator.generate(prompts, params);
    outs.forEach((c, i) => {
      const ex = batch[Math.floor(i / n)]!;
      const r = env.reward(ex, c.tokens, c.finishReason);
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

/** Throws a DataError when the task cannot feed a step (empty split, fewer prompts than a batch). */
export function checkGrpoInputs(config: Config, env: TaskEnv): void {
  const t = config.trainer;
  if (env.train.length === 0) throw new DataError(`GRPO: the training set of task '${env.name}' is empty (check data.train_data / data.max_train_samples)`);
  if (env.train.length < t.train_batch_size) {
    throw new DataError(`GRPO: the training set has ${env.train.length} prompts, fewer than trainer.train_batch_size=${t.train_batch_size}`);
  }
}

export async function trainGrpo(d: GrpoDeps): Promise<GrpoResult> {
  const { config, policy, generator, env } = d;
  const t = config.trainer;
  const alg = t.algorithm;
  const g = config.generator;
  const n = g.n_samples_per_prompt;
  checkGrpoInputs(config, env);
  const useKl = alg.use_kl_loss && alg.kl_loss_coef > 0;
  // The reference must be the initial weights: copy before loading any checkpoint.
  let ref: LogprobModel | undefined = d.ref;
  let ownRef = false;
  if (useKl && !ref) {
    ref = await policy.frozenCopy();
    ownRef = true;
  }

  // ---- resume -----------------------------------------------------------------------------------------------
  let state: TrainerState = { step: 0, epoch: 0, dataPosition: 0, rng: new Rng(t.seed).state(), counters: { skippedSteps: 0, optimizerSteps: 0 } };
  const resumeDir = resolveResume(t.resume_mode, t.ckpt_path, t.resume_path);
  if (resumeDir) {
    state = readTrainerState(resumeDir);
    await policy.load(resumeDir);
    await generator.updateWeights(policy);
    log.info({ dir: resumeDir, step: state.step, epoch: state.epoch }, 'resumed from checkpoint');
  }
  const counters = { skippedSteps: 0, optimizerSteps: 0, ...state.counters };
  const rng = Rng.fromState(state.rng);

  const stepsPerEpoch = Math.floor(env.train.length / t.train_batch_size);
  const totalSteps = t.max_steps ?? stepsPerEpoch * t.epochs;
  const miniPerStep = t.train_batch_size / t.policy_mini_batch_size;
  const totalOptSteps = totalSteps * miniPerStep * t.update_epochs_per_batch;
  const sampling = g.sampling_params;
  const lpTemperature = sampling.temperature > 0 ? sampling.temperature : 1;
  const packed = t.use_sample_packing;
  const evalExamples = t.eval_max_samples ? env.val.slice(0, t.eval_max_samples) : env.val;
  const evals: GrpoResult['evals'] = [];
  let lastCheckpoint: string | null = resumeDir;
  let interrupted = false;
  let lastSavedStep = resumeDir ? state.step : -1;
  // The run's overall progress: leads the terminal's status line and the per-step metrics line (step k/N, ETA).
  const overall = new Progress('GRPO step', totalSteps, { unit: 'step', overall: true, startAt: state.step });

  const runEval = async (step: number): Promise<void> => {
    if (evalExamples.length === 0) return;
    const t0 = performance.now();
    const r = await evaluate(generator, env, evalExamples, config, t.seed + 7919 * step, { keepAll: t.dump_eval_results });
    if (r.all) log.info({ file: dumpEvalResults(exportDir(t), step, r.all) }, 'evaluation completions dumped');
    const m: Metrics = { 'eval/reward': r.reward, 'eval/accuracy': r.accuracy, 'eval/response_len': r.responseLength, 'time/eval': (performance.now() - t0) / 1000 };
    evals.push({ step, reward: r.reward, accuracy: r.accuracy });
    d.metrics?.log(step, m, 'eval');
    if (r.samples[0]) log.debug({ sample: r.samples[0] }, 'eval sample');
    d.onEval?.(step, m);
  };

  const checkpoint = async (): Promise<void> => {
    const st: TrainerState = { ...state, rng: rng.state(), counters, config };
    try {
      lastCheckpoint = await saveTrainingCheckpoint({ root: t.ckpt_path, state: st, writeModel: (dir) => policy.save(dir), keep: t.max_ckpts_to_keep });
      lastSavedStep = state.step;
      log.info({ dir: lastCheckpoint }, 'checkpoint saved');
    } catch (e) {
      if (e instanceof CheckpointError) log.error(e.message);
      else throw e;
      if (interrupted) throw e;
    }
  };

  if (t.eval_before_train && state.step === 0) await runEval(0);

  let order = epochOrder(t.seed, state.epoch, env.train.length, config.data.shuffle);
  while (state.step < totalSteps && state.epoch < t.epochs) {
    await yieldToEventLoop();
    if (d.signal?.aborted) {
      interrupted = true;
      break;
    }
    if (state.dataPosition + t.train_batch_size > env.train.length) {
      state.epoch++;
      state.dataPosition = 0;
      if (state.epoch >= t.epochs) break;
      order = epochOrder(t.seed, state.epoch, env.train.length, config.data.shuffle);
    }
    const stepT0 = performance.now();
    const times: Record<string, number> = {};
    const timed = async <T>(name: string, f: () => Promise<T>): Promise<T> => {
      const a = performance.now();
      const r = await f();
      times[name] = (times[name] ?? 0) + (performance.now() - a) / 1000;
      return r;
    };
    const examples = order.slice(state.dataPosition, state.dataPosition + t.train_batch_size).map((i) => env.train[i]!);
    const step = state.step + 1;

    // ---- rollouts ---------------------------------------------------------------------------------------------
    const prompts = examples.flatMap((e) => Array.from({ length: n }, () => e.prompt));
    const params: SamplingParams = {
      maxTokens: sampling.max_generate_length,
      temperature: sampling.temperature,
      topP: sampling.top_p,
      topK: sampling.top_k,
      seed: sampling.seed ?? (t.seed * 1000003 + step * 7919) >>> 0,
      stopTokenIds: [...env.stopTokenIds, ...sampling.stop_token_ids],
    };
    const genProgress = new Progress(`step ${step} generate`, prompts.length * params.maxTokens, { unit: 'tok' });
    let lastDone = 0;
    const completions: Completion[] = await timed('generate', () =>
      generator.generate(prompts, params, (done) => {
        genProgress.tick(done - lastDone);
        lastDone = done;
      }),
    );
    genProgress.finish();
    const genTokens = completions.reduce((a, c) => a + c.tokens.length, 0);

    // ---- rewards and advantages -------------------------------------------------------------------------------
    const rewards = new Float32Array(prompts.length);
    let correct = 0;
    let stopped = 0;
    completions.forEach((c, i) => {
      const ex = examples[Math.floor(i / n)]!;
      let r = env.reward(ex, c.tokens, c.finishReason);
      if (g.zero_reward_on_non_stop && c.finishReason !== 'stop') r = { reward: 0, correct: false };
      rewards[i] = r.reward;
      if (r.correct) correct++;
      if (c.finishReason === 'stop') stopped++;
    });
    const groupIds = Int32Array.from(prompts, (_, i) => Math.floor(i / n));
    const adv = groupAdvantages(rewards, groupIds, { normByStd: alg.advantage_estimator === 'grpo' && alg.grpo_norm_by_std });

    // Sequences that take part in the update.
    let keep = prompts.map((_, i) => i).filter((i) => completions[i]!.tokens.length > 0);
    if (alg.zero_variance_filter) {
      const gs = adv.groupStd;
      keep = keep.filter((i) => n === 1 || gs[groupIds[i]!]! > 0);
    }
    if (g.apply_overlong_filtering) keep = keep.filter((i) => completions[i]!.finishReason === 'stop');
    const batch: SequenceBatch = {
      sequences: keep.map((i) => concat(prompts[i]!, completions[i]!.tokens)),
      promptLens: keep.map((i) => prompts[i]!.length),
    };
    const advantages = keep.map((i) => adv.advantages[i]!);

    // ---- old and reference log-probs --------------------------------------------------------------------------
    const fwdOpts = { entropy: true, temperature: lpTemperature, packed };
    const old = await timed('old_logprobs', () =>
      batchedLogprobs(policy, batch, t.micro_forward_batch_size_per_gpu, fwdOpts, new Progress(`step ${step} old log-probs`, batch.sequences.length, { unit: 'seq' })),
    );
    const refOut = useKl && ref ? await timed('ref_logprobs', () => batchedLogprobs(ref!, batch, t.micro_forward_batch_size_per_gpu, { ...fwdOpts, entropy: false })) : undefined;
    // Generator vs trainer log-probs of the same tokens.
    let gapSum = 0;
    let gapAbs = 0;
    let gapMax = 0;
    let gapN = 0;
    keep.forEach((i, j) => {
      const a = completions[i]!.logprobs;
      const b = old.logprobs[j]!;
      for (let k = 0; k < Math.min(a.length, b.length); k++) {
        const diff = a[k]! - b[k]!;
        if (!Number.isFinite(diff)) continue;
        gapSum += diff;
        gapAbs += Math.abs(diff);
        gapMax = Math.max(gapMax, Math.abs(diff));
        gapN++;
      }
    });
    let entSum = 0;
    let entN = 0;
    for (const e of old.entropy ?? []) for (const v of e) (entSum += v), entN++;

    // ---- policy update ----------------------------------------------------------------------------------------
    const seqPerMini = t.policy_mini_batch_size * n;
    const sums = { tokens: 0, clipped: 0, dualClipped: 0, kl: 0, ratio: 0 };
    let lossSum = 0;
    let lossCount = 0;
    let gradNormSum = 0;
    let gradNormCount = 0;
    let stepSkipped = false;
    let lr = 0;
    const trainProgress = new Progress(`step ${step} train`, batch.sequences.length * t.update_epochs_per_batch, { unit: 'seq' });
    for (let ue = 0; ue < t.update_epochs_per_batch; ue++) {
      // Mini-batches are consecutive prompt groups (the peer does not shuffle within a step either).
      const idx = batch.sequences.map((_, i) => i);
      for (const mini of chunks(idx, seqPerMini)) {
        if (d.signal?.aborted) break;
        policy.zeroGrad();
        let normTokens = 0;
        for (const i of mini) normTokens += batch.sequences[i]!.length - batch.promptLens[i]!;
        const norm = { tokens: normTokens, sequences: mini.length };
        let bad = false;
        for (const micro of chunks(mini, t.micro_train_batch_size_per_gpu)) {
          await yieldToEventLoop();
          const mb: SequenceBatch = { sequences: micro.map((i) => batch.sequences[i]!), promptLens: micro.map((i) => batch.promptLens[i]!) };
          const fwd = await timed('train_forward', () => policy.forward(mb, { entropy: false, temperature: lpTemperature, packed }));
          const res = policyLoss(
            {
              logprobs: fwd.logprobs,
              oldLogprobs: micro.map((i) => old.logprobs[i]!),
              refLogprobs: refOut ? micro.map((i) => refOut.logprobs[i]!) : undefined,
              advantages: micro.map((i) => advantages[i]!),
            },
            {
              epsClipLow: alg.eps_clip_low,
              epsClipHigh: alg.eps_clip_high,
              policyLossType: alg.policy_loss_type,
              clipRatioC: alg.clip_ratio_c,
              lossReduction: alg.loss_reduction,
              maxSeqLen: sampling.max_generate_length,
              klCoef: useKl ? alg.kl_loss_coef : 0,
              norm,
            },
          );
          if (!Number.isFinite(res.loss)) {
            fwd.release();
            bad = true;
            break;
          }
          await timed('train_backward', () => fwd.backward(res.dLogprobs));
          lossSum += res.loss;
          sums.tokens += res.sums.tokens;
          sums.clipped += res.sums.clipped;
          sums.dualClipped += res.sums.dualClipped;
          sums.kl += res.sums.kl;
          sums.ratio += res.sums.ratio;
          trainProgress.tick(micro.length);
        }
        lossCount++;
        let clip = { norm: NaN, finite: false, clipped: false };
        if (!bad) clip = policy.clipGradNorm(t.policy.optimizer_config.max_grad_norm);
        if (bad || !clip.finite) {
          stepSkipped = true;
          counters.skippedSteps++;
          policy.zeroGrad();
          log.warn({ step, reason: bad ? 'non-finite loss' : `non-finite grad norm ${clip.norm}` }, 'optimizer step skipped (total skipped: %d)', counters.skippedSteps);
          continue;
        }
        gradNormSum += clip.norm;
        gradNormCount++;
        lr = learningRate(t.policy.optimizer_config, counters.optimizerSteps, totalOptSteps);
        const o = t.policy.optimizer_config;
        await timed('optimizer', async () => policy.optimizerStep({ lr, beta1: o.adam_betas[0], beta2: o.adam_betas[1], eps: o.eps, weightDecay: o.weight_decay }, counters.optimizerSteps + 1));
        counters.optimizerSteps++;
      }
    }
    trainProgress.finish();
    policy.zeroGrad();
    await timed('weight_sync', () => generator.updateWeights(policy));

    state.step = step;
    state.dataPosition += t.train_batch_size;
    overall.tick();
    const elapsed = (performance.now() - stepT0) / 1000;
    const lens = completions.map((c) => c.tokens.length);
    const rs = stats(rewards);
    const as = stats(adv.advantages);
    const ls = stats(lens);
    const trainTokens = batch.sequences.reduce((a, s) => a + s.length, 0);
    const m: Metrics = {
      'reward/mean': rs.mean,
      'reward/std': rs.std,
      'reward/accuracy': correct / prompts.length,
      'adv/mean': as.mean,
      'adv/std': as.std,
      'adv/min': as.min,
      'adv/max': as.max,
      'groups/zero_variance': adv.zeroVarianceGroups,
      loss: lossCount ? lossSum / Math.max(1, lossCount) : NaN,
      kl: useKl ? (sums.tokens ? sums.kl / sums.tokens : 0) : refOut ? meanK3(old.logprobs, refOut.logprobs) : 0,
      entropy: entN ? entSum / entN : 0,
      clip_frac: sums.tokens ? sums.clipped / sums.tokens : 0,
      dual_clip_frac: sums.tokens ? sums.dualClipped / sums.tokens : 0,
      ratio_mean: sums.tokens ? sums.ratio / sums.tokens : 1,
      grad_norm: gradNormCount ? gradNormSum / gradNormCount : NaN,
      lr,
      'response_len/mean': ls.mean,
      'response_len/max': ls.max,
      'response/stop_frac': stopped / prompts.length,
      'logprob_gap/mean': gapN ? gapSum / gapN : 0,
      'logprob_gap/abs_mean': gapN ? gapAbs / gapN : 0,
      'logprob_gap/abs_max': gapMax,
      skipped_steps: counters.skippedSteps,
      step_skipped: stepSkipped ? 1 : 0,
      'tokens_per_s/generate': times.generate ? genTokens / times.generate : 0,
      tokens_per_s: trainTokens / elapsed,
      'time/step': elapsed,
      epoch: state.epoch,
    };
    for (const [k, v] of Object.entries(times)) m[`time/${k}`] = v;
    d.metrics?.log(step, m, 'train');
    d.onStep?.(step, m);

    await yieldToEventLoop();
    if (t.eval_interval > 0 && step % t.eval_interval === 0 && !d.signal?.aborted) await runEval(step);
    if (t.ckpt_interval > 0 && step % t.ckpt_interval === 0) await checkpoint();
    if (d.signal?.aborted) {
      interrupted = true;
      break;
    }
  }
  if (interrupted) {
    log.warn('interrupted: saving a checkpoint at step %d', state.step);
    await checkpoint();
  } else if (t.ckpt_interval >= 0 && state.step > 0 && lastSavedStep !== state.step) {
    await checkpoint(); // the final state (ckpt_interval -1: never, except on interrupt)
  }
  if (!interrupted && t.eval_interval > 0 && state.step % t.eval_interval !== 0 && state.step > 0) await runEval(state.step);
  overall.finish();
  if (ownRef) ref?.dispose();
  return { steps: state.step, skippedSteps: counters.skippedSteps, interrupted, lastCheckpoint, evals };
}
