// common.ts: what the training CLIs share: reading the config from the command line, and error reporting: configuration and setup problems print one clear message
// (exit 2); anything else prints its stack (exit 1).
import type { Logger } from 'pino';
import { stringify } from 'yaml';
import { compatibilityNotes, loadConfig } from '../config/load.ts';
import { ConfigError } from '../config/overrides.ts';
import type { Config } from '../config/schema.ts';
import { parseCli, type CliArgs } from './args.ts';
import { CheckpointError } from '../trainer/checkpoint.ts';
import { SetupError } from '../trainer/setup.ts';
import { DataError } from '../trainer/task.ts';

export function runMain(main: () => Promise<void>): void {
  main().then(
    () => {
      // Native thread pools or W&B sockets must not keep a finished run alive.
      process.exit(process.exitCode ?? 0);
    },
    (e: unknown) => {
      if (e instanceof ConfigError || e instanceof SetupError || e instanceof CheckpointError || e instanceof DataError) {
        process.stderr.write(`error: ${e.message}\n`);
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
 * compatibility notes logged, with the parsed flags. Returns undefined when `--print-config` printed it instead.
 */
export async function configFromCli(
  argv: string[],
  o: { name: string; description: string; defaultConfig: string },
  log: Logger,
): Promise<{ config: Config; args: CliArgs } | undefined> {
  const args = await parseCli(argv, o);
  const config = loadConfig({ config: args.config, overrides: args.overrides, model: args.model });
  if (args.printConfig) {
    process.stdout.write(stringify(config));
    return undefined;
  }
  for (const n of compatibilityNotes(config)) log.info(n);
  return { config, args };
}
