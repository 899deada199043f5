// bench/train-step.ts (npm run bench:train-step): one optimizer step of a gpt-oss-20b-shaped model, the sharded
// policy (src/trainer/sharded-policy.ts) beside the single-process GptOssPolicy at N = 1 in the same run.
//
// A step: zeroGrad, --micro-batches micro-batches of one sequence of T tokens each (forward with activation
// recompute, backward from a constant dLoss/dlogp), grad-norm clipping, AdamW. Reported per T: trained tokens/s
// per GPU, model FLOPs utilisation (6 x active parameters per token + attention, over --peak-tflops; the
// recompute's extra forward is not counted, as usual), peak memory, and for the sharded policy the step split into
// gather, compute, reduce-scatter and optimizer (from one extra step in timing mode, where every collective drains
// the device before and after it: exact split, slower step). The embedding's lookup is not counted as FLOPs.
// Also the exposed communication time of the measured steps (ShardedModelOptions.exposedTiming): how long the
// compute stream waited for the gathers (issued one unit ahead on the comm stream) and the reduce-scatters (run
// there beside the next unit's backward), i.e. what the overlap did not hide. On one rank the sharded policy uses
// its shard in place (no collectives, so nothing is exposed) unless --collectives-at-one, which sends every
// gather and reduce-scatter through NCCL anyway (a copy each) to measure the overlap machinery on one GPU.
//
// One GPU holds only a few of the 24 layers with fp32 masters, moments and gradients (about 14 GB per 20b layer,
// 17 GB for the embedding and LM head): --layers says how many (default 2). Under the launcher (WORLD_SIZE > 1)
// only the sharded policy runs, and rank 0 prints.
// Usage: npm run bench:train-step -- [--preset gpt-oss-20b] [--layers 2] [--tokens 4096,16384] [--micro-batches 2]
//        [--steps 2] [--json out.json] [--peak-tflops 989] [--no-recompute] [--vocab V] [--collectives-at-one]
//        [--cpu-offload] (the sharded policy's masters and moments in pinned host memory, AdamW on the host)
//        [--lm-head-chunk N] (vocabulary rows per LM-head chunk; default lmHeadChunk(T, V) of src/ops/logprob.ts, what
//        the models and the memory planner use) [--no-keep-attention] (with recompute, the default keeps each layer's
//        attention output and LSE so the backward's recompute skips the attention forward; this turns it off)
//        [--no-fused-lm-head] (both policies take the recomputing LM-head backward; by default they take the loss
//        gradient during the forward and run the LM head's backward per token chunk from the kept logits, as
//        trainer.fused_lm_head_backward's default 'auto' does; the sharded one in its head unit)
//        [--batch-invariant] (batch-invariant forward kernels: trainer.batch_invariant)
// CPU smoke form (CI): --preset gpt-oss-tiny-256 --tokens 32 --steps 1 (MFU is left out on the CPU).
// --profile [--spin-ms 50] [--sync-ms 1]: instead of the timings, where one step's GPU time goes, by op family and
// phase (forward / recompute / backward / optimizer), for both policies (bench/train-profile.ts; table + --json).
// --lora: a whole LoRA GRPO step on one GPU instead (generate, log-probs, train, adapter sync; bench/lora-step.ts).
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { defaultDevice, native } from '../src/native.ts';
import { memoryStats, resetPeakMemory, synchronize, emptyCache, setBatchInvariant } from '../src/tensor.ts';
import { presetConfig, type GptOssConfig, type PresetName } from '../src/model/config.ts';
import { GptOssModel } from '../src/model/gptoss.ts';
import { lmHeadChunk as chooseLmHeadChunk } from '../src/ops/logprob.ts';
import { GptOssWeights } from '../src/model/weights.ts';
import { initDistributed, type DistContext } from '../src/distributed/launch.ts';
import { GptOssPolicy } from '../src/trainer/gptoss-policy.ts';
import { ShardedPolicy } from '../src/trainer/sharded-policy.ts';
import type { Policy } from '../src/trainer/policy.ts';
import { runLoraStepBench } from './lora-step.ts';
import { runTrainProfile } from './train-profile.ts';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : def;
}
function posInt(name: string, def: string): number {
  const v = Number(arg(name, def));
  if (!Number.isInteger(v) || v < 1) throw new Error(`bench:train-step: --${name} must be a positive integer (got '${arg(name, def)}')`);
  return v;
}

