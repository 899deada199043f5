// bench/gemv.ts: the small-M bf16 linear (native/cuda/gemv.cu) at gpt-oss-20b's decode shapes, the kernel that
// gemm_raw takes at M <= 8 against the previous M <= 2 kernel and cuBLAS, in one process.
//
//   npm run bench:gemv [-- --json out.json] [--ms 1,2,4,8] [--reps 25]
//   (on the GPU machine: node dist/bench/gemv.js --json $OUT/gemv.json)
//
// The three sides are chosen with GPTOSS_GEMV, which the addon reads at each call: unset, this file's kernels (at
// M <= 2 one warp per output column; M 3..8 the block kernel); `legacy`, the previous M <= 2 kernel (one 128-thread
// block per column; a value that exists only until this A/B has run on an H100, then goes with that kernel);
// `0`, cuBLAS. `legacy` is timed at M <= 2 only (at M 3..8 it is the same kernel as the default).
//
// Shapes (K -> N, W [N, K] bf16): qkv 2880 -> 5120 (29.5 MB of W, bf16 bias, bf16 out), o_proj 4096 -> 2880
// (23.6 MB, bf16 bias, bf16 out), LM head 2880 -> 201,088 (1.16 GB, no bias, f32 out), MoE router 2880 -> 32
// (184 KB, bf16 bias, f32 out). Method: W is held in `copies` copies (at least 256 MB in all, so one call's W is
// not still in the 50 MB L2 from the previous one, as in a decode step where each layer reads its own weights);
// `calls` products rotating over the copies are captured in one CUDA graph (like batch-1 decode, which replays
// graphs: no host launch cost, the kernel launch overhead included), and the graph is replayed `reps` times, each
// replay timed with CUDA events: µs per call is the median replay / calls. GB/s counts W's bytes (N*K*2; x, the
// bias and C are < 1% here) and % HBM is against the GPU's peak (H100 SXM 3350 GB/s, H100 PCIe 2000, H200 4800),
// as bench/moe.ts reports it. "same bits": the default kernel's C equals the previous kernel's (M <= 2; by
// construction, gemv.cu's header). Needs a GPU; on a CPU it stops with an error.
import { writeFileSync } from 'node:fs';
import { native } from '../src/native.ts';
import { CudaEvent, Tensor, cudaDeviceCount, synchronize } from '../src/tensor.ts';
import { matmul } from '../src/ops/gemm.ts';
import type { FloatDType } from '../src/native.ts';
import { randBits } from './random.ts';

function args() {
  const a = process.argv.slice(2);
  const get = (k: string) => {
    const i = a.indexOf(k);
    return i >= 0 ? a[i + 1] : undefined;
  };
  const ms = (get('--ms') ?? '1,2,4,8').split(',').map(Number);
  for (const m of ms) if (!Number.isInteger(m) || m < 1 || m > 8) throw new Error(`bench:gemv: --ms entries must be 1..8 (got ${m})`);
  const reps = Number(get('--reps') ?? 25);
  if (!Number.isInteger(reps) || reps < 3) throw new Error(`bench:gemv: --reps must be an integer >= 3 (got ${get('--reps')})`);
  return { json: get('--json'), ms, reps };
}

interface Shape {
  what: string;
  K: number;
  N: number;
  bias: boolean;
  out: FloatDType;
}

const SHAPES: Shape[] = [
  { what: 'qkv', K: 2880, N: 5120, bias: true, out: 'bf16' },
  { what: 'o_proj', K: 4096, N: 2880, bias: true, out: 'bf16' },
  { what: 'lm_head', K: 2880, N: 201088, bias: false, out: 'f32' },
  { what: 'router', K: 2880, N: 32, bias: true, out: 'f32' },
];

type Side = 'new' | 'legacy' | 'cublas';
const SWITCH: Record<Side, string> = { new: '1', legacy: 'legacy', cublas: '0' };

/** fn with GPTOSS_GEMV set for `side` (read by the addon at each call, so at capture), then restored. */
function withSide<R>(side: Side, fn: () => R): R {
  const prev = process.env.GPTOSS_GEMV;
  process.env.GPTOSS_GEMV = SWITCH[side];
  try {
    return fn();
  } finally {
    if (prev === undefined) delete process.env.GPTOSS_GEMV;
    else process.env.GPTOSS_GEMV = prev;
  }
}

interface Timing {
  us: number;
  GBps: number;
  hbmPct?: number;
}

interface Row {
  shape: string;
  K: number;
  N: number;
  M: number;
  weightMB: number;
  copies: number;
  calls: number;
  new: Timing;
  legacy?: Timing;
  cublas: Timing;
  /** legacy µs / new µs (> 1: the new kernel is faster); M <= 2. */
  speedupVsLegacy?: number;
  /** cuBLAS µs / new µs. */
  speedupVsCublas: number;
  /** The default kernel's C bitwise equal to the previous kernel's (M <= 2). */
  sameBitsAsLegacy?: boolean;
}

const median = (v: number[]): number => {
  const s = [...v].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h]! : (s[h - 1]! + s[h]!) / 2;
};

