// The "proof that GRPO learns" recipe of issue 7, shared by test/cpu/grpo-learns.test.ts (CI: 2 CPU cores) and
// test/gpu/grpo-learns.test.ts (the GPU machine). The recipe itself is the product's default run: the presets
// configs/demo-cpu.yaml and configs/demo-gpu.yaml (what `npm run train` runs with no arguments), run through the
// same code as the CLI (runTraining in src/trainer/run.ts): SFT warm start on the synthetic task's reference
// solutions until a held-out reward, then GRPO with evaluations. This helper adds what only the tests need: fresh
// checkpoint/metrics paths, a curve of lines to print, per-phase wall times, the throughput the GRPO loop's
// metrics give (time/*, tokens_per_s*), and an optional wall-clock budget. GRPO_LEARNS_* environment variables
// become config overrides for experiments (recipeFromEnv).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { loadConfig, type Config } from '../../src/config/index.ts';
import { setupRun, sftMetricsPath } from '../../src/trainer/setup.ts';
import { runTraining, type HeldOut } from '../../src/trainer/run.ts';
import type { Metrics } from '../../src/log/metrics.ts';

export interface GrpoRecipeOptions {
  /** The preset: demo-cpu (the default run without a GPU) or demo-gpu (with one). */
  preset: 'demo-cpu' | 'demo-gpu' | 'demo-cpu-tools';
  /** Config overrides over the preset (the GRPO_LEARNS_* variables become these). */
  overrides: string[];
  /** Metrics JSONL of GRPO (replaced; the SFT phase's goes beside it as <name>-sft.jsonl). */
  metricsPath: string;
  /** A curve line every this many GRPO steps. */
  curveEvery: number;
  /**
   * Wall-clock budget (s) for the whole recipe. SFT stops at 40% of it; GRPO stops (its checkpoint is saved, then
   * the final evaluation) before a step that would leave too little time for that evaluation. Unset: no limit.
   */
  budgetS?: number;
}

export interface PhaseTimes {
  setup: number;
  sft: number;
  /** The GRPO loop, including its evaluations (before, every eval_interval steps, after). */
  grpo: number;
  total: number;
}

export interface GrpoThroughput {
  steps: number;
  /** GRPO steps per second of step time (evaluations excluded). */
  stepsPerS: number;
  /** Mean step time and its phases (s), from the loop's time/* metrics. */
  stepS: number;
  generateS: number;
  oldLogprobsS: number;
  refLogprobsS: number;
  trainForwardS: number;
  trainBackwardS: number;
  optimizerS: number;
  /**
   * The update phase: step time minus generation, old/ref log-probs and weight sync (forward + loss + backward +
   * grad clip + AdamW). On CUDA the backward is enqueued asynchronously, so time/train_backward alone undercounts;
   * this phase ends with the host syncs of the grad-norm clip and is the honest forward+backward time.
   */
  updateS: number;
  /** Response tokens sampled per step and per second of the rollout phase (time/generate). */
  generatedTokensPerStep: number;
  generatedTokensPerS: number;
  /** Tokens (prompt + response) trained per step and per second of the update phase. */
  trainTokensPerStep: number;
  trainTokensPerS: number;
  /** Tokens per second of the no-grad log-prob passes (old, plus ref when the KL loss is on). */
  logprobTokensPerS: number;
  /** Whole-step tokens/s as the loop logs it (tokens_per_s: trained tokens / step time). */
  loopTokensPerS: number;
  /** The same means over steps after the first (warm-up: kernel selection, allocator growth). */
  warm: { stepS: number; generatedTokensPerS: number; trainTokensPerS: number; updateS: number; generateS: number };
}

