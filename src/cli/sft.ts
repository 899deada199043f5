// sft.ts: `npm run sft [-- options] [overrides...]`: supervised fine-tuning on reference solutions (GSM8K or the
// synthetic task) as a cold start for GRPO. Checkpointed and resumed like `npm run train` (under
// <trainer.ckpt_path>/sft; Ctrl-C saves and exits 130, the same command continues). When finished it writes a
// model directory (config.json + safetensors, and vocab.json when data.compact_vocab) and prints the
// `npm run train` command that starts GRPO from it. Default config: the demo's (configs/demo-cpu.yaml or
// demo-gpu.yaml), whose `npm run train` runs this same SFT phase as its warm start.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError } from '../config/overrides.ts';
import { childLogger } from '../log/logger.ts';
import { trainSft } from '../trainer/sft.ts';
import { describeResume, preflightRun } from '../trainer/preflight.ts';
import { createMetrics, interruptSignal, setupRun, sftCheckpointRoot, vocabTaskKeys, writeVocabMap } from '../trainer/setup.ts';
import { configFromCli, runMain } from './common.ts';
import { defaultTrainPreset } from './train.ts';

const log = childLogger('sft');

/** Quotes an override for a POSIX shell when it holds anything but plain characters. */
function shellWord(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

export async function sftMain(argv: string[] = process.argv): Promise<void> {
  const cli = await configFromCli(argv, {
    name: 'npm run sft --',
    description: 'Supervised fine-tuning on reference solutions (the cold start before GRPO). Default: the demo config (configs/demo-cpu.yaml, or demo-gpu.yaml on a GPU machine).',
    defaultConfigHelp: 'configs/demo-cpu.yaml; demo-gpu.yaml with a GPU',
    defaultConfig: defaultTrainPreset,
  }, log);
  if (!cli) return;
  const { config, args } = cli;
  // This command trains the single-process policy; optimizer offload is the sharded trainer's (npm run train).
  if (config.trainer.policy.fsdp_config.cpu_offload) {
    throw new ConfigError(
      'trainer.policy.fsdp_config.cpu_offload=true: npm run sft trains the single-process policy, which keeps its optimizer state on the device; npm run train honours the key (its SFT warm start too: trainer.sft.warm_start=true). Use false here.',
    );
  }
  if (config.trainer.policy.optimizer_config.offload_after_step) {
    throw new ConfigError(
      'trainer.policy.optimizer_config.offload_after_step=true: npm run sft trains the single-process policy, which keeps its optimizer state on the device (there is no generation phase to make room for); npm run train honours the key. Use false here.',
    );
  }
  const run = await setupRun(config);
  const t = config.trainer;
  const out = t.sft.output_dir ?? join('runs', 'sft', t.run_name);
  const ckptRoot = sftCheckpointRoot(config);
  // The data, the vocabulary fit and the SFT checkpoint to resume (or the refusal), dry run or not.
  const { sft: resumable } = preflightRun(config, run, 'sft', { force: args.forceResume });
  log.info({ model: t.policy.model.path, device: run.device, params: run.policy.numParameters(), task: run.env.name, steps: t.sft.steps, stop_at_reward: t.sft.stop_at_reward, checkpoints: ckptRoot, output: out }, 'SFT run');
  if (args.dryRun) {
    log.info(`dry run: config, device, data, model and vocabulary are fine; ${describeResume(config, resumable, 'SFT')}`);
    return;
  }
  const metrics = await createMetrics(config, { phase: 'sft' });
  const intr = interruptSignal();
  let r;
  try {
    // Without an eval interval in the config, evaluate four times over the run.
    const evalEvery = t.sft.eval_interval || Math.max(1, Math.floor(t.sft.steps / 4));
    r = await trainSft({ config, policy: run.policy, env: run.env, generator: run.generator, metrics, signal: intr.signal, ckptRoot, forceResume: args.forceResume }, { evalEvery });
  } finally {
    intr.dispose();
    await metrics.close();
  }
  if (r.interrupted) {
    log.warn(`SFT interrupted at step ${r.steps}; ${r.lastCheckpoint ? `checkpoint ${r.lastCheckpoint}` : 'no checkpoint could be saved'}. Run the same command again to continue.`);
    process.exitCode = 130;
    return;
  }
  mkdirSync(out, { recursive: true });
  run.model.weights.save(out);
  if (run.vocab) writeVocabMap(out, run.vocab, vocabTaskKeys(config));
  const curve = r.evals.map((e) => `step ${e.step}: reward ${e.reward.toFixed(3)}`).join('; ');
  log.info({ output: out, finalLoss: r.finalLoss, skipped: r.skippedSteps, metrics: metrics.path }, `SFT done; eval ${curve || '(none)'}`);
  // GRPO from this model: the same task and settings (the SFT run's config and overrides), no second warm start,
  // and a run name of its own, so its checkpoints and metrics do not mix with another run's.
  const grpoRun = `${t.run_name}-grpo`;
  const next = [
    ...(args.config !== undefined ? ['-c', args.config] : []),
    ...args.overrides.filter((o) => !/^[+~]*trainer\.(sft\.|run_name|ckpt_path|metrics_path|policy\.model\.path)/.test(o)),
    `trainer.policy.model.path=${out}`,
    'trainer.sft.warm_start=false',
    `trainer.run_name=${grpoRun}`,
    `trainer.ckpt_path=${join('runs', 'ckpts', grpoRun)}`,
  ];
  log.info(`next: npm run train -- ${next.map(shellWord).join(' ')}`);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) runMain(() => sftMain());