function main() {
  const o = args();
  if (!native().features.cuda || cudaDeviceCount() === 0) {
    console.error('bench:gemv times CUDA kernels (gemv.cu against cuBLAS); it needs a GPU, and this machine has no CUDA device.');
    process.exit(1);
  }
  const device = 'cuda:0';
  const ops = native().ops;
  const deviceName = ops.deviceName(0);
  const hbmGBps = /H200/.test(deviceName) ? 4800 : /H100/.test(deviceName) ? (/PCIe/.test(deviceName) ? 2000 : 3350) : undefined;
  console.log(`gemv bench on ${deviceName}: M ${o.ms.join(',')}, ${o.reps} timed replays a case`);
  const rows: Row[] = [];
  for (const s of SHAPES) {
    const { K, N } = s;
    const wBytes = N * K * 2;
    const copies = Math.min(2048, Math.ceil(256e6 / wBytes));
    const calls = copies * Math.ceil(32 / copies);
    // W copies in one [copies*N, K] buffer, tiled on the device from a random host block of <= 2048 rows.
    const blockRows = Math.min(N, 2048);
    const block = Tensor.from(randBits(blockRows * K, 1 / Math.sqrt(K), 1 + K + N), [blockRows, K], { dtype: 'bf16', device });
    const all = Tensor.empty([copies * N, K], { dtype: 'bf16', device });
    for (let r = 0; r < copies * N; r += blockRows) {
      const n = Math.min(blockRows, copies * N - r);
      const dst = all.slice(r, r + n), src = block.slice(0, n);
      dst.copyFrom(src);
      dst.dispose();
      src.dispose();
    }
    block.dispose();
    const ws = Array.from({ length: copies }, (_, c) => all.slice(c * N, (c + 1) * N));
    const bias = s.bias ? Tensor.from(randBits(N, 0.5, 3 + N), [N], { dtype: 'bf16', device }) : undefined;
    for (const M of o.ms) {
      const x = Tensor.from(randBits(M * K, 1, 5 + M), [M, K], { dtype: 'bf16', device });
      const out = Tensor.empty([M, N], { dtype: s.out, device });
      const product = (c: number) => matmul(x, ws[c]!, { transB: true, bias, out });
      const bits = (side: Side): Uint32Array => withSide(side, () => {
        product(0);
        const v = out.toFloat32();
        return new Uint32Array(v.buffer, v.byteOffset, v.length);
      });
      const time = (side: Side): Timing => withSide(side, () => {
        for (let c = 0; c < copies; c++) product(c); // warm-up outside the capture (cuBLAS handles, algorithm caches)
        synchronize(device);
        const pool = ops.graphPoolCreate(0);
        ops.captureBegin(0, pool);
        let graph: number;
        try {
          for (let i = 0; i < calls; i++) product(i % copies);
          graph = ops.captureEnd(0);
        } catch (e) {
          ops.captureAbort(0);
          throw e;
        }
        for (let i = 0; i < 2; i++) ops.graphLaunch(graph, 0);
        const ev = Array.from({ length: o.reps + 1 }, () => new CudaEvent(device, true));
        ev[0]!.record();
        for (let r = 0; r < o.reps; r++) {
          ops.graphLaunch(graph, 0);
          ev[r + 1]!.record();
        }
        ev[o.reps]!.synchronize();
        const us = (median(Array.from({ length: o.reps }, (_, r) => ev[r]!.elapsedMs(ev[r + 1]!))) * 1e3) / calls;
        ops.graphDestroy(graph);
        ops.graphPoolRelease(0, pool);
        const GBps = wBytes / (us * 1e3);
        return { us, GBps, ...(hbmGBps ? { hbmPct: (100 * GBps) / hbmGBps } : {}) };
      });
      const row: Row = {
        shape: s.what, K, N, M, weightMB: wBytes / 1e6, copies, calls, new: time('new'), cublas: time('cublas'), speedupVsCublas: 0,
      };
      row.speedupVsCublas = row.cublas.us / row.new.us;
      if (M <= 2) {
        row.legacy = time('legacy');
        row.speedupVsLegacy = row.legacy.us / row.new.us;
        const a = bits('new'), b = bits('legacy');
        row.sameBitsAsLegacy = a.length === b.length && a.every((v, i) => v === b[i]);
      }
      rows.push(row);
      console.log(`  ${s.what} M ${M}: new ${row.new.us.toFixed(2)} µs, ${row.legacy ? `legacy ${row.legacy.us.toFixed(2)} µs, ` : ''}cuBLAS ${row.cublas.us.toFixed(2)} µs`);
      x.dispose();
      out.dispose();
    }
    for (const w of ws) w.dispose();
    all.dispose();
    bias?.dispose();
  }
  const f = (v: number | undefined, d = 1) => (v === undefined ? '-' : v.toFixed(d));
  const t = (v: Timing | undefined) => `${f(v?.us, 2)} | ${f(v?.GBps, 0)} | ${f(v?.hbmPct, 0)}`;
  console.log(`\nSmall-M bf16 linear on ${deviceName} (µs per call, median of ${o.reps} CUDA-graph replays; GB/s of W; new = default, legacy = the previous M <= 2 kernel)`);
  console.log('| shape | K -> N | M | W MB | new µs | GB/s | % HBM | legacy µs | GB/s | % HBM | cuBLAS µs | GB/s | % HBM | legacy/new | cuBLAS/new | same bits as legacy |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const r of rows) {
    const same = r.sameBitsAsLegacy === undefined ? '-' : r.sameBitsAsLegacy ? 'yes' : 'NO';
    console.log(`| ${r.shape} | ${r.K} -> ${r.N} | ${r.M} | ${f(r.weightMB, 2)} | ${t(r.new)} | ${t(r.legacy)} | ${t(r.cublas)} | ${f(r.speedupVsLegacy, 2)}${r.speedupVsLegacy ? 'x' : ''} | ${f(r.speedupVsCublas, 2)}x | ${same} |`);
  }
  if (o.json) {
    writeFileSync(o.json, JSON.stringify({ device: deviceName, hbmGBps, reps: o.reps, rows }, null, 1));
    console.log(`wrote ${o.json}`);
  }
  if (rows.some((r) => r.sameBitsAsLegacy === false)) {
    console.error('bench:gemv: the new M <= 2 kernel did not give the previous kernel\'s bits (gemv.cu says they are the same by construction)');
    process.exit(1);
  }
}

main();
