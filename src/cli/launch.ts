// launch.ts (CLI): torchrun-style launcher.
//
//   gptoss-launch [--nproc-per-node N] [--nnodes N] [--node-rank R] [--master-addr A] [--master-port P]
//                 [--device cuda|cpu|auto] SCRIPT [ARGS...]
//
// e.g. on each of two 8-GPU nodes:
//   node dist/src/cli/launch.js --nnodes 2 --node-rank $R --master-addr 10.0.0.1 --master-port 29500 train.js
// Flags before SCRIPT belong to the launcher; everything after it goes to the workers. Exits with the code of
// the first rank that failed.
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { launch, type LaunchDevice, type LaunchOptions } from '../distributed/launch.ts';

const USAGE =
  'usage: gptoss-launch [--nproc-per-node N] [--nnodes N] [--node-rank R] [--master-addr ADDR] ' +
  '[--master-port PORT] [--device cuda|cpu|auto] SCRIPT [ARGS...]';

export function parseLaunchArgs(argv: readonly string[]): LaunchOptions {
  const opts: Partial<LaunchOptions> = {};
  const int = (flag: string, v: string | undefined): number => {
    const n = Number(v);
    if (v === undefined || !Number.isInteger(n) || n < 0) throw new Error(`${flag} needs a non-negative integer, got '${v}'\n${USAGE}`);
    return n;
  };
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('--')) break;
    const eq = a.indexOf('=');
    const flag = eq > 0 ? a.slice(0, eq) : a;
    const value = () => (eq > 0 ? a.slice(eq + 1) : argv[++i]);
    switch (flag.replace(/_/g, '-')) {
      case '--nproc-per-node':
        opts.nprocPerNode = int(flag, value());
        break;
      case '--nnodes':
        opts.nnodes = int(flag, value());
        break;
      case '--node-rank':
        opts.nodeRank = int(flag, value());
        break;
      case '--master-addr':
        opts.masterAddr = value();
        break;
      case '--master-port':
        opts.masterPort = int(flag, value());
        break;
      case '--device': {
        const d = value();
        if (d !== 'cuda' && d !== 'cpu' && d !== 'auto') throw new Error(`--device must be cuda, cpu or auto, got '${d}'\n${USAGE}`);
        opts.device = d as LaunchDevice;
        break;
      }
      case '--help':
        throw new Error(USAGE);
      default:
        throw new Error(`unknown launcher flag ${a}\n${USAGE}`);
    }
  }
  const script = argv[i];
  if (!script) throw new Error(`no script to launch\n${USAGE}`);
  return { ...opts, script, args: argv.slice(i + 1) };
}

export async function main(argv: readonly string[]): Promise<number> {
  let opts: LaunchOptions;
  try {
    opts = parseLaunchArgs(argv);
  } catch (e) {
    console.error((e as Error).message);
    return 2;
  }
  const r = await launch(opts);
  if (r.exitCode !== 0) console.error(`gptoss-launch: ${r.reason ?? 'failed'} (exit code ${r.exitCode})`);
  return r.exitCode;
}

const invokedDirectly = (() => {
  try {
    return !!process.argv[1] && realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
})();
if (invokedDirectly) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: unknown) => {
      console.error(e instanceof Error ? e.message : e);
      process.exit(1);
    },
  );
}
