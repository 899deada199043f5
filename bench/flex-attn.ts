// bench/flex-attn.ts: attention with sinks, our kernels vs torch flex_attention (compiled) + sinks in the same run.
//
//   npm run bench:flex-attn [-- --json out.json] [--cpu] [--no-peer] [--iters N] [--peer-budget SECONDS] [--deterministic]
//   backward: deterministic: false (what training runs, trainer.deterministic=false: on sm_90 the fused kernel that adds
//   dq partials by fp32 reductions); --deterministic measures the atomics-free backward instead. The kernels are the
//   ones native/cuda/attention_heuristics.h picks; candidates are compared in bench/attn_bwd_harness.
//   (on the GPU machine: node dist/bench/flex-attn.js --json $OUT/attn.json)
//
// gpt-oss shapes: Hq 64, Hkv 8, D 64; B1 S4096, B1 S16384, B8 S2048; causal and sliding window 128; forward and
// forward+backward; decode with batch 64 x context 4096. TFLOP/s use design.md's count: 4*D per allowed (q, k)
// pair per head for the forward, 3.5x that for forward+backward. Decode reports GB/s of KV bytes read. The peer
// (bench/flex_attn_peer.py) applies the sinks as out * sigmoid(lse - sink) with lse from return_lse and
// backpropagates through that. On the CPU (no GPU) small shapes run and the peer is skipped. The last column is a
// reference point, not the peer: cuDNN's fused attention (torch SDPA, causal cases, no sinks), to calibrate what
// ratio over flex the vendor's own kernel reaches on the same shapes.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { native } from '../src/native.ts';
import { Tensor, CudaEvent, cudaDeviceCount, synchronize } from '../src/tensor.ts';
import { attentionForward, attentionBackward, attentionDecode, packedCuSeqlens } from '../src/ops/attention.ts';
import { peerScript } from './peer.ts';

interface Case {
  name: string;
  kind: 'fwd' | 'fwdbwd' | 'decode';
  B: number;
  S: number; // sequence length, or context length for decode
  window: number;
  Hq: number;
  Hkv: number;
  D: number;
}

interface Row extends Case {
  ms: number;
  tflops?: number;
  gbps?: number;
  peerMs?: number;
  peerTflops?: number;
  peerGbps?: number;
  ratio?: number; // peer ms / our ms (> 1: we are faster)
  peerNote?: string;
  // Reference point, not the peer (causal cases): cuDNN fused attention via torch SDPA, no sinks.
  cudnnMs?: number;
  cudnnTflops?: number;
  cudnnNote?: string;
}

function args() {
  const a = process.argv.slice(2);
  const get = (k: string) => {
    const i = a.indexOf(k);
    return i >= 0 ? a[i + 1] : undefined;
  };
  return {
    json: get('--json'),
    cpu: a.includes('--cpu'),
    noPeer: a.includes('--no-peer'),
    iters: Number(get('--iters') ?? 0),
    peerBudget: Number(get('--peer-budget') ?? 600), // seconds of peer work (compiles included) before skipping cases
    atomic: !a.includes('--deterministic'), // default: dq by fp32 atomics (the trainer's default)
  };
}

function pairs(S: number, W: number): number {
  if (W <= 0 || W >= S) return (S * (S + 1)) / 2;
  return (W * (W + 1)) / 2 + (S - W) * W;
}

function flops(c: Case): number {
  const f = 4 * c.D * pairs(c.S, c.window) * c.Hq * c.B;
  return c.kind === 'fwdbwd' ? 3.5 * f : f;
}

function kvBytes(c: Case): number {
  const ctx = c.window > 0 ? Math.min(c.window, c.S) : c.S;
  return c.B * ctx * c.Hkv * c.D * 2 * 2;
}

function randBf16(shape: number[], dev: string, std = 1): Tensor {
  const n = shape.reduce((x, y) => x * y, 1);
  const a = new Float32Array(n);
  let s = 12345;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    a[i] = ((s / 4294967296) * 2 - 1) * std * 1.7;
  }
  return Tensor.from(a, shape, { device: dev, dtype: 'bf16' });
}

