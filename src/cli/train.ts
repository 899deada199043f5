// train.ts: `npm run train [-- options] [overrides...]`: a training run (src/trainer/run.ts): an optional SFT warm
// start, then GRPO, resumed from the newest checkpoint by default. With no arguments: the demonstration that
// visibly learns, configs/demo-cpu.yaml (or configs/demo-gpu.yaml when a GPU is visible): SFT warm start and GRPO
// on the synthetic task, the held-out reward before and after, metrics and a chart.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { assertSupported, ConfigError, processCount, usesShardedTrainer } from '../config/load.ts';
import type { Config } from '../config/schema.ts';
import { launch } from '../distributed/launch.ts';
import { presetConfig, readConfigFile } from '../model/index.ts';
import { assertEngineLayout, engineLayoutOf, setupDistributedRun } from '../trainer/distributed-run.ts';
import type { CliArgs } from './args.ts';
import { fileURLToPath } from 'node:url';
import { childLogger } from '../log/logger.ts';
import { defaultDevice } from '../native.ts';
import { checkGrpoInputs, planGrpoSteps } from '../trainer/grpo.ts';
import { describeResume, preflightRun } from '../trainer/preflight.ts';
import { runTraining } from '../trainer/run.ts';
import { interruptSignal, metricsPath, setupRun, sftCheckpointRoot, sftMetricsPath, randomModelSpec, type RunPieces } from '../trainer/setup.ts';
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
    defaultConfigHelp: 'configs/demo-cpu.yaml; demo-gpu.yaml with a GPU',
    defaultConfig: defaultTrainPreset,
  }, log);
  if (!cli) return;
  const { config, args, preset } = cli;
  const t = config.trainer;
  // Several processes (trainer.placement.policy_num_gpus_per_node > 1): this process becomes their launcher, and
  // runs again as each of them (WORLD_SIZE set); rank 0 drives the run, the others serve it.
  if (processCount(config) > 1 && process.env.WORLD_SIZE === undefined) return launchTraining(config, argv);
  // One process with trainer.policy.fsdp_config.cpu_offload, optimizer_config.offload_after_step or
  // colocate_policy_ref=false: the same sharded trainer
  // over a group of one (only it keeps the optimizer state or the KL reference in host memory).
  if (processCount(config) === 1 && usesShardedTrainer(config)) {
    log.info(
      `sharded trainer on one process (${[t.policy.fsdp_config.cpu_offload ? 'trainer.policy.fsdp_config.cpu_offload=true' : '', t.policy.optimizer_config.offload_after_step ? 'trainer.policy.optimizer_config.offload_after_step=true' : '', !t.placement.colocate_policy_ref ? 'trainer.placement.colocate_policy_ref=false' : ''].filter(Boolean).join(', ')})`,
    );
  }
  const drun = processCount(config) > 1 || usesShardedTrainer(config) ? await setupDistributedRun(config) : null;
  if (drun && !drun.pieces) {
    // Ctrl-C reaches every rank; rank 0 saves the checkpoint (with this rank's shard) and then ends the run.
    process.on('SIGINT', () => {});
    await drun.serve();
    await drun.close();
    return;
  }
  const run = drun ? drun.pieces! : await setupRun(config);
  await trainWith(config, run, args, preset);
  // Only after success: after a failure another rank may be inside a collective; this process exits and the
  // launcher ends the others.
  await drun?.close();
}

async function trainWith(config: Config, run: RunPieces, args: CliArgs, preset: string): Promise<void> {
  const t = config.trainer;
  const plan = planGrpoSteps(config, run.env.train.length);
  log.info(
    {
      config: preset,
      model: t.policy.model.path,
      device: run.device,
      processes: processCount(config),
      engines: `${config.generator.num_inference_engines} x tp ${config.generator.inference_engine_tensor_parallel_size}`,
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
    `training run '${t.run_name}' (config ${preset})`,
  );
  if (plan.note) log.info(plan.note);
  checkGrpoInputs(config, run.env);
  // What would stop the run later (vocabulary fit; a resume refused: changed settings, a fresh start over old
  // checkpoints, none intact) stops it now, dry run or not; and what it would resume.
  const { grpo: resumable, sft: sftResumable } = preflightRun(config, run, 'grpo', { force: args.forceResume });
  if (args.dryRun) {
    const sftNote = t.sft.warm_start && !resumable ? `; SFT warm start: ${describeResume(config, sftResumable, 'SFT')}` : '';
    log.info(`dry run: config, device, data, model and vocabulary are fine; ${describeResume(config, resumable, 'GRPO')}${sftNote}`);
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
      // The warm start's evaluations too, when this run has them (its own file, its own step count).
      const sftFile = sftMetricsPath(config);
      const files = t.sft.warm_start && existsSync(sftFile) ? [sftFile, r.metricsPath] : [r.metricsPath];
      await plotMetrics(files, chart, { title: `${t.run_name}: reward and accuracy per step${files.length > 1 ? ' (SFT warm start, then GRPO)' : ''}` });
      chartNote = `; chart: ${chart}`;
    } catch (e) {
      chartNote = `; no chart (${(e as Error).message})`;
    }
  }
  const sftNote = t.sft.warm_start ? ` (SFT warm start: ${r.sftMetricsPath ?? sftMetricsNote(config)})` : '';
  log.info(`done: ${g.steps} GRPO steps, ${g.skippedSteps} skipped; checkpoint: ${g.lastCheckpoint ?? 'none (trainer.ckpt_interval=-1)'}; metrics: ${r.metricsPath}${sftNote}${chartNote}`);
}

