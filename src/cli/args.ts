// args.ts: the command line shared by `npm run train` and `npm run sft`: yargs options plus Hydra-style
// overrides as positional arguments.
//
//   npm run train -- --model unsloth/gpt-oss-20b-BF16 --config gsm8k-gptoss-20b \
//       trainer.policy.optimizer_config.lr=1e-6 '+generator.chat_template_kwargs={reasoning_effort: low}'
// An unquoted `+generator.chat_template_kwargs={reasoning_effort: low}` reaches us as two arguments; pieces that
// continue an override with unbalanced braces/brackets/quotes are joined back.
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { ConfigError } from '../config/overrides.ts';

export interface CliArgs {
  config: string;
  model?: string;
  overrides: string[];
  printConfig: boolean;
  dryRun: boolean;
  /** Resume a checkpoint whose model, batch or optimizer settings differ from the config. */
  forceResume: boolean;
}

function unbalanced(s: string): boolean {
  let depth = 0;
  let quote: string | null = null;
  for (const c of s) {
    if (quote) {
      if (c === quote) quote = null;
    } else if (c === '"' || c === "'") quote = c;
    else if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') depth--;
  }
  return depth > 0 || quote !== null;
}

/** Re-joins overrides split by the shell, and checks each piece looks like an override. */
export function joinOverrides(pieces: string[]): string[] {
  const out: string[] = [];
  for (const p of pieces) {
    const prev = out[out.length - 1];
    if (prev !== undefined && unbalanced(prev)) {
      out[out.length - 1] = `${prev} ${p}`;
      continue;
    }
    out.push(p);
  }
  for (const o of out) {
    if (!o.includes('=') && !o.startsWith('~')) {
      throw new ConfigError(`'${o}' is not an override (expected key=value, +key=value, ++key=value or ~key)`);
    }
    if (unbalanced(o)) throw new ConfigError(`override '${o}' has unbalanced braces, brackets or quotes`);
  }
  return out;
}

export async function parseCli(argv: string[], o: { name: string; description: string; defaultConfig: string }): Promise<CliArgs> {
  const a = await yargs(hideBin(argv))
    .scriptName(o.name)
    .usage(`$0 [options] [overrides...]\n\n${o.description}\n\nOverrides (Hydra style): key=value, +key=value (add), ++key=value (force), ~key (delete); values are YAML.`)
    .parserConfiguration({ 'parse-positional-numbers': false, 'camel-case-expansion': false, 'dot-notation': false, 'unknown-options-as-args': false })
    .option('config', { alias: 'c', type: 'string', default: o.defaultConfig, describe: 'a preset in configs/ (tiny-cpu, gsm8k-gptoss-20b) or a YAML file' })
    .option('model', { type: 'string', describe: 'shorthand for trainer.policy.model.path=... (a directory, a HF hub id, or tiny)' })
    .option('print-config', { type: 'boolean', default: false, describe: 'print the effective config (YAML) and exit' })
    .option('dry-run', { type: 'boolean', default: false, describe: 'validate the config, load the data and the model, then exit' })
    .option('force-resume', { type: 'boolean', default: false, describe: 'resume the checkpoint even if its model, batch or optimizer settings differ' })
    .example(`$0`, 'train the tiny CPU default')
    .example(`$0 --model unsloth/gpt-oss-20b-BF16 -c gsm8k-gptoss-20b '+generator.chat_template_kwargs={reasoning_effort: low}'`, 'the seed run')
    .strictOptions()
    .help()
    .version(false)
    .parseAsync();
  return {
    config: a.config,
    model: a.model,
    overrides: joinOverrides(a._.map(String)),
    printConfig: a['print-config'],
    dryRun: a['dry-run'],
    forceResume: a['force-resume'],
  };
}
