// bench/train-profile.ts: `npm run bench:train-step -- --profile`: where one training step's GPU time goes, by op
// family and phase (forward / recompute / backward / optimizer), for the single-process GptOssPolicy (N = 1) and
// the sharded policy, with the shapes of bench:train-step (bench/train-step.ts builds the policies and the step).
//
// Method: bench/op-profile.ts (shared with bench:decode-profile). Every addon op and Tensor copy/readback of the
// step is wrapped; a device-side mark before each call names its family, the MoE and LM-head ops mark their
// internal phases (router / gather / experts / combine / backward pieces; logit GEMM / log-softmax / dgrad / wgrad;
// their host waits: the MoE forward's offsets readback at cuBLAS sizes, the embedding's ids copy), and a spin at
// the start of the step (and after every call that waits for the device: the log-prob readback, the upload of
// dLoss/dlogp, the grad-norm readback) keeps the host ahead of the GPU, which op-profile checks at every mark.
// Phases: the bench sets forward / backward / optimizer around the policy's calls; a layer forward run inside
// backward is the recompute. GEMM families come from the layer method they run in (attentionInputs and qkvBackward:
// qkv; outputAndMoe and the rest of DecoderLayer.backward: o_proj) and their form (transA: wgrad; a [1, T] row of
// ones: the bias gradient; else fwd in forward/recompute, dgrad in backward). An in-place add in backward or the
// optimizer is gradient accumulation; elsewhere a residual add. Sharded over N > 1 ranks: collectives on the comm
// stream are not compute-stream time; the compute stream's waits for them (eventWait) are 'comm wait (exposed
// collectives)', and collectives run on the compute stream (timing mode, the grad-norm all-reduce) their own family.
// FLOPs (for TFLOP/s): GEMMs 2·M·N·K from their shapes; attention 4·D·Hq per (query, key) pair forward, 10·D·Hq
// backward (QKᵀ recomputed, dV, dP, dQ, dK), pairs as bench:train-step's MFU counts them (sequences of maxSeqlen);
// MoE experts 6·T·k·H·I forward, as much again for dgrad and for wgrad; LM head 2·T·V·H per GEMM. Bytes (for GB/s)
// of memory-bound ops: each tensor operand read or written once (AdamW: master, m, v read and written, the
// gradient read, the bf16 copy written).
// CPU (a smoke run; test/cpu/bench-train-profile.test.ts): no marks, no spin; each call's host time is its time,
// and the MoE and LM-head ops are whole-op families.
import { writeFileSync } from 'node:fs';
import { native } from '../src/native.ts';
import { DecoderLayer } from '../src/model/layer.ts';
import type { GptOssConfig } from '../src/model/config.ts';
import type { Policy } from '../src/trainer/policy.ts';
import { OpProfiler, operandBytes, shapeOf, tensorBytes, type FamilyTime, type RegionProfile, type Work } from './op-profile.ts';

/** Families in table order (then any other, under its own name). */
export const TRAIN_FAMILIES = [
  'embedding',
  'rmsnorm',
  'qkv GEMM (fwd)',
  'qkv GEMM (dgrad)',
  'qkv GEMM (wgrad)',
  'rope',
  'attention fwd',
  'attention bwd',
  'o_proj GEMM (fwd)',
  'o_proj GEMM (dgrad)',
  'o_proj GEMM (wgrad)',
  'bias grads (GEMV)',
  'MoE router',
  'MoE experts fwd',
  'MoE experts dgrad',
  'MoE experts wgrad',
  'MoE permute/combine',
  'MoE bias/router grads',
  'MoE fwd (whole op, CPU)',
  'MoE bwd (whole op, CPU)',
  'LM head GEMM (fwd)',
  'LM head GEMM (recompute)',
  'LM head GEMM (dgrad)',
  'LM head GEMM (wgrad)',
  'log-softmax / log-prob / loss',
  'LM head + log-prob fwd (whole op, CPU)',
  'LM head + log-prob bwd (whole op, CPU)',
  'residual add',
  'casts/copies',
  'grad accumulation',
  'scale',
  'grad-norm clip',
  'optimizer (AdamW)',
  'memsets/fills',
  'host upload',
  'comm wait (exposed collectives)',
  'collectives (on the compute stream)',
  'GEMM (other)',
];
export const PHASES = ['forward', 'recompute', 'backward', 'optimizer'] as const;

