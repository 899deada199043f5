// train.ts: `npm run train [-- options] [overrides...]`: a training run (src/trainer/run.ts): an optional SFT warm
// start, then GRPO, resumed from the newest checkpoint by default. With no arguments: the demonstration that
// visibly learns, configs/demo-cpu.yaml (or configs/demo-gpu.yaml when a GPU is visible): SFT warm start and GRPO
// on the synthetic task, the held-out reward before and after, metrics and a chart.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { childLogger } from '../log/logger.ts';
import { defaultDevice } from '../native.ts';
import { GRPO_RESUME_KEYS, planResume } from '../trainer/checkpoint.ts';
import { checkGrpoInputs, planGrpoSteps } from '../trainer/grpo.ts';
import { runTraining } from '../trainer/run.ts';
import { interruptSignal, metricsPath, setupRun, sftCheckpointRoot } from '../trainer/setup.ts';
import { configFromCli, runMain } from './common.ts';
import { plotMetrics } from './plot.ts';

const log = childLogger('train');

/** The preset `npm run train` uses without --config: the demo sized for the machine. */
export function defaultTrainPreset(): string {
  return defaultDevice().startsWith('cuda') ? 'demo-gpu' : 'demo-cpu';
}

export async function trainMain(argv: string[] = process.argv): Promise<void> {
  const cli = await configFromCli(argv, {
    name: 'npm run train --',
    description:
      'GRPO post-training of a GPT-OSS model. Default: the demo that visibly learns (configs/demo-cpu.yaml, or demo-gpu.yaml on a GPU machine: SFT warm start + GRPO on the synthetic task). Resumes the newest checkpoint of the run unless trainer.resume_mode=none.',
    defaultConfig: defaultTrainPreset(),
  }, log);
  if (!cli) return;
  const { config, args } = cli;
  const t = config.trainer;
  const run = await setupRun(config);
  const plan = planGrpoSteps(config, run.env.train.length);
  log.info(
    {
      config: args.config,
      model: t.policy.model.path,
      device: run.device,
      params: run.policy.numParameters(),
      task: run.env.name,
      train: run.env.train.length,
      val: run.env.val.length,
      sft_warm_start: t.sft.warm_start ? { max_steps: t.sft.steps, stop_at_reward: t.sft.stop_at_reward } : false,
      steps: plan.totalSteps,
      epochs: plan.epochs,
      prompts_per_step: t.train_batch_size,
      samples_per_prompt: config.generator.n_samples_per_prompt,
      checkpoints: t.ckpt_path,
      metrics: metricsPath(config),
    },
    `training run '${t.run_name}' (config ${args.config})`,
  );
  if (plan.note) log.info(plan.note);
  checkGrpoInputs(config, run.env);
  // What the run would resume (or the refusal: changed settings, a fresh start over old checkpoints, no intact one).
  const resumable = planResume({ config, root: t.ckpt_path, phase: 'GRPO', keys: GRPO_RESUME_KEYS, force: args.forceResume });
  if (args.dryRun) {
    log.info(`dry run: config, data and model are fine; ${resumable ? `would resume GRPO from step ${resumable.state.step} (${resumable.dir})` : `would start fresh (no GRPO checkpoint in ${t.ckpt_path})`}`);
    return;
  }
  if (resumable && resumable.state.step >= plan.totalSteps) {
    log.info(`run '${t.run_name}' is already complete (step ${resumable.state.step} of ${plan.totalSteps}, ${resumable.dir}); to train it again, delete ${t.ckpt_path} or give the run a new trainer.run_name and trainer.ckpt_path`);
  }
  const intr = interruptSignal();
  let r;
  try {
    r = await runTraining(config, run, { signal: intr.signal, forceResume: args.forceResume });
  } finally {
    intr.dispose();
  }
  if (r.interrupted) {
    const where = r.grpo ? r.grpo.lastCheckpoint : r.sft?.lastCheckpoint;
    log.warn(`interrupted; ${where ? `checkpoint ${where}` : 'no checkpoint could be saved'}. Run the same command again to continue.`);
    process.exitCode = 130;
    return;
  }
  const g = r.grpo!;
  if (r.before && r.after) {
    const gain = Math.round((r.after.reward - r.before.reward) * 100);
    log.info(`held-out reward before GRPO: ${r.before.reward.toFixed(2)} → after: ${r.after.reward.toFixed(2)} (${gain >= 0 ? '+' : ''}${gain} points, step ${r.after.step} of ${r.totalSteps})`);
  } else if (r.after) {
    log.info(`held-out reward after GRPO: ${r.after.reward.toFixed(2)} (step ${r.after.step}; no evaluation before GRPO: trainer.eval_before_train=false)`);
  }
  const chart = r.metricsPath.replace(/\.jsonl$/, '') + '.png';
  let chartNote = '';
  if (existsSync(r.metricsPath)) {
    try {
      await plotMetrics(r.metricsPath, chart, { title: `${t.run_name}: reward and accuracy per GRPO step` });
      chartNote = `; chart: ${chart}`;
    } catch (e) {
      chartNote = `; no chart (${(e as Error).message})`;
    }
  }
  const sftNote = t.sft.warm_start ? ` (SFT warm start: ${r.sftMetricsPath ?? sftMetricsNote(config)})` : '';
  log.info(`done: ${g.steps} GRPO steps, ${g.skippedSteps} skipped; checkpoint: ${g.lastCheckpoint ?? 'none (trainer.ckpt_interval=-1)'}; metrics: ${r.metricsPath}${sftNote}${chartNote}`);
}

function sftMetricsNote(c: Parameters<typeof sftCheckpointRoot>[0]): string {
  return `checkpoints in ${sftCheckpointRoot(c)}`;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) runMain(() => trainMain());
