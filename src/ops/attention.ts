// attention.ts: attention with sinks (GPT-OSS), forward / backward over packed variable-length sequences, and
// decode against a KV cache. Native kernels: native/cpu/attention.cc (fp32 reference), native/cuda/attention_*.cu.
//
// Layout is token-major and packed: q [T, Hq, D], k/v [T, Hkv, D]; sequence s owns tokens
// cuSeqlens[s]..cuSeqlens[s+1]-1 and is causal within itself (packing costs nothing: no cross-sequence keys).
// Query head h reads kv head h / (Hq/Hkv) (GQA, any ratio). window W > 0: query i sees keys i-W+1..i.
// A sink is one extra logit per query head in the softmax, with no value:
//   O_i = sum_j e^{s_ij} v_j / (sum_j e^{s_ij} + e^{sink_h}),  s_ij = scale * q_i.k_j
// lse [Hq, T] is log of that denominator (sink included), saved for the backward.
import { native } from '../native.ts';
import { Tensor } from '../tensor.ts';

export interface AttentionOptions {
  /** i32 [nSeq+1]: sequence boundaries over the T tokens (on the tensors' device). */
  cuSeqlens: Tensor;
  /** Longest sequence (cuSeqlens[s+1]-cuSeqlens[s]); sizes the CUDA grid. */
  maxSeqlen: number;
  /** 0 or undefined = full causal; W: query i sees keys i-W+1..i. */
  window?: number;
  /** f32 or bf16 [Hq]: one sink logit per query head. Absent = plain softmax attention. */
  sinks?: Tensor;
  /** Score scale, default 1/sqrt(D). */
  scale?: number;
  /**
   * i32 [nSeq]: padding. Only the first seqUsed[s] tokens of sequence s are real; the rest get zero output,
   * lse 0 and zero gradients (see paddedCuSeqlens).
   */
  seqUsed?: Tensor;
}

export interface AttentionBackwardOptions extends AttentionOptions {
  /** dtype of dq/dk/dv: 'bf16' (default) or 'f32'. */
  gradDtype?: 'bf16' | 'f32';
  /**
   * Bitwise reproducible gradients. This op defaults to true when the option is absent; the model
   * (`ModelOptions.deterministic`) and the trainer (`trainer.deterministic`) default to false and pass it
   * explicitly. true: the CUDA backward uses no atomics (a dk/dv kernel per key block and a dq kernel per query
   * block that recomputes S and dP). false (CUDA, head_dim 64): dq is accumulated with fp32 atomics inside the
   * dk/dv kernel (two fewer GEMMs; dq's summation order varies; faster, see docs/attention.md for the measured
   * difference). dk/dv/dsinks stay bitwise reproducible either way. The CPU backend is always deterministic.
   */
  deterministic?: boolean;
}

export interface AttentionForwardResult {
  /** [T, Hq, D], q's dtype (bf16 on CUDA). */
  out: Tensor;
  /** f32 [Hq, T], log-sum-exp over the allowed scores and the sink. */
  lse: Tensor;
}

export interface AttentionBackwardResult {
  dq: Tensor;
  dk: Tensor;
  dv: Tensor;
  /** f32 [Hq]; present when sinks were given. */
  dsinks?: Tensor;
}

/** The score scale of every attention op: `scale` when given, else 1/sqrt(D) (q [.., .., D]). */
export function attentionScale(q: Tensor, scale: number | undefined): number {
  return scale ?? 1 / Math.sqrt(q.shape[2] ?? 1);
}

/** Forward. q bf16 [T,Hq,D] (f32 accepted on the CPU), k/v [T,Hkv,D]. */
export function attentionForward(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions): AttentionForwardResult {
  const r = native().ops.attentionForward(
    q.native,
    k.native,
    v.native,
    opts.cuSeqlens.native,
    opts.seqUsed?.native ?? null,
    opts.sinks?.native ?? null,
    opts.maxSeqlen,
    opts.window ?? 0,
    attentionScale(q, opts.scale),
  );
  return { out: new Tensor(r.out), lse: new Tensor(r.lse) };
}

/** Backward from dOut [T,Hq,D] and the forward's out and lse; recomputes the probabilities from lse. */
export function attentionBackward(
  dOut: Tensor,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  out: Tensor,
  lse: Tensor,
  opts: AttentionBackwardOptions,
): AttentionBackwardResult {
  const r = native().ops.attentionBackward(
    dOut.native,
    q.native,
    k.native,
    v.native,
    out.native,
    lse.native,
    opts.cuSeqlens.native,
    opts.seqUsed?.native ?? null,
    opts.sinks?.native ?? null,
    opts.maxSeqlen,
    opts.window ?? 0,
    attentionScale(q, opts.scale),
    opts.gradDtype ?? 'bf16',
    opts.deterministic ?? true,
  );
  const res: AttentionBackwardResult = { dq: new Tensor(r.dq), dk: new Tensor(r.dk), dv: new Tensor(r.dv) };
  if (r.dsinks) res.dsinks = new Tensor(r.dsinks);
  return res;
}

export interface AttentionDecodeOptions {
  /** i32 [B]: valid cache entries per sequence including the new token (its position is seqLens[b]-1). */
  seqLens: Tensor;
  window?: number;
  sinks?: Tensor;
  scale?: number;
}

/**
 * One new query token per sequence against a KV cache: q [B, Hq, D], kCache/vCache [B, Smax, Hkv, D] (the new
 * token's k/v already written at seqLens[b]-1). Returns [B, Hq, D]. On CUDA: split-K flash-decoding plus a
 * combine kernel.
 */
export function attentionDecode(q: Tensor, kCache: Tensor, vCache: Tensor, opts: AttentionDecodeOptions): Tensor {
  return new Tensor(
    native().ops.attentionDecode(
      q.native,
      kCache.native,
      vCache.native,
      opts.seqLens.native,
      opts.sinks?.native ?? null,
      opts.window ?? 0,
      attentionScale(q, opts.scale),
    ),
  );
}

/**
 * A padded batch [B, S] as packed sequences: cuSeqlens = [0, S, 2S, ..., B*S] and seqUsed = lengths, so row b's
 * tokens past lengths[b] are padding (zero output and gradients).
 */
export function paddedCuSeqlens(
  lengths: readonly number[],
  S: number,
  device: string,
): { cuSeqlens: Tensor; seqUsed: Tensor; maxSeqlen: number } {
  for (const [i, l] of lengths.entries()) {
    if (!Number.isInteger(l) || l < 0 || l > S) throw new Error(`paddedCuSeqlens: lengths[${i}] = ${l} outside [0, ${S}]`);
  }
  const cu = new Int32Array(lengths.length + 1);
  for (let b = 0; b <= lengths.length; b++) cu[b] = b * S;
  return {
    cuSeqlens: Tensor.from(cu, [cu.length], { device }),
    seqUsed: Tensor.from(Int32Array.from(lengths), [lengths.length], { device }),
    maxSeqlen: Math.max(1, S),
  };
}

/** cuSeqlens for packed sequences of the given lengths. */
export function packedCuSeqlens(lengths: readonly number[], device: string): { cuSeqlens: Tensor; maxSeqlen: number } {
  const cu = new Int32Array(lengths.length + 1);
  for (let i = 0; i < lengths.length; i++) cu[i + 1] = cu[i]! + lengths[i]!;
  return { cuSeqlens: Tensor.from(cu, [cu.length], { device }), maxSeqlen: Math.max(1, ...lengths) };
}
