// train.ts: `npm run train [-- options] [overrides...]`: GRPO training. With no arguments: the tiny CPU default
// (configs/tiny-cpu.yaml: a random-initialised GPT-OSS-architecture model, the real tokenizer, bundled GSM8K, a
// few steps with progress and metrics).
import { fileURLToPath } from 'node:url';
import { childLogger } from '../log/logger.ts';
import { checkGrpoInputs, trainGrpo } from '../trainer/grpo.ts';
import { preflightRun } from '../trainer/preflight.ts';
import { createMetrics, interruptSignal, metricsPath, setupRun } from '../trainer/setup.ts';
import { configFromCli, runMain } from './common.ts';

const log = childLogger('train');

export async function trainMain(argv: string[] = process.argv): Promise<void> {
  const cli = await configFromCli(argv, {
    name: 'npm run train --',
    description: 'GRPO post-training of a GPT-OSS model (default: the tiny CPU demo, configs/tiny-cpu.yaml).',
    defaultConfig: 'tiny-cpu',
  }, log);
  if (!cli) return;
  const { config, args } = cli;
  const run = await setupRun(config);
  const t = config.trainer;
  log.info(
    {
      model: t.policy.model.path,
      device: run.device,
      params: run.policy.numParameters(),
      task: run.env.name,
      train: run.env.train.length,
      val: run.env.val.length,
      steps: t.max_steps ?? Math.floor(run.env.train.length / t.train_batch_size) * t.epochs,
      prompts_per_step: t.train_batch_size,
      samples_per_prompt: config.generator.n_samples_per_prompt,
      metrics: metricsPath(config),
    },
    'GRPO run',
  );
  checkGrpoInputs(config, run.env);
  // What would stop the run later (vocabulary fit, an unreadable resume checkpoint) stops it now, dry run or not.
  preflightRun(config, run, 'grpo');
  if (args.dryRun) {
    log.info('dry run: config, device, data, model, vocabulary and resume checkpoint are fine');
    return;
  }
  const metrics = await createMetrics(config);
  const intr = interruptSignal();
  try {
    const r = await trainGrpo({ config, policy: run.policy, generator: run.generator, env: run.env, ref: run.ref, metrics, signal: intr.signal });
    const curve = r.evals.map((e) => `step ${e.step}: reward ${e.reward.toFixed(3)} acc ${e.accuracy.toFixed(3)}`).join('; ');
    log.info({ steps: r.steps, skipped: r.skippedSteps, checkpoint: r.lastCheckpoint }, `${r.interrupted ? 'interrupted' : 'done'}; eval ${curve || '(none)'}`);
    log.info(`metrics: ${metrics.path} (chart: npm run plot -- ${metrics.path} -o chart.png)`);
    if (r.interrupted) process.exitCode = 130;
  } finally {
    intr.dispose();
    await metrics.close();
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) runMain(() => trainMain());
