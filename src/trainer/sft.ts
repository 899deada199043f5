// sft.ts: supervised fine-tuning on reference completions (the cold start before GRPO): cross-entropy of the
// reference tokens given the prompt, token-mean over each batch, AdamW, grad clipping; non-finite steps skipped.
// With a checkpoint folder (SftDeps.ckptRoot) the phase is checkpointed and resumed as the GRPO loop is: every
// trainer.ckpt_interval steps, on interrupt, and once finished (a finished phase is not run again on resume).
import type { Config } from '../config/schema.ts';
import { childLogger } from '../log/logger.ts';
import { MetricsLogger, Progress, type Metrics } from '../log/metrics.ts';
import { CheckpointError, resumeTraining, saveTrainingCheckpoint, SFT_RESUME_KEYS, type TrainerState } from './checkpoint.ts';
import { crossEntropyLoss } from '../rl/loss.ts';
import { evaluate, yieldToEventLoop } from './grpo.ts';
import type { Generator, Policy, SequenceBatch } from './policy.ts';
import { Rng } from './rng.ts';
import { DataError, type TaskEnv } from './task.ts';

const log = childLogger('sft');

export interface SftDeps {
  config: Config;
  policy: Policy;
  env: TaskEnv;
  /** For evaluation every `evalEvery` steps (optional). */
  generator?: Generator;
  metrics?: MetricsLogger;
  signal?: AbortSignal;
  onStep?: (step: number, m: Metrics) => void;
  onEval?: (step: number, m: Metrics) => void;
  /** Checkpoint and resume this phase under this folder (trainer.resume_mode, ckpt_interval, max_ckpts_to_keep). */
  ckptRoot?: string;
  /** Resume even when the checkpoint's model or SFT settings differ (`--force-resume`). */
  forceResume?: boolean;
}

export interface SftOptions {
  steps?: number;
  batchSize?: number;
  lr?: number;
  /** Evaluate every N steps (0: only at the end when a generator is given); default trainer.sft.eval_interval. */
  evalEvery?: number;
  /**
   * Stop early once an evaluation's reward reaches this value (needs a generator and evalEvery): a warm start
   * that leaves a chosen amount of headroom whatever the model size learns per step. Default
   * trainer.sft.stop_at_reward.
   */
  stopAtReward?: number;
  /** Checked after each step: true ends the phase there as finished (e.g. a wall-clock budget). */
  shouldStop?: (step: number) => boolean;
}

export interface SftResult {
  /** Steps run (fewer than asked when stopped by stopAtReward or the signal). */
  steps: number;
  skippedSteps: number;
  finalLoss: number;
  evals: Array<{ step: number; reward: number; accuracy: number }>;
  /** Stopped by the signal (a checkpoint was saved when ckptRoot is set); false when the phase finished. */
  interrupted: boolean;
  /** The step a checkpoint was resumed from (null: a fresh start). */
  resumedFrom: number | null;
  lastCheckpoint: string | null;
}

/** What an SFT checkpoint's trainer_state.json keeps beyond step, position and RNG. */
interface SftExtra {
  finished: boolean;
  evals: SftResult['evals'];
  lastLoss: number | null;
  lastLr: number;
}

