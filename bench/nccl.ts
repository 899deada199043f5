// nccl.ts: all-reduce bus bandwidth through our NCCL bindings, side by side with torch.distributed.
//
//   npm run bench:nccl -- [--gpus 2,4] [--dtypes bf16,f32] [--min-mib 1] [--max-mib 1024] [--json PATH] [--no-peer]
//   (on the GPU machine: node dist/bench/nccl.js ...)
//
// For each world size (default: 2 and all visible GPUs) the launcher starts one process per GPU; each process
// all-reduces (sum, in place) a view of one preallocated buffer for sizes 1 MiB .. 1 GiB (powers of 2):
// `warmup` untimed iterations, then `iters` back to back between two device synchronisations, host wall clock,
// the slowest rank's time. bus bandwidth = 2 (n - 1) / n * bytes / time, as nccl-tests reports it.
// bench/nccl_peer.py does the same with torch.distributed (NCCL backend, same sizes, same iteration counts) in the
// same run. Table on stdout, JSON to --json.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { launch } from '../src/distributed/launch.ts';
import { initDistributed } from '../src/distributed/launch.ts';
import { NcclCollectives } from '../src/distributed/collectives.ts';
import { Tensor, synchronize, cudaDeviceCount, type DType } from '../src/tensor.ts';
import { native } from '../src/native.ts';
import { peerScript } from './peer.ts';

const MiB = 1 << 20;
const self = fileURLToPath(import.meta.url);

interface Config {
  dtypes: DType[];
  sizes: number[]; // bytes
  iters: number[]; // per size
  warmup: number;
  out: string;
}

interface Point {
  bytes: number;
  dtype: DType;
  iters: number;
  timeUs: number; // per all-reduce, slowest rank
  algbwGBs: number;
  busbwGBs: number;
}

function itersFor(bytes: number): number {
  // About 2 GiB of traffic per size, at least 20 and at most 200 iterations (nccl-tests uses 20 by default).
  return Math.max(20, Math.min(200, Math.round((2048 * MiB) / bytes)));
}

function bw(n: number, bytes: number, seconds: number): { algbwGBs: number; busbwGBs: number } {
  const algbw = bytes / seconds / 1e9;
  return { algbwGBs: algbw, busbwGBs: (algbw * 2 * (n - 1)) / n };
}

// ---- worker (one per GPU) ---------------------------------------------------------------------------------------
async function worker(cfg: Config): Promise<void> {
  const ctx = await initDistributed({ backend: 'nccl' });
  const c = ctx.collectives;
  const n = ctx.worldSize;
  const points: Point[] = [];
  const maxBytes = Math.max(...cfg.sizes);
  const slowest = Tensor.zeros([1], { device: ctx.device });
  for (const dtype of cfg.dtypes) {
    const esize = dtype === 'bf16' ? 2 : 4;
    const buf = Tensor.zeros([maxBytes / esize], { dtype, device: ctx.device });
    for (const [k, bytes] of cfg.sizes.entries()) {
      const t = buf.slice(0, bytes / esize);
      for (let i = 0; i < cfg.warmup; i++) await c.allReduce(t);
      await c.barrier(); // device idle and every rank here
      const iters = cfg.iters[k]!;
      const t0 = performance.now();
      for (let i = 0; i < iters; i++) await c.allReduce(t);
      synchronize(ctx.device);
      const sec = (performance.now() - t0) / 1e3 / iters;
      slowest.copyFrom(new Float32Array([sec]));
      await c.allReduce(slowest, 'max');
      const s = slowest.item();
      points.push({ bytes, dtype, iters, timeUs: s * 1e6, ...bw(n, bytes, s) });
      t.dispose();
    }
    buf.dispose();
  }
  if (ctx.rank === 0) {
    writeFileSync(cfg.out, JSON.stringify({ worldSize: n, nccl: NcclCollectives.version(), points }));
  }
  await ctx.destroy();
}

// ---- driver -----------------------------------------------------------------------------------------------------
function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

function findPeer(): string | undefined {
  return peerScript('nccl_peer.py');
}

function fmtBytes(b: number): string {
  return b >= 1024 * MiB ? `${b / (1024 * MiB)} GiB` : `${b / MiB} MiB`;
}

interface Row {
  gpus: number;
  dtype: DType;
  bytes: number;
  iters: number;
  oursUs: number;
  oursBusbw: number;
  torchUs?: number;
  torchBusbw?: number;
  ratio?: number;
}

