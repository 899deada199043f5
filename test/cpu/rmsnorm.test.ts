// GPT-OSS RMSNorm on the CPU backend: forward against a float64 reference, backward against the float64
// analytic gradient and finite differences; addRmsnorm (the residual add fused with the norm) bitwise against add
// then rmsnormForward.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor } from '../../src/tensor.ts';
import { addRmsnorm, rmsnormForward, rmsnormBackward } from '../../src/ops/rmsnorm.ts';
import { add, addInPlace } from '../../src/ops/elementwise.ts';
import { uniform, uniformBf16, probes } from '../helpers/random.ts';
import { assertClose, assertBf16Close, fd, maxAbs } from '../helpers/numeric.ts';

const cpu = { device: 'cpu' } as const;
const EPS = 1e-5;

function refForward(x: ArrayLike<number>, w: ArrayLike<number>, t: number, h: number, eps: number) {
  const y = new Float64Array(t * h), rstd = new Float64Array(t);
  for (let r = 0; r < t; r++) {
    let ss = 0;
    for (let j = 0; j < h; j++) ss += x[r * h + j]! ** 2;
    const rs = 1 / Math.sqrt(ss / h + eps);
    rstd[r] = rs;
    for (let j = 0; j < h; j++) y[r * h + j] = w[j]! * (x[r * h + j]! * rs);
  }
  return { y, rstd };
}

function refBackward(dy: ArrayLike<number>, x: ArrayLike<number>, w: ArrayLike<number>, t: number, h: number, eps: number) {
  const { rstd } = refForward(x, w, t, h, eps);
  const dx = new Float64Array(t * h), dw = new Float64Array(h);
  for (let r = 0; r < t; r++) {
    const rs = rstd[r]!;
    let gx = 0;
    for (let j = 0; j < h; j++) gx += dy[r * h + j]! * w[j]! * x[r * h + j]!;
    for (let j = 0; j < h; j++) {
      dx[r * h + j] = rs * (dy[r * h + j]! * w[j]! - x[r * h + j]! * rs * rs * (gx / h));
      dw[j]! += dy[r * h + j]! * x[r * h + j]! * rs;
    }
  }
  return { dx, dw };
}

const SIZES = [
  [1, 1],
  [1, 7],
  [7, 113],
  [113, 7],
  [113, 64],
  [3, 2880],
] as const;

for (const [t, h] of SIZES) {
  test(`rmsnormForward matches the float64 reference (T=${t}, H=${h}, bf16 and f32)`, () => {
    const x = uniformBf16(t * h, 1 + h, -3, 3);
    const w = uniformBf16(h, 2 + h, 0.5, 1.5);
    const ref = refForward(x, w, t, h, EPS);
    const b = rmsnormForward(Tensor.from(x, [t, h], { ...cpu, dtype: 'bf16' }), Tensor.from(w, [h], { ...cpu, dtype: 'bf16' }), EPS);
    assert.deepEqual(b.y.shape, [t, h]);
    assert.equal(b.y.dtype, 'bf16');
    assert.deepEqual(b.rstd.shape, [t]);
    assert.equal(b.rstd.dtype, 'f32');
    assertBf16Close(b.y.toFloat32(), ref.y, 'y bf16');
    assertClose(b.rstd.toFloat32(), ref.rstd, 0, 1e-5, 'rstd');
    const f = rmsnormForward(Tensor.from(x, [t, h], cpu), Tensor.from(w, [h], cpu), EPS);
    assert.equal(f.y.dtype, 'f32');
    assertClose(f.y.toFloat32(), ref.y, 1e-6, 1e-5, 'y f32');
  });

  test(`rmsnormBackward matches the float64 analytic gradient (T=${t}, H=${h})`, () => {
    const x = uniformBf16(t * h, 3 + h, -3, 3);
    const w = uniformBf16(h, 4 + h, 0.5, 1.5);
    const dy = uniformBf16(t * h, 5 + h);
    const ref = refBackward(dy, x, w, t, h, EPS);
    const { rstd } = rmsnormForward(Tensor.from(x, [t, h], { ...cpu, dtype: 'bf16' }), Tensor.from(w, [h], { ...cpu, dtype: 'bf16' }), EPS);
    for (const dtype of ['bf16', 'f32'] as const) {
      const g = rmsnormBackward(
        Tensor.from(dy, [t, h], { ...cpu, dtype }),
        Tensor.from(x, [t, h], { ...cpu, dtype: 'bf16' }),
        Tensor.from(w, [h], { ...cpu, dtype: 'bf16' }),
        rstd,
      );
      assert.equal(g.dx.dtype, 'f32');
      assert.deepEqual(g.dx.shape, [t, h]);
      assert.deepEqual(g.dw.shape, [h]);
      // dx is a difference of terms of size |dy * w * rstd| (it cancels to ~0 when H = 1): scale atol by that.
      const termScale = maxAbs(dy) * maxAbs(w) * maxAbs(rstd.toFloat32());
      assertClose(g.dx.toFloat32(), ref.dx, 1e-6 * termScale, 1e-4, `dx (dy ${dtype})`);
      assertClose(g.dw.toFloat32(), ref.dw, 1e-5 * maxAbs(ref.dw), 1e-4, `dw (dy ${dtype})`);
    }
  });
}

