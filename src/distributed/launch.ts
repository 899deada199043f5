// launch.ts: start one process per GPU (or N CPU processes) the way torchrun does, and join the group from
// inside a worker.
//
// launch() (node side of `gptoss launch`, src/cli/launch.ts) spawns the local workers of this node with
//   RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT, NODE_RANK, NNODES (+ GROUP_RANK)
// and GPTOSS_DEVICE=cuda:<LOCAL_RANK> (or cpu). The launcher of node 0 hosts the rendezvous hub at
// MASTER_ADDR:MASTER_PORT; every worker of every node connects there (tcp-group.ts). The launcher prefixes each
// output line with the rank, forwards SIGINT/SIGTERM, and when one rank fails (non-zero exit, signal, or its
// connection to the hub drops) terminates the rest of its workers and reports that rank's exit code.
//
// initDistributed() (in a worker) joins the group and picks the backend: NCCL when the addon has it and this
// rank's GPU exists (the NCCL unique id made by rank 0 travels over the hub), else the CPU collectives.
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { constants } from 'node:os';
import { createInterface } from 'node:readline';
import { native } from '../native.ts';
import { cudaDeviceCount } from '../tensor.ts';
import { NcclCollectives, type Collectives } from './collectives.ts';
import { CpuCollectives } from './cpu-collectives.ts';
import { Hub, TcpGroup } from './tcp-group.ts';

export type LaunchDevice = 'cuda' | 'cpu' | 'auto';

export interface LaunchOptions {
  /** The worker script (.js, or .ts run through tsx). */
  script: string;
  args?: readonly string[];
  /** Processes on this node (default: one per visible GPU, or 1 on cpu). */
  nprocPerNode?: number;
  nnodes?: number;
  nodeRank?: number;
  masterAddr?: string;
  /** Default: a free port when nnodes is 1, else 29500. */
  masterPort?: number;
  /** 'cuda': one process per GPU with GPTOSS_DEVICE=cuda:<local rank>; 'cpu': CPU processes; 'auto' (default). */
  device?: LaunchDevice;
  /** Extra environment for the workers (on top of this process's). */
  env?: Record<string, string>;
  /** Node flags for the workers (default: ['--import', 'tsx'] for a .ts script). */
  nodeArgs?: readonly string[];
  /** Receives each output line (default: written to this process's stdout/stderr as "[rank N] line"). */
  onOutput?: (rank: number, stream: 'stdout' | 'stderr', line: string) => void;
  /** Milliseconds between SIGTERM and SIGKILL when the group is torn down (default 5000). */
  killGraceMs?: number;
  /** Forward SIGINT/SIGTERM received by this process to the workers (default true). */
  forwardSignals?: boolean;
  /**
   * Milliseconds between forwarding the first SIGINT/SIGTERM this process receives and SIGKILL for ranks still alive
   * (default killGraceMs). Workers that checkpoint on Ctrl-C (`train`) need the running phase plus the save; a second
   * signal is forwarded too and brings the SIGKILL to killGraceMs after it.
   */
  signalGraceMs?: number;
  /**
   * Milliseconds a collective of the hub (the TCP group: CPU collectives, commands) may wait for ranks that have not
   * entered it; past it the job ends naming them and their phases (trainer.nccl_timeout_s; default: no limit).
   */
  collectiveTimeoutMs?: number;
}

