// bench/moe.ts: the GPT-OSS MoE block (router + permutation + grouped GEMMs + SwiGLU-clamp + combine), our
// kernels vs a PyTorch torch._grouped_mm implementation of the same math (bench/moe_peer.py) in the same run.
//
//   npm run bench:moe [-- --json out.json] [--tokens 1,64,4096,16384] [--no-peer] [--iters N]
//   (on the GPU machine: node dist/bench/moe.js --json $OUT/moe.json)
//
// gpt-oss-20b shapes: E 32, top-4, hidden 2880, intermediate 2880. TFLOP/s: 2·T·k·(H·2I + I·H) forward, 3x
// that for forward+backward (design.md). For small T, GB/s of expert weights read (experts that got tokens,
// gate_up + down + biases, plus the router) and the share of the GPU's HBM bandwidth. Ratio = peer ms / our ms
// (> 1: we are faster). Without a GPU it runs a small CPU case and skips the peer.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { native } from '../src/native.ts';
import { Tensor, cudaDeviceCount } from '../src/tensor.ts';
import { moeForward, moeBackward, type MoeContext, type MoeWeights } from '../src/ops/moe.ts';
import { peerScript } from './peer.ts';
import { msPerCall } from './timing.ts';
import { randBits } from './random.ts';

function args() {
  const a = process.argv.slice(2);
  const get = (k: string) => {
    const i = a.indexOf(k);
    return i >= 0 ? a[i + 1] : undefined;
  };
  return {
    json: get('--json'),
    tokens: get('--tokens'),
    noPeer: a.includes('--no-peer'),
    iters: Number(get('--iters') ?? 0),
  };
}



// A [E, ...rest] bf16 tensor whose experts are different windows of one random buffer.
function expertTensor(E: number, rest: number[], std: number, seed: number, device: string): Tensor {
  const per = rest.reduce((x, y) => x * y, 1);
  const buf = randBits(per + 4099 * 8, std, seed);
  const t = Tensor.empty([E, ...rest], { dtype: 'bf16', device });
  for (let e = 0; e < E; e++) {
    const off = ((e * 1013) % 4099) * 8;
    t.slice(e, e + 1).copyFrom(buf.subarray(off, off + per));
  }
  return t;
}

interface Row {
  T: number;
  fwdMs: number;
  fwdTflops: number;
  weightGB: number;
  fwdGBps: number;
  hbmPct?: number;
  fwdbwdMs?: number;
  fwdbwdTflops?: number;
  peerFwdMs?: number;
  peerFwdbwdMs?: number;
  fwdRatio?: number;
  fwdbwdRatio?: number;
  activeExperts: number;
  /** The expert-GEMM strategy the plan chose (native/cuda/moe.cu, plan_expert_gemms; docs/moe.md). */
  strategy: Strategy;
}

type Strategy = 'grouped' | 'slabs' | 'per-expert' | 'cpu';

// Read from what the forward saved: the slab layout pads rows beyond T·k, the per-expert strategy keeps the
// gathered rows xp, the grouped kernels neither.
function strategyOf(ctx: MoeContext, T: number, k: number, gpu: boolean): Strategy {
  if (!gpu) return 'cpu';
  if (ctx.permTok.shape[0]! > T * k) return 'slabs';
  return ctx.xp ? 'per-expert' : 'grouped';
}