/** The segments the MoE and LM-head ops mark inside themselves (native/cuda/moe.cu, logprob.cu), by family. */
const NATIVE_FAMILIES: Record<string, string> = {
  'moe router': 'MoE router',
  'moe gather': 'MoE permute/combine',
  'moe experts': 'MoE experts fwd',
  'moe combine': 'MoE permute/combine',
  'moe route bwd': 'MoE permute/combine',
  'moe experts dgrad': 'MoE experts dgrad',
  'moe experts wgrad': 'MoE experts wgrad',
  'moe bias/router grads': 'MoE bias/router grads',
  'moe dx': 'MoE permute/combine',
  'lm head gemm': 'LM head GEMM (fwd)',
  'lm head recompute': 'LM head GEMM (recompute)',
  'lm head dgrad': 'LM head GEMM (dgrad)',
  'lm head wgrad': 'LM head GEMM (wgrad)',
  'log-softmax': 'log-softmax / log-prob / loss',
};

/** (query, key) pairs of causal attention over T tokens in sequences of S, within `window` (0: all). */
function attnPairs(T: number, S: number, window: number): number {
  const W = window > 0 ? Math.min(window, S) : S;
  const perSeq = W * S - (W * (W - 1)) / 2;
  return (T / S) * perSeq;
}

/**
 * The profiler of a training step: wraps every op; installs once per process. `expertGemms` collects the expert-GEMM
 * strategies the MoE forwards ran (native/cuda/moe.cu plan_expert_gemms: grouped, slabs, per-expert; 'cpu').
 */
