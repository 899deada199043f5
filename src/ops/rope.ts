// rope.ts: rotary position embedding as GPT-OSS uses it, with YaRN frequency scaling.
//
// NeoX half split: for a head vector x of D values, x1 = x[:D/2], x2 = x[D/2:], and per frequency j:
//   angle = fp32(pos * invFreq[j]), c = cos(angle) * s, sn = sin(angle) * s   (fp32; s = attentionScaling)
//   y1 = x1 * c - x2 * sn,  y2 = x2 * c + x1 * sn
// The backward is the rotation by -angle (the transpose), with the same scaling.
import { native, type FloatDType } from '../native.ts';
import { Tensor } from '../tensor.ts';
import { linearForward } from './gemm.ts';

export interface YarnConfig {
  /** D, the rotated head dimension (64 for gpt-oss) */
  headDim: number;
  /** rope_theta (150000) */
  ropeTheta: number;
  /** rope_scaling.factor (32); <= 1 means plain RoPE */
  factor: number;
  /** rope_scaling.beta_fast (32) */
  betaFast: number;
  /** rope_scaling.beta_slow (1) */
  betaSlow: number;
  /** rope_scaling.original_max_position_embeddings (4096) */
  originalMaxPositions: number;
  /** rope_scaling.truncate (false for gpt-oss: the correction range is not rounded) */
  truncate: boolean;
  /** rope_scaling.attention_factor, when a config gives one (otherwise 0.1 ln(factor) + 1) */
  attentionFactor?: number;
}

export interface YarnTable {
  /** [D/2] inverse frequencies, fp32 */
  invFreq: Float32Array;
  /** multiplies cos and sin (YaRN's mscale) */
  attentionScaling: number;
}

/** The frequency index (possibly fractional) whose wavelength fits `rotations` times in the original context. */
function correctionDim(rotations: number, dim: number, base: number, maxPos: number): number {
  return (dim * Math.log(maxPos / (rotations * 2 * Math.PI))) / (2 * Math.log(base));
}

/**
 * YaRN's correction range [low, high] in frequency-index units (gpt-oss-20b: low ~ 8.09, high ~ 17.40): below
 * low the original (extrapolated) frequencies are kept, above high they are divided by the factor
 * (interpolated), linear in between.
 */
export function yarnCorrectionRange(cfg: YarnConfig): { low: number; high: number } {
  const { headDim: dim, ropeTheta: base, betaFast, betaSlow, originalMaxPositions: maxPos } = cfg;
  let low = correctionDim(betaFast, dim, base, maxPos);
  let high = correctionDim(betaSlow, dim, base, maxPos);
  if (cfg.truncate) {
    low = Math.floor(low);
    high = Math.ceil(high);
  }
  return { low: Math.max(low, 0), high: Math.min(high, dim - 1) };
}

/**
 * The inverse-frequency table and attention scaling, as transformers' `_compute_yarn_parameters` computes them
 * (fp32 steps emulated with Math.fround, so the table matches torch's to the last bit or so).
 */
export function yarnInvFreq(cfg: YarnConfig): YarnTable {
  const { headDim: dim, ropeTheta: base, factor } = cfg;
  if (!Number.isInteger(dim) || dim <= 0 || dim % 2 !== 0) throw new Error(`yarnInvFreq: headDim must be a positive even integer, got ${dim}`);
  if (!(base > 1)) throw new Error(`yarnInvFreq: ropeTheta must be > 1, got ${base}`);
  if (!(factor > 0)) throw new Error(`yarnInvFreq: factor must be > 0, got ${factor}`);
  const fr = Math.fround;
  const half = dim / 2;
  const invFreq = new Float32Array(half);
  const attentionScaling = cfg.attentionFactor ?? (factor <= 1 ? 1 : 0.1 * Math.log(factor) + 1);
  if (factor <= 1) {
    for (let j = 0; j < half; j++) invFreq[j] = fr(1 / fr(Math.pow(base, fr((2 * j) / dim))));
    return { invFreq, attentionScaling };
  }
  const { low, high: high0 } = yarnCorrectionRange(cfg);
  const high = low === high0 ? high0 + 0.001 : high0;
  const lowF = fr(low), spanF = fr(high - low);
  for (let j = 0; j < half; j++) {
    const posFreq = fr(Math.pow(base, fr((2 * j) / dim)));
    const extrapolated = fr(1 / posFreq);
    const interpolated = fr(1 / fr(factor * posFreq));
    const ramp = Math.min(1, Math.max(0, fr(fr(j - lowF) / spanF)));
    const extraWeight = fr(1 - ramp);
    invFreq[j] = fr(fr(interpolated * fr(1 - extraWeight)) + fr(extrapolated * extraWeight));
  }
  return { invFreq, attentionScaling };
}

