// Helpers for the core op tests (embedding, RMSNorm, RoPE, elementwise, SwiGLU): seeded random data, bf16
// rounding, float64 comparisons and finite differences.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { roundBf16 } from '../../src/tensor.ts';

/** mulberry32: a small seeded PRNG, so every run sees the same data. */
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

export function randInts(n: number, seed: number, hi: number): Int32Array {
  const r = rng(seed);
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(r() * hi);
  return out;
}

export function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, 'length mismatch');
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (Number.isNaN(d)) return Infinity;
    m = Math.max(m, d);
  }
  return m;
}

/** |got - want| <= atol + rtol * |want| elementwise, with the first failing index in the message. */
export function assertClose(got: ArrayLike<number>, want: ArrayLike<number>, atol: number, rtol: number, what: string): void {
  assert.equal(got.length, want.length, `${what}: length ${got.length} vs ${want.length}`);
  for (let i = 0; i < got.length; i++) {
    const g = got[i]!, w = want[i]!;
    if (Number.isNaN(w) && Number.isNaN(g)) continue;
    const ok = Math.abs(g - w) <= atol + rtol * Math.abs(w);
    if (!ok) assert.fail(`${what}: index ${i}: got ${g}, want ${w} (atol ${atol}, rtol ${rtol})`);
  }
}

/**
 * A value stored to bf16 from an exact result `want` may differ by half a bf16 ulp (2^-9 relative) plus what
 * the fp32 math adds; allow a full ulp.
 */
export function assertBf16Close(got: ArrayLike<number>, want: ArrayLike<number>, what: string, atol = 1e-6): void {
  assertClose(got, want, atol, 2 ** -8, what);
}

/** Central finite difference of f at x along coordinate i. */
export function fd(f: (x: Float64Array) => number, x: Float64Array, i: number, h: number): number {
  const xi = x[i]!;
  x[i] = xi + h;
  const fp = f(x);
  x[i] = xi - h;
  const fm = f(x);
  x[i] = xi;
  return (fp - fm) / (2 * h);
}

export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}

/** A few coordinates of [0, n) to probe (first, last and some in between). */
export function probes(n: number, count: number, seed: number): number[] {
  const r = rng(seed);
  const s = new Set<number>([0, n - 1]);
  while (s.size < Math.min(n, count)) s.add(Math.floor(r() * n));
  return [...s];
}

/**
 * The shared fixtures folder (`../shared/fixtures` beside the checkout; worktrees sit one level deeper), or
 * GPTOSS_FIXTURES; undefined when absent (tests then skip).
 */
export function fixturesDir(): string | undefined {
  if (process.env.GPTOSS_FIXTURES && existsSync(process.env.GPTOSS_FIXTURES)) return process.env.GPTOSS_FIXTURES;
  let dir = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
  for (let i = 0; i < 4; i++) {
    const cand = join(dir, '..', 'shared', 'fixtures');
    if (existsSync(cand)) return resolve(cand);
    dir = resolve(dir, '..');
  }
  return undefined;
}