export function trainProfiler(device: string, spinMs: number, syncMs: number): { prof: OpProfiler; expertGemms: Set<string> } {
  const cpu = device === 'cpu';
  let prof: OpProfiler;
  const expertGemms = new Set<string>();
  const gemm = (a: readonly unknown[]): string => {
    const transA = a[4] === true;
    const part = prof.scope.gemm;
    const sa = shapeOf(a[0]);
    const kind = transA ? 'wgrad' : prof.phase === 'backward' ? 'dgrad' : 'fwd';
    if (prof.phase === 'backward' && !transA && sa[0] === 1) return 'bias grads (GEMV)';
    if (part === 'qkv' || part === 'o_proj') return `${part} GEMM (${kind})`;
    return 'GEMM (other)';
  };
  const family = (op: string, a: readonly unknown[]): string | null => {
    const bwd = prof.phase === 'backward' || prof.phase === 'optimizer';
    switch (op) {
      case 'embeddingForward':
      case 'embeddingBackward':
        return 'embedding';
      case 'rmsnormForward':
      case 'addRmsnorm': // the residual add before the post-attention norm rides it
      case 'rmsnormBackward':
        return 'rmsnorm';
      case 'matmul':
        return gemm(a);
      case 'ropeQkvSplit':
      case 'ropeQkvPack':
      case 'ropeForward':
      case 'ropeBackward':
        return 'rope';
      case 'attentionForward':
        return 'attention fwd';
      case 'attentionBackward':
        return 'attention bwd';
      case 'moeForward':
        return cpu ? 'MoE fwd (whole op, CPU)' : 'MoE router';
      case 'moeBackward':
        return cpu ? 'MoE bwd (whole op, CPU)' : 'MoE permute/combine';
      case 'tokenLogprobsForward':
        return cpu ? 'LM head + log-prob fwd (whole op, CPU)' : 'LM head GEMM (fwd)';
      case 'tokenLogprobsBackward':
        return cpu ? 'LM head + log-prob bwd (whole op, CPU)' : 'LM head GEMM (recompute)';
      // The fused LM-head backward (the default): both ops run in the forward phase, one token chunk at a time.
      case 'tokenLogprobsForwardKeep':
        return cpu ? 'LM head + log-prob fwd (whole op, CPU)' : 'LM head GEMM (fwd)';
      case 'tokenLogprobsBackwardFromLogits':
        return cpu ? 'LM head + log-prob bwd (whole op, CPU)' : 'LM head GEMM (dgrad)';
      case 'elementwiseAdd':
        return 'residual add';
      case 'elementwiseAddInPlace':
        return bwd ? 'grad accumulation' : 'residual add';
      case 'elementwiseScale':
      case 'elementwiseScaleInPlace':
        return 'scale';
      case 'elementwiseCast':
      case 'Tensor.copyFrom':
      case 'Tensor.copyFromAsync':
      case 'Tensor.to':
        return a[0] instanceof ArrayBuffer || ArrayBuffer.isView(a[0]) ? 'host upload' : 'casts/copies';
      case 'elementwiseFill':
        return 'memsets/fills';
      case 'empty':
        return a[3] === true ? 'memsets/fills' : null; // an uninitialised allocation enqueues nothing
      case 'fromBuffer':
        return 'host upload';
      case 'adamwStep':
        return 'optimizer (AdamW)';
      case 'sumOfSquaresInto':
      case 'optimScaleInPlace':
        return 'grad-norm clip';
      case 'eventWait': // the compute stream waits for a gather / reduce-scatter on the comm stream (sharded, N > 1)
        return a[2] === 'comm' ? null : 'comm wait (exposed collectives)';
      case 'ncclAllGather': // on the comm stream: nothing on the compute stream to time (its waits are above)
        return a[3] === 'comm' ? null : 'collectives (on the compute stream)';
      case 'ncclReduceScatter':
        return a[4] === 'comm' ? null : 'collectives (on the compute stream)';
      case 'ncclAllReduce':
      case 'ncclBroadcast':
      case 'ncclSendRecv':
        return 'collectives (on the compute stream)';
      default:
        return op;
    }
  };
  const work = (op: string, a: readonly unknown[], r: unknown, fam: string): Work[] => {
    switch (op) {
      case 'matmul': {
        const [sa, sb] = [shapeOf(a[0]), shapeOf(a[1])];
        const M = a[4] === true ? sa[1]! : sa[0]!;
        const K = a[4] === true ? sa[0]! : sa[1]!;
        const N = a[5] === true ? sb[0]! : sb[1]!;
        return [{ family: fam, flops: 2 * M * N * K }];
      }
      case 'attentionForward':
      case 'attentionBackward': {
        const bwd = op === 'attentionBackward';
        const [T, Hq, D] = shapeOf(a[bwd ? 1 : 0]) as [number, number, number];
        const S = a[bwd ? 9 : 6] as number, win = a[bwd ? 10 : 7] as number;
        return [{ family: fam, flops: (bwd ? 10 : 4) * D * Hq * attnPairs(T, S, win) }];
      }
      case 'moeForward':
      case 'moeBackward': {
        const bwd = op === 'moeBackward';
        const [T, H] = shapeOf(a[bwd ? 7 : 0]) as [number, number];
        const E = shapeOf(a[1])[0]!, I = shapeOf(a[5])[1]!;
        const k = (bwd ? a[17] : a[7]) as number;
        const experts = 6 * T * k * H * I;
        if (!bwd) expertGemms.add((r as { expertGemms: string }).expertGemms);
        if (!bwd) return cpu ? [{ family: fam, flops: 2 * T * H * E + experts }] : [{ family: 'MoE experts fwd', flops: experts }, { family: 'MoE router', flops: 2 * T * H * E }];
        const wgrad = a[24] === false ? 0 : experts;
        return cpu ? [{ family: fam, flops: experts + wgrad }] : [{ family: fam }, { family: 'MoE experts dgrad', flops: experts }, { family: 'MoE experts wgrad', flops: wgrad }];
      }
      case 'tokenLogprobsForward':
      case 'tokenLogprobsBackward': {
        const [T, H] = shapeOf(a[0]) as [number, number];
        const V = shapeOf(a[1])[0]!;
        const g = 2 * T * V * H;
        if (op === 'tokenLogprobsForward') return [{ family: fam, flops: g }];
        const dH = a[10] !== false, dW = a[11] !== false;
        if (cpu) return [{ family: fam, flops: g * (1 + Number(dH) + Number(dW)) }];
        return [{ family: fam, flops: g }, { family: 'LM head GEMM (dgrad)', flops: dH ? g : 0 }, { family: 'LM head GEMM (wgrad)', flops: dW ? g : 0 }];
      }
      case 'tokenLogprobsForwardKeep': {
        const [T, H] = shapeOf(a[0]) as [number, number];
        return [{ family: fam, flops: 2 * T * shapeOf(a[1])[0]! * H }];
      }
      case 'tokenLogprobsBackwardFromLogits': { // (logits, hidden [Tc, H], lmHead [V, H], ..., dHidden, dLmHead | null)
        const [T, H] = shapeOf(a[1]) as [number, number];
        const g = 2 * T * shapeOf(a[2])[0]! * H, dW = a[9] != null;
        if (cpu) return [{ family: fam, flops: g * (1 + Number(dW)) }];
        return [{ family: 'LM head GEMM (dgrad)', flops: g }, { family: 'LM head GEMM (wgrad)', flops: dW ? g : 0 }];
      }
      case 'adamwStep': // master, m, v read and written; the gradient read; the bf16 copy written
        return [{ family: fam, bytes: 2 * (tensorBytes(a[0]) + tensorBytes(a[2]) + tensorBytes(a[3])) + tensorBytes(a[1]) + tensorBytes(a[4]) }];
      case 'elementwiseAddInPlace': // a read and written, b read
        return [{ family: fam, bytes: 2 * tensorBytes(a[0]) + tensorBytes(a[1]) }];
      case 'elementwiseScaleInPlace':
      case 'optimScaleInPlace':
        return [{ family: fam, bytes: 2 * tensorBytes(a[0]) }];
      case 'elementwiseFill':
        return [{ family: fam, bytes: tensorBytes(a[0]) }];
      case 'empty':
        return [{ family: fam, bytes: tensorBytes(r) }];
      case 'Tensor.copyFrom':
      case 'Tensor.copyFromAsync':
        return [{ family: fam, bytes: 2 * tensorBytes(a[0]) }];
      case 'Tensor.to':
        return [{ family: fam, bytes: 2 * tensorBytes(r) }];
      case 'embeddingForward': // the gathered rows read and written, the ids read (not the whole table)
        return [{ family: fam, bytes: 2 * tensorBytes(r) + tensorBytes(a[1]) }];
      case 'rmsnormForward':
      case 'addRmsnorm': // x, o, w read; h, y, rstd written
      case 'rmsnormBackward':
      case 'elementwiseAdd':
      case 'elementwiseScale':
      case 'elementwiseCast':
      case 'embeddingBackward':
      case 'ropeQkvSplit':
      case 'ropeQkvPack':
      case 'ropeForward':
      case 'ropeBackward':
      case 'sumOfSquaresInto':
        return [{ family: fam, bytes: operandBytes(a, r) }];
      default:
        return [{ family: fam }];
    }
  };
  prof = new OpProfiler({ device, ops: 'all', family, work, tensorMethods: true, spinMs, syncMs, nativeFamily: (n) => NATIVE_FAMILIES[n] ?? n }).install();
  // The GEMM's layer piece, and the recompute: a layer forward run while the bench's phase is backward.
  prof.withScope(DecoderLayer.prototype, 'attentionInputs', 'gemm', 'qkv');
  prof.withScope(DecoderLayer.prototype, 'outputAndMoe', 'gemm', 'o_proj');
  prof.withScope(DecoderLayer.prototype, 'backward', 'gemm', 'o_proj');
  prof.withScope(DecoderLayer.prototype, 'qkvBackward', 'gemm', 'qkv');
  prof.withScope(DecoderLayer.prototype, 'forward', 'phase', (prev) => (prev === 'backward' ? 'recompute' : prev ?? 'forward'));
  return { prof, expertGemms };
}