test('rmsnorm float64 analytic gradient matches finite differences', () => {
  const t = 3, h = 7;
  const x = Float64Array.from(uniform(t * h, 21, -2, 2));
  const w = Float64Array.from(uniform(h, 22, 0.5, 1.5));
  const dy = Float64Array.from(uniform(t * h, 23));
  const ref = refBackward(dy, x, w, t, h, EPS);
  const lossX = (xv: Float64Array) => refForward(xv, w, t, h, EPS).y.reduce((s, y, i) => s + y * dy[i]!, 0);
  const lossW = (wv: Float64Array) => refForward(x, wv, t, h, EPS).y.reduce((s, y, i) => s + y * dy[i]!, 0);
  for (let i = 0; i < t * h; i++) assert.ok(Math.abs(fd(lossX, x, i, 1e-6) - ref.dx[i]!) < 1e-7, `dx[${i}]`);
  for (let j = 0; j < h; j++) assert.ok(Math.abs(fd(lossW, w, j, 1e-6) - ref.dw[j]!) < 1e-7, `dw[${j}]`);
});

test('rmsnormBackward matches finite differences of the native forward (f32)', () => {
  for (const [t, h] of [
    [1, 1],
    [7, 7],
    [5, 113],
  ] as const) {
    const x = uniform(t * h, 31 + h, -2, 2);
    const w = uniform(h, 32 + h, 0.5, 1.5);
    const dy = uniform(t * h, 33 + h);
    const loss = (xv: Float32Array, wv: Float32Array) => {
      const y = rmsnormForward(Tensor.from(xv, [t, h], cpu), Tensor.from(wv, [h], cpu), EPS).y.toFloat32();
      let s = 0;
      for (let i = 0; i < y.length; i++) s += y[i]! * dy[i]!;
      return s;
    };
    const { rstd } = rmsnormForward(Tensor.from(x, [t, h], cpu), Tensor.from(w, [h], cpu), EPS);
    const g = rmsnormBackward(Tensor.from(dy, [t, h], cpu), Tensor.from(x, [t, h], cpu), Tensor.from(w, [h], cpu), rstd);
    const dx = g.dx.toFloat32(), dw = g.dw.toFloat32();
    const step = 1e-2;
    for (const i of probes(t * h, 8, 34 + h)) {
      const xp = x.slice(), xm = x.slice();
      xp[i]! += step;
      xm[i]! -= step;
      const num = (loss(xp, w) - loss(xm, w)) / (xp[i]! - xm[i]!);
      assert.ok(Math.abs(num - dx[i]!) <= 2e-3 * (1 + Math.abs(num)), `T=${t} H=${h} dx[${i}]: fd ${num} vs ${dx[i]}`);
    }
    for (const j of probes(h, 6, 35 + h)) {
      const wp = w.slice(), wm = w.slice();
      wp[j]! += step;
      wm[j]! -= step;
      const num = (loss(x, wp) - loss(x, wm)) / (wp[j]! - wm[j]!);
      assert.ok(Math.abs(num - dw[j]!) <= 2e-3 * (1 + Math.abs(num)), `T=${t} H=${h} dw[${j}]: fd ${num} vs ${dw[j]}`);
    }
  }
});