export interface RankExit {
  rank: number;
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface LaunchResult {
  /** 0 when every rank exited 0; else the exit code of the first rank that failed (128 + n for a signal). */
  exitCode: number;
  /** The first rank that failed, if any. */
  failedRank?: number;
  /** Why the group was torn down, if it was. */
  reason?: string;
  ranks: RankExit[];
}

/** A TCP port that was free a moment ago (for single-node runs and tests). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

function visibleGpus(): number {
  try {
    return cudaDeviceCount();
  } catch {
    return 0;
  }
}

function exitCodeOf(e: RankExit): number {
  if (e.code !== null) return e.code;
  if (e.signal) return 128 + (constants.signals[e.signal] ?? 0);
  return 1;
}

export async function launch(opts: LaunchOptions): Promise<LaunchResult> {
  const nnodes = opts.nnodes ?? 1;
  const nodeRank = opts.nodeRank ?? 0;
  let device: LaunchDevice = opts.device ?? 'auto';
  const gpus = device === 'cpu' ? 0 : visibleGpus();
  if (device === 'auto') device = gpus > 0 ? 'cuda' : 'cpu';
  if (device === 'cuda' && gpus === 0) throw new Error('launch: device cuda but no CUDA device is visible');
  const nproc = opts.nprocPerNode ?? (device === 'cuda' ? gpus : 1);
  if (!Number.isInteger(nproc) || nproc < 1) throw new Error(`launch: nprocPerNode must be a positive integer, got ${nproc}`);
  if (device === 'cuda' && nproc > gpus) throw new Error(`launch: ${nproc} processes per node but only ${gpus} GPU(s) are visible`);
  if (!Number.isInteger(nnodes) || nnodes < 1) throw new Error(`launch: nnodes must be a positive integer, got ${nnodes}`);
  if (!Number.isInteger(nodeRank) || nodeRank < 0 || nodeRank >= nnodes) {
    throw new Error(`launch: nodeRank ${nodeRank} is not in [0, ${nnodes})`);
  }
  const worldSize = nproc * nnodes;
  const masterAddr = opts.masterAddr ?? '127.0.0.1';
  const masterPort = opts.masterPort ?? (nnodes === 1 ? await freePort() : 29500);
  const grace = opts.killGraceMs ?? 5000;
  const nodeArgs = opts.nodeArgs ?? (opts.script.endsWith('.ts') ? ['--import', 'tsx'] : []);
  const out =
    opts.onOutput ??
    ((rank: number, stream: 'stdout' | 'stderr', line: string) =>
      (stream === 'stdout' ? process.stdout : process.stderr).write(`[rank ${rank}] ${line}\n`));

  const children: (ChildProcess | undefined)[] = [];
  const exits: (RankExit | undefined)[] = new Array(nproc).fill(undefined);
  let failure: { rank: number; reason: string; code?: number } | undefined;
  let killTimer: NodeJS.Timeout | undefined;

  let killAt = Infinity;
  /** Sends `signal` to the live workers; SIGKILL for those still alive graceMs later (an earlier deadline wins). */
  const terminateAll = (signal: NodeJS.Signals = 'SIGTERM', graceMs = grace) => {
    for (const [i, c] of children.entries()) if (c && !exits[i]) c.kill(signal);
    if (Date.now() + graceMs >= killAt || !Number.isFinite(graceMs)) return;
    killAt = Date.now() + graceMs;
    if (killTimer) clearTimeout(killTimer);
    killTimer = setTimeout(() => {
      for (const [i, c] of children.entries()) if (c && !exits[i]) c.kill('SIGKILL');
    }, graceMs);
    killTimer.unref();
  };
  const failGroup = (rank: number, reason: string, code?: number) => {
    if (failure) return;
    failure = { rank, reason, code };
    terminateAll();
  };

  // The hub lives here on node 0 (not in rank 0), so it keeps serving while rank 0 is busy in native code.
  const hub =
    nodeRank === 0
      ? await Hub.listen({
          worldSize,
          port: masterPort,
          onAbort: (message, rank) => failGroup(rank, message),
          collectiveTimeoutMs: opts.collectiveTimeoutMs,
        })
      : undefined;