export interface ProfileRow {
  policy: 'single' | 'sharded';
  tokens: number;
  microBatches: number;
  steps: number;
  /** GPU ms per step (CPU: host ms), the spins and host waits left out. */
  stepGpuMs: number;
  /** Host ms per profiled step (spins and profiling overhead included). */
  stepHostMs: number;
  spinGpuMs: number;
  /** GPU idle after the step's readbacks / synchronising calls, per step. */
  hostSyncGpuMs: number;
  hostAhead: boolean;
  minLeadMs: number | null;
  lateMarks: number;
  launchesPerStep: number;
  opCallsPerStep: number;
  /** Per phase and family, per step: ms, % of the step, TFLOP/s, GB/s. */
  families: (FamilyTime & { pct: number; tflops: number | null; gbps: number | null })[];
  syncs: { op: string; phase: string; family: string; hostMs: number }[];
  /** The expert-GEMM strategies the MoE forwards ran. */
  expertGemms: string[];
}

/** Averages the regions of one (policy, T) into a row. */
export function profileRow(policy: ProfileRow['policy'], tokens: number, microBatches: number, regions: RegionProfile[], expertGemms: string[]): ProfileRow {
  const n = regions.length;
  const fam = new Map<string, FamilyTime>();
  for (const r of regions) {
    for (const f of r.families) {
      const k = `${f.phase}\u0000${f.family}`;
      const a = fam.get(k) ?? { phase: f.phase, family: f.family, ms: 0, calls: 0, flops: 0, bytes: 0 };
      a.ms += f.ms / n;
      a.calls += f.calls / n;
      a.flops += f.flops / n;
      a.bytes += f.bytes / n;
      fam.set(k, a);
    }
  }
  const mean = (g: (r: RegionProfile) => number): number => regions.reduce((a, r) => a + g(r), 0) / n;
  const total = mean((r) => r.totalMs);
  const leads = regions.map((r) => r.minLeadMs).filter((x): x is number => x !== null);
  return {
    policy,
    tokens,
    microBatches,
    steps: n,
    stepGpuMs: total,
    stepHostMs: mean((r) => r.hostMs),
    spinGpuMs: mean((r) => r.spinGpuMs),
    hostSyncGpuMs: mean((r) => r.hostSyncGpuMs),
    hostAhead: regions.every((r) => r.hostAhead),
    minLeadMs: leads.length ? Math.min(...leads) : null,
    lateMarks: regions.reduce((a, r) => a + r.lateMarks, 0),
    launchesPerStep: mean((r) => r.launches),
    opCallsPerStep: mean((r) => r.opCalls),
    families: [...fam.values()].map((f) => ({
      ...f,
      pct: total > 0 ? (100 * f.ms) / total : 0,
      tflops: f.flops > 0 && f.ms > 0 ? f.flops / (f.ms / 1000) / 1e12 : null,
      gbps: f.bytes > 0 && f.ms > 0 ? f.bytes / (f.ms / 1000) / 1e9 : null,
    })),
    syncs: regions.flatMap((r) => r.syncs),
    expertGemms,
  };
}