const presetName = arg('preset', 'gpt-oss-20b') as PresetName;
const layers = posInt('layers', '2');
const tokensList = arg('tokens', '4096,16384').split(',').map((t) => {
  const n = Number(t);
  if (!Number.isInteger(n) || n < 2) throw new Error(`bench:train-step: --tokens takes integers >= 2 (got '${t}')`);
  return n;
});
const microBatches = posInt('micro-batches', '2');
const steps = posInt('steps', '2');
const jsonPath = arg('json', '');
const recompute = !process.argv.includes('--no-recompute');
const collectivesAtOne = process.argv.includes('--collectives-at-one');
const cpuOffload = process.argv.includes('--cpu-offload');
// Vocabulary rows per LM-head chunk, overriding the default lmHeadChunk(T, V) (16384 rows at T = 16384: backward
// buffers within 1.5 GiB): larger chunks mean fewer passes of the dHidden GEMM over its f32 [T, H] output, more memory.
const lmHeadChunk = arg('lm-head-chunk', '') ? posInt('lm-head-chunk', '') : undefined;
// With recompute the models keep each layer's attention output and LSE (the default), so the backward's recompute
// skips the attention forward; --no-keep-attention runs the attention forward again instead.
if (process.argv.includes('--keep-attention')) {
  throw new Error('bench:train-step: --keep-attention is the default now (with recompute); --no-keep-attention turns it off');
}
const keepAttention = recompute && !process.argv.includes('--no-keep-attention');
if (process.argv.includes('--fused-lm-head')) {
  throw new Error('bench:train-step: --fused-lm-head is the default now; --no-fused-lm-head turns it off');
}
const fusedLmHead = !process.argv.includes('--no-fused-lm-head'); // trainer.fused_lm_head_backward's default ('auto': on)
// --batch-invariant: the whole run in batch-invariant mode (trainer.batch_invariant; docs/inference.md): what the
// size-independent forward kernels cost a training step.
const batchInvariantMode = process.argv.includes('--batch-invariant');
if (batchInvariantMode) setBatchInvariant(true);
const peakArg = arg('peak-tflops', '');
const base = presetConfig(presetName);
const cfg: GptOssConfig = presetConfig(presetName, {
  numLayers: layers,
  vocabSize: Number(arg('vocab', String(base.vocabSize))),
});

/** Parameters a token's forward multiplies with (attention projections, router, top-k experts, LM head). */
function activeParams(c: GptOssConfig): number {
  const H = c.hiddenSize, q = c.numHeads * c.headDim, kv = c.numKvHeads * c.headDim, I = c.intermediateSize;
  const perLayer = H * (q + 2 * kv) + q * H + c.numExperts * H + c.topK * (H * 2 * I + I * H);
  return c.numLayers * perLayer + c.vocabSize * H;
}

/** Model FLOPs of one sequence of T tokens, forward + backward: 6 x active params x T, plus attention scores. */
function modelFlops(c: GptOssConfig, T: number): number {
  let attn = 0;
  for (let l = 0; l < c.numLayers; l++) {
    const W = Math.min(c.slidingWindow, T);
    const pairs = c.layerTypes[l] === 'sliding_attention' ? W * T - (W * (W - 1)) / 2 : (T * (T + 1)) / 2;
    attn += 3 * 4 * c.headDim * c.numHeads * pairs; // QK^T and PV, 2 FLOPs per MAC, x3 for forward + backward
  }
  return 6 * activeParams(c) * T + attn;
}

interface Row {
  policy: 'single' | 'sharded';
  tokens: number;
  microBatches: number;
  stepMs: number;
  /** Each measured step's ms (stepMs is their mean): a step slower than the others points at a per-step cost. */
  stepMsEach: number[];
  /**
   * cuBLASLt algorithm tunings each measured step ran (CUDA; the first batched GEMM of a problem times candidates:
   * a few dozen GEMM runs and device waits, so a tuning step is slower than the steady state).
   */
  gemmTunesEach: number[];
  tokensPerSecPerGpu: number;
  mfu: number | null;
  peakGiB: number | null;
  /**
   * The caching allocator during the measured steps, per step (CUDA): fresh cudaMallocs, and cudaMalloc refusals
   * that freed cached blocks (partial releases, whole-cache flushes). Each refusal synchronises the device, and a
   * steady state with any of them pays for it every step (docs/training.md).
   */
  allocator: { cudaMallocs: number; partialReleases: number; cacheFlushes: number } | null;
  /**
   * The GPU's SM clock and board power over the measured steps (nvidia-smi every 50 ms; null on the CPU or without
   * nvidia-smi). An H100 at its 700 W cap lowers the SM clock under this load, and the step time follows it.
   */
  clocks: ClockSamples | null;
  split?: { gatherMs: number; computeMs: number; reduceScatterMs: number; optimizerMs: number; timedStepMs: number };
  /** Per measured step: how long compute waited for gathers / reduce-scatters (not hidden by the overlap). */
  exposed?: { gatherMs: number; reduceScatterMs: number };
  /** The LM head's vocabulary chunk at this T: --lm-head-chunk, else lmHeadChunk(T, V). */
  lmHeadChunk: number;
}