export interface GrpoRecipeResult {
  /** Held-out reward at GRPO step 0 (right after the warm start) and at GRPO's last evaluation. */
  before: HeldOut;
  after: HeldOut;
  curve: string[];
  /** Held-out rewards: SFT evaluations, then GRPO's (step 0 = before, every eval_interval steps, the last = after). */
  evals: Array<{ phase: 'sft' | 'grpo'; step: number; reward: number; accuracy: number }>;
  sft: { steps: number; finalLoss: number; skippedSteps: number; tokensPerS: number };
  steps: number;
  skippedSteps: number;
  /** GRPO or SFT was cut short by budgetS (GRPO then ran `steps` of max_steps). */
  budgetStopped: { sft: boolean; grpo: boolean };
  timings: PhaseTimes;
  throughput: GrpoThroughput;
  model: { path: string; device: string; parameters: number; vocab: number | null };
  /** The effective config (the preset with the overrides). */
  config: unknown;
}

/** The CI recipe: configs/demo-cpu.yaml, the default `npm run train` on a machine without a GPU. */
export function cpuRecipe(): GrpoRecipeOptions {
  return { preset: 'demo-cpu', overrides: [], metricsPath: 'runs/ci/grpo-learns.jsonl', curveEvery: 25 };
}

/** The GPU recipe: configs/demo-gpu.yaml within a wall-clock budget. */
export function gpuRecipe(metricsPath = 'runs/gpu/grpo-learns.jsonl', budgetS = 320): GrpoRecipeOptions {
  return { preset: 'demo-gpu', overrides: [], metricsPath, curveEvery: 25, budgetS };
}

/** GRPO_LEARNS_<NAME> -> the config keys it sets. */
const ENV_KEYS: Record<string, string[]> = {
  DEVICE: ['trainer.device'],
  MODEL: ['trainer.policy.model.path'],
  SEED: ['trainer.seed'],
  REASONING: ['data.synthetic.reasoning'],
  NUM_TRAIN: ['data.synthetic.num_train'],
  NUM_VAL: ['data.synthetic.num_val'],
  SFT_STEPS: ['trainer.sft.steps'],
  SFT_LR: ['trainer.sft.lr'],
  SFT_BATCH: ['trainer.sft.batch_size'],
  SFT_EVAL_EVERY: ['trainer.sft.eval_interval'],
  STEPS: ['trainer.max_steps'],
  PROMPTS: ['trainer.train_batch_size', 'trainer.policy_mini_batch_size'],
  MINI: ['trainer.policy_mini_batch_size'],
  N: ['generator.n_samples_per_prompt'],
  LR: ['trainer.policy.optimizer_config.lr'],
  WARMUP: ['trainer.policy.optimizer_config.num_warmup_steps'],
  KL: ['trainer.algorithm.kl_loss_coef'],
  T: ['generator.sampling_params.temperature'],
  EVAL_T: ['generator.eval_sampling_params.temperature'],
  EVAL_N: ['generator.eval_n_samples_per_prompt'],
  EVAL_INTERVAL: ['trainer.eval_interval'],
  MICRO_TRAIN: ['trainer.micro_train_batch_size_per_gpu'],
  MICRO_FORWARD: ['trainer.micro_forward_batch_size_per_gpu'],
  LORA_RANK: ['trainer.policy.model.lora.rank'],
  LORA_ALPHA: ['trainer.policy.model.lora.alpha'],
  LORA_TARGETS: ['trainer.policy.model.lora.target_modules'],
  LORAPLUS: ['trainer.policy.model.lora.loraplus_lr_ratio'],
};

/**
 * A recipe with GRPO_LEARNS_* overrides: DEVICE, MODEL, SEED, REASONING, NUM_TRAIN, NUM_VAL, SFT_STEPS, SFT_LR,
 * SFT_BATCH, SFT_STOP (the warm start's stop-at reward; 'off' runs every SFT step), SFT_EVAL_EVERY, STEPS, PROMPTS, MINI,
 * N, LR, WARMUP, KL, T, EVAL_T, EVAL_N, EVAL_INTERVAL, MICRO_TRAIN, MICRO_FORWARD, LORA_RANK, LORA_ALPHA, LORA_TARGETS, LORAPLUS;
 * each
 * becomes the config override(s) of
 * ENV_KEYS.
 */
