// run.ts: a whole training run as `npm run train` does it, for the CLI and for library callers and tests that
// want exactly the same thing (the CPU learning test runs the default preset through here):
//   [SFT warm start, when trainer.sft.warm_start: checkpointed under <ckpt_path>/sft, metrics in <run>-sft.jsonl]
//   -> GRPO (checkpointed under trainer.ckpt_path, metrics in trainer.metrics_path)
//   -> the held-out reward before GRPO (its step-0 evaluation) and after (its last), read back from the metrics
//      file, so that a run resumed across several attempts still reports its whole span.
// Every phase resumes under trainer.resume_mode (default latest). A re-run after Ctrl-C continues where the
// checkpoint left off: a finished SFT phase is not run again, and when GRPO has a checkpoint the SFT phase's final
// weights are loaded first, because they are GRPO's KL reference (the policy GRPO started from).
import { existsSync, readFileSync } from 'node:fs';
import type { Config } from '../config/schema.ts';
import { childLogger } from '../log/logger.ts';
import { parseMetricsJsonl, type Metrics } from '../log/metrics.ts';
import { GRPO_RESUME_KEYS, planResume, SFT_RESUME_KEYS, type Resumed } from './checkpoint.ts';
import type { Generator } from './policy.ts';
import { evaluate, planGrpoSteps, trainGrpo, type GrpoResult } from './grpo.ts';
import { createMetrics, sftCheckpointRoot, type RunPieces } from './setup.ts';
import { trainSft, type SftResult } from './sft.ts';
import { LoraPolicy } from './lora-policy.ts';
import type { Policy } from './policy.ts';

const log = childLogger('run');

export interface TrainingRunOptions {
  /** Ctrl-C: the running phase saves a checkpoint and the run returns `interrupted`. */
  signal?: AbortSignal;
  /**
   * Ends GRPO where it is as if it had reached max_steps (checkpoint, final evaluation), e.g. a wall-clock
   * budget; `stoppedEarly` says it happened.
   */
  stop?: AbortSignal;
  /** Resume checkpoints whose model, batch or optimizer settings differ from the config. */
  forceResume?: boolean;
  /** Print a line per logged step (default true). */
  consoleMetrics?: boolean;
  /** Checked after each SFT step: true ends the warm start there (e.g. a wall-clock budget). */
  sftShouldStop?: (step: number) => boolean;
  onSftStep?: (step: number, m: Metrics) => void;
  onSftEval?: (step: number, m: Metrics) => void;
  onStep?: (step: number, m: Metrics) => void;
  onEval?: (step: number, m: Metrics) => void;
}

export interface HeldOut {
  step: number;
  reward: number;
  accuracy: number;
}

export interface TrainingRunResult {
  /** The warm start (null when the config has none, or GRPO resumed past it). */
  sft: SftResult | null;
  /** Null when the run was interrupted during the warm start. */
  grpo: GrpoResult | null;
  /** Stopped by the signal: a checkpoint is saved, the same command continues. */
  interrupted: boolean;
  /** GRPO ended by `stop` before max_steps. */
  stoppedEarly: boolean;
  /** GRPO resumed a checkpoint at this step (null: it started fresh). */
  resumedFrom: number | null;
  /** GRPO steps the run has (max_steps, or every epoch) and done so far. */
  totalSteps: number;
  /** Held-out reward at GRPO step 0 (after any warm start) and at its last evaluation, over every attempt. */
  before: HeldOut | null;
  after: HeldOut | null;
  metricsPath: string;
  sftMetricsPath: string | null;
}

/** The first (step 0) and last evaluation rows of a GRPO metrics file. */
export function heldOutFromMetrics(path: string): { before: HeldOut | null; after: HeldOut | null } {
  if (!existsSync(path)) return { before: null, after: null };
  const evals = parseMetricsJsonl(readFileSync(path, 'utf8'))
    .filter((r) => r.kind === 'eval' && typeof r.step === 'number' && typeof r['eval/reward'] === 'number')
    .map((r) => ({ step: r.step as number, reward: r['eval/reward'] as number, accuracy: (r['eval/accuracy'] as number | null) ?? 0 }));
  const before = evals.find((e) => e.step === 0) ?? null;
  const after = evals.length && evals[evals.length - 1]!.step > 0 ? evals[evals.length - 1]! : null;
  return { before, after };
}

function eitherSignal(a?: AbortSignal, b?: AbortSignal): AbortSignal | undefined {
  if (!a || !b) return a ?? b;
  const ac = new AbortController();
  for (const s of [a, b]) {
    if (s.aborted) ac.abort();
    else s.addEventListener('abort', () => ac.abort(), { once: true });
  }
  return ac.signal;
}