function timeIt(dev: string, iters: number, fn: () => void): number {
  for (let i = 0; i < 2; i++) fn();
  if (dev === 'cpu') {
    const t0 = performance.now();
    for (let i = 0; i < iters; i++) fn();
    return (performance.now() - t0) / iters;
  }
  synchronize(dev);
  const a = new CudaEvent(dev, true);
  const b = new CudaEvent(dev, true);
  a.record();
  for (let i = 0; i < iters; i++) fn();
  b.record();
  b.synchronize();
  return a.elapsedMs(b) / iters;
}

function runOurs(c: Case, dev: string, itersArg: number, deterministic: boolean): number {
  const iters = itersArg || (dev === 'cpu' ? 2 : c.kind === 'decode' ? 50 : 20);
  if (c.kind === 'decode') {
    const q = randBf16([c.B, c.Hq, c.D], dev);
    const kc = randBf16([c.B, c.S, c.Hkv, c.D], dev);
    const vc = randBf16([c.B, c.S, c.Hkv, c.D], dev);
    const seqLens = Tensor.from(new Int32Array(c.B).fill(c.S), [c.B], { device: dev });
    const sinks = Tensor.from(new Float32Array(c.Hq).fill(0.5), [c.Hq], { device: dev });
    const ms = timeIt(dev, iters, () => attentionDecode(q, kc, vc, { seqLens, window: c.window, sinks }).dispose());
    for (const t of [q, kc, vc, seqLens, sinks]) t.dispose();
    return ms;
  }
  const T = c.B * c.S;
  const q = randBf16([T, c.Hq, c.D], dev);
  const k = randBf16([T, c.Hkv, c.D], dev);
  const v = randBf16([T, c.Hkv, c.D], dev);
  const dOut = randBf16([T, c.Hq, c.D], dev, 0.1);
  const sinks = Tensor.from(new Float32Array(c.Hq).fill(0.5), [c.Hq], { device: dev });
  const { cuSeqlens, maxSeqlen } = packedCuSeqlens(Array(c.B).fill(c.S), dev);
  const opts = { cuSeqlens, maxSeqlen, window: c.window, sinks };
  const ms = timeIt(dev, iters, () => {
    const { out, lse } = attentionForward(q, k, v, opts);
    if (c.kind === 'fwdbwd') {
      const g = attentionBackward(dOut, q, k, v, out, lse, { ...opts, deterministic });
      g.dq.dispose();
      g.dk.dispose();
      g.dv.dispose();
      g.dsinks?.dispose();
    }
    out.dispose();
    lse.dispose();
  });
  for (const t of [q, k, v, dOut, sinks, cuSeqlens]) t.dispose();
  return ms;
}

interface PeerResult {
  ms: number;
  note?: string;
  cudnnMs?: number;
  cudnnNote?: string;
}

function runPeer(cases: Case[], budgetS: number): Map<string, PeerResult> | string {
  const script = peerScript('flex_attn_peer.py');
  if (!script) return 'peer script not found';
  const probe = spawnSync('python3', ['-c', 'import torch; assert torch.cuda.is_available()'], { encoding: 'utf8' });
  if (probe.status !== 0) return 'python3 with torch+CUDA not available';
  const dir = mkdtempSync(join(tmpdir(), 'flex-peer-'));
  const spec = join(dir, 'cases.json');
  const out = join(dir, 'peer.json');
  writeFileSync(spec, JSON.stringify(cases));
  const r = spawnSync('python3', [script, spec, out, String(budgetS)], {
    stdio: ['ignore', 'inherit', 'inherit'],
    timeout: (budgetS + 180) * 1000,
  });
  if (!existsSync(out)) return `peer failed (status ${r.status})`;
  const res = JSON.parse(readFileSync(out, 'utf8')) as Record<string, PeerResult>;
  return new Map(Object.entries(res));
}