  // One Ctrl-C can arrive twice (from the terminal to the foreground process group, and relayed by `npm run`): a
  // repeat within SAME_SIGNAL_MS is the same one (as the trainer's own handler counts it, src/trainer/setup.ts).
  const SAME_SIGNAL_MS = 1000;
  let signalledAt = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    if (!failure) failure = { rank: -1, reason: `launcher received ${sig}`, code: 128 + (constants.signals[sig] ?? 0) };
    if (signalledAt && Date.now() - signalledAt < SAME_SIGNAL_MS) return;
    terminateAll(sig, signalledAt ? grace : (opts.signalGraceMs ?? grace));
    signalledAt = Date.now();
  };
  const forward = opts.forwardSignals ?? true;
  if (forward) {
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  }

  const done = new Promise<void>((resolve) => {
    let remaining = nproc;
    for (let local = 0; local < nproc; local++) {
      const rank = nodeRank * nproc + local;
      const env: NodeJS.ProcessEnv = {
        ...process.env,
        ...opts.env,
        RANK: String(rank),
        LOCAL_RANK: String(local),
        WORLD_SIZE: String(worldSize),
        LOCAL_WORLD_SIZE: String(nproc),
        NODE_RANK: String(nodeRank),
        GROUP_RANK: String(nodeRank),
        NNODES: String(nnodes),
        MASTER_ADDR: masterAddr,
        MASTER_PORT: String(masterPort),
        GPTOSS_DIST_DEVICE: device,
        GPTOSS_HUB: 'launcher',
      };
      if (!opts.env?.GPTOSS_DEVICE) env.GPTOSS_DEVICE = device === 'cuda' ? `cuda:${local}` : 'cpu';
      const child = spawn(process.execPath, [...nodeArgs, opts.script, ...(opts.args ?? [])], {
        env,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      children[local] = child;
      for (const stream of ['stdout', 'stderr'] as const) {
        createInterface({ input: child[stream]!, crlfDelay: Infinity }).on('line', (line) => out(rank, stream, line));
      }
      child.on('error', (e) => failGroup(rank, `rank ${rank} could not start: ${e.message}`, 127));
      child.on('close', (code, signal) => {
        const e: RankExit = { rank, code, signal };
        exits[local] = e;
        if ((code !== 0 || signal) && !failure) {
          failGroup(rank, `rank ${rank} exited with ${signal ? `signal ${signal}` : `code ${code}`}`, exitCodeOf(e));
        }
        if (--remaining === 0) resolve();
      });
    }
  });

  await done;
  if (killTimer) clearTimeout(killTimer);
  if (forward) {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  if (hub && failure) hub.abort(failure.reason);
  else hub?.close();
  const ranks = exits.map((e) => e!);
  if (!failure) return { exitCode: 0, ranks };
  const own = failure.rank >= 0 ? ranks.find((r) => r.rank === failure!.rank) : undefined;
  const exitCode = own && exitCodeOf(own) !== 0 ? exitCodeOf(own) : (failure.code ?? 1);
  return { exitCode, failedRank: failure.rank >= 0 ? failure.rank : undefined, reason: failure.reason, ranks };
}

// ---- inside a worker ----------------------------------------------------------------------------------------------
export interface DistEnv {
  rank: number;
  worldSize: number;
  localRank: number;
  localWorldSize: number;
  nodeRank: number;
  nnodes: number;
  masterAddr: string;
  masterPort: number;
  /** False when this process was not started by a launcher (a group of one). */
  launched: boolean;
}

function intEnv(env: NodeJS.ProcessEnv, name: string, dflt: number): number {
  const v = env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`initDistributed: ${name}=${v} is not a non-negative integer`);
  return n;
}

/** The torchrun-style variables of this process (a group of one when they are absent). */
export function distEnv(env: NodeJS.ProcessEnv = process.env): DistEnv {
  const launched = env.WORLD_SIZE !== undefined && env.RANK !== undefined;
  const worldSize = intEnv(env, 'WORLD_SIZE', 1);
  const rank = intEnv(env, 'RANK', 0);
  const localRank = intEnv(env, 'LOCAL_RANK', rank);
  const localWorldSize = intEnv(env, 'LOCAL_WORLD_SIZE', worldSize);
  if (worldSize < 1 || rank >= worldSize) throw new Error(`initDistributed: RANK=${rank} is not in [0, WORLD_SIZE=${worldSize})`);
  return {
    rank,
    worldSize,
    localRank,
    localWorldSize,
    nodeRank: intEnv(env, 'NODE_RANK', intEnv(env, 'GROUP_RANK', 0)),
    nnodes: intEnv(env, 'NNODES', 1),
    masterAddr: env.MASTER_ADDR ?? '127.0.0.1',
    masterPort: intEnv(env, 'MASTER_PORT', 0),
    launched,
  };
}

export interface InitOptions {
  /** 'nccl', 'cpu', or 'auto' (default; GPTOSS_DIST_BACKEND overrides): NCCL when available for this rank. */
  backend?: 'auto' | 'nccl' | 'cpu';
  /** Milliseconds for the rendezvous (default 5 minutes). */
  timeoutMs?: number;
  /**
   * Milliseconds a collective may hang (trainer.nccl_timeout_s): NCCL's native watchdog ends this process past it;
   * a hub this process hosts (no launcher) aborts the group past it. The launcher's hub takes its own limit
   * (LaunchOptions.collectiveTimeoutMs). Default: no limit.
   */
  collectiveTimeoutMs?: number;
}

export interface DistContext extends DistEnv {
  /** This rank's device: 'cuda:N' with NCCL, 'cpu' otherwise. */
  device: string;
  backend: 'nccl' | 'cpu';
  collectives: Collectives;
  /** Host-side transport of the group: barrier, broadcastBytes, allGatherObject. */
  group: TcpGroup;
  /** Labels what this rank does now (e.g. 'train'): the hub's and the NCCL watchdog's hang messages name it. */
  setPhase(phase: string): void;
  /** Collective: leaves the group (call on every rank at the end). */
  destroy(): Promise<void>;
}

/** Joins the process group described by the environment (see launch()). */
export async function initDistributed(opts: InitOptions = {}): Promise<DistContext> {
  const e = distEnv();
  const timeoutMs = opts.timeoutMs ?? 300_000;
  // Without the launcher, rank 0 hosts the hub itself (a group of one picks any free port).
  let hub: Hub | undefined;
  let port = e.masterPort;
  if (process.env.GPTOSS_HUB !== 'launcher' && e.rank === 0) {
    hub = await Hub.listen({ worldSize: e.worldSize, port: e.launched ? port : 0, collectiveTimeoutMs: opts.collectiveTimeoutMs });
    port = hub.port;
  }
  if (!port) throw new Error('initDistributed: MASTER_PORT is not set (start the workers with the launcher)');
  const group = await TcpGroup.connect({ addr: e.masterAddr, port, rank: e.rank, worldSize: e.worldSize, timeoutMs });

  const want = (opts.backend ?? (process.env.GPTOSS_DIST_BACKEND as InitOptions['backend']) ?? 'auto') || 'auto';
  if (!['auto', 'nccl', 'cpu'].includes(want)) throw new Error(`initDistributed: backend must be auto, nccl or cpu (got '${want}')`);
  const gpus = process.env.GPTOSS_DIST_DEVICE === 'cpu' || want === 'cpu' ? 0 : visibleGpus();
  // One GPU per process: LOCAL_RANK indexes the visible GPUs, unless each process sees only its own.
  const deviceIndex = gpus === 1 && e.localWorldSize > 1 ? 0 : e.localRank;
  const ncclOk = native().features.nccl && deviceIndex < gpus;
  if (want === 'nccl' && !ncclOk) {
    await group.destroy().catch(() => {});
    throw new Error(
      native().features.nccl
        ? `initDistributed: backend nccl but rank ${e.rank} (local rank ${e.localRank}) has no GPU (${gpus} visible)`
        : 'initDistributed: backend nccl but this addon was built without NCCL',
    );
  }
  const backend: 'nccl' | 'cpu' = want === 'cpu' || !ncclOk ? 'cpu' : 'nccl';
  const collectives: Collectives =
    backend === 'nccl' ? await NcclCollectives.create(group, deviceIndex, { watchdogMs: opts.collectiveTimeoutMs }) : new CpuCollectives(group);
  return {
    ...e,
    device: backend === 'nccl' ? `cuda:${deviceIndex}` : 'cpu',
    backend,
    collectives,
    group,
    setPhase(phase: string) {
      group.setPhase(phase);
      if (collectives instanceof NcclCollectives) collectives.setPhase(phase);
    },
    async destroy() {
      await collectives.destroy();
      await group.destroy();
      if (hub) await hub.closed;
    },
  };
}