/**
 * Runs f with the policy the SFT warm start trains: the run's policy, or for a LoRA run the full-weight base (the
 * warm start fine-tunes the base; GRPO then trains adapters on it, its KL reference being that base).
 */
function withSftPolicy<R>(run: RunPieces, f: (p: Policy) => Promise<R>): Promise<R> {
  return run.policy instanceof LoraPolicy ? run.policy.withBase(f) : f(run.policy);
}

export async function runTraining(config: Config, run: RunPieces, o: TrainingRunOptions = {}): Promise<TrainingRunResult> {
  const t = config.trainer;
  const force = o.forceResume;
  // Before any work: refuses a fresh start over existing checkpoints, or a resume under changed settings.
  const grpoPlan: Resumed | null = planResume({ config, root: t.ckpt_path, phase: 'GRPO', keys: GRPO_RESUME_KEYS, force });
  const totalSteps = planGrpoSteps(config, run.env.train.length).totalSteps;
  const metrics = await createMetrics(config, { console: o.consoleMetrics });
  const base = { interrupted: false, stoppedEarly: false, resumedFrom: grpoPlan?.state.step ?? null, totalSteps, metricsPath: metrics.path, sftMetricsPath: null as string | null };
  let sft: SftResult | null = null;
  try {
    if (t.sft.warm_start) {
      const sftRoot = sftCheckpointRoot(config);
      if (grpoPlan) {
        // GRPO goes on from its checkpoint; its KL reference is the warm start's result.
        const sftDone = planResume({ config, root: sftRoot, phase: 'SFT', keys: SFT_RESUME_KEYS, force });
        if (sftDone && (sftDone.state.extra as { finished?: boolean } | undefined)?.finished) {
          await withSftPolicy(run, (p) => p.load(sftDone.dir));
          log.info('SFT warm start: finished earlier (%s); GRPO continues from its checkpoint', sftDone.dir);
        } else {
          log.warn('SFT warm start: no finished SFT checkpoint in %s; the KL reference is the initial model', sftRoot);
        }
      } else {
        const sftMetrics = await createMetrics(config, { phase: 'sft', console: o.consoleMetrics });
        base.sftMetricsPath = sftMetrics.path;
        try {
          log.info({ steps: t.sft.steps, stop_at_reward: t.sft.stop_at_reward, eval_interval: t.sft.eval_interval }, 'SFT warm start');
          sft = await withSftPolicy(run, (policy) =>
            trainSft(
              { config, policy, env: run.env, generator: run.generator, metrics: sftMetrics, signal: o.signal, onStep: o.onSftStep, onEval: o.onSftEval, ckptRoot: sftRoot, forceResume: force },
              { shouldStop: o.sftShouldStop },
            ),
          );
        } finally {
          await sftMetrics.close();
        }
        if (sft.interrupted) return { ...base, sft, grpo: null, interrupted: true, before: null, after: null };
        // The generator samples from the warm-started weights.
        await (run.generator as Generator).updateWeights(run.policy);
      }
    }
    const stopOrSignal = eitherSignal(o.signal, o.stop);
    const grpo = await trainGrpo({
      config,
      policy: run.policy,
      generator: run.generator,
      env: run.env,
      ref: run.ref,
      resources: run.resources,
      metrics,
      signal: stopOrSignal,
      forceResume: force,
      onStep: o.onStep,
      onEval: o.onEval,
    });
    const interrupted = grpo.interrupted && !!o.signal?.aborted;
    const stoppedEarly = grpo.interrupted && !interrupted;
    if (stoppedEarly && t.eval_interval > 0 && grpo.evals[grpo.evals.length - 1]?.step !== grpo.steps) {
      // The loop skips its final evaluation when stopped; a run ended by `stop` still gets its "after".
      const examples = t.eval_max_samples ? run.env.val.slice(0, t.eval_max_samples) : run.env.val;
      const r = await evaluate(run.generator, run.env, examples, config, t.seed + 7919 * grpo.steps);
      const m: Metrics = { 'eval/reward': r.reward, 'eval/accuracy': r.accuracy, 'eval/response_len': r.responseLength };
      metrics.log(grpo.steps, m, 'eval');
      grpo.evals.push({ step: grpo.steps, reward: r.reward, accuracy: r.accuracy });
      o.onEval?.(grpo.steps, m);
    }
    return { ...base, sft, grpo, interrupted, stoppedEarly, ...heldOutFromMetrics(metrics.path) };
  } finally {
    await metrics.close();
  }
}