/** The model's head counts, when they can be known without loading it (a preset, or a folder's config.json). */
function modelHeads(c: Config): { numHeads: number; numKvHeads: number } | undefined {
  const path = c.trainer.policy.model.path;
  try {
    const random = randomModelSpec(path);
    if (random) return presetConfig(random.preset);
    const file = join(path, 'config.json');
    if (existsSync(file)) return readConfigFile(file);
  } catch {
    // setupRun reports a bad model path or config with its own message.
  }
  return undefined;
}

/**
 * Starts the run's processes through the launcher (src/distributed/launch.ts): the same command line on each, with
 * RANK/WORLD_SIZE set. A layout that cannot work is refused here, before any process starts; when a rank fails the
 * launcher ends the others and this says which rank.
 */
async function launchTraining(config: Config, argv: string[]): Promise<void> {
  assertSupported(config);
  assertEngineLayout(config, modelHeads(config));
  const world = processCount(config);
  const l = engineLayoutOf(config);
  const node = nodeOf(config);
  const where = l.colocated ? 'colocated' : `on their own processes after ${l.trainerRanks} trainer process(es)`;
  const nodes = node.nnodes > 1 ? `, node ${node.nodeRank} of ${node.nnodes} (rendezvous ${node.masterAddr}:${node.masterPort})` : '';
  const count = node.nnodes > 1 ? `${world / node.nnodes} of ${world}` : `${world}`;
  log.info(`starting ${count} processes (trainer.device=${config.trainer.device}; ${l.numEngines} inference engine(s) of tp ${l.tensorParallelSize}, ${where}${nodes})`);
  const r = await launch({
    script: fileURLToPath(import.meta.url),
    args: argv.slice(2),
    nprocPerNode: world / node.nnodes,
    ...(node.nnodes > 1 ? { nnodes: node.nnodes, nodeRank: node.nodeRank, masterAddr: node.masterAddr, masterPort: node.masterPort } : {}),
    device: config.trainer.device === 'cpu' ? 'cpu' : config.trainer.device === 'auto' ? 'auto' : 'cuda',
    collectiveTimeoutMs: config.trainer.nccl_timeout_s * 1000,
    // Ctrl-C: rank 0 stops at the end of the running phase (bounded by nccl_timeout_s, like any of its phases) and
    // every rank writes its shard of the checkpoint; the launcher's default 5 s before SIGKILL cut that short.
    signalGraceMs: config.trainer.nccl_timeout_s * 1000,
  });
  if (r.exitCode === 0) return;
  if (r.failedRank === undefined && r.reason?.includes('SIGINT')) {
    process.exitCode = 130;
    return;
  }
  // The failed rank's own lines (prefixed "[rank N]") say what went wrong inside it; this says which one it was.
  process.stderr.write(`error: the training job ended: ${r.reason ?? `exit code ${r.exitCode}`}; the other ranks were stopped\n`);
  process.exitCode = r.exitCode;
}

/**
 * This node's place in a run over trainer.placement.policy_num_nodes nodes: `npm run train` runs on every node with
 * the torchrun variables NODE_RANK (0 .. nodes-1), MASTER_ADDR and MASTER_PORT (node 0's address and a free port:
 * node 0's launcher hosts the rendezvous there, every rank of every node connects to it).
 */
function nodeOf(c: Config): { nnodes: number; nodeRank: number; masterAddr: string; masterPort: number } {
  const nnodes = c.trainer.placement.policy_num_nodes;
  if (nnodes === 1) return { nnodes, nodeRank: 0, masterAddr: '127.0.0.1', masterPort: 0 };
  // An empty variable counts as unset.
  const env = { NODE_RANK: process.env.NODE_RANK || undefined, MASTER_ADDR: process.env.MASTER_ADDR || undefined, MASTER_PORT: process.env.MASTER_PORT || undefined };
  const bad: string[] = [];
  const nodeRank = Number(env.NODE_RANK);
  const masterPort = Number(env.MASTER_PORT);
  if (env.NODE_RANK === undefined || !Number.isInteger(nodeRank) || nodeRank < 0 || nodeRank >= nnodes) bad.push(`NODE_RANK=${env.NODE_RANK ?? '(unset)'}: this node's index in [0, ${nnodes})`);
  if (!env.MASTER_ADDR) bad.push("MASTER_ADDR=(unset): node 0's address, which every node can reach");
  if (env.MASTER_PORT === undefined || !Number.isInteger(masterPort) || masterPort < 1 || masterPort > 65535) bad.push(`MASTER_PORT=${env.MASTER_PORT ?? '(unset)'}: a free TCP port on node 0 for the rendezvous`);
  if (bad.length) {
    throw new ConfigError(`trainer.placement.policy_num_nodes=${nnodes}: run \`npm run train\` on every node with the environment of its place in the run:\n${bad.map((b) => `  - ${b}`).join('\n')}`);
  }
  return { nnodes, nodeRank, masterAddr: env.MASTER_ADDR!, masterPort };
}

function sftMetricsNote(c: Parameters<typeof sftCheckpointRoot>[0]): string {
  return `checkpoints in ${sftCheckpointRoot(c)}`;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) runMain(() => trainMain());
