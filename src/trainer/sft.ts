// sft.ts: supervised fine-tuning on reference completions (the cold start before GRPO): cross-entropy of the
// reference tokens given the prompt, token-mean over each batch, AdamW, grad clipping; non-finite steps skipped.
import type { Config } from '../config/schema.ts';
import { childLogger } from '../log/logger.ts';
import { MetricsLogger, Progress, type Metrics } from '../log/metrics.ts';
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
}

export interface SftOptions {
  steps?: number;
  batchSize?: number;
  lr?: number;
  /** Evaluate every N steps (0: only at the end when a generator is given). */
  evalEvery?: number;
  /**
   * Stop early once an evaluation's reward reaches this value (needs a generator and evalEvery): a warm start
   * that leaves a chosen amount of headroom whatever the model size learns per step.
   */
  stopAtReward?: number;
}

export interface SftResult {
  /** Steps run (fewer than asked when stopped by stopAtReward or the signal). */
  steps: number;
  skippedSteps: number;
  finalLoss: number;
  evals: Array<{ step: number; reward: number; accuracy: number }>;
}

export async function trainSft(d: SftDeps, o: SftOptions = {}): Promise<SftResult> {
  const { config, policy, env } = d;
  const s = config.trainer.sft;
  const steps = o.steps ?? s.steps;
  const bs = o.batchSize ?? s.batch_size;
  const lr = o.lr ?? s.lr;
  const examples = env.train.filter((e) => e.reference && e.reference.length > 0);
  if (examples.length === 0) throw new DataError(`SFT: task '${env.name}' has no training examples with reference completions`);
  const rng = new Rng(config.trainer.seed + 17);
  const shuffle = config.data.shuffle;
  const nextOrder = () => (shuffle ? rng.permutation(examples.length) : examples.map((_, i) => i));
  let order = nextOrder();
  let pos = 0;
  let skipped = 0;
  let lastLoss = NaN;
  let lastLr = 0;
  const evals: SftResult['evals'] = [];
  const micro = config.trainer.micro_train_batch_size_per_gpu;
  const opt = config.trainer.policy.optimizer_config;
  const progress = new Progress('SFT step', steps, { unit: 'step', overall: true });
  // SFT has its own optimizer run (its own lr and step count); GRPO afterwards starts from fresh moments.
  policy.resetOptimizer();
  let done = 0;
  let reached = false;
  const runEval = async (step: number) => {
    if (!d.generator || env.val.length === 0) return;
    const r = await evaluate(d.generator, env, config.trainer.eval_max_samples ? env.val.slice(0, config.trainer.eval_max_samples) : env.val, config, config.trainer.seed + step);
    evals.push({ step, reward: r.reward, accuracy: r.accuracy });
    const m: Metrics = { 'eval/reward': r.reward, 'eval/accuracy': r.accuracy, 'eval/response_len': r.responseLength };
    d.metrics?.log(step, m, 'sft_eval'); // its own kind: the chart draws SFT and GRPO evaluations apart
    d.onEval?.(step, m);
    if (o.stopAtReward !== undefined && r.reward >= o.stopAtReward) reached = true;
  };
  for (let step = 1; step <= steps; step++) {
    await yieldToEventLoop();
    if (d.signal?.aborted) break;
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
    const tokens = batch.reduce((a, e) => a + e.reference!.length, 0);
    policy.zeroGrad();
    let loss = 0;
    let bad = false;
    for (let i = 0; i < seqs.sequences.length; i += micro) {
      const mb = { sequences: seqs.sequences.slice(i, i + micro), promptLens: seqs.promptLens.slice(i, i + micro) };
      const fwd = await policy.forward(mb);
      const ce = crossEntropyLoss(fwd.logprobs, undefined, tokens);
      if (!Number.isFinite(ce.loss)) {
        fwd.release();
        bad = true;
        break;
      }
      loss += ce.loss;
      await fwd.backward(ce.dLogprobs);
    }
    const clip = bad ? { norm: NaN, finite: false, clipped: false } : policy.clipGradNorm(s.max_grad_norm);
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
    if (o.evalEvery && step % o.evalEvery === 0 && step !== steps) await runEval(step);
    if (reached) {
      log.info({ step, reward: evals[evals.length - 1]!.reward, target: o.stopAtReward }, 'SFT stopped early: evaluation reward reached the target');
      break;
    }
  }
  progress.finish();
  if (evals[evals.length - 1]?.step !== done) await runEval(done);
  policy.zeroGrad();
  policy.resetOptimizer();
  return { steps: done, skippedSteps: skipped, finalLoss: lastLoss, evals };
}
