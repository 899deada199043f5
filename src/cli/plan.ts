// plan.ts: `npx gptoss plan` (`npm run plan --`): the per-GPU memory of a training configuration, before anything
// is loaded (src/trainer/memory-plan.ts).
//
//   npx gptoss plan --model gpt-oss-20b --gpus 8 --gpu-memory-gb 80 [-c gsm8k-gptoss-20b] [overrides...]
// --model is a preset (gpt-oss-20b, gpt-oss-120b, gpt-oss-tiny..., or `tiny`/`tiny:<preset>` as in
// trainer.policy.model.path), a directory or a Hugging Face hub id: of those only config.json is read (from the HF
// cache, or fetched alone), never the weights. Exit status: 0 fits, 3 does not fit (the table on stdout, the reason
// on stderr), 2 bad input.
import { fileURLToPath } from 'node:url';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { loadConfig } from '../config/load.ts';
import { ConfigError } from '../config/overrides.ts';
import { PRESET_NAMES, presetConfig, readConfigFile, type GptOssConfig, type PresetName } from '../model/config.ts';
import { resolveModelConfigFile } from '../model/hub.ts';
import { formatPlan, planFromConfig, planReason, planToJson } from '../trainer/memory-plan.ts';
import { randomModelSpec } from '../trainer/setup.ts';
import { joinOverrides } from './args.ts';

/** Exit status of a configuration that does not fit. */
export const EXIT_DOES_NOT_FIT = 3;

class UsageError extends Error {}

/**
 * The model config of a preset name, `tiny[:preset]`, `<preset>:random[:layers=N]`, a directory, a config.json path
 * or a hub id (config only).
 */
export async function modelConfigOf(source: string): Promise<GptOssConfig> {
  let random;
  try {
    random = randomModelSpec(source);
  } catch (e) {
    throw new UsageError(`--model ${source}: ${(e as Error).message.replace(/^trainer\.policy\.model\.path=\S+: /, '')}`);
  }
  const preset = random?.preset ?? ((PRESET_NAMES as readonly string[]).includes(source) ? (source as PresetName) : null);
  if (preset) {
    if (!(PRESET_NAMES as readonly string[]).includes(preset)) {
      throw new UsageError(`--model ${source}: unknown preset '${preset}' (${PRESET_NAMES.join(', ')})`);
    }
    return presetConfig(preset, random?.numLayers !== undefined ? { numLayers: random.numLayers } : {});
  }
  try {
    return readConfigFile(await resolveModelConfigFile(source));
  } catch (e) {
    throw new UsageError(`--model ${source}: ${(e as Error).message}`);
  }
}

export async function planMain(argv: string[] = process.argv): Promise<number> {
  const a = await yargs(hideBin(argv))
    .scriptName('gptoss plan')
    .usage(
      '$0 --gpus N --gpu-memory-gb M [--model X] [-c preset] [overrides...]\n\n' +
        'Per-GPU memory of a training configuration (weight, gradient and optimizer shards, gathered layers, ' +
        'activations, the colocated engine\'s KV cache); exits 0 when it fits, 3 when it does not.',
    )
    .parserConfiguration({ 'parse-positional-numbers': false, 'camel-case-expansion': false, 'dot-notation': false })
    .option('model', { type: 'string', describe: 'preset (gpt-oss-20b, tiny, tiny:<preset>), directory or hub id; default trainer.policy.model.path' })
    .option('gpus', { type: 'number', describe: 'ranks (GPUs) the trainer is sharded over; default the config\'s policy placement' })
    .option('gpu-memory-gb', { type: 'number', describe: 'memory of one GPU in GB (1e9 bytes)' })
    .option('host-memory-gb', { type: 'number', describe: 'host memory of one node in GB (checked when given)' })
    .option('micro-batch-tokens', { type: 'number', describe: 'tokens of the largest training micro-batch (default micro_train_batch_size_per_gpu x (max_prompt_length + max_generate_length))' })
    .option('config', { alias: 'c', type: 'string', default: 'gsm8k-gptoss-20b', describe: 'a preset in configs/ or a YAML file' })
    .option('json', { type: 'boolean', default: false, describe: 'print the plan as JSON instead of the table' })
    .example('$0 --model gpt-oss-20b --gpus 8 --gpu-memory-gb 80', 'the seed run on 8 x 80 GB')
    .example('$0 --model gpt-oss-20b --gpus 4 --gpu-memory-gb 80 trainer.policy.fsdp_config.cpu_offload=true', 'optimizer state in host memory')
    .strictOptions()
    .fail((msg, err) => {
      throw err ?? new UsageError(msg);
    })
    .help()
    .version(false)
    .parseAsync();
  const overrides = joinOverrides(a._.map(String));
  const config = loadConfig({ config: a.config, overrides });
  const placement = config.trainer.placement;
  const gpus = a.gpus ?? placement.policy_num_nodes * placement.policy_num_gpus_per_node;
  if (!Number.isInteger(gpus) || gpus < 1) throw new UsageError(`--gpus must be a positive integer, got ${a.gpus}`);
  const memGb = a['gpu-memory-gb'];
  if (memGb === undefined) throw new UsageError('--gpu-memory-gb is required (the memory of one GPU in GB, e.g. 80 for an H100)');
  if (!(memGb > 0)) throw new UsageError(`--gpu-memory-gb must be positive, got ${memGb}`);
  const hostGb = a['host-memory-gb'];
  if (hostGb !== undefined && !(hostGb > 0)) throw new UsageError(`--host-memory-gb must be positive, got ${hostGb}`);
  const micro = a['micro-batch-tokens'];
  if (micro !== undefined && !(Number.isInteger(micro) && micro > 0)) throw new UsageError(`--micro-batch-tokens must be a positive integer, got ${micro}`);
  const source = a.model ?? config.trainer.policy.model.path;
  const model = await modelConfigOf(source);
  const plan = planFromConfig(model, config, {
    gpus,
    gpuMemoryBytes: memGb * 1e9,
    hostMemoryBytes: hostGb === undefined ? undefined : hostGb * 1e9,
    modelName: source,
    microBatchTokens: micro,
  });
  process.stdout.write(a.json ? `${JSON.stringify(planToJson(plan), null, 2)}\n` : `${formatPlan(plan)}\n`);
  if (plan.fits) return 0;
  process.stderr.write(`error: does not fit: ${planReason(plan)}\n`);
  return EXIT_DOES_NOT_FIT;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  planMain().then(
    (code) => process.exit(code),
    (e: unknown) => {
      if (e instanceof UsageError || e instanceof ConfigError) {
        process.stderr.write(`error: ${e.message}\n`);
        process.exit(2);
      }
      process.stderr.write(`error: ${(e as Error)?.stack ?? String(e)}\n`);
      process.exit(1);
    },
  );
}