const device = process.env.GPTOSS_DEVICE ?? defaultDevice();
const peakFlops = peakArg ? Number(peakArg) * 1e12 : device === 'cpu' ? null : 989e12;

function sequence(T: number, salt: number): Int32Array {
  return Int32Array.from({ length: T }, (_, i) => (i * 7 + salt) % cfg.vocabSize);
}

/**
 * One optimizer step; returns its wall time and the optimizer's share (ms). onPhase (--profile) hears which part
 * runs next: 'forward' and 'backward' per micro-batch, then 'optimizer' (zeroGrad is counted there too). Under
 * --profile the synchronize calls below are left out (the profiler measures GPU time itself; a wait would drain
 * its spin).
 */
async function step(p: Policy, T: number, stepNo: number, onPhase?: (phase: string) => void): Promise<{ ms: number; optimizerMs: number }> {
  const sync = onPhase ? (): void => {} : (): void => synchronize(device);
  sync();
  const t0 = performance.now();
  onPhase?.('optimizer');
  p.zeroGrad();
  for (let m = 0; m < microBatches; m++) {
    onPhase?.('forward');
    const dl = -1 / (T * microBatches); // the constant dLoss/dlogp of every response token
    if (fusedLmHead) {
      if (!p.fusedLmHeadBackward) throw new Error('bench:train-step: the fused LM-head backward (default), but this policy has none: pass --no-fused-lm-head');
      // The fused LM-head backward (default): the LM head's backward runs inside the forward (its time counts as 'forward').
      const fwd = await p.forward({ sequences: [sequence(T, m)], promptLens: [1] }, { lossGradient: (_s, _t0, lp) => new Float32Array(lp.length).fill(dl) });
      onPhase?.('backward');
      await fwd.backward();
      continue;
    }
    const fwd = await p.forward({ sequences: [sequence(T, m)], promptLens: [1] });
    onPhase?.('backward');
    await fwd.backward(fwd.logprobs.map((l) => new Float32Array(l.length).fill(dl)));
  }
  onPhase?.('optimizer');
  await p.clipGradNorm(1.0);
  sync();
  const t1 = performance.now();
  p.optimizerStep({ lr: 1e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 }, stepNo);
  sync();
  const t2 = performance.now();
  return { ms: t2 - t0, optimizerMs: t2 - t1 };
}

interface ClockSamples {
  smMhzMean: number;
  smMhzMin: number;
  smMhzMax: number;
  powerWMean: number;
  samples: number;
}

/** Runs fn while nvidia-smi samples device's SM clock and power every 50 ms; clocks null where it cannot (CPU, no nvidia-smi). */
async function withClockSamples<R>(fn: () => Promise<R>): Promise<{ result: R; clocks: ClockSamples | null }> {
  const idx = /^cuda:(\d+)$/.exec(device)?.[1];
  if (idx === undefined) return { result: await fn(), clocks: null };
  let out = '';
  let failed = false;
  const child = spawn('nvidia-smi', ['-i', idx, '--query-gpu=clocks.sm,power.draw', '--format=csv,noheader,nounits', '-lms', '50'], { stdio: ['ignore', 'pipe', 'ignore'] });
  child.on('error', () => (failed = true));
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const closed = new Promise<void>((res) => child.on('close', () => res()));
  let result: R;
  try {
    result = await fn();
  } finally {
    child.kill();
    await closed;
  }
  const rows = out.split('\n').map((l) => l.split(',').map(Number)).filter((r) => r.length === 2 && r.every(Number.isFinite)) as [number, number][];
  if (failed || rows.length === 0) return { result, clocks: null };
  const sm = rows.map((r) => r[0]);
  return {
    result,
    clocks: {
      smMhzMean: sm.reduce((a, b) => a + b, 0) / sm.length,
      smMhzMin: Math.min(...sm),
      smMhzMax: Math.max(...sm),
      powerWMean: rows.reduce((a, r) => a + r[1], 0) / rows.length,
      samples: rows.length,
    },
  };
}

function weights(): GptOssWeights {
  return GptOssWeights.random(cfg, device, { seed: 1, fast: true, biasStd: 0.02 });
}