export function recipeFromEnv(r: GrpoRecipeOptions): GrpoRecipeOptions {
  const extra: string[] = [];
  for (const [name, keys] of Object.entries(ENV_KEYS)) {
    const v = process.env[`GRPO_LEARNS_${name}`];
    if (v !== undefined && v !== '') for (const k of keys) extra.push(`${k}=${v}`);
  }
  const stop = process.env.GRPO_LEARNS_SFT_STOP;
  if (stop === 'off') extra.push('trainer.sft.stop_at_reward=null');
  else if (stop) extra.push(`trainer.sft.stop_at_reward=${stop}`);
  return { ...r, overrides: [...r.overrides, ...extra] };
}

const mean = (xs: number[]): number => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0);
const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);

/** Throughput from the GRPO loop's per-step metrics. */
export function grpoThroughput(steps: Metrics[], updateEpochs = 1, klOn = true): GrpoThroughput {
  const g = (m: Metrics, k: string): number => m[k] ?? 0;
  const per = steps.map((m) => {
    const stepS = g(m, 'time/step');
    const generateS = g(m, 'time/generate');
    const oldS = g(m, 'time/old_logprobs');
    const refS = g(m, 'time/ref_logprobs');
    const updateS = Math.max(0, stepS - generateS - oldS - refS - g(m, 'time/weight_sync'));
    const trainTokens = g(m, 'tokens_per_s') * stepS; // the loop logs trained tokens / step time
    const genTokens = g(m, 'tokens_per_s/generate') * generateS;
    return { stepS, generateS, oldS, refS, updateS, trainTokens, genTokens, fwd: g(m, 'time/train_forward'), bwd: g(m, 'time/train_backward'), opt: g(m, 'time/optimizer') };
  });
  const agg = (ps: typeof per) => {
    const stepS = sum(ps.map((p) => p.stepS));
    const genS = sum(ps.map((p) => p.generateS));
    const updS = sum(ps.map((p) => p.updateS));
    const lpS = sum(ps.map((p) => p.oldS + p.refS));
    const genTok = sum(ps.map((p) => p.genTokens));
    const trainTok = sum(ps.map((p) => p.trainTokens));
    return {
      stepS: ps.length ? stepS / ps.length : 0,
      generateS: ps.length ? genS / ps.length : 0,
      updateS: ps.length ? updS / ps.length : 0,
      generatedTokensPerS: genS > 0 ? genTok / genS : 0,
      trainTokensPerS: updS > 0 ? (trainTok * updateEpochs) / updS : 0,
      logprobTokensPerS: lpS > 0 ? (trainTok * (klOn ? 2 : 1)) / lpS : 0,
      stepsPerS: stepS > 0 ? ps.length / stepS : 0,
      loopTokensPerS: stepS > 0 ? trainTok / stepS : 0,
    };
  };
  const all = agg(per);
  const warm = agg(per.slice(1));
  return {
    steps: per.length,
    stepsPerS: all.stepsPerS,
    stepS: all.stepS,
    generateS: all.generateS,
    oldLogprobsS: mean(per.map((p) => p.oldS)),
    refLogprobsS: mean(per.map((p) => p.refS)),
    trainForwardS: mean(per.map((p) => p.fwd)),
    trainBackwardS: mean(per.map((p) => p.bwd)),
    optimizerS: mean(per.map((p) => p.opt)),
    updateS: all.updateS,
    generatedTokensPerStep: mean(per.map((p) => p.genTokens)),
    generatedTokensPerS: all.generatedTokensPerS,
    trainTokensPerStep: mean(per.map((p) => p.trainTokens)),
    trainTokensPerS: all.trainTokensPerS,
    logprobTokensPerS: all.logprobTokensPerS,
    loopTokensPerS: all.loopTokensPerS,
    warm: { stepS: warm.stepS, generatedTokensPerS: warm.generatedTokensPerS, trainTokensPerS: warm.trainTokensPerS, updateS: warm.updateS, generateS: warm.generateS },
  };
}

