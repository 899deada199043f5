// common.ts: what the training CLIs share: reading the config from the command line (flags, preset, overrides,
// log format, the device check), and error reporting: a problem with the command line, the config, the device,
// the data, the model files or a checkpoint prints one line `error: ...` (exit 2); anything else is a bug and
// prints its stack (exit 1).
import type { Logger } from 'pino';
import { stringify } from 'yaml';
import { assertSupported, compatibilityNotes, loadConfig } from '../config/load.ts';
import { ConfigError } from '../config/overrides.ts';
import type { Config } from '../config/schema.ts';
import { configureLogging } from '../log/logger.ts';
import { endProgressDisplay } from '../log/progress.ts';
import { DeviceError } from '../native.ts';
import { parseCli, type CliArgs, type CliCommand } from './args.ts';
import { CheckpointError } from '../trainer/checkpoint.ts';
import { checkDevice } from '../trainer/preflight.ts';
import { SetupError } from '../trainer/setup.ts';
import { DataError } from '../trainer/task.ts';

/** Errors that describe the user's input or machine, not a bug: printed as one line, exit 2. */
export function isUserError(e: unknown): e is Error {
  return e instanceof ConfigError || e instanceof SetupError || e instanceof CheckpointError || e instanceof DataError || e instanceof DeviceError;
}

/**
 * A message as one line (lines joined with '; '). Config errors keep their lines: they list one problem per line,
 * each naming its key.
 */
export function oneLine(message: string): string {
  return message
    .split('\n')
    .map((l) => l.trim().replace(/^- /, ''))
    .filter(Boolean)
    .join('; ')
    .replace(/:; /g, ': ');
}

export function runMain(main: () => Promise<void>): void {
  main().then(
    () => {
      // Native thread pools or W&B sockets must not keep a finished run alive.
      process.exit(process.exitCode ?? 0);
    },
    (e: unknown) => {
      endProgressDisplay(); // the error line must not land on the status line
      if (isUserError(e)) {
        process.stderr.write(`error: ${e instanceof ConfigError ? e.message : oneLine(e.message)}\n`);
        process.exit(2);
      }
      const err = e as Error;
      process.stderr.write(`error: ${err?.stack ?? String(e)}\n`);
      process.exit(1);
    },
  );
}

/**
 * The config of a training CLI (`train`, `sft`): flags and Hydra overrides over a YAML preset, with the GPT-OSS
 * compatibility notes logged and the device checked, with the parsed flags and the preset used (--config, else
 * `defaultConfig()`, called only now: after --help, --version and the log format are dealt with). Returns undefined
 * when `--print-config` printed it instead.
 */
export async function configFromCli(
  argv: string[],
  o: CliCommand & { defaultConfig: () => string },
  log: Logger,
): Promise<{ config: Config; args: CliArgs; preset: string } | undefined> {
  const args = await parseCli(argv, o);
  if (args.logFormat) configureLogging({ format: args.logFormat });
  const preset = args.config ?? o.defaultConfig();
  const config = loadConfig({ config: preset, overrides: args.overrides, model: args.model });
  if (args.printConfig) {
    process.stdout.write(stringify(config));
    return undefined;
  }
  assertSupported(config, `config '${preset}'${args.overrides.length ? ' with overrides' : ''}`);
  for (const n of compatibilityNotes(config)) log.info(n);
  checkDevice(config);
  return { config, args, preset };
}