test('rmsnorm of a zero row is zero (eps keeps rstd finite)', () => {
  const { y, rstd } = rmsnormForward(Tensor.zeros([2, 8], { ...cpu, dtype: 'bf16' }), Tensor.from(new Float32Array(8).fill(1), [8], { ...cpu, dtype: 'bf16' }), EPS);
  assert.ok(y.toFloat32().every((v) => v === 0));
  assertClose(rstd.toFloat32(), [1 / Math.sqrt(EPS), 1 / Math.sqrt(EPS)], 0, 1e-6, 'rstd');
});

test('rmsnorm ops reject bad shapes and dtypes with clear errors', () => {
  const x = Tensor.zeros([4, 8], { ...cpu, dtype: 'bf16' });
  const w = Tensor.zeros([8], { ...cpu, dtype: 'bf16' });
  assert.throws(() => rmsnormForward(x, Tensor.zeros([7], { ...cpu, dtype: 'bf16' }), EPS), /rmsnormForward: w must have shape \[8\], got bf16\[7\] on cpu/);
  assert.throws(() => rmsnormForward(Tensor.zeros([4, 8], { ...cpu, dtype: 'i32' }), w, EPS), /rmsnormForward: x must be bf16 or f32, got i32\[4, 8\] on cpu/);
  assert.throws(() => rmsnormForward(x, w, -1), /rmsnormForward: eps must be a finite non-negative number/);
  const { rstd } = rmsnormForward(x, w, EPS);
  assert.throws(() => rmsnormBackward(Tensor.zeros([4, 7], cpu), x, w, rstd), /rmsnormBackward: dy must have shape \[4, 8\], got f32\[4, 7\] on cpu/);
  assert.throws(() => rmsnormBackward(Tensor.zeros([4, 8], cpu), x, w, Tensor.zeros([3], cpu)), /rmsnormBackward: rstd must have shape \[4\], got f32\[3\] on cpu/);
  assert.throws(() => rmsnormBackward(Tensor.zeros([4, 8], cpu), x, w, Tensor.zeros([4], { ...cpu, dtype: 'bf16' })), /rmsnormBackward: rstd must be f32/);
  assert.throws(() => rmsnormBackward(Tensor.zeros([4, 8], cpu), x, w, rstd, Tensor.zeros([4, 7], cpu)), /rmsnormBackward: residual must have shape \[4, 8\], got f32\[4, 7\] on cpu/);
  assert.throws(() => rmsnormBackward(Tensor.zeros([4, 8], cpu), x, w, rstd, Tensor.zeros([4, 8], { ...cpu, dtype: 'bf16' })), /rmsnormBackward: residual must be f32/);
});

test('rmsnormBackward adds the residual gradient to dx in the same pass (bitwise dx + residual)', () => {
  const t = 5, h = 113;
  const x = Tensor.from(uniformBf16(t * h, 41, -2, 2), [t, h], { ...cpu, dtype: 'bf16' });
  const w = Tensor.from(uniformBf16(h, 42, 0.5, 1.5), [h], { ...cpu, dtype: 'bf16' });
  const dy = Tensor.from(uniformBf16(t * h, 43), [t, h], cpu);
  const res = Tensor.from(uniform(t * h, 44, -3, 3), [t, h], cpu);
  const { rstd } = rmsnormForward(x, w, EPS);
  const plain = rmsnormBackward(dy, x, w, rstd);
  const fused = rmsnormBackward(dy, x, w, rstd, res);
  const r = res.toFloat32();
  assert.deepEqual(fused.dx.toFloat32(), Float32Array.from(plain.dx.toFloat32(), (v, i) => v + r[i]!));
  assert.deepEqual(fused.dw.toFloat32(), plain.dw.toFloat32());
});

/** A tensor's values as bit patterns (a bf16 tensor widened exactly): bitwise comparison, -0 and NaN included. */
function bits(t: Tensor): Uint32Array {
  const f = t.toFloat32();
  return new Uint32Array(f.buffer, f.byteOffset, f.length);
}

