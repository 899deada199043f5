// Seeded random test data, shared by every test: the same values on every run and on every device.
import { roundBf16 } from '../../src/tensor.ts';
import { mulberry32 } from '../../src/data/synthetic.ts';

/** mulberry32: a small seeded uniform generator in [0, 1) (the one the synthetic data set uses). */
export const rng: (seed: number) => () => number = mulberry32;

/** n values uniform in [lo, hi), as f32. */
export function uniform(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * r();
  return out;
}

/** n values uniform in [lo, hi), rounded to bf16 (exactly representable in a bf16 tensor). */
export function uniformBf16(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  return roundBf16(uniform(n, seed, lo, hi));
}

/** n values uniform in [-scale, scale), optionally rounded through bf16 (so a bf16 tensor holds them exactly). */
export function uniformSym(n: number, seed: number, scale = 1, bf16 = false): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (r() * 2 - 1) * scale;
  return bf16 ? roundBf16(out) : out;
}

/** n integers uniform in [0, hi). */
export function randInts(n: number, seed: number, hi: number): Int32Array {
  const r = rng(seed);
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(r() * hi);
  return out;
}

/** n normal values of standard deviation `std` drawn from `r` (Box-Muller), rounded to bf16. */
export function randnBf16(n: number, std: number, r: () => number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = Math.max(r(), 1e-12);
    out[i] = std * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * r());
  }
  return roundBf16(out);
}

/** n normal values of standard deviation `std` from `seed` (xorshift32 + Box-Muller), as f32. */
export function randn(n: number, seed: number, std = 1): Float32Array {
  let x = (seed * 2654435761) >>> 0 || 1;
  const next = (): number => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return (x + 0.5) / 4294967296;
  };
  const r = new Float32Array(n);
  for (let i = 0; i < n; i++) r[i] = std * Math.sqrt(-2 * Math.log(next())) * Math.cos(2 * Math.PI * next());
  return r;
}

/** A few coordinates of [0, n) to probe (first, last and some in between). */
export function probes(n: number, count: number, seed: number): number[] {
  const r = rng(seed);
  const s = new Set<number>([0, n - 1]);
  while (s.size < Math.min(n, count)) s.add(Math.floor(r() * n));
  return [...s];
}