/**
 * The YaRN config from a Hugging Face gpt-oss config.json (rope_theta, head_dim, rope_scaling{...}).
 * A missing rope_scaling gives plain RoPE (factor 1).
 */
export function yarnConfigFromHf(config: {
  head_dim?: number;
  hidden_size?: number;
  num_attention_heads?: number;
  rope_theta?: number;
  rope_scaling?: {
    factor?: number;
    beta_fast?: number;
    beta_slow?: number;
    original_max_position_embeddings?: number;
    truncate?: boolean;
    attention_factor?: number;
    rope_theta?: number;
  } | null;
}): YarnConfig {
  const rs = config.rope_scaling ?? {};
  const headDim = config.head_dim ?? (config.hidden_size ?? 0) / (config.num_attention_heads ?? 1);
  const ropeTheta = config.rope_theta ?? rs.rope_theta ?? 10000;
  const out: YarnConfig = {
    headDim,
    ropeTheta,
    factor: rs.factor ?? 1,
    betaFast: rs.beta_fast ?? 32,
    betaSlow: rs.beta_slow ?? 1,
    originalMaxPositions: rs.original_max_position_embeddings ?? 4096,
    truncate: rs.truncate ?? true,
  };
  if (rs.attention_factor !== undefined) out.attentionFactor = rs.attention_factor;
  return out;
}

/** The inverse-frequency table as an f32 [D/2] tensor on `device`, with the attention scaling. */
export function yarnInvFreqTensor(cfg: YarnConfig, device: string): { invFreq: Tensor; attentionScaling: number } {
  const t = yarnInvFreq(cfg);
  return { invFreq: Tensor.from(t.invFreq, [t.invFreq.length], { dtype: 'f32', device }), attentionScaling: t.attentionScaling };
}

/**
 * @param x bf16 (or f32) [T, nHeads, D]
 * @param positions i32 [T]
 * @param invFreq f32 [D/2] tensor (yarnInvFreqTensor)
 * @returns x's dtype [T, nHeads, D]
 */
export function ropeForward(x: Tensor, positions: Tensor, invFreq: Tensor, attentionScaling: number): Tensor {
  return new Tensor(native().ops.ropeForward(x.native, positions.native, invFreq.native, attentionScaling));
}

/**
 * @param dy bf16|f32 [T, nHeads, D]
 * @returns f32 [T, nHeads, D]
 */
export function ropeBackward(dy: Tensor, positions: Tensor, invFreq: Tensor, attentionScaling: number): Tensor {
  return new Tensor(native().ops.ropeBackward(dy.native, positions.native, invFreq.native, attentionScaling));
}

/** Where ropeQkvSplit also writes the k and v rows: a KV cache's flat pools and the rows' slots. */
export interface RopeCacheWrite {
  /** [M, Hkv, D] in qkv's dtype: the key pool viewed as rows. */
  k: Tensor;
  /** [M, Hkv, D]: the value pool. */
  v: Tensor;
  /** i32 [T]: each token's row in the pools (-1 skips a token, e.g. a padding row). */
  slots: Tensor;
}