async function measure(kind: Row['policy'], T: number, ctx: DistContext): Promise<Row> {
  if (device !== 'cpu') {
    emptyCache(device);
    resetPeakMemory(device);
  }
  let p: Policy;
  let sharded: ShardedPolicy | null = null;
  if (kind === 'single') p = new GptOssPolicy(new GptOssModel(weights(), { recompute, keepAttention, lmHeadChunk }));
  else {
    const w = weights();
    sharded = ShardedPolicy.fromWeights(w, ctx.collectives, { recompute, keepAttention, collectivesAtOne, cpuOffload, lmHeadChunk, exposedTiming: true });
    w.dispose();
    p = sharded;
  }
  try {
    await step(p, T, 1); // warm-up (allocator, first-use costs)
    sharded?.resetStats();
    const m0 = device === 'cpu' ? null : memoryStats(device);
    const each: number[] = [];
    const tunes: number[] = [];
    const { clocks } = await withClockSamples(async () => {
      for (let s = 0; s < steps; s++) {
        const t0 = native().ops.gemmTuneCount();
        each.push((await step(p, T, s + 2)).ms);
        tunes.push(native().ops.gemmTuneCount() - t0);
      }
    });
    const ms = each.reduce((a, b) => a + b, 0) / steps;
    const m1 = device === 'cpu' ? null : memoryStats(device);
    const exposed = sharded?.stats();
    const tokens = T * microBatches;
    const row: Row = {
      policy: kind,
      tokens: T,
      microBatches,
      stepMs: ms,
      stepMsEach: each,
      gemmTunesEach: tunes,
      tokensPerSecPerGpu: tokens / (ms / 1000),
      mfu: peakFlops ? (microBatches * modelFlops(cfg, T)) / (ms / 1000) / peakFlops : null,
      peakGiB: device === 'cpu' ? null : memoryStats(device).peakAllocated / 2 ** 30,
      allocator:
        m0 && m1
          ? {
              cudaMallocs: (m1.numCudaMallocs - m0.numCudaMallocs) / steps,
              partialReleases: (m1.numPartialReleases - m0.numPartialReleases) / steps,
              cacheFlushes: (m1.numCacheFlushes - m0.numCacheFlushes) / steps,
            }
          : null,
      lmHeadChunk: lmHeadChunk ?? chooseLmHeadChunk(T, cfg.vocabSize),
      clocks,
    };
    if (exposed) row.exposed = { gatherMs: exposed.exposedGatherMs / steps, reduceScatterMs: exposed.exposedReduceScatterMs / steps };
    if (sharded) {
      // The split: one more step with every collective timed on its own (see ShardedModelOptions.timing).
      p.dispose();
      sharded = null;
      const w = weights();
      const timed = ShardedPolicy.fromWeights(w, ctx.collectives, { recompute, keepAttention, collectivesAtOne, cpuOffload, lmHeadChunk, timing: true });
      w.dispose();
      p = timed;
      await step(timed, T, 1);
      timed.resetStats();
      const r = await step(timed, T, 2);
      const st = timed.stats();
      row.split = {
        gatherMs: st.gatherMs,
        reduceScatterMs: st.reduceScatterMs,
        optimizerMs: r.optimizerMs,
        computeMs: r.ms - st.gatherMs - st.reduceScatterMs - r.optimizerMs,
        timedStepMs: r.ms,
      };
    }
    return row;
  } finally {
    p.dispose();
  }
}

if (process.argv.includes('--lora')) {
  await runLoraStepBench({ arg, posInt, device });
  process.exit(0);
}

