// collectives-run.ts: starts test/helpers/collectives-worker with the launcher and collects what each rank
// printed; shared by test/cpu/collectives.test.ts (CPU backend) and test/gpu/nccl.test.ts (NCCL).
import { fileURLToPath } from 'node:url';
import { launch, type LaunchResult } from '../../src/distributed/launch.ts';

// Run the worker the way this file runs: compiled (dist/, plain node) or TypeScript (tsx).
const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
export const WORKER = fileURLToPath(new URL(`./collectives-worker${ext}`, import.meta.url));

export interface WorkerRun extends LaunchResult {
  lines: { rank: number; stream: string; line: string }[];
  /** Every line, prefixed `[rank N]`. */
  text: string;
}

/** Runs `scenario` of the worker on `nproc` processes with `backend` (cpu: on the CPU, nccl: one GPU each). */
export async function runWorker(
  nproc: number,
  scenario: string,
  backend: 'cpu' | 'nccl',
  /** collectiveTimeoutMs: the launcher hub's limit; workerTimeoutMs: initDistributed's (NCCL watchdog). */
  opts: { killGraceMs: number; log?: boolean; collectiveTimeoutMs?: number; workerTimeoutMs?: number },
): Promise<WorkerRun> {
  const lines: WorkerRun['lines'] = [];
  const r = await launch({
    script: WORKER,
    args: [scenario, backend, ...(opts.workerTimeoutMs ? [String(opts.workerTimeoutMs)] : [])],
    nprocPerNode: nproc,
    device: backend === 'cpu' ? 'cpu' : 'cuda',
    killGraceMs: opts.killGraceMs,
    collectiveTimeoutMs: opts.collectiveTimeoutMs,
    onOutput: (rank, stream, line) => lines.push({ rank, stream, line }),
  });
  const text = lines.map((l) => `[rank ${l.rank}] ${l.line}`).join('\n');
  if (opts.log) console.log(text);
  return { ...r, lines, text };
}

/** The `PASS <check>` lines of one rank, without their `(rank ...)` suffix. */
export function passes(r: WorkerRun, rank: number): string[] {
  return r.lines.filter((l) => l.rank === rank && l.line.startsWith('PASS ')).map((l) => l.line.replace(/ \(rank.*$/, ''));
}

/** What every rank passes in the `basic` scenario. */
export const BASIC_PASSES = [
  'PASS allReduce/allGather/reduceScatter/broadcast f32 bf16 i32',
  'PASS send/recv',
  'PASS ordering against the stream',
  'PASS barrier, allGatherObject and broadcastObject',
];