function main() {
  const o = args();
  const gpu = native().features.cuda && cudaDeviceCount() > 0;
  const device = gpu ? 'cuda:0' : 'cpu';
  const E = gpu ? 32 : 8, k = 4, H = gpu ? 2880 : 256, I = gpu ? 2880 : 256;
  const tokens = (o.tokens ?? (gpu ? '1,64,4096,16384' : '1,64,256')).split(',').map(Number);
  const deviceName = gpu ? native().ops.deviceName(0) : 'cpu';
  const hbmGBps = /H200/.test(deviceName) ? 4800 : /H100/.test(deviceName) ? (/PCIe/.test(deviceName) ? 2000 : 3350) : undefined;
  console.log(`moe bench on ${deviceName}: E ${E}, top-${k}, hidden ${H}, intermediate ${I}`);

  const w: MoeWeights = {
    routerW: expertTensor(E, [H], 1 / Math.sqrt(H), 1, device),
    routerB: expertTensor(1, [E], 0.5, 2, device).view([E]),
    gateUpW: expertTensor(E, [H, 2 * I], 1 / Math.sqrt(H), 3, device),
    gateUpB: expertTensor(E, [2 * I], 0.5, 4, device),
    downW: expertTensor(E, [I, H], 1 / Math.sqrt(I), 5, device),
    downB: expertTensor(E, [H], 0.5, 6, device),
  };

  const time = (iters: number, fn: () => void): number => msPerCall(device, iters, fn);

  const rows: Row[] = [];
  for (const T of tokens) {
    const x = Tensor.from(randBits(T * H, 1, 7 + T), [T, H], { dtype: 'bf16', device });
    const dy = Tensor.from(randBits(T * H, 1, 9 + T), [T, H], { dtype: 'bf16', device });
    const probe = moeForward(x, w, { topK: k });
    const active = [...probe.counts].filter((c) => c > 0).length;
    const strategy = strategyOf(probe.ctx, T, k, gpu);
    probe.y.dispose();
    probe.ctx.dispose();
    const iters = o.iters || (gpu ? (T >= 4096 ? 10 : 50) : 2);
    const fwdMs = time(iters, () => {
      const f = moeForward(x, w, { topK: k });
      f.y.dispose();
      f.ctx.dispose();
    });
    const fwdbwdMs = time(Math.max(2, Math.floor(iters / 2)), () => {
      const f = moeForward(x, w, { topK: k });
      const g = moeBackward(dy, f.ctx);
      f.y.dispose();
      f.ctx.dispose();
      for (const t of Object.values(g)) t.dispose();
    });
    const flops = 2 * T * k * (H * 2 * I + I * H);
    const weightGB = (active * (H * 2 * I + I * H + 2 * I + H) * 2 + E * (H + 1) * 2) / 1e9;
    const r: Row = {
      T, activeExperts: active, strategy, fwdMs, fwdTflops: flops / fwdMs / 1e9, weightGB, fwdGBps: weightGB / (fwdMs / 1e3),
      fwdbwdMs, fwdbwdTflops: (3 * flops) / fwdbwdMs / 1e9,
    };
    if (hbmGBps) r.hbmPct = (100 * r.fwdGBps) / hbmGBps;
    rows.push(r);
    console.log(`  T ${T} (${strategy}): fwd ${fwdMs.toFixed(3)} ms, fwd+bwd ${fwdbwdMs.toFixed(3)} ms`);
    x.dispose();
    dy.dispose();
  }

  let peer: { device?: string; torch?: string; results?: { T: number; fwd_ms?: number; fwdbwd_ms?: number; error?: string }[] } = {};
  if (gpu && !o.noPeer) {
    const out = join(mkdtempSync(join(tmpdir(), 'moe-peer-')), 'peer.json');
    const script = peerScript('moe_peer.py') ?? 'bench/moe_peer.py';
    const r = spawnSync('python3', [script, '--json', out, '--tokens', tokens.join(','),
      '--experts', String(E), '--topk', String(k), '--hidden', String(H), '--inter', String(I)], { stdio: ['ignore', 'inherit', 'inherit'] });
    if (r.status === 0 && existsSync(out)) peer = JSON.parse(readFileSync(out, 'utf8'));
    else console.log(`peer: python3 bench/moe_peer.py failed (status ${r.status}); no peer columns`);
  }
  for (const r of rows) {
    const p = peer.results?.find((q) => q.T === r.T);
    if (p?.fwd_ms) {
      r.peerFwdMs = p.fwd_ms;
      r.fwdRatio = p.fwd_ms / r.fwdMs;
    }
    if (p?.fwdbwd_ms && r.fwdbwdMs) {
      r.peerFwdbwdMs = p.fwdbwd_ms;
      r.fwdbwdRatio = p.fwdbwd_ms / r.fwdbwdMs;
    }
  }

  const f = (v: number | undefined, d = 2) => (v === undefined ? '-' : v.toFixed(d));
  console.log(`\n| T | strategy | fwd ms | fwd TFLOP/s | weights GB/s | % HBM | peer fwd ms | fwd ratio | fwd+bwd ms | fwd+bwd TFLOP/s | peer fwd+bwd ms | peer TFLOP/s | fwd+bwd ratio |`);
  console.log(`| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |`);
  for (const r of rows) {
    const flops3 = 3 * 2 * r.T * k * (H * 2 * I + I * H);
    console.log(`| ${r.T} | ${r.strategy} | ${f(r.fwdMs, 3)} | ${f(r.fwdTflops, 1)} | ${f(r.fwdGBps, 0)} | ${f(r.hbmPct, 0)} | ${f(r.peerFwdMs, 3)} | ${f(r.fwdRatio)} | ${f(r.fwdbwdMs, 3)} | ${f(r.fwdbwdTflops, 1)} | ${f(r.peerFwdbwdMs, 3)} | ${f(r.peerFwdbwdMs ? flops3 / r.peerFwdbwdMs / 1e9 : undefined, 1)} | ${f(r.fwdbwdRatio)} |`);
  }
  if (o.json) {
    writeFileSync(o.json, JSON.stringify({ device: deviceName, E, topK: k, hidden: H, intermediate: I, peer: { device: peer.device, torch: peer.torch }, rows }, null, 1));
    console.log(`wrote ${o.json}`);
  }
  for (const t of Object.values(w)) t.dispose();
}

main();
