#!/usr/bin/env node
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
import { nearest } from './suggest.ts';
import { packageVersion } from './version.ts';

const USAGE =
  'usage: gptoss-launch [--nproc-per-node N] [--nnodes N] [--node-rank R] [--master-addr ADDR] ' +
  '[--master-port PORT] [--device cuda|cpu|auto] SCRIPT [ARGS...]';

const HELP = `${USAGE}

Starts one worker process per device (torchrun style) and sets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
MASTER_ADDR, MASTER_PORT, NODE_RANK and NNODES in each. Flags before SCRIPT belong to the launcher; everything
after it goes to the workers. Exits with the code of the first rank that failed.

  --nproc-per-node N   workers on this node (default: the visible GPUs, or 1 on a CPU machine)
  --nnodes N           nodes in the job (default 1)
  --node-rank R        this node's rank (default 0)
  --master-addr ADDR   node 0's address (default 127.0.0.1)
  --master-port PORT   the rendezvous port on node 0 (default: a free port on one node, else 29500)
  --device D           cuda, cpu (CPU collectives, for CI) or auto
  --help, --version

Examples:
  gptoss-launch --nproc-per-node 8 dist/my-worker.js
  gptoss-launch --device cpu --nproc-per-node 2 worker.js
`;

/** --help / --version: what to print (exit 0), not an error. */
export class LaunchInfo {
  constructor(readonly text: string) {}
}

const LAUNCH_FLAGS = ['nproc-per-node', 'nnodes', 'node-rank', 'master-addr', 'master-port', 'device', 'help', 'version'];

function nearestFlag(flag: string): string {
  const g = nearest(flag.replace(/^-+/, '').replace(/_/g, '-'), LAUNCH_FLAGS);
  return g ? ` (did you mean --${g}?)` : '';
}

export function parseLaunchArgs(argv: readonly string[]): LaunchOptions {
  const opts: Partial<LaunchOptions> = {};
  const int = (flag: string, v: string | undefined): number => {
    const n = Number(v);
    if (v === undefined || !Number.isInteger(n) || n < 0) throw new Error(`${flag} needs a non-negative integer, got '${v}' (see --help)`);
    return n;
  };
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('-') || a === '-') break;
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
        if (d !== 'cuda' && d !== 'cpu' && d !== 'auto') throw new Error(`--device must be cuda, cpu or auto, got '${d}'`);
        opts.device = d as LaunchDevice;
        break;
      }
      case '--help':
      case '-h':
        throw new LaunchInfo(HELP);
      case '--version':
        throw new LaunchInfo(`${packageVersion()}\n`);
      default:
        throw new Error(`unknown launcher flag ${a}${nearestFlag(flag)} (see --help)`);
    }
  }
  const script = argv[i];
  if (!script) throw new Error(`no script to launch (${USAGE}; see --help)`);
  return { ...opts, script, args: argv.slice(i + 1) };
}

export async function main(argv: readonly string[]): Promise<number> {
  let opts: LaunchOptions;
  try {
    opts = parseLaunchArgs(argv);
  } catch (e) {
    if (e instanceof LaunchInfo) {
      process.stdout.write(e.text);
      return 0;
    }
    console.error(`gptoss-launch: ${(e as Error).message}`);
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
