// attention-ref.ts: float64 reference of attention with sinks and fixture loading, shared by the CPU and GPU
// attention tests.
import { Tensor } from '../../src/tensor.ts';
import { SafetensorsFile } from '../../src/model/safetensors.ts';
import type { AttentionForwardResult, AttentionBackwardResult } from '../../src/ops/attention.ts';
import { fixturePath } from './fixtures.ts';

export interface RefShape {
  T: number;
  Hq: number;
  Hkv: number;
  D: number;
  cu: number[]; // [nSeq+1]
  used?: number[]; // [nSeq]
  window: number;
  sinks?: ArrayLike<number>;
  scale: number;
}

/** attentionForward/attentionBackward options for a RefShape on `device` (sinks as f32, when given and wanted). */
export function attnOptions(s: RefShape, device: string, withSinks = true) {
  const cuSeqlens = Tensor.from(Int32Array.from(s.cu), [s.cu.length], { device });
  const maxSeqlen = Math.max(1, ...s.cu.slice(1).map((c, i) => c - s.cu[i]!));
  return {
    cuSeqlens,
    maxSeqlen,
    window: s.window,
    scale: s.scale,
    ...(withSinks && s.sinks ? { sinks: Tensor.from(Float32Array.from(s.sinks), [s.Hq], { device, dtype: 'f32' as const }) } : {}),
    ...(s.used ? { seqUsed: Tensor.from(Int32Array.from(s.used), [s.used.length], { device }) } : {}),
  };
}

/** Host copies of what attentionForward and attentionBackward returned. */
export function hostResults(fw: AttentionForwardResult, bw: AttentionBackwardResult) {
  return {
    out: fw.out.toFloat32(),
    lse: fw.lse.toFloat32(),
    dq: bw.dq.toFloat32(),
    dk: bw.dk.toFloat32(),
    dv: bw.dv.toFloat32(),
    dsinks: bw.dsinks?.toFloat32(),
  };
}

/** Token-major q [T,Hq,D], k/v [T,Hkv,D]; returns out [T,Hq,D] and lse [Hq,T] in float64. */
export function refForward(
  s: RefShape,
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
): { out: Float64Array; lse: Float64Array } {
  const { T, Hq, Hkv, D, cu, window, scale } = s;
  const G = Hq / Hkv;
  const out = new Float64Array(T * Hq * D);
  const lse = new Float64Array(Hq * T);
  for (let sq = 0; sq + 1 < cu.length; sq++) {
    const st = cu[sq]!;
    const len = cu[sq + 1]! - st;
    const used = Math.min(len, s.used ? s.used[sq]! : len);
    for (let i = 0; i < used; i++) {
      const t = st + i;
      for (let h = 0; h < Hq; h++) {
        const kvh = Math.floor(h / G);
        const lo = window > 0 ? Math.max(0, i - window + 1) : 0;
        const sc: number[] = [];
        let mx = s.sinks ? s.sinks[h]! : -Infinity;
        for (let j = lo; j <= i; j++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += q[(t * Hq + h) * D + d]! * k[((st + j) * Hkv + kvh) * D + d]!;
          sc.push(dot * scale);
          mx = Math.max(mx, dot * scale);
        }
        let sum = s.sinks ? Math.exp(s.sinks[h]! - mx) : 0;
        const acc = new Float64Array(D);
        for (let j = lo; j <= i; j++) {
          const p = Math.exp(sc[j - lo]! - mx);
          sum += p;
          for (let d = 0; d < D; d++) acc[d]! += p * v[((st + j) * Hkv + kvh) * D + d]!;
        }
        for (let d = 0; d < D; d++) out[(t * Hq + h) * D + d] = acc[d]! / sum;
        lse[h * T + t] = mx + Math.log(sum);
      }
    }
  }
  return { out, lse };
}

export interface AttnFixture {
  B: number;
  S: number;
  Hq: number;
  Hkv: number;
  D: number;
  window: number;
  // token-major (T = B*S)
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  dout: Float32Array;
  out: Float32Array;
  dq: Float32Array;
  dk: Float32Array;
  dv: Float32Array;
  lse: Float32Array; // [Hq, T]
  sinks: Float32Array;
  dsinks: Float32Array;
}

// [B, H, S, D] -> [B*S, H, D]
function toTokenMajor(a: Float32Array, B: number, H: number, S: number, D: number): Float32Array {
  const r = new Float32Array(a.length);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++)
      for (let s = 0; s < S; s++)
        for (let d = 0; d < D; d++) r[((b * S + s) * H + h) * D + d] = a[((b * H + h) * S + s) * D + d]!;
  return r;
}

export function loadAttnFixture(kind: 'full' | 'sliding'): AttnFixture {
  const f = SafetensorsFile.open(fixturePath(`attention-gptoss-tiny-${kind}.safetensors`));
  const m = new Map<string, { shape: number[]; data: Float32Array | Int32Array }>();
  try {
    for (const [name, t] of f.tensors) {
      if (t.dtype !== 'I32' && t.dtype !== 'F32') throw new Error(`fixture ${kind}: ${name} is ${t.dtype}, expected F32 or I32`);
      const bytes = new Uint8Array(f.readBytes(name)).buffer; // a copy: aligned, owned
      m.set(name, { shape: t.shape, data: t.dtype === 'I32' ? new Int32Array(bytes) : new Float32Array(bytes) });
    }
  } finally {
    f.close();
  }
  const g = (n: string): Float32Array => {
    const t = m.get(n);
    if (!t) throw new Error(`fixture ${kind}: missing ${n}`);
    return t.data as Float32Array;
  };
  const [B, Hq, S, D] = m.get('q')!.shape as [number, number, number, number];
  const Hkv = m.get('k')!.shape[1]!;
  const lse4 = g('lse');
  const lse = new Float32Array(Hq * B * S);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < Hq; h++) for (let s = 0; s < S; s++) lse[h * B * S + b * S + s] = lse4[(b * Hq + h) * S + s]!;
  return {
    B,
    S,
    Hq,
    Hkv,
    D,
    window: (m.get('window')!.data as Int32Array)[0]!,
    q: toTokenMajor(g('q'), B, Hq, S, D),
    k: toTokenMajor(g('k'), B, Hkv, S, D),
    v: toTokenMajor(g('v'), B, Hkv, S, D),
    dout: toTokenMajor(g('dout'), B, Hq, S, D),
    out: toTokenMajor(g('out'), B, Hq, S, D),
    dq: toTokenMajor(g('dq'), B, Hq, S, D),
    dk: toTokenMajor(g('dk'), B, Hkv, S, D),
    dv: toTokenMajor(g('dv'), B, Hkv, S, D),
    lse,
    sinks: g('sinks'),
    dsinks: g('dsinks'),
  };
}

