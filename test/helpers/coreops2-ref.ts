// Float64 references of the coreops2 tests (gemm, logprob); random data and assertions are in random.ts and numeric.ts.

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