/** Lines that report the throughput (printed by the tests after the curve). */
export function formatThroughput(r: GrpoRecipeResult): string[] {
  const t = r.throughput;
  const f = (x: number, d = 0) => x.toFixed(d);
  const ms = (x: number) => `${(x * 1000).toFixed(1)} ms`;
  return [
    `model ${r.model.path} on ${r.model.device}: ${(r.model.parameters / 1e6).toFixed(2)}M parameters${r.model.vocab ? `, compact vocabulary of ${r.model.vocab}` : ''}`,
    `wall time: setup ${f(r.timings.setup, 1)} s, SFT ${f(r.timings.sft, 1)} s (${r.sft.steps} steps, ${f(r.sft.tokensPerS)} tok/s), GRPO ${f(r.timings.grpo, 1)} s (with its evaluations), total ${f(r.timings.total, 1)} s`,
    `GRPO: ${t.stepsPerS.toFixed(3)} steps/s (${ms(t.stepS)}/step; after step 1: ${ms(t.warm.stepS)}/step)`,
    `  rollout: ${ms(t.generateS)}/step, ${f(t.generatedTokensPerStep)} generated tokens/step, ${f(t.generatedTokensPerS)} generated tok/s (after step 1: ${f(t.warm.generatedTokensPerS)})`,
    `  old/ref log-probs: ${ms(t.oldLogprobsS)} + ${ms(t.refLogprobsS)}/step, ${f(t.logprobTokensPerS)} tok/s`,
    `  update (forward+backward+clip+AdamW): ${ms(t.updateS)}/step (forward ${ms(t.trainForwardS)}, backward ${ms(t.trainBackwardS)} as enqueued, AdamW ${ms(t.optimizerS)}), ${f(t.trainTokensPerStep)} tokens/step, trainer ${f(t.trainTokensPerS)} tok/s (after step 1: ${f(t.warm.trainTokensPerS)})`,
    `  whole step: ${f(t.loopTokensPerS)} trained tok/s (the loop's tokens_per_s)`,
  ];
}

/** The recipe's effective config: the preset, the overrides, and where checkpoints and metrics go. */
export function recipeConfig(o: GrpoRecipeOptions, ckptPath = join(tmpdir(), 'grpo-learns-ckpts')): Config {
  return loadConfig({ config: o.preset, overrides: [...o.overrides, `trainer.ckpt_path=${ckptPath}`, `trainer.metrics_path=${o.metricsPath}`] });
}