/** Prints one row as a table: a line per family, its ms per phase, total, % of the step, TFLOP/s, GB/s. */
export function printProfile(r: ProfileRow, head: string, cpu: boolean): void {
  const unit = cpu ? 'host ms (CPU)' : 'GPU ms';
  const byFam = new Map<string, ProfileRow['families']>();
  for (const f of r.families) byFam.set(f.family, [...(byFam.get(f.family) ?? []), f]);
  const names = [...TRAIN_FAMILIES.filter((f) => byFam.has(f)), ...[...byFam.keys()].filter((f) => !TRAIN_FAMILIES.includes(f)).sort()];
  const phases = [...PHASES.filter((p) => r.families.some((f) => f.phase === p)), ...new Set(r.families.map((f) => f.phase).filter((p) => !(PHASES as readonly string[]).includes(p)))];
  console.log(`${head}: ${r.policy} policy, ${r.microBatches} micro-batch(es) of ${r.tokens} tokens; ${unit} per step, mean of ${r.steps} step(s); MoE expert GEMMs: ${r.expertGemms.join(', ') || '-'}`);
  console.log(`| family | ${phases.map((p) => `${p} ms`).join(' | ')} | total ms | % of step | TFLOP/s | GB/s |`);
  console.log(`| --- | ${phases.map(() => '---:').join(' | ')} | ---: | ---: | ---: | ---: |`);
  const f2 = (v: number | null, d: number): string => (v === null ? '-' : v >= 10 ** d || v === 0 ? v.toFixed(d) : v.toPrecision(3));
  for (const name of names) {
    const fs = byFam.get(name)!;
    const ms = fs.reduce((a, f) => a + f.ms, 0), flops = fs.reduce((a, f) => a + f.flops, 0), bytes = fs.reduce((a, f) => a + f.bytes, 0);
    const cells = phases.map((p) => {
      const f = fs.find((x) => x.phase === p);
      return f ? f.ms.toFixed(2) : '';
    });
    const tf = flops > 0 && ms > 0 ? flops / (ms / 1000) / 1e12 : null, gb = bytes > 0 && ms > 0 ? bytes / (ms / 1000) / 1e9 : null;
    console.log(`| ${name} | ${cells.join(' | ')} | ${ms.toFixed(2)} | ${r.stepGpuMs > 0 ? ((100 * ms) / r.stepGpuMs).toFixed(1) : '-'}% | ${f2(tf, 1)} | ${f2(gb, 0)} |`);
  }
  const phaseMs = phases.map((p) => r.families.filter((f) => f.phase === p).reduce((a, f) => a + f.ms, 0).toFixed(2));
  console.log(`| **total** | ${phaseMs.join(' | ')} | ${r.stepGpuMs.toFixed(2)} | 100% | | |`);
  console.log(
    `host: ${r.stepHostMs.toFixed(1)} ms per profiled step (spins and marks included), ${r.launchesPerStep.toFixed(0)} kernel launches, ${r.opCallsPerStep.toFixed(0)} op calls` +
      (cpu ? '' : `; spin ${r.spinGpuMs.toFixed(1)} GPU ms, GPU idle after host syncs ${r.hostSyncGpuMs.toFixed(2)} ms; smallest host lead ${f2(r.minLeadMs, 2)} ms`),
  );
  if (!cpu) {
    if (!r.hostAhead) console.log(`warning: the host fell behind the GPU at ${r.lateMarks} mark(s): those families' GPU times include host gaps; raise --spin-ms`);
    else console.log('the host stayed ahead of the GPU at every mark: the times are pure GPU time');
    const bad = new Map<string, number>();
    for (const s of r.syncs) bad.set(`${s.op} (${s.phase})`, Math.max(bad.get(`${s.op} (${s.phase})`) ?? 0, s.hostMs));
    console.log(`host synchronisations inside the step (a fresh spin after each): ${bad.size ? [...bad].map(([op, ms]) => `${op} up to ${ms.toFixed(2)} ms`).join(', ') : 'none'}`);
  }
}