function main() {
  const a = args();
  const gpu = !a.cpu && native().features.cuda && cudaDeviceCount() > 0;
  const dev = gpu ? 'cuda:0' : 'cpu';
  const cases: Case[] = [];
  const add = (kind: Case['kind'], B: number, S: number, window: number, Hq: number, Hkv: number, D: number) =>
    cases.push({ name: `${kind} B${B} S${S} ${window ? `sliding${window}` : 'causal'}`, kind, B, S, window, Hq, Hkv, D });
  if (gpu) {
    for (const kind of ['fwd', 'fwdbwd'] as const)
      for (const [B, S] of [
        [1, 4096],
        [1, 16384],
        [8, 2048],
      ] as const)
        for (const W of [0, 128]) add(kind, B, S, W, 64, 8, 64);
    add('decode', 64, 4096, 0, 64, 8, 64);
    add('decode', 64, 4096, 128, 64, 8, 64);
  } else {
    for (const kind of ['fwd', 'fwdbwd'] as const) for (const W of [0, 32]) add(kind, 1, 256, W, 8, 2, 64);
    add('decode', 4, 256, 0, 8, 2, 64);
  }
  const rows: Row[] = [];
  for (const c of cases) {
    const ms = runOurs(c, dev, a.iters, !a.atomic);
    const row: Row = { ...c, ms };
    if (c.kind === 'decode') row.gbps = kvBytes(c) / ms / 1e6;
    else row.tflops = flops(c) / ms / 1e9;
    rows.push(row);
    console.error(`ours ${c.name}: ${ms.toFixed(3)} ms`);
  }
  let peerStatus = 'skipped (CPU run)';
  if (gpu && !a.noPeer) {
    const peer = runPeer(cases, a.peerBudget);
    if (typeof peer === 'string') peerStatus = peer;
    else {
      peerStatus = 'torch flex_attention (compiled) + sinks via lse';
      for (const r of rows) {
        const p = peer.get(r.name);
        if (p && p.cudnnMs !== undefined && p.cudnnMs > 0) {
          r.cudnnMs = p.cudnnMs;
          r.cudnnTflops = flops(r) / p.cudnnMs / 1e9;
        }
        if (p?.cudnnNote) r.cudnnNote = p.cudnnNote;
        if (!p || !(p.ms > 0)) {
          if (p?.note) r.peerNote = p.note;
          continue;
        }
        r.peerMs = p.ms;
        if (p.note) r.peerNote = p.note;
        if (r.kind === 'decode') r.peerGbps = kvBytes(r) / p.ms / 1e6;
        else r.peerTflops = flops(r) / p.ms / 1e9;
        r.ratio = p.ms / r.ms;
      }
    }
  }
  const device = gpu ? native().ops.deviceName(0) : 'cpu';
  const hbm = /H200/.test(device) ? 4800 : /H100/.test(device) ? 3350 : 0;
  const fmt = (x: number | undefined, d = 2) => (x === undefined ? '-' : x.toFixed(d));
  const bwdMode = a.atomic ? 'fused dq (deterministic: false)' : 'deterministic';
  console.log(`\nattention with sinks, device ${device}; backward ${bwdMode}; peer: ${peerStatus}`);
  console.log('| case | ours ms | ours TFLOP/s or GB/s | peer ms | peer TFLOP/s or GB/s | speedup (peer/ours) | ref: cuDNN SDPA, no sinks: ms, TFLOP/s, peer/cuDNN |');
  console.log('| --- | --- | --- | --- | --- | --- | --- |');
  for (const r of rows) {
    const ours = r.kind === 'decode' ? `${fmt(r.gbps, 0)} GB/s${hbm ? ` (${((100 * r.gbps!) / hbm).toFixed(0)}% of HBM)` : ''}` : `${fmt(r.tflops, r.tflops! < 1 ? 4 : 1)}`;
    const peer = r.kind === 'decode' ? (r.peerGbps ? `${fmt(r.peerGbps, 0)} GB/s` : '-') : fmt(r.peerTflops, 1);
    const ref = r.cudnnMs
      ? `${fmt(r.cudnnMs, 3)}, ${fmt(r.cudnnTflops, 1)}${r.peerMs ? `, ${(r.peerMs / r.cudnnMs).toFixed(2)}x` : ''}${r.cudnnNote ? ` (${r.cudnnNote})` : ''}`
      : r.cudnnNote ?? '-';
    console.log(`| ${r.name} | ${fmt(r.ms, 3)} | ${ours} | ${fmt(r.peerMs, 3)} | ${peer} | ${r.ratio ? `${r.ratio.toFixed(2)}x` : '-'}${r.peerNote ? ` (${r.peerNote})` : ''} | ${ref} |`);
  }
  if (a.json) {
    // The kernels are a function of shape, mode and device (native/cuda/attention_heuristics.h): the mode is the variant.
    const variant = { deterministic: !a.atomic };
    writeFileSync(a.json, JSON.stringify({ device, hbmGBps: hbm || undefined, peer: peerStatus, variant, rows }, null, 2));
    console.log(`wrote ${a.json}`);
  }
}

main();