const ctx = await initDistributed();
if (process.argv.includes('--profile')) {
  const num = (name: string, def: string): number => {
    const v = Number(arg(name, def));
    if (!Number.isFinite(v) || v < 0) throw new Error(`bench:train-step: --${name} must be a non-negative number (got '${arg(name, def)}')`);
    return v;
  };
  await runTrainProfile({
    cfg,
    presetName,
    device,
    worldSize: ctx.worldSize,
    rank: ctx.rank,
    tokensList,
    microBatches,
    steps,
    recompute,
    jsonPath,
    spinMs: num('spin-ms', '50'),
    syncMs: num('sync-ms', '1'),
    lmHeadChunk: lmHeadChunk ?? null,
    keepAttention,
    makePolicy: (kind) => {
      if (kind === 'single') return new GptOssPolicy(new GptOssModel(weights(), { recompute, keepAttention, lmHeadChunk }));
      const w = weights();
      const p = ShardedPolicy.fromWeights(w, ctx.collectives, { recompute, keepAttention, collectivesAtOne, cpuOffload, lmHeadChunk });
      w.dispose();
      return p;
    },
    step: (p, T, stepNo, onPhase) => step(p, T, stepNo, onPhase),
  });
  await ctx.destroy();
  process.exit(0);
}
const rows: Row[] = [];
for (const T of tokensList) {
  if (ctx.worldSize === 1) rows.push(await measure('single', T, ctx));
  rows.push(await measure('sharded', T, ctx));
  if (ctx.rank === 0) console.error(`T=${T} done`);
}
if (ctx.rank === 0) {
  const f = (v: number | null | undefined, d = 1): string => (typeof v === 'number' ? v.toFixed(d) : '-');
  const active = activeParams(cfg);
  console.log(
    `${presetName} with ${layers} of ${base.numLayers} layers (${active >= 1e9 ? `${(active / 1e9).toFixed(2)}B` : `${(active / 1e6).toFixed(2)}M`} active parameters per token), ` +
      `${ctx.worldSize} rank(s) (${ctx.backend}) on ${device}; ${microBatches} micro-batches of one sequence per step; recompute ${recompute ? (keepAttention ? 'on (attention kept)' : 'on') : 'off'}` +
      (fusedLmHead ? '; fused LM-head backward (both rows)' : '; recomputing LM-head backward (--no-fused-lm-head)') +
      (cpuOffload ? '; sharded policy with cpu_offload (AdamW on the host)' : '') +
      (batchInvariantMode ? '; batch-invariant kernels' : '') +
      (ctx.worldSize === 1 ? `; sharded policy on one rank ${collectivesAtOne ? 'through NCCL (--collectives-at-one)' : 'uses its shard in place (no collectives)'}` : '') +
      (peakFlops ? `; MFU over ${(peakFlops / 1e12).toFixed(0)} TFLOP/s` : ''),
  );
  console.log(
    '| policy | tokens/micro-batch | step ms | tokens/s/GPU | MFU | peak GiB | gather ms | compute ms | reduce-scatter ms | optimizer ms | exposed gather ms | exposed reduce-scatter ms | cudaMallocs / OOM releases per step | sharded/single |',
  );
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const r of rows) {
    const single = rows.find((x) => x.policy === 'single' && x.tokens === r.tokens);
    const ratio = r.policy === 'sharded' && single ? `${(r.stepMs / single.stepMs).toFixed(3)}x` : '-';
    const s = r.split;
    const a = r.allocator;
    const alloc = a ? `${f(a.cudaMallocs, 1)} / ${f(a.partialReleases + a.cacheFlushes, 1)}` : '-';
    console.log(
      `| ${r.policy} | ${r.tokens} | ${f(r.stepMs)} | ${f(r.tokensPerSecPerGpu, 0)} | ${r.mfu === null ? '-' : (100 * r.mfu).toFixed(1) + '%'} | ${f(r.peakGiB)} | ` +
        `${f(s?.gatherMs)} | ${f(s?.computeMs)} | ${f(s?.reduceScatterMs)} | ${f(s?.optimizerMs)} | ${f(r.exposed?.gatherMs, 2)} | ${f(r.exposed?.reduceScatterMs, 2)} | ${alloc} | ${ratio} |`,
    );
  }
  for (const r of rows) {
    if (r.stepMsEach.length <= 1 && !r.clocks) continue;
    const c = r.clocks;
    const fastest = Math.min(...r.stepMsEach);
    console.log(
      `${r.policy} T ${r.tokens}: measured steps ${r.stepMsEach.map((v) => v.toFixed(1)).join(', ')} ms` +
        (r.gemmTunesEach.some((n) => n > 0) ? ` (cuBLASLt tunings per step: ${r.gemmTunesEach.join(', ')})` : '') +
        (r.mfu !== null && r.stepMsEach.length > 1 ? ` (fastest ${fastest.toFixed(1)} ms: MFU ${((100 * r.mfu * r.stepMs) / fastest).toFixed(1)}%)` : '') +
        (c ? `; SM clock ${c.smMhzMean.toFixed(0)} MHz mean (${c.smMhzMin}-${c.smMhzMax}), ${c.powerWMean.toFixed(0)} W mean over ${c.samples} samples` : ''),
    );
  }
  if (jsonPath) {
    writeFileSync(
      jsonPath,
      JSON.stringify({ bench: 'train-step', preset: presetName, layers, device, lmHeadChunk: lmHeadChunk ?? null, keepAttention, fusedLmHead, worldSize: ctx.worldSize, backend: ctx.backend, recompute, collectivesAtOne, cpuOffload, batchInvariant: batchInvariantMode, microBatches, steps, activeParams: active, peakTflops: peakFlops ? peakFlops / 1e12 : null, rows }, null, 2) + '\n',
    );
  }
}
await ctx.destroy();
