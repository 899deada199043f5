// sft.ts: `npm run sft [-- options] [overrides...]`: supervised fine-tuning on reference solutions (GSM8K or the
// synthetic task) as a cold start for GRPO. Writes a model directory (config.json + safetensors, and vocab.json
// when data.compact_vocab) that `npm run train -- trainer.policy.model.path=<dir>` starts from.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { childLogger } from '../log/logger.ts';
import { trainSft } from '../trainer/sft.ts';
import { preflightRun } from '../trainer/preflight.ts';
import { createMetrics, interruptSignal, setupRun, writeVocabMap } from '../trainer/setup.ts';
import { configFromCli, runMain } from './common.ts';

const log = childLogger('sft');

export async function sftMain(argv: string[] = process.argv): Promise<void> {
  const cli = await configFromCli(argv, {
    name: 'npm run sft --',
    description: 'Supervised fine-tuning on reference solutions (the cold start before GRPO).',
    defaultConfig: 'tiny-cpu',
  }, log);
  if (!cli) return;
  const { config, args } = cli;
  const run = await setupRun(config);
  preflightRun(config, run, 'sft');
  const out = config.trainer.sft.output_dir ?? join('runs', 'sft', config.trainer.run_name);
  log.info({ model: config.trainer.policy.model.path, device: run.device, params: run.policy.numParameters(), task: run.env.name, steps: config.trainer.sft.steps, output: out }, 'SFT run');
  if (args.dryRun) return;
  const metrics = await createMetrics({ ...config, trainer: { ...config.trainer, run_name: `${config.trainer.run_name}-sft` } });
  const intr = interruptSignal();
  try {
    const r = await trainSft({ config, policy: run.policy, env: run.env, generator: run.generator, metrics, signal: intr.signal }, { evalEvery: Math.max(1, Math.floor(config.trainer.sft.steps / 4)) });
    mkdirSync(out, { recursive: true });
    run.model.weights.save(out);
    if (run.vocab) writeVocabMap(out, run.vocab);
    const curve = r.evals.map((e) => `step ${e.step}: acc ${e.accuracy.toFixed(3)}`).join('; ');
    log.info({ output: out, finalLoss: r.finalLoss, skipped: r.skippedSteps }, `SFT done; eval ${curve || '(none)'}; next: npm run train -- trainer.policy.model.path=${out}`);
  } finally {
    intr.dispose();
    await metrics.close();
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) runMain(() => sftMain());
