// Error metrics, closeness assertions and finite differences, shared by every test.
import assert from 'node:assert/strict';

export function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
}

/** max |a - b| (Infinity where a NaN shows up). */
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

/** max |a - b| and max |b|. */
export function maxErr(a: ArrayLike<number>, b: ArrayLike<number>): { err: number; scale: number } {
  let err = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    err = Math.max(err, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return { err, scale };
}

/** The worst |got - want| / (atol + rtol |want|) over all entries and where it is (<= 1 passes; NaN only against NaN). */
export function maxErrRatio(got: ArrayLike<number>, want: ArrayLike<number>, atol: number, rtol: number): { ratio: number; at: number } {
  let ratio = 0;
  let at = 0;
  for (let i = 0; i < want.length; i++) {
    const g = got[i]!;
    const w = want[i]!;
    const r = Number.isNaN(g) !== Number.isNaN(w) ? Infinity : Number.isNaN(g) ? 0 : Math.abs(g - w) / (atol + rtol * Math.abs(w));
    if (r > ratio) (ratio = r), (at = i);
  }
  return { ratio, at };
}

/** |got - want| <= atol + rtol * |want| elementwise; the message names the worst entry. */
export function assertClose(got: ArrayLike<number>, want: ArrayLike<number>, atol: number, rtol: number, what: string): void {
  assert.equal(got.length, want.length, `${what}: length ${got.length} vs ${want.length}`);
  const { ratio, at } = maxErrRatio(got, want, atol, rtol);
  if (!(ratio <= 1)) {
    assert.fail(`${what}: error ratio ${ratio.toFixed(3)} at [${at}]: got ${got[at]}, want ${want[at]} (atol ${atol}, rtol ${rtol})`);
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

/** ||a - b|| / ||b|| (relative error in the 2-norm; b is the reference). */
export function relNorm(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < b.length; i++) {
    num += (a[i]! - b[i]!) ** 2;
    den += b[i]! ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}
