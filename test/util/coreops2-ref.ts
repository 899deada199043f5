// Shared helpers of the coreops2 tests (gemm, logprob, sampling, optim): a seeded generator and float64 references.
import { roundBf16 } from '../../src/tensor.ts';

/** mulberry32: small seeded uniform generator in [0, 1). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** n values uniform in [-scale, scale), optionally rounded through bf16 (so a bf16 tensor holds them exactly). */
export function randn(n: number, seed: number, scale = 1, bf16 = false): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (r() * 2 - 1) * scale;
  return bf16 ? roundBf16(out) : out;
}

/** Row-major float64 product of op(a) [M,K] and op(b) [K,N]; also Σ|a||b| per entry for error bounds. */
export function refMatmul(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  M: number,
  N: number,
  K: number,
  transA: boolean,
  transB: boolean,
): { c: Float64Array; mag: Float64Array } {
  const c = new Float64Array(M * N);
  const mag = new Float64Array(M * N);
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let s = 0;
      let m = 0;
      for (let k = 0; k < K; k++) {
        const av = transA ? a[k * M + i]! : a[i * K + k]!;
        const bv = transB ? b[j * K + k]! : b[k * N + j]!;
        s += av * bv;
        m += Math.abs(av * bv);
      }
      c[i * N + j] = s;
      mag[i * N + j] = m;
    }
  }
  return { c, mag };
}

/** Max of |got - want| / (atol + rtol |want|) over all entries (<= 1 passes). */
export function maxErrRatio(got: ArrayLike<number>, want: ArrayLike<number>, atol: number, rtol: number): number {
  let worst = 0;
  for (let i = 0; i < want.length; i++) {
    const g = got[i]!;
    const w = want[i]!;
    const r = Number.isNaN(g) !== Number.isNaN(w) ? Infinity : Number.isNaN(g) ? 0 : Math.abs(g - w) / (atol + rtol * Math.abs(w));
    if (r > worst) worst = r;
  }
  return worst;
}

export function assertClose(got: ArrayLike<number>, want: ArrayLike<number>, atol: number, rtol: number, what: string): void {
  if (got.length !== want.length) throw new Error(`${what}: length ${got.length} != ${want.length}`);
  const r = maxErrRatio(got, want, atol, rtol);
  if (!(r <= 1)) {
    let at = 0;
    let worst = -1;
    for (let i = 0; i < want.length; i++) {
      const e = Math.abs(got[i]! - want[i]!) / (atol + rtol * Math.abs(want[i]!));
      if (!(e <= worst)) (worst = e), (at = i);
    }
    throw new Error(`${what}: error ratio ${r.toFixed(3)} at [${at}]: got ${got[at]}, want ${want[at]} (atol ${atol}, rtol ${rtol})`);
  }
}

/** Float64 log-softmax statistics of z = (h · Wᵀ) / temperature, per row. */
export function refLogprobs(
  h: ArrayLike<number>,
  w: ArrayLike<number>,
  targets: ArrayLike<number>,
  T: number,
  H: number,
  V: number,
  temperature: number,
): { logprobs: Float64Array; entropy: Float64Array; lse: Float64Array; z: Float64Array } {
  const z = new Float64Array(T * V);
  const logprobs = new Float64Array(T);
  const entropy = new Float64Array(T);
  const lse = new Float64Array(T);
  for (let t = 0; t < T; t++) {
    let mx = -Infinity;
    for (let v = 0; v < V; v++) {
      let s = 0;
      for (let k = 0; k < H; k++) s += h[t * H + k]! * w[v * H + k]!;
      z[t * V + v] = s / temperature;
      mx = Math.max(mx, z[t * V + v]!);
    }
    let se = 0;
    for (let v = 0; v < V; v++) se += Math.exp(z[t * V + v]! - mx);
    lse[t] = mx + Math.log(se);
    let ez = 0;
    for (let v = 0; v < V; v++) ez += Math.exp(z[t * V + v]! - lse[t]!) * z[t * V + v]!;
    entropy[t] = lse[t]! - ez;
    const tg = targets[t]!;
    logprobs[t] = tg < 0 ? 0 : z[t * V + tg]! - lse[t]!;
  }
  return { logprobs, entropy, lse, z };
}
