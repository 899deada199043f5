// merge-lora.ts: `npx gptoss merge-lora --base <model> --adapter <dir> --out <dir>`: base + LoRA adapters (PEFT
// layout, as a LoRA run's checkpoints hold them) merged into one bf16 HF checkpoint (W + scale·ΔW), which loadModel,
// `--model` and transformers load as a plain model (src/model/lora.ts, saveMergedCheckpoint). The base is a
// directory, a hub id found in the HF cache, or a checkpoint of a run; files beside its weights that describe the
// model (tokenizer files, generation_config.json, a compact vocabulary's vocab.json) are copied to --out.
// Exit status: 0 done, 2 bad input.
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { loadModel, resolveModelSource, LoraAdapters, saveMergedCheckpoint } from '../model/index.ts';

/** Files copied from the base directory to the merged checkpoint when present. */
const SIDE_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'chat_template.jinja', 'generation_config.json', 'vocab.json'];

export async function mergeLoraMain(argv: string[] = process.argv): Promise<number> {
  const a = await yargs(hideBin(argv))
    .scriptName('gptoss merge-lora')
    .usage('$0 --base <model> --adapter <dir> --out <dir>\n\nMerges LoRA adapters (PEFT layout) into a bf16 HF checkpoint.')
    .option('base', { type: 'string', demandOption: true, describe: 'the base model: directory, hub id or checkpoint' })
    .option('adapter', { type: 'string', demandOption: true, describe: 'a directory with adapter_config.json + adapter_model.safetensors' })
    .option('out', { type: 'string', demandOption: true, describe: 'the merged checkpoint directory (created)' })
    .option('device', { type: 'string', default: 'cpu', describe: 'where to do the merge (cpu or cuda:N)' })
    .strictOptions()
    .help()
    .version(false)
    .parseAsync();
  if (!existsSync(join(a.adapter, 'adapter_config.json'))) {
    process.stderr.write(`error: --adapter ${a.adapter}: adapter_config.json not found\n`);
    return 2;
  }
  const model = await loadModel(a.base, { device: a.device });
  try {
    const adapters = LoraAdapters.loadPeft(a.adapter, model.config, a.device);
    try {
      mkdirSync(a.out, { recursive: true });
      saveMergedCheckpoint(model.weights, adapters, a.out);
    } finally {
      adapters.dispose();
    }
  } finally {
    model.dispose();
  }
  const dir = await resolveModelSource(a.base);
  for (const f of SIDE_FILES) if (existsSync(join(dir, f))) copyFileSync(join(dir, f), join(a.out, f));
  process.stdout.write(`merged ${a.adapter} into ${a.base}: ${a.out}\n`);
  return 0;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  mergeLoraMain().then(
    (code) => process.exit(code),
    (e: Error) => {
      process.stderr.write(`error: ${e.message}\n`);
      process.exit(2);
    },
  );
}