// The layer's combinations: bf16 x + bf16 o (o_proj's output, one device), bf16 x + f32 o (the tensor-parallel
// all-reduced f32 sum), and the f32 ones; bf16 and f32 weights; odd H, T from 1, extra leading dims.
for (const [shape, xd, od, wd] of [
  [[1, 7], 'bf16', 'bf16', 'bf16'],
  [[1, 2880], 'bf16', 'bf16', 'bf16'],
  [[3, 113], 'bf16', 'bf16', 'bf16'],
  [[5, 2880], 'bf16', 'f32', 'bf16'],
  [[1, 113], 'bf16', 'f32', 'f32'],
  [[7, 64], 'f32', 'f32', 'f32'],
  [[2, 3, 9], 'f32', 'bf16', 'bf16'],
  [[1, 1], 'bf16', 'bf16', 'bf16'],
] as const) {
  test(`addRmsnorm equals add then rmsnormForward bitwise (${shape.join('x')}, x ${xd}, o ${od}, w ${wd})`, () => {
    const n = shape.reduce((a: number, b: number) => a * b, 1), h: number = shape[shape.length - 1]!;
    const seed = n + h;
    const x = Tensor.from(uniformBf16(n, seed, -4, 4), [...shape], { ...cpu, dtype: xd });
    // o at x's scale, not bf16-exact in f32: the sum's rounding to x's dtype is exercised.
    const o = Tensor.from(uniform(n, seed + 1, -4, 4), [...shape], { ...cpu, dtype: od });
    const w = Tensor.from(uniform(h, seed + 2, 0.5, 1.5), [h], { ...cpu, dtype: wd });
    const f = addRmsnorm(x, o, w, EPS);
    // The reference h the layer used: add (same dtypes) or a copy of x with o added in place (the tensor-parallel path).
    const href = x.clone();
    addInPlace(href, o);
    if (xd === od) assert.deepEqual(bits(add(x, o)), bits(href));
    const ref = rmsnormForward(href, w, EPS);
    assert.equal(f.h.dtype, xd);
    assert.equal(f.y.dtype, xd);
    assert.equal(f.rstd.dtype, 'f32');
    assert.deepEqual(f.h.shape, [...shape]);
    assert.deepEqual(f.y.shape, [...shape]);
    assert.deepEqual(f.rstd.shape, shape.slice(0, -1));
    assert.deepEqual(bits(f.h), bits(href), 'h');
    assert.deepEqual(bits(f.y), bits(ref.y), 'y');
    assert.deepEqual(bits(f.rstd), bits(ref.rstd), 'rstd');
    // And the math, once: y against the float64 norm of the rounded sum.
    const r = refForward(href.toFloat32(), w.toFloat32(), n / h, h, EPS);
    if (xd === 'bf16') assertBf16Close(f.y.toFloat32(), r.y, 'y vs float64');
    else assertClose(f.y.toFloat32(), r.y, 1e-5, 1e-5, 'y vs float64');
    for (const t of [x, o, w, f.h, f.y, f.rstd, href, ref.y, ref.rstd]) t.dispose();
  });
}

test('addRmsnorm rejects bad shapes, dtypes and eps with clear errors', () => {
  const x = Tensor.zeros([4, 8], { ...cpu, dtype: 'bf16' });
  const w = Tensor.zeros([8], { ...cpu, dtype: 'bf16' });
  assert.throws(() => addRmsnorm(x, Tensor.zeros([4, 7], { ...cpu, dtype: 'bf16' }), w, EPS), /addRmsnorm: o must have shape \[4, 8\], got bf16\[4, 7\] on cpu/);
  assert.throws(() => addRmsnorm(x, Tensor.zeros([32], { ...cpu, dtype: 'bf16' }), w, EPS), /addRmsnorm: o must have shape \[4, 8\], got bf16\[32\] on cpu/);
  assert.throws(() => addRmsnorm(x, Tensor.zeros([4, 8], { ...cpu, dtype: 'i32' }), w, EPS), /addRmsnorm: o must be bf16 or f32, got i32\[4, 8\] on cpu/);
  assert.throws(() => addRmsnorm(Tensor.zeros([4, 8], { ...cpu, dtype: 'i32' }), x, w, EPS), /addRmsnorm: x must be bf16 or f32, got i32\[4, 8\] on cpu/);
  assert.throws(() => addRmsnorm(x, x, Tensor.zeros([7], { ...cpu, dtype: 'bf16' }), EPS), /addRmsnorm: w must have shape \[8\], got bf16\[7\] on cpu/);
  assert.throws(() => addRmsnorm(x, x, w, -1), /addRmsnorm: eps must be a finite non-negative number/);
  assert.throws(() => addRmsnorm(x, x, w, Number.NaN), /addRmsnorm: eps must be a finite non-negative number/);
});