/** Runs the recipe: the preset through runTraining (SFT warm start -> GRPO with evaluations), timed. */
export async function runGrpoLearningRecipe(o: GrpoRecipeOptions): Promise<GrpoRecipeResult> {
  process.env.GPTOSS_PROGRESS = 'off';
  const dir = mkdtempSync(join(tmpdir(), 'grpo-learns-'));
  const config = recipeConfig(o, join(dir, 'ckpts'));
  // This run's curve replaces the previous test run's (a fresh run would otherwise move them aside).
  rmSync(o.metricsPath, { force: true });
  rmSync(sftMetricsPath(config), { force: true });
  const t0 = performance.now();
  const secs = (a: number) => (performance.now() - a) / 1000;
  const run = await setupRun(config);
  const tSetup = secs(t0);
  const evals: GrpoRecipeResult['evals'] = [];
  const curve: string[] = [];
  const budget = o.budgetS;
  const budgetStopped = { sft: false, grpo: false };
  const sftTok: number[] = [];
  const stepMetrics: Metrics[] = [];
  const stop = new AbortController();
  const interval = config.trainer.eval_interval;
  const maxSteps = config.trainer.max_steps ?? Infinity;
  const onCpu = run.device === 'cpu';
  let lastEvalS = 0;
  let tSft = 0;
  let tGrpo0 = 0;
  const r = await runTraining(config, run, {
    stop: stop.signal,
    consoleMetrics: false,
    sftShouldStop: () => {
      if (budget !== undefined && secs(t0) > 0.4 * budget) budgetStopped.sft = true;
      return budgetStopped.sft;
    },
    onSftStep: (_s, m) => sftTok.push(m.tokens_per_s ?? 0),
    onSftEval: (s, m) => {
      evals.push({ phase: 'sft', step: s, reward: m['eval/reward']!, accuracy: m['eval/accuracy']! });
      curve.push(`SFT step ${s}: held-out reward ${m['eval/reward']!.toFixed(2)}`);
    },
    onStep: (s, m) => {
      stepMetrics.push(m);
      if (s % o.curveEvery === 0) curve.push(`GRPO step ${s}: train reward ${m['reward/mean']!.toFixed(2)}, kl ${m.kl!.toFixed(4)}, ${m['time/step']!.toFixed(onCpu ? 1 : 3)} s/step`);
      if (budget !== undefined && s < maxSteps) {
        // Room for: this step's eval (if due), the next step (the slowest so far, +25%), its eval if due, the final
        // evaluation and the checkpoint the loop writes when stopped.
        const slowest = Math.max(...stepMetrics.map((x) => x['time/step'] ?? 0));
        const evalsDue = (interval > 0 && s % interval === 0 ? 1 : 0) + (interval > 0 && (s + 1) % interval === 0 ? 1 : 0);
        const need = 1.25 * slowest + (evalsDue + 1.5) * lastEvalS + 5;
        if (budget - secs(t0) < need && !stop.signal.aborted) {
          budgetStopped.grpo = true;
          curve.push(`GRPO stopped by the time budget (${budget} s) after step ${s} of ${maxSteps}`);
          stop.abort();
        }
      }
    },
    onEval: (s, m) => {
      if (s === 0) {
        // GRPO's first evaluation: the warm start is over.
        tSft = secs(t0) - tSetup;
        tGrpo0 = performance.now();
      }
      lastEvalS = m['time/eval'] ?? lastEvalS;
      evals.push({ phase: 'grpo', step: s, reward: m['eval/reward']!, accuracy: m['eval/accuracy']! });
      curve.push(s === 0 ? `GRPO step 0 (after the SFT warm start): held-out reward ${m['eval/reward']!.toFixed(2)}` : `GRPO step ${s}: held-out reward ${m['eval/reward']!.toFixed(2)}`);
    },
  });
  const tGrpo = tGrpo0 ? secs(tGrpo0) : 0;
  const total = secs(t0);
  if (!r.before || !r.after || !r.grpo) throw new Error(`the recipe's run ended without the held-out reward before and after GRPO (metrics ${r.metricsPath})`);
  const sft = r.sft ?? { steps: 0, finalLoss: NaN, skippedSteps: 0 };
  curve.splice(
    evals.findIndex((e) => e.phase === 'grpo'),
    0,
    `SFT ${sft.steps} steps (loss ${sft.finalLoss.toFixed(3)}, ${(tSetup + tSft).toFixed(0)} s${config.trainer.sft.stop_at_reward !== null ? `, stop at held-out reward ${config.trainer.sft.stop_at_reward}` : ''}${budgetStopped.sft ? ', stopped by the time budget' : ''})`,
  );
  curve.push(`final held-out reward ${r.after.reward.toFixed(2)} (from ${r.before.reward.toFixed(2)}), ${r.grpo.steps} GRPO steps, total ${total.toFixed(0)} s`);
  const result: GrpoRecipeResult = {
    before: r.before,
    after: r.after,
    curve,
    evals,
    sft: { steps: sft.steps, finalLoss: sft.finalLoss, skippedSteps: sft.skippedSteps, tokensPerS: mean(sftTok) },
    steps: r.grpo.steps,
    skippedSteps: r.grpo.skippedSteps,
    budgetStopped,
    timings: { setup: tSetup, sft: tSft, grpo: tGrpo, total },
    throughput: grpoThroughput(stepMetrics, config.trainer.update_epochs_per_batch, config.trainer.algorithm.use_kl_loss && config.trainer.algorithm.kl_loss_coef > 0),
    model: { path: config.trainer.policy.model.path, device: run.device, parameters: run.policy.numParameters(), vocab: run.vocab?.size ?? null },
    config,
  };
  run.policy.dispose();
  rmSync(dir, { recursive: true, force: true }); // the run's checkpoints
  return result;
}

/** Writes a result as JSON, creating folders. */
export function writeRecipeResult(path: string, o: GrpoRecipeOptions, r: GrpoRecipeResult, extra: Record<string, unknown> = {}): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, JSON.stringify({ recipe: o, ...extra, gain: r.after.reward - r.before.reward, ...r }, null, 2) + '\n');
}
