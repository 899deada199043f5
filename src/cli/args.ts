// args.ts: the command line shared by `npm run train` and `npm run sft`: yargs options plus Hydra-style
// overrides as positional arguments.
//
//   npm run train -- --model unsloth/gpt-oss-20b-BF16 --config gsm8k-gptoss-20b \
//       trainer.policy.optimizer_config.lr=1e-6 '+generator.chat_template_kwargs={reasoning_effort: low}'
// An unquoted `+generator.chat_template_kwargs={reasoning_effort: low}` reaches us as two arguments; pieces that
// continue an override with unbalanced braces/brackets/quotes are joined back.
// A bad flag is one line (`unknown option --modle (did you mean --model?)`, exit 2), not the help page.
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { ConfigError } from '../config/overrides.ts';
import { nearest } from './suggest.ts';
import type { LogFormat } from '../log/logger.ts';
import { packageVersion } from './version.ts';

export interface CliArgs {
  /** --config; undefined: the command's default preset, which configFromCli chooses after parsing. */
  config?: string;
  model?: string;
  overrides: string[];
  printConfig: boolean;
  dryRun: boolean;
  /** Resume a checkpoint whose model, batch or optimizer settings differ from the config. */
  forceResume: boolean;
  /** undefined: the default (GPTOSS_LOG_FORMAT, else pretty on a TTY and JSON lines otherwise). */
  logFormat?: LogFormat;
}

/** A command-line mistake (unknown flag, missing value): the CLIs print it as one line and exit 2. */
export class UsageError extends ConfigError {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/**
 * yargs' failure messages as one line each. `Unknown argument(s): a, b` becomes `unknown option --a (did you mean
 * --b?)`; anything else is passed through.
 */
export function usageMessage(msg: string, flags: readonly string[]): string {
  const m = /^Unknown arguments?: (.*)$/.exec(msg.trim());
  if (!m) return msg.replace(/\s*\n\s*/g, ' ');
  return m[1]!
    .split(', ')
    .map((raw) => {
      const name = raw.replace(/^-+/, '');
      const guess = nearest(name, flags);
      return `unknown option ${name.length === 1 ? '-' : '--'}${name}${guess ? ` (did you mean --${guess}?)` : ''}`;
    })
    .join('; ');
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

/** Examples per command, each command line kept under 80 columns (a `\` continues it) so help never wraps them. */
function examplesFor(name: string, defaultConfigHelp: string): string {
  const cmd = name.replace(/\s*--$/, '');
  const sft = /\bsft\b/.test(name);
  const rows: Array<[string, string]> = sft
    ? [
        [`${cmd}`, "the default run's SFT warm start on its own"],
        [`${cmd} -- environment.env_class=synthetic data.compact_vocab=true \\\n      trainer.sft.steps=300`, 'SFT warm start of the tiny model on the synthetic task'],
        [`${cmd} -- --model unsloth/gpt-oss-20b-BF16 -c gsm8k-gptoss-20b \\\n      trainer.sft.steps=100`, 'a short SFT of gpt-oss-20b on GSM8K reference solutions'],
        [`${cmd} -- --dry-run`, 'check the config, the data and the model, then exit'],
      ]
    : [
        [`${cmd}`, `the default run (${defaultConfigHelp})`],
        [`${cmd} -- --model unsloth/gpt-oss-20b-BF16 -c gsm8k-gptoss-20b \\\n      '+generator.chat_template_kwargs={reasoning_effort: low}'`, "the seed's gpt-oss-20b GSM8K run"],
        [`${cmd} -- --dry-run trainer.max_steps=100`, 'check everything the run needs, then exit'],
        [`${cmd} -- --print-config`, 'the effective config as YAML'],
      ];
  return `Examples:\n${rows.map(([c, what]) => `  ${c}\n      # ${what}`).join('\n')}`;
}

const FLAGS = ['config', 'model', 'print-config', 'dry-run', 'force-resume', 'log-format', 'help', 'version'] as const;

/**
 * What a training command tells the parser: its name and description for --help, and how help describes the preset
 * used without --config (the preset itself is chosen after parsing, so --help and --version never probe the device).
 */
export interface CliCommand {
  name: string;
  description: string;
  /** e.g. `configs/demo-cpu.yaml; demo-gpu.yaml with a GPU` (help and the first example). */
  defaultConfigHelp: string;
}

export async function parseCli(argv: string[], o: CliCommand): Promise<CliArgs> {
  const parser = yargs(hideBin(argv));
  const a = await parser
    .scriptName(o.name)
    .usage(`$0 [options] [overrides...]\n\n${o.description}\n\nOverrides (Hydra style): key=value, +key=value (add), ++key=value (force), ~key (delete); values are YAML.`)
    .parserConfiguration({ 'parse-positional-numbers': false, 'camel-case-expansion': false, 'dot-notation': false, 'unknown-options-as-args': false })
    .option('config', { alias: 'c', type: 'string', describe: `a preset in configs/ (demo-cpu, demo-gpu, tiny-cpu, gsm8k-gptoss-20b) or a YAML file; default: ${o.defaultConfigHelp}` })
    .option('model', { type: 'string', describe: 'shorthand for trainer.policy.model.path=... (a directory, a HF hub id, or tiny)' })
    .option('print-config', { type: 'boolean', default: false, describe: 'print the effective config (YAML) and exit' })
    .option('dry-run', { type: 'boolean', default: false, describe: 'check everything the run needs (config, device, data, model, vocabulary, resume checkpoint), then exit' })
    .option('force-resume', { type: 'boolean', default: false, describe: 'resume the checkpoint even if its model, batch or optimizer settings differ' })
    .option('log-format', { choices: ['pretty', 'json'] as const, describe: 'log lines: pretty (human) or json (pino JSON lines); default: pretty on a terminal, else json' })
    .epilog(examplesFor(o.name, o.defaultConfigHelp))
    .strictOptions()
    .fail((msg, err) => {
      throw err ?? new UsageError(`${usageMessage(msg ?? 'bad arguments', FLAGS)} (see --help)`);
    })
    .help()
    .version(packageVersion())
    .wrap(Math.min(110, parser.terminalWidth()))
    .parseAsync();
  return {
    config: a.config,
    model: a.model,
    overrides: joinOverrides(a._.map(String)),
    printConfig: a['print-config'],
    dryRun: a['dry-run'],
    forceResume: a['force-resume'],
    ...(a['log-format'] ? { logFormat: a['log-format'] } : {}),
  };
}
