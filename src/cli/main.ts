#!/usr/bin/env node
// main.ts: the `gptoss` command. `gptoss <command> [args]` runs the command's own CLI file (each one also runs
// on its own: `npm run train` is `gptoss train`).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { nearest } from './suggest.ts';
import { packageVersion } from './version.ts';

const commands: Record<string, { file: string; what: string }> = {
  train: { file: 'train', what: 'GRPO training (default: the tiny CPU demo)' },
  sft: { file: 'sft', what: 'supervised cold start on reference solutions' },
  'prepare-gsm8k': { file: 'prepare-gsm8k', what: 'write the GSM8K training files' },
  plot: { file: 'plot', what: 'chart a metrics.jsonl file as PNG' },
  plan: { file: 'plan', what: 'per-GPU memory of a training config; exit 3 when it does not fit' },
  download: { file: 'download', what: 'put a Hugging Face model into the cache --model reads' },
  'merge-lora': { file: 'merge-lora', what: 'merge LoRA adapters (PEFT layout) into a bf16 HF checkpoint' },
  launch: { file: 'launch', what: 'start one process per GPU (torchrun style)' },
};

function usage(): string {
  const rows = Object.entries(commands).map(([k, v]) => `  ${k.padEnd(14)} ${v.what}`);
  return `usage: gptoss <command> [args]    (gptoss <command> --help for its options; gptoss --version)\n\ncommands:\n${rows.join('\n')}\n`;
}

const [cmd, ...rest] = process.argv.slice(2);
if (cmd === '--version' || cmd === '-v') {
  process.stdout.write(`${packageVersion()}\n`);
  process.exit(0);
}
if (!cmd || cmd === '--help' || cmd === '-h') {
  process.stdout.write(usage());
  process.exit(cmd ? 0 : 1);
}
const entry = commands[cmd];
if (!entry) {
  const guess = nearest(cmd, Object.keys(commands));
  process.stderr.write(`gptoss: unknown command '${cmd}'${guess ? ` (did you mean '${guess}'?)` : ''}; commands: ${Object.keys(commands).join(', ')}\n`);
  process.exit(2);
}
const here = dirname(fileURLToPath(import.meta.url));
const js = join(here, `${entry.file}.js`);
const ts = join(here, `${entry.file}.ts`);
const args = existsSync(js) ? [js] : ['--import', 'tsx', ts];
const r = spawnSync(process.execPath, [...args, ...rest], { stdio: 'inherit' });
process.exit(r.status ?? 1);
