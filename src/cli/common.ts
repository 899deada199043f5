// common.ts: error reporting shared by the CLIs: configuration and setup problems print one clear message
// (exit 2); anything else prints its stack (exit 1).
import { ConfigError } from '../config/overrides.ts';
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
