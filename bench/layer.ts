// bench/layer.ts (npm run bench:layer): gpt-oss-20b decoder layers forward+backward at B1 S4096 and S16384,
// ours vs transformers' GptOssModel (bench/layer_peer.py, grouped_mm experts) in the same run.
//
// Two layers (one sliding, one full, as the model alternates) of the real 20b shapes with random weights; input
// x [S, 2880] bf16, output gradient random; time per layer = total / 2. Our side runs forward with saved
// activations then backward with fp32 weight gradients accumulated, as training does.
// Usage: npm run bench:layer -- [--seqlens 4096,16384] [--iters 5] [--json out.json] [--no-peer] [--accumulate]
//        [--preset gpt-oss-tiny] [--deterministic]
// --deterministic: the atomics-free attention backward (ModelOptions.deterministic); default as training runs it.
// GPTOSS_PROFILE=1 adds a per-phase GPU time breakdown (src/log/gpu-profile.ts).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tensor, CudaEvent, synchronize, memoryStats, resetPeakMemory } from '../src/tensor.ts';
import { defaultDevice } from '../src/native.ts';
import { presetConfig, type PresetName } from '../src/model/config.ts';
import { GptOssModel } from '../src/model/gptoss.ts';
import { packSequences, disposeBatch } from '../src/model/batch.ts';
import { randomTensor } from '../src/model/weights.ts';
import { gpuProfile } from '../src/log/gpu-profile.ts';
import { peerScript } from './peer.ts';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : def;
}
const seqlens = arg('seqlens', '4096,16384').split(',').map(Number);
const iters = Number(arg('iters', '5'));
const jsonPath = process.argv.includes('--json') ? arg('json', '') : '';
const noPeer = process.argv.includes('--no-peer');
// --accumulate: add into the previous step's gradient buffers (a later micro-batch of gradient accumulation)
// instead of starting each step from zero_grad (set-to-none); the peer does the same.
const accumulateGrads = process.argv.includes('--accumulate');
const deterministic = process.argv.includes('--deterministic');
const device = process.env.GPTOSS_DEVICE ?? defaultDevice();
const LAYERS = 2;

const presetName = arg('preset', 'gpt-oss-20b') as PresetName;
const CFG = presetConfig(presetName, { numLayers: LAYERS, vocabSize: 256, eosTokenIds: [1], padTokenId: 0, bosTokenId: null });

/** FLOPs of one layer fwd+bwd (matmuls: 3x forward; attention: 3.5x forward, allowed pairs only). */
function layerFlops(S: number, sliding: boolean): number {
  const c = CFG;
  const H = c.hiddenSize, q = c.numHeads * c.headDim, kv = c.numKvHeads * c.headDim, I = c.intermediateSize, k = c.topK;
  const D = c.headDim, Hq = c.numHeads, W = Math.min(c.slidingWindow, S);
  const dense = 2 * S * H * (q + 2 * kv) + 2 * S * q * H;
  const moe = 2 * S * k * (H * 2 * I + I * H) + 2 * S * H * c.numExperts;
  const pairs = sliding ? W * S - (W * (W - 1)) / 2 : (S * (S + 1)) / 2;
  return 3 * (dense + moe) + 3.5 * 4 * D * pairs * Hq;
}

function runOurs(S: number): { ms: number; peakGB: number } {
  const cfg = CFG;
  const model = GptOssModel.random(cfg, device, { seed: 1, fast: true, biasStd: 0.02 }, { deterministic });
  const batch = packSequences([Array.from({ length: S }, (_, i) => i % 256)], device);
  const x = randomTensor('x', [S, cfg.hiddenSize], 0, 1, 2, device);
  const dyBf = randomTensor('dy', [S, cfg.hiddenSize], 0, 1, 3, device);
  const dy = Tensor.from(dyBf.toFloat32(), dyBf.shape, { device, dtype: 'f32' });
  dyBf.dispose();
  const grads = new Map<string, Tensor>();
  const step = (): void => {
    if (!accumulateGrads) {
      // A training step's first micro-batch: zero_grad (set-to-none) then backward writes fresh gradients.
      for (const g of grads.values()) g.dispose();
      grads.clear();
    }
    const r0 = model.layers[0]!.forward(x, batch, true);
    const r1 = model.layers[1]!.forward(r0.y, batch, true);
    r1.y.dispose();
    const d1 = model.layers[1]!.backward(r1.saved!, dy, batch, grads);
    r0.y.dispose();
    const d0 = model.layers[0]!.backward(r0.saved!, d1, batch, grads);
    d1.dispose();
    d0.dispose();
  };
  step();
  step();
  synchronize(device);
  if (device !== 'cpu') resetPeakMemory(device);
  gpuProfile.reset();
  let ms: number;
  if (device === 'cpu') {
    const t0 = performance.now();
    for (let i = 0; i < iters; i++) step();
    ms = (performance.now() - t0) / iters;
  } else {
    const a = new CudaEvent(device, true).record();
    for (let i = 0; i < iters; i++) step();
    const b = new CudaEvent(device, true).record();
    b.synchronize();
    ms = a.elapsedMs(b) / iters;
  }
  const peakGB = device === 'cpu' ? 0 : memoryStats(device).peakAllocated / 2 ** 30;
  if (gpuProfile.enabled && device !== 'cpu') {
    // GPTOSS_PROFILE=1: per-phase GPU time of the timed steps (ms per step, both layers).
    console.log(`S=${S} phases (ms per step of ${LAYERS} layers; step total ${ms.toFixed(2)}):`);
    for (const r of gpuProfile.report()) console.log(`  ${r.phase.padEnd(28)} ${(r.ms / iters).toFixed(3)}`);
  }
  for (const g of grads.values()) g.dispose();
  for (const t of [x, dy]) t.dispose();
  disposeBatch(batch);
  model.dispose();
  return { ms: ms / LAYERS, peakGB };
}