/**
 * The forward rope over the fused q/k/v projection output (one GEMM with Wq, Wk, Wv stacked as rows).
 * @param qkv bf16|f32 [T, (Hq + 2·Hkv)·D]: per token the Hq query heads, then Hkv key heads, then Hkv value heads
 * @param cache when given, the rotated k and the v rows also go to cache.k / cache.v at cache.slots, exactly as
 *   scatterRows(cache.k, k, slots) and scatterRows(cache.v, v, slots) would write them; on CUDA in the same
 *   launch (a decode step's rope and KV-cache write in one)
 * @returns q [T, Hq, D] and k [T, Hkv, D] rotated as ropeForward does (same values), v [T, Hkv, D] copied; all
 *   contiguous, in qkv's dtype
 */
export function ropeQkvSplit(
  qkv: Tensor,
  positions: Tensor,
  invFreq: Tensor,
  attentionScaling: number,
  numHeads: number,
  numKvHeads: number,
  cache?: RopeCacheWrite,
): { q: Tensor; k: Tensor; v: Tensor } {
  const r = native().ops.ropeQkvSplit(
    qkv.native,
    positions.native,
    invFreq.native,
    attentionScaling,
    numHeads,
    numKvHeads,
    cache?.k.native,
    cache?.v.native,
    cache?.slots.native,
  );
  return { q: new Tensor(r.q), k: new Tensor(r.k), v: new Tensor(r.v) };
}

/**
 * The fused q/k/v projection and its rope split: ropeQkvSplit(linearForward(x, w, b), ...), bf16. On CUDA at decode
 * sizes (x bf16 with at most 8 rows, 16-byte aligned) one kernel does both, the KV-cache write included
 * (native/cuda/gemv.cu: the linear's sums and bf16 rounding, then the rope's arithmetic, so the same bits as the two
 * ops); elsewhere (the CPU, prefill chunks, training) the two ops run as they are.
 * @param x bf16 [T, H] (the input norm's output)
 * @param w [(Hq + 2·Hkv)·D, H]: Wq, Wk, Wv stacked as rows; b [(Hq + 2·Hkv)·D] or undefined
 * @returns q [T, Hq, D], k [T, Hkv, D] rotated, v [T, Hkv, D], as ropeQkvSplit returns them
 */
export function ropeQkvProject(
  x: Tensor,
  w: Tensor,
  b: Tensor | undefined,
  positions: Tensor,
  invFreq: Tensor,
  attentionScaling: number,
  numHeads: number,
  numKvHeads: number,
  cache?: RopeCacheWrite,
): { q: Tensor; k: Tensor; v: Tensor } {
  const r = native().ops.ropeQkvProject(
    x.native,
    w.native,
    b?.native,
    positions.native,
    invFreq.native,
    attentionScaling,
    numHeads,
    numKvHeads,
    cache?.k.native,
    cache?.v.native,
    cache?.slots.native,
  );
  if (r) return { q: new Tensor(r.q), k: new Tensor(r.k), v: new Tensor(r.v) };
  const qkv = linearForward(x, w, b);
  try {
    return ropeQkvSplit(qkv, positions, invFreq, attentionScaling, numHeads, numKvHeads, cache);
  } finally {
    qkv.dispose();
  }
}

/**
 * The backward of ropeQkvSplit: the gradient of the fused projection output.
 * @param dq [T, Hq, D], dk [T, Hkv, D], dv [T, Hkv, D], one float dtype
 * @returns dqkv `outDtype` [T, (Hq + 2·Hkv)·D]: dq and dk rotated back as ropeBackward does, dv copied
 */
export function ropeQkvPack(dq: Tensor, dk: Tensor, dv: Tensor, positions: Tensor, invFreq: Tensor, attentionScaling: number, outDtype: FloatDType): Tensor {
  return new Tensor(native().ops.ropeQkvPack(dq.native, dk.native, dv.native, positions.native, invFreq.native, attentionScaling, outDtype));
}
