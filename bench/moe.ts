// bench/moe.ts: the GPT-OSS MoE block (router + permutation + grouped GEMMs + SwiGLU-clamp + combine), our
// kernels vs a PyTorch torch._grouped_mm implementation of the same math (bench/moe_peer.py) in the same run.
//
//   npm run bench:moe [-- --json out.json] [--tokens 1,64,4096,16384] [--no-peer] [--iters N]
//   (on the GPU machine: node dist/bench/moe.js --json $OUT/moe.json)
//   --decode: forward only at decode sizes (default tokens 1,2,4,8,16,64), the decode kernels (moe_decode.cu) and
//   the grouped kernels (moe_gemm.cuh) forced in turn (moeForward's expertGemms), plus what the plan picks and the
//   peer's forward: ms per forward and the routed experts' weights GB/s (% of HBM) for each, and the decode
//   kernels' forward replayed from a CUDA graph (no host launch cost, as batch-1 decode runs).
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
import { moeForward, moeBackward, type MoeWeights } from '../src/ops/moe.ts';
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
    decode: a.includes('--decode'),
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
  strategy: string;
}

type PeerResults = { device?: string; torch?: string; results?: { T: number; fwd_ms?: number; fwdbwd_ms?: number; error?: string }[] };

// bench/moe_peer.py at the same sizes and tokens (forward only with fwdOnly); {} when it fails.
function runPeer(tokens: number[], E: number, k: number, H: number, I: number, fwdOnly: boolean): PeerResults {
  const out = join(mkdtempSync(join(tmpdir(), 'moe-peer-')), 'peer.json');
  const script = peerScript('moe_peer.py') ?? 'bench/moe_peer.py';
  const r = spawnSync('python3', [script, '--json', out, '--tokens', tokens.join(','),
    '--experts', String(E), '--topk', String(k), '--hidden', String(H), '--inter', String(I), ...(fwdOnly ? ['--fwd-only'] : [])],
  { stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status === 0 && existsSync(out)) return JSON.parse(readFileSync(out, 'utf8'));
  console.log(`peer: python3 bench/moe_peer.py failed (status ${r.status}); no peer columns`);
  return {};
}

// Bytes of expert weights a forward reads: the routed experts' gate_up + down (+ biases) and the router.
function weightBytes(active: number, E: number, H: number, I: number): number {
  return active * (H * 2 * I + I * H + 2 * I + H) * 2 + E * (H + 1) * 2;
}

interface DecodeRow {
  T: number;
  activeExperts: number;
  weightGB: number;
  /** What the plan picks at this size (native/cuda/moe.cu, plan_expert_gemms). */
  planned: string;
  decodeMs: number;
  decodeGBps: number;
  decodeHbmPct?: number;
  /** ms per replay of one captured forward (CUDA graph: no host launch cost, as batch-1 decode runs). */
  decodeGraphMs: number;
  groupedMs: number;
  groupedGBps: number;
  groupedHbmPct?: number;
  /** grouped ms / decode ms (> 1: the decode kernels are faster). */
  speedup: number;
  peerFwdMs?: number;
  peerGBps?: number;
  peerHbmPct?: number;
}

// --decode: forward only, the two kernel families forced in turn on the same inputs and weights.
function decodeBench(o: ReturnType<typeof args>, w: MoeWeights, device: string, deviceName: string, hbmGBps: number | undefined,
  E: number, k: number, H: number, I: number, gpu: boolean) {
  if (!gpu) throw new Error('bench:moe --decode compares CUDA kernels; it needs a GPU');
  const tokens = (o.tokens ?? '1,2,4,8,16,64').split(',').map(Number);
  const rows: DecodeRow[] = [];
  for (const T of tokens) {
    const x = Tensor.from(randBits(T * H, 1, 7 + T), [T, H], { dtype: 'bf16', device });
    const probe = moeForward(x, w, { topK: k });
    const active = [...probe.counts].filter((c) => c > 0).length;
    const planned = probe.ctx.expertGemms;
    probe.y.dispose();
    probe.ctx.dispose();
    const iters = o.iters || 200;
    const timeOf = (expertGemms: 'decode' | 'grouped') => msPerCall(device, iters, () => {
      const f = moeForward(x, w, { topK: k, expertGemms });
      f.y.dispose();
      f.ctx.dispose();
    });
    // One forward captured in a CUDA graph (decode kernels forced), replayed `iters` times.
    const graphMs = () => {
      const ops = native().ops;
      const pool = ops.graphPoolCreate(0);
      ops.captureBegin(0, pool);
      let f: ReturnType<typeof moeForward>, graph: number;
      try {
        f = moeForward(x, w, { topK: k, expertGemms: 'decode' });
        graph = ops.captureEnd(0);
      } catch (e) {
        ops.captureAbort(0);
        throw e;
      }
      const ms = msPerCall(device, iters, () => ops.graphLaunch(graph, 0));
      ops.graphDestroy(graph);
      f.y.dispose();
      f.ctx.dispose();
      ops.graphPoolRelease(0, pool);
      return ms;
    };
    const decodeMs = timeOf('decode'), groupedMs = timeOf('grouped');
    const decodeGraphMs = graphMs();
    const weightGB = weightBytes(active, E, H, I) / 1e9;
    const r: DecodeRow = {
      T, activeExperts: active, weightGB, planned, decodeMs, decodeGBps: weightGB / (decodeMs / 1e3), decodeGraphMs, groupedMs,
      groupedGBps: weightGB / (groupedMs / 1e3), speedup: groupedMs / decodeMs,
    };
    if (hbmGBps) {
      r.decodeHbmPct = (100 * r.decodeGBps) / hbmGBps;
      r.groupedHbmPct = (100 * r.groupedGBps) / hbmGBps;
    }
    rows.push(r);
    console.log(`  T ${T} (${active} experts, plan: ${planned}): decode ${decodeMs.toFixed(4)} ms, grouped ${groupedMs.toFixed(4)} ms; CUDA graph: decode ${decodeGraphMs.toFixed(4)} ms`);
    x.dispose();
  }
  const peer = o.noPeer ? {} : runPeer(tokens, E, k, H, I, true);
  for (const r of rows) {
    const p = peer.results?.find((q) => q.T === r.T);
    if (p?.fwd_ms) {
      r.peerFwdMs = p.fwd_ms;
      // The peer routes its own random inputs: its touched experts are about as many (same T, same E).
      r.peerGBps = r.weightGB / (p.fwd_ms / 1e3);
      if (hbmGBps) r.peerHbmPct = (100 * r.peerGBps) / hbmGBps;
    }
  }
  const f = (v: number | undefined, d = 2) => (v === undefined ? '-' : v.toFixed(d));
  console.log(`\nMoE forward at decode sizes on ${deviceName} (E ${E}, top-${k}, hidden ${H}, intermediate ${I}; GB/s of the routed experts' weights)`);
  console.log('| T | experts | plan | decode ms | decode GB/s | % HBM | graph decode ms | grouped ms | grouped GB/s | % HBM | grouped/decode | peer fwd ms | peer GB/s | % HBM |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const r of rows) {
    console.log(`| ${r.T} | ${r.activeExperts} | ${r.planned} | ${f(r.decodeMs, 4)} | ${f(r.decodeGBps, 0)} | ${f(r.decodeHbmPct, 0)} | ${f(r.decodeGraphMs, 4)} | ${f(r.groupedMs, 4)} | ${f(r.groupedGBps, 0)} | ${f(r.groupedHbmPct, 0)} | ${f(r.speedup)}x | ${f(r.peerFwdMs, 4)} | ${f(r.peerGBps, 0)} | ${f(r.peerHbmPct, 0)} |`);
  }
  if (o.json) {
    writeFileSync(o.json, JSON.stringify({ mode: 'decode', device: deviceName, E, topK: k, hidden: H, intermediate: I, hbmGBps, peer: { device: peer.device, torch: peer.torch }, rows }, null, 1));
    console.log(`wrote ${o.json}`);
  }
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

  if (o.decode) {
    decodeBench(o, w, device, deviceName, hbmGBps, E, k, H, I, gpu);
    for (const t of Object.values(w)) t.dispose();
    return;
  }
  const time = (iters: number, fn: () => void): number => msPerCall(device, iters, fn);

  const rows: Row[] = [];
  for (const T of tokens) {
    const x = Tensor.from(randBits(T * H, 1, 7 + T), [T, H], { dtype: 'bf16', device });
    const dy = Tensor.from(randBits(T * H, 1, 9 + T), [T, H], { dtype: 'bf16', device });
    const probe = moeForward(x, w, { topK: k });
    const active = [...probe.counts].filter((c) => c > 0).length;
    const strategy = probe.ctx.expertGemms;
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
    const weightGB = weightBytes(active, E, H, I) / 1e9;
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

  const peer: PeerResults = gpu && !o.noPeer ? runPeer(tokens, E, k, H, I, false) : {};
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