interface PeerOut {
  peer: string;
  device: string;
  results: { seqlen: number; msPerLayer?: number; oom?: boolean }[];
}

function runPeer(): PeerOut | null {
  if (noPeer || presetName !== 'gpt-oss-20b') return null;
  const script = peerScript('layer_peer.py');
  if (!script) return null;
  const probe = spawnSync('python3', ['-c', 'import torch, transformers; assert torch.cuda.is_available()'], { encoding: 'utf8' });
  if (probe.status !== 0) {
    console.error('peer skipped: python3 with torch+transformers+CUDA not found');
    return null;
  }
  const out = join(mkdtempSync(join(tmpdir(), 'layer-peer-')), 'peer.json');
  const peerArgs = [script, '--seqlens', seqlens.join(','), '--layers', String(LAYERS), '--iters', String(iters), '--json', out];
  if (accumulateGrads) peerArgs.push('--accumulate');
  const r = spawnSync('python3', peerArgs, {
    encoding: 'utf8',
    stdio: ['ignore', 'inherit', 'pipe'],
    timeout: 600_000,
  });
  if (r.status !== 0 || !existsSync(out)) {
    console.error(`peer failed (status ${r.status}): ${(r.stderr ?? '').slice(-2000)}`);
    return null;
  }
  return JSON.parse(readFileSync(out, 'utf8')) as PeerOut;
}

const rows: Record<string, unknown>[] = [];
for (const S of seqlens) {
  const ours = runOurs(S);
  const flops = (layerFlops(S, true) + layerFlops(S, false)) / 2;
  rows.push({ seqlen: S, oursMs: ours.ms, oursTflops: flops / (ours.ms * 1e9), peakGB: ours.peakGB });
  console.error(`S=${S}: ours ${ours.ms.toFixed(2)} ms/layer`);
}
const peer = runPeer();
for (const r of rows) {
  const p = peer?.results.find((x) => x.seqlen === r.seqlen);
  r.peerMs = p?.msPerLayer ?? (p?.oom ? 'OOM' : null);
  r.speedup = typeof r.peerMs === 'number' ? r.peerMs / (r.oursMs as number) : null;
}
const gradMode = accumulateGrads ? 'accumulated into existing fp32 buffers' : 'fresh fp32 buffers after zero_grad (set-to-none)';
const attnMode = deterministic ? 'deterministic (no atomics)' : 'dq by fp32 atomics (trainer default)';
console.log(`${presetName} decoder layer fwd+bwd, B1, bf16, ${device}; weight gradients: ${gradMode}; attention backward: ${attnMode}${peer ? `; peer: ${peer.peer} on ${peer.device}` : ''}`);
console.log('| S | ours ms/layer | ours TFLOP/s | peak GiB (2 layers) | peer ms/layer | speedup |');
console.log('| --- | --- | --- | --- | --- | --- |');
for (const r of rows) {
  const f = (v: unknown, d = 2): string => (typeof v === 'number' ? v.toFixed(d) : String(v ?? '-'));
  console.log(`| ${r.seqlen} | ${f(r.oursMs)} | ${f(r.oursTflops, 1)} | ${f(r.peakGB, 1)} | ${f(r.peerMs)} | ${r.speedup ? f(r.speedup) + 'x' : '-'} |`);
}
if (jsonPath) writeFileSync(jsonPath, JSON.stringify({ bench: 'layer', device, iters, grads: gradMode, attentionBackward: attnMode, peer: peer?.peer ?? null, rows }, null, 2));