export interface TrainProfileArgs {
  cfg: GptOssConfig;
  presetName: string;
  device: string;
  worldSize: number;
  rank: number;
  tokensList: number[];
  microBatches: number;
  steps: number;
  recompute: boolean;
  jsonPath: string;
  spinMs: number;
  syncMs: number;
  /** --lm-head-chunk (null: the default, lmHeadChunk(T, V) of src/ops/logprob.ts). */
  lmHeadChunk: number | null;
  /** Recompute with the attention kept (the default; false with --no-keep-attention or --no-recompute). */
  keepAttention: boolean;
  /** Builds a fresh policy of a kind. */
  makePolicy(kind: ProfileRow['policy']): Policy;
  /** One optimizer step; onPhase is called with 'forward' / 'backward' / 'optimizer' before each part. */
  step(p: Policy, T: number, stepNo: number, onPhase: (phase: string) => void): Promise<unknown>;
}

export async function runTrainProfile(o: TrainProfileArgs): Promise<void> {
  const cpu = o.device === 'cpu';
  const { prof, expertGemms } = trainProfiler(o.device, o.spinMs, o.syncMs);
  const rows: ProfileRow[] = [];
  const kinds: ProfileRow['policy'][] = o.worldSize === 1 ? ['single', 'sharded'] : ['sharded'];
  for (const T of o.tokensList) {
    for (const kind of kinds) {
      const p = o.makePolicy(kind);
      try {
        await o.step(p, T, 1, () => {}); // warm-up (allocator, cuBLAS plans), not profiled
        const regions: RegionProfile[] = [];
        expertGemms.clear();
        for (let s = 0; s < o.steps; s++) {
          prof.begin();
          try {
            await o.step(p, T, s + 2, (ph) => void (prof.phase = ph));
          } finally {
            prof.phase = '';
            regions.push(prof.end());
          }
        }
        rows.push(profileRow(kind, T, o.microBatches, regions, [...expertGemms]));
      } finally {
        p.dispose();
      }
    }
  }
  if (o.rank !== 0) return;
  const dev = cpu ? 'cpu' : native().ops.deviceName(Number(o.device.split(':')[1] ?? 0));
  const head = `train-step profile: ${o.presetName} with ${o.cfg.numLayers} layers on ${dev}, recompute ${o.recompute ? (o.keepAttention ? 'on (attention kept)' : 'on') : 'off'}, ${o.worldSize} rank(s)`;
  for (const r of rows) printProfile(r, head, cpu);
  if (o.jsonPath) {
    writeFileSync(
      o.jsonPath,
      JSON.stringify({ bench: 'train-step --profile', preset: o.presetName, layers: o.cfg.numLayers, device: o.device, deviceName: dev, worldSize: o.worldSize, recompute: o.recompute, keepAttention: o.keepAttention, lmHeadChunk: o.lmHeadChunk, spinMs: o.spinMs, syncMs: cpu ? null : o.syncMs, rows }, null, 2) + '\n',
    );
  }
}
