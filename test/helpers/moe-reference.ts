// moe-reference.ts: a naive per-token float64 TS reference of the MoE block and random test problems, shared
// by test/cpu/moe.test.ts and test/gpu/moe.test.ts.
import { Tensor } from '../../src/tensor.ts';
import type { MoeWeights } from '../../src/ops/moe.ts';
import { rng, randnBf16 } from './random.ts';

export interface MoeProblem {
  T: number;
  H: number;
  E: number;
  I: number;
  k: number;
  x: Float32Array; // bf16-exact values [T,H]
  routerW: Float32Array; // [E,H]
  routerB: Float32Array; // [E]
  gateUpW: Float32Array; // [E,H,2I]
  gateUpB: Float32Array; // [E,2I]
  downW: Float32Array; // [E,I,H]
  downB: Float32Array; // [E,H]
}

/** Random problem; gate_up std chosen so that some gate/up values reach the ±7 clamp. */
export function makeProblem(T: number, H: number, E: number, I: number, k: number, seed: number, guScale = 3): MoeProblem {
  const r = rng(seed);
  return {
    T, H, E, I, k,
    x: randnBf16(T * H, 1, r),
    routerW: randnBf16(E * H, 1 / Math.sqrt(H), r),
    routerB: randnBf16(E, 0.5, r),
    gateUpW: randnBf16(E * H * 2 * I, guScale / Math.sqrt(H), r),
    gateUpB: randnBf16(E * 2 * I, 0.5, r),
    downW: randnBf16(E * I * H, 1 / Math.sqrt(I), r),
    downB: randnBf16(E * H, 0.5, r),
  };
}

export function weightsOf(p: MoeProblem, device: string): MoeWeights {
  const o = { dtype: 'bf16' as const, device };
  return {
    routerW: Tensor.from(p.routerW, [p.E, p.H], o),
    routerB: Tensor.from(p.routerB, [p.E], o),
    gateUpW: Tensor.from(p.gateUpW, [p.E, p.H, 2 * p.I], o),
    gateUpB: Tensor.from(p.gateUpB, [p.E, 2 * p.I], o),
    downW: Tensor.from(p.downW, [p.E, p.I, p.H], o),
    downB: Tensor.from(p.downB, [p.E, p.H], o),
  };
}

export interface RefOut {
  y: Float64Array; // [T,H], not rounded
  idx: Int32Array; // [T,k]
  w: Float64Array; // [T,k]
  counts: Int32Array; // [E]
}

/** Per-token float64 forward. Arrays may be perturbed copies (finite differences). */
export function refForward(p: MoeProblem, limit = 7): RefOut {
  const { T, H, E, I, k } = p;
  const y = new Float64Array(T * H);
  const idx = new Int32Array(T * k);
  const wts = new Float64Array(T * k);
  const counts = new Int32Array(E);
  const logit = new Float64Array(E);
  const gu = new Float64Array(2 * I);
  const h = new Float64Array(I);
  for (let t = 0; t < T; t++) {
    for (let e = 0; e < E; e++) {
      let a = 0;
      for (let i = 0; i < H; i++) a += p.x[t * H + i]! * p.routerW[e * H + i]!;
      logit[e] = a + p.routerB[e]!;
    }
    // Stable sort by (logit desc, id asc).
    const order = [...Array(E).keys()].sort((a, b) => logit[b]! - logit[a]! || a - b);
    let sum = 0;
    for (let j = 0; j < k; j++) sum += Math.exp(logit[order[j]!]! - logit[order[0]!]!);
    for (let j = 0; j < k; j++) {
      const e = order[j]!;
      idx[t * k + j] = e;
      counts[e]!++;
      const wj = Math.exp(logit[e]! - logit[order[0]!]!) / sum;
      wts[t * k + j] = wj;
      for (let c = 0; c < 2 * I; c++) {
        let a = p.gateUpB[e * 2 * I + c]!;
        for (let i = 0; i < H; i++) a += p.x[t * H + i]! * p.gateUpW[(e * H + i) * 2 * I + c]!;
        gu[c] = a;
      }
      for (let c = 0; c < I; c++) {
        const g = Math.min(gu[2 * c]!, limit);
        const u = Math.max(-limit, Math.min(gu[2 * c + 1]!, limit));
        h[c] = (u + 1) * g / (1 + Math.exp(-1.702 * g));
      }
      for (let c = 0; c < H; c++) {
        let a = p.downB[e * H + c]!;
        for (let i = 0; i < I; i++) a += h[i]! * p.downW[(e * I + i) * H + c]!;
        y[t * H + c] += wj * a;
      }
    }
  }
  return { y, idx, w: wts, counts };
}