async function driver(): Promise<void> {
  if (!native().features.nccl) throw new Error('bench:nccl: the addon was built without NCCL (run it on the GPU machine)');
  const visible = cudaDeviceCount();
  if (visible < 2) throw new Error(`bench:nccl: needs >= 2 GPUs (${visible} visible)`);
  const worlds = (arg('gpus') ?? [...new Set([2, visible])].join(','))
    .split(',')
    .map(Number)
    .filter((n) => n >= 2 && n <= visible);
  const dtypes = (arg('dtypes') ?? 'bf16,f32').split(',') as DType[];
  const minMiB = Number(arg('min-mib') ?? 1);
  const maxMiB = Number(arg('max-mib') ?? 1024);
  const sizes: number[] = [];
  for (let m = minMiB; m <= maxMiB; m *= 2) sizes.push(m * MiB);
  const iters = sizes.map(itersFor);
  const warmup = Number(arg('warmup') ?? 5);
  const wantPeer = !process.argv.includes('--no-peer');
  const peer = findPeer();
  const hasTorch =
    wantPeer && !!peer && spawnSync('python3', ['-c', 'import torch.distributed'], { stdio: 'ignore' }).status === 0;
  const tmp = mkdtempSync(join(tmpdir(), 'bench-nccl-'));
  const rows: Row[] = [];
  const meta: Record<string, unknown> = {
    gpu: native().ops.deviceName(0),
    visibleGpus: visible,
    NCCL_NVLS_ENABLE: process.env.NCCL_NVLS_ENABLE ?? null,
    warmup,
  };
  try {
    for (const n of worlds) {
      const out = join(tmp, `ours-${n}.json`);
      const cfg: Config = { dtypes, sizes, iters, warmup, out };
      console.error(`# ours: ${n} GPUs`);
      const r = await launch({
        script: self,
        args: ['--worker', JSON.stringify(cfg)],
        nprocPerNode: n,
        device: 'cuda',
        onOutput: (rank, stream, line) => (stream === 'stderr' || rank === 0) && console.error(`[rank ${rank}] ${line}`),
      });
      if (r.exitCode !== 0) throw new Error(`bench:nccl: our workers failed on ${n} GPUs: ${r.reason}`);
      const ours = JSON.parse(readFileSync(out, 'utf8')) as { nccl: string; points: Point[] };
      meta.ncclVersion = ours.nccl;
      let theirs: Point[] = [];
      if (hasTorch) {
        const pout = join(tmp, `torch-${n}.json`);
        console.error(`# torch.distributed: ${n} GPUs`);
        const p = spawnSync(
          'python3',
          [peer!, '--nprocs', String(n), '--dtypes', dtypes.join(','), '--sizes', sizes.join(','), '--iters', iters.join(','), '--warmup', String(warmup), '--json', pout],
          { stdio: ['ignore', 'inherit', 'inherit'], env: process.env },
        );
        if (p.status === 0) {
          const t = JSON.parse(readFileSync(pout, 'utf8')) as { torch: string; nccl: string; points: Point[] };
          theirs = t.points;
          meta.torch = t.torch;
          meta.torchNccl = t.nccl;
        } else {
          console.error(`bench:nccl: the torch peer failed on ${n} GPUs (exit ${p.status}); ratios left out`);
        }
      }
      for (const o of ours.points) {
        const t = theirs.find((p) => p.bytes === o.bytes && p.dtype === o.dtype);
        rows.push({
          gpus: n,
          dtype: o.dtype,
          bytes: o.bytes,
          iters: o.iters,
          oursUs: o.timeUs,
          oursBusbw: o.busbwGBs,
          torchUs: t?.timeUs,
          torchBusbw: t?.busbwGBs,
          ratio: t ? o.busbwGBs / t.busbwGBs : undefined,
        });
      }
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }

  const f = (v: number | undefined, d = 1) => (v === undefined ? '-' : v.toFixed(d));
  console.log(`all-reduce (sum, in place) bus bandwidth, GB/s; ${meta.gpu}; NCCL ${meta.ncclVersion}${meta.torch ? `; torch ${meta.torch}` : ''}`);
  console.log('| GPUs | dtype | size | iters | ours us | ours busbw | torch us | torch busbw | ratio |');
  console.log('| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const r of rows) {
    console.log(
      `| ${r.gpus} | ${r.dtype} | ${fmtBytes(r.bytes)} | ${r.iters} | ${f(r.oursUs)} | ${f(r.oursBusbw)} | ${f(r.torchUs)} | ${f(r.torchBusbw)} | ${f(r.ratio, 3)} |`,
    );
  }
  const big = rows.filter((r) => r.bytes >= 64 * MiB && r.ratio !== undefined);
  let summary = 'no torch peer: no ratio';
  if (big.length) {
    const worst = Math.min(...big.map((r) => r.ratio!));
    const mean = big.reduce((a, r) => a + r.ratio!, 0) / big.length;
    summary = `>= 64 MiB: ratio vs torch min ${worst.toFixed(3)}, mean ${mean.toFixed(3)} (target >= 0.95: ${worst >= 0.95 ? 'met' : 'NOT met'})`;
  }
  console.log(summary);
  const json = arg('json');
  if (json) writeFileSync(json, JSON.stringify({ meta, rows, summary }, null, 2));
}

if (process.argv.includes('--worker')) {
  await worker(JSON.parse(process.argv[process.argv.indexOf('--worker') + 1]!) as Config);
} else {
  try {
    await driver();
  } catch (e) {
    console.error(e instanceof Error ? e.message : e);
    process.exitCode = 1;
  }
}