const rbBuf = new Float32Array(1);
const rbU = new Uint32Array(rbBuf.buffer);
/** Round one value through bf16. */
export function rb(x: number): number {
  rbBuf[0] = x;
  const v = rbU[0]!;
  if ((v & 0x7fffffff) > 0x7f800000) return x;
  rbU[0] = ((v + 0x7fff + ((v >>> 16) & 1)) >>> 16) << 16;
  return rbBuf[0]!;
}

/**
 * A "plain BF16" implementation (what eager PyTorch in bf16 does): every matmul output rounded to bf16, softmax
 * in fp32 with P rounded to bf16, gradients through the same roundings. Its error against the fp32 truth sets
 * the FlashAttention-style bound for the kernels. Inputs should already be bf16-representable.
 */
export function plainBf16(
  s: RefShape,
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  dout: ArrayLike<number>,
): { out: Float32Array; dq: Float32Array; dk: Float32Array; dv: Float32Array; dsinks: Float32Array } {
  const { T, Hq, Hkv, D, cu, window, scale } = s;
  const G = Hq / Hkv;
  const out = new Float32Array(T * Hq * D);
  const dq = new Float32Array(T * Hq * D);
  const dkA = new Float64Array(T * Hkv * D);
  const dvA = new Float64Array(T * Hkv * D);
  const dsinks = new Float32Array(Hq);
  for (let sq = 0; sq + 1 < cu.length; sq++) {
    const st = cu[sq]!;
    const len = cu[sq + 1]! - st;
    const used = Math.min(len, s.used ? s.used[sq]! : len);
    for (let h = 0; h < Hq; h++) {
      const kvh = Math.floor(h / G);
      for (let i = 0; i < used; i++) {
        const t = st + i;
        const lo = window > 0 ? Math.max(0, i - window + 1) : 0;
        const n = i - lo + 1;
        const sc = new Float32Array(n);
        let mx = s.sinks ? rb(s.sinks[h]!) : -Infinity;
        for (let j = lo; j <= i; j++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += q[(t * Hq + h) * D + d]! * k[((st + j) * Hkv + kvh) * D + d]!;
          sc[j - lo] = rb(rb(dot) * scale);
          mx = Math.max(mx, sc[j - lo]!);
        }
        let sum = s.sinks ? Math.exp(rb(s.sinks[h]!) - mx) : 0;
        for (let j = 0; j < n; j++) sum += Math.exp(sc[j]! - mx);
        const pf = new Float32Array(n); // fp32 softmax
        const pb = new Float32Array(n); // bf16 P
        for (let j = 0; j < n; j++) {
          pf[j] = Math.exp(sc[j]! - mx) / sum;
          pb[j] = rb(pf[j]!);
        }
        const psink = s.sinks ? Math.exp(rb(s.sinks[h]!) - mx) / sum : 0;
        for (let d = 0; d < D; d++) {
          let acc = 0;
          for (let j = lo; j <= i; j++) acc += pb[j - lo]! * v[((st + j) * Hkv + kvh) * D + d]!;
          out[(t * Hq + h) * D + d] = rb(acc);
        }
        // backward
        const dp = new Float32Array(n);
        for (let j = lo; j <= i; j++) {
          let acc = 0;
          for (let d = 0; d < D; d++) acc += dout[(t * Hq + h) * D + d]! * v[((st + j) * Hkv + kvh) * D + d]!;
          dp[j - lo] = rb(acc);
        }
        let dot = 0; // sum over the softmax outputs (sink's dP is 0)
        for (let j = 0; j < n; j++) dot += dp[j]! * pf[j]!;
        const dsc = new Float32Array(n);
        for (let j = 0; j < n; j++) dsc[j] = rb(rb(pf[j]! * (dp[j]! - dot)) * scale);
        dsinks[h]! += rb(psink * (0 - dot));
        for (let d = 0; d < D; d++) {
          let acc = 0;
          for (let j = lo; j <= i; j++) acc += dsc[j - lo]! * k[((st + j) * Hkv + kvh) * D + d]!;
          dq[(t * Hq + h) * D + d] = rb(acc);
        }
        for (let j = lo; j <= i; j++) {
          for (let d = 0; d < D; d++) {
            dkA[((st + j) * Hkv + kvh) * D + d]! += dsc[j - lo]! * q[(t * Hq + h) * D + d]!;
            dvA[((st + j) * Hkv + kvh) * D + d]! += pb[j - lo]! * dout[(t * Hq + h) * D + d]!;
          }
        }
      }
    }
  }
  return { out, dq, dk: Float32Array.from(dkA, rb), dv: Float32Array.from(dvA, rb), dsinks };
}