export async function trainSft(d: SftDeps, o: SftOptions = {}): Promise<SftResult> {
  const { config, policy, env } = d;
  const s = config.trainer.sft;
  const steps = o.steps ?? s.steps;
  const bs = o.batchSize ?? s.batch_size;
  const lr = o.lr ?? s.lr;
  const examples = env.train.filter((e) => e.reference && e.reference.length > 0);
  if (examples.length === 0) throw new DataError(`SFT: task '${env.name}' has no training examples with reference completions`);
  const stopAtReward = o.stopAtReward ?? s.stop_at_reward ?? undefined;
  const evalEvery = o.evalEvery ?? s.eval_interval;
  const t = config.trainer;
  // The shuffle RNG's state just before it drew the current epoch's order: with the position in that order, it is
  // what a checkpoint needs to continue the same data sequence.
  let rng = new Rng(config.trainer.seed + 17);
  let orderRngState = rng.state();
  // The next pass over the examples: a fresh permutation, or file order with data.shuffle=false.
  const nextOrder = (): number[] => {
    orderRngState = rng.state();
    return config.data.shuffle ? rng.permutation(examples.length) : examples.map((_, i) => i);
  };
  let order = nextOrder();
  let pos = 0;
  let skipped = 0;
  let lastLoss = NaN;
  let lastLr = 0;
  let evals: SftResult['evals'] = [];
  const micro = config.trainer.micro_train_batch_size_per_gpu * (policy.dataParallelSize ?? 1);
  const opt = config.trainer.policy.optimizer_config;
  // SFT has its own optimizer run (its own lr and step count); GRPO afterwards starts from fresh moments.
  policy.resetOptimizer();
  let done = 0;
  let reached = false;
  let interrupted = false;
  let lastCheckpoint: string | null = null;
  let lastSavedStep = -1;
  const resumed = d.ckptRoot
    ? await resumeTraining({ config, root: d.ckptRoot, phase: 'SFT', keys: SFT_RESUME_KEYS, policy, generator: d.generator, metricsPath: d.metrics?.path, force: d.forceResume })
    : null;
  if (resumed) {
    const x = resumed.state.extra as unknown as SftExtra;
    done = resumed.state.step;
    skipped = resumed.state.counters?.skippedSteps ?? 0;
    evals = x.evals;
    lastLoss = x.lastLoss ?? NaN;
    lastLr = x.lastLr;
    lastCheckpoint = resumed.dir;
    lastSavedStep = done;
    if (x.finished) {
      log.info({ step: done }, 'SFT: this phase finished at step %d; not run again', done);
      policy.zeroGrad();
      policy.resetOptimizer();
      return { steps: done, skippedSteps: skipped, finalLoss: lastLoss, evals, interrupted: false, resumedFrom: done, lastCheckpoint };
    }
    rng = Rng.fromState(resumed.state.rng);
    order = nextOrder();
    pos = resumed.state.dataPosition;
  }
  const checkpoint = async (finished: boolean): Promise<void> => {
    if (!d.ckptRoot) return;
    const extra: SftExtra = { finished, evals, lastLoss: Number.isFinite(lastLoss) ? lastLoss : null, lastLr };
    const state: TrainerState = { step: done, epoch: 0, dataPosition: pos, rng: orderRngState, counters: { skippedSteps: skipped }, config, extra: extra as unknown as Record<string, unknown> };
    try {
      lastCheckpoint = await saveTrainingCheckpoint({ root: d.ckptRoot, state, writeModel: (dir) => policy.save(dir), keep: t.max_ckpts_to_keep });
      lastSavedStep = done;
      log.info({ dir: lastCheckpoint }, 'SFT checkpoint saved');
    } catch (e) {
      if (!(e instanceof CheckpointError)) throw e;
      log.error(e.message);
      if (interrupted || finished) throw e;
    }
  };
  // The phase's overall progress (a resumed phase counts its earlier steps as done): the status line's step k/N.
  const progress = new Progress('SFT step', steps, { unit: 'step', overall: true, startAt: done });
  const runEval = async (step: number) => {
    if (!d.generator || env.val.length === 0) return;
    const r = await evaluate(d.generator, env, config.trainer.eval_max_samples ? env.val.slice(0, config.trainer.eval_max_samples) : env.val, config, config.trainer.seed + step);
    evals.push({ step, reward: r.reward, accuracy: r.accuracy });
    const m: Metrics = { 'eval/reward': r.reward, 'eval/accuracy': r.accuracy, 'eval/response_len': r.responseLength };
    d.metrics?.log(step, m, 'sft_eval'); // its own kind: the chart draws SFT and GRPO evaluations apart
    d.onEval?.(step, m);
    if (stopAtReward !== undefined && r.reward >= stopAtReward) reached = true;
  };
  for (let step = done + 1; step <= steps; step++) {
    await yieldToEventLoop();
    if (d.signal?.aborted) {
      interrupted = true;
      break;
    }
    const t0 = performance.now();
    const batch = [];
    for (let i = 0; i < bs; i++) {
      if (pos >= order.length) {
        order = nextOrder();
        pos = 0;
      }
      batch.push(examples[order[pos++]!]!);
    }
    const seqs: SequenceBatch = {
      sequences: batch.map((e) => {
        const out = new Int32Array(e.prompt.length + e.reference!.length);
        out.set(e.prompt);
        out.set(e.reference!, e.prompt.length);
        return out;
      }),
      promptLens: batch.map((e) => e.prompt.length),
    };
    // Token-mean over the tokens the model learns (a multi-turn reference's injected tokens are masked out).
    const masks = batch.some((e) => e.referenceMask) ? batch.map((e) => e.referenceMask ?? new Uint8Array(e.reference!.length).fill(1)) : undefined;
    const tokens = masks ? masks.reduce((a, m) => a + m.reduce((x, y) => x + y, 0), 0) : batch.reduce((a, e) => a + e.reference!.length, 0);
    policy.zeroGrad();
    let loss = 0;
    let bad = false;
    for (let i = 0; i < seqs.sequences.length; i += micro) {
      const mb = { sequences: seqs.sequences.slice(i, i + micro), promptLens: seqs.promptLens.slice(i, i + micro) };
      const fwd = await policy.forward(mb);
      const ce = crossEntropyLoss(fwd.logprobs, masks?.slice(i, i + micro), tokens);
      if (!Number.isFinite(ce.loss)) {
        fwd.release();
        bad = true;
        break;
      }
      loss += ce.loss;
      await fwd.backward(ce.dLogprobs);
    }
    const clip = bad ? { norm: NaN, finite: false, clipped: false } : await policy.clipGradNorm(s.max_grad_norm);
    if (bad || !clip.finite) {
      skipped++;
      policy.zeroGrad();
      log.warn({ step }, 'SFT step skipped: non-finite loss or gradient (total skipped %d)', skipped);
    } else {
      // Linear warm-up over the first 5% of steps, then cosine decay to 10% of lr (stable for tiny models).
      const warm = Math.max(1, Math.floor(steps * 0.05));
      const prog = Math.min(1, (step - warm) / Math.max(1, steps - warm));
      const lrNow = step <= warm ? (lr * step) / warm : lr * (0.1 + 0.9 * 0.5 * (1 + Math.cos(Math.PI * prog)));
      lastLr = lrNow;
      policy.optimizerStep({ lr: lrNow, beta1: opt.adam_betas[0], beta2: opt.adam_betas[1], eps: opt.eps, weightDecay: s.weight_decay }, step);
      lastLoss = loss;
    }
    const m: Metrics = { loss, grad_norm: clip.norm, lr: lastLr, tokens_per_s: tokens / ((performance.now() - t0) / 1000), 'time/step': (performance.now() - t0) / 1000, skipped_steps: skipped };
    progress.tick(1, `loss ${loss.toFixed(4)}`);
    if (step % s.log_interval === 0 || step === steps) d.metrics?.log(step, m, 'sft');
    d.onStep?.(step, m);
    done = step;
    if (evalEvery && step % evalEvery === 0 && step !== steps) await runEval(step);
    if (reached) {
      log.info({ step, reward: evals[evals.length - 1]!.reward, target: stopAtReward }, 'SFT stopped early: evaluation reward reached the target');
      break;
    }
    if (o.shouldStop?.(step)) {
      log.info({ step }, 'SFT stopped early (shouldStop)');
      break;
    }
    if (t.ckpt_interval > 0 && step % t.ckpt_interval === 0 && step !== steps) await checkpoint(false);
  }
  progress.finish();
  if (interrupted) {
    if (lastSavedStep === done) log.warn('SFT interrupted at step %d, whose checkpoint %s is already saved', done, lastCheckpoint);
    else if (d.ckptRoot) {
      log.warn('SFT interrupted: saving a checkpoint at step %d', done);
      await checkpoint(false);
    }
    policy.zeroGrad();
    return { steps: done, skippedSteps: skipped, finalLoss: lastLoss, evals, interrupted, resumedFrom: resumed?.state.step ?? null, lastCheckpoint };
  }
  if (evals[evals.length - 1]?.step !== done) await runEval(done);
  policy.zeroGrad();
  // The finished phase's checkpoint is its result (the weights GRPO starts from and its KL reference), without
  // optimizer state: GRPO starts from fresh moments.
  policy.resetOptimizer();
  await checkpoint(true);
  return { steps: done, skippedSteps: skipped, finalLoss: lastLoss, evals, interrupted, resumedFrom: resumed?.state.step ?? null, lastCheckpoint };
}
