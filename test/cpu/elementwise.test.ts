// Elementwise ops on the CPU backend (add, addInPlace, scale, scaleInPlace, cast, fill, zerosLike) against
// naive TS references, at sizes 1, 7, 113 and 4099; concatColumns (column slices side by side).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, roundBf16 } from '../../src/tensor.ts';
import { add, addInPlace, scale, scaleInPlace, cast, concatColumns, fill, zerosLike } from '../../src/ops/elementwise.ts';
import { uniform, uniformBf16, randInts } from '../helpers/random.ts';

const cpu = { device: 'cpu' } as const;
const f32 = (a: ArrayLike<number>) => Float32Array.from(a);

for (const n of [1, 7, 113, 4099]) {
  test(`add / addInPlace (n=${n}): fp32 math, one rounding to the output dtype`, () => {
    const a = uniformBf16(n, 1 + n, -4, 4), b = uniformBf16(n, 2 + n, -4, 4);
    const sum = a.map((v, i) => v + b[i]!); // f32 add of bf16 values (exact in f32)
    assert.deepEqual(add(Tensor.from(a, [n], cpu), Tensor.from(b, [n], cpu)).toFloat32(), sum);
    const ab = add(Tensor.from(a, [n], { ...cpu, dtype: 'bf16' }), Tensor.from(b, [n], { ...cpu, dtype: 'bf16' }));
    assert.equal(ab.dtype, 'bf16');
    assert.deepEqual(ab.toFloat32(), roundBf16(sum));
    // f32 accumulator += bf16 gradient
    const acc = Tensor.from(a, [n], cpu);
    addInPlace(acc, Tensor.from(b, [n], { ...cpu, dtype: 'bf16' }));
    assert.deepEqual(acc.toFloat32(), sum);
    // bf16 += f32
    const fa = uniform(n, 3 + n);
    const accb = Tensor.from(a, [n], { ...cpu, dtype: 'bf16' });
    addInPlace(accb, Tensor.from(fa, [n], cpu));
    assert.deepEqual(accb.toFloat32(), roundBf16(f32(a.map((v, i) => Math.fround(v + fa[i]!)))));
  });

  test(`scale / scaleInPlace / cast / fill / zerosLike (n=${n})`, () => {
    const a = uniform(n, 4 + n, -4, 4);
    const s = 0.37;
    const want = a.map((v) => Math.fround(v * Math.fround(s)));
    assert.deepEqual(scale(Tensor.from(a, [n], cpu), s).toFloat32(), want);
    const ab = Tensor.from(a, [n], { ...cpu, dtype: 'bf16' });
    const abv = ab.toFloat32();
    assert.deepEqual(scale(ab, s).toFloat32(), roundBf16(abv.map((v) => Math.fround(v * Math.fround(s)))));
    const t = Tensor.from(a, [n], cpu);
    scaleInPlace(t, s);
    assert.deepEqual(t.toFloat32(), want);
    // casts
    const tb = cast(Tensor.from(a, [n], cpu), 'bf16');
    assert.equal(tb.dtype, 'bf16');
    assert.deepEqual(tb.toFloat32(), roundBf16(a));
    const back = cast(tb, 'f32');
    assert.equal(back.dtype, 'f32');
    assert.deepEqual(back.toFloat32(), roundBf16(a));
    const ids = randInts(n, 5 + n, 1 << 20);
    const fi = cast(Tensor.from(ids, [n], cpu), 'f32');
    assert.deepEqual(fi.toFloat32(), Float32Array.from(ids));
    const same = cast(t, 'f32');
    assert.ok(!same.native.sameStorage(t.native));
    assert.deepEqual(same.toFloat32(), t.toFloat32());
    // fill
    for (const dtype of ['bf16', 'f32', 'i32', 'u8'] as const) {
      const z = Tensor.zeros([n], { ...cpu, dtype });
      fill(z, dtype === 'bf16' || dtype === 'f32' ? 1.1 : 3);
      const expect = dtype === 'bf16' ? roundBf16(f32([1.1]))[0]! : dtype === 'f32' ? Math.fround(1.1) : 3;
      assert.ok(z.toFloat32().every((v) => v === expect), `fill ${dtype}`);
    }
    const zl = zerosLike(Tensor.from(a, [n], { ...cpu, dtype: 'bf16' }));
    assert.equal(zl.dtype, 'bf16');
    assert.deepEqual(zl.shape, [n]);
    assert.ok(zl.toFloat32().every((v) => v === 0));
  });
}

test('elementwise ops work on views (slices) and multi-dimensional shapes', () => {
  const base = Tensor.from(uniform(6 * 5, 9), [6, 5], cpu);
  const rows = base.slice(1, 4);
  const before = base.toFloat32();
  scaleInPlace(rows, 2);
  const after = base.toFloat32();
  for (let i = 0; i < 30; i++) assert.equal(after[i], i >= 5 && i < 20 ? Math.fround(before[i]! * 2) : before[i]);
  assert.deepEqual(add(rows, rows).shape, [3, 5]);
});

test('elementwise ops reject bad inputs with clear errors', () => {
  const a = Tensor.zeros([4, 2], cpu);
  assert.throws(() => add(a, Tensor.zeros([8], cpu)), /add: a and b must have the same shape and dtype, got f32\[4, 2\] on cpu and f32\[8\] on cpu/);
  assert.throws(() => add(a, Tensor.zeros([4, 2], { ...cpu, dtype: 'bf16' })), /add: a and b must have the same shape and dtype/);
  assert.throws(() => add(Tensor.zeros([2], { ...cpu, dtype: 'i32' }), Tensor.zeros([2], { ...cpu, dtype: 'i32' })), /add: a must be bf16 or f32, got i32\[2\] on cpu/);
  assert.throws(() => addInPlace(a, Tensor.zeros([4, 3], cpu)), /addInPlace: a and b must have the same shape, got f32\[4, 2\] on cpu and f32\[4, 3\] on cpu/);
  assert.throws(() => scale(Tensor.zeros([2], { ...cpu, dtype: 'u8' }), 2), /scale: a must be bf16 or f32, got u8\[2\] on cpu/);
  assert.throws(() => scaleInPlace(a, NaN), /scaleInPlace: s must be a number, got NaN/);
  assert.throws(() => cast(a, 'i32'), /cast: cannot cast f32\[4, 2\] on cpu to i32 \(supported: bf16 <-> f32, i32 -> f32, same dtype\)/);
  assert.throws(() => fill(Tensor.zeros([2], { ...cpu, dtype: 'i32' }), 1.5), /fill: value 1.5 is not an i32 for i32\[2\] on cpu/);
  assert.throws(() => fill(Tensor.zeros([2], { ...cpu, dtype: 'u8' }), 256), /fill: value 256 is not a u8/);
});

test('concatColumns: [R, S, W] slices side by side as [S, R·W], any dtype', () => {
  for (const [R, S, W] of [[1, 3, 5], [4, 3, 2], [3, 1, 7], [2, 0, 4]] as const) {
    const n = R * S * W;
    const src = Float32Array.from({ length: n }, (_, i) => i);
    const want = new Float32Array(n);
    for (let r = 0; r < R; r++) for (let s = 0; s < S; s++) for (let j = 0; j < W; j++) want[s * R * W + r * W + j] = src[(r * S + s) * W + j]!;
    const f = concatColumns(Tensor.from(src, [R, S, W], cpu));
    assert.deepEqual(f.shape, [S, R * W]);
    assert.deepEqual(f.toFloat32(), want, `f32 ${R}x${S}x${W}`);
    assert.deepEqual(concatColumns(Tensor.from(src, [R, S, W], { ...cpu, dtype: 'bf16' })).toFloat32(), want, `bf16 ${R}x${S}x${W}`);
    assert.deepEqual(concatColumns(Tensor.from(Int32Array.from(src), [R, S, W], cpu)).toInt32(), Int32Array.from(want));
  }
  // Cut at fewer columns: the last slice's padding dropped.
  const src = Float32Array.from({ length: 3 * 2 * 4 }, (_, i) => i);
  const cut = concatColumns(Tensor.from(src, [3, 2, 4], cpu), 10);
  assert.deepEqual(cut.shape, [2, 10]);
  assert.deepEqual([...cut.toFloat32()], [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21]);
  assert.throws(() => concatColumns(Tensor.from(src, [3, 2, 4], cpu), 8), /concatColumns: columns must be in \(8, 12\] for 3 slices of 4 \(only the last slice may be cut\), got 8/);
  assert.throws(() => concatColumns(Tensor.zeros([4, 4], cpu)), /concatColumns: parts must have 3 dimensions, got f32\[4, 4\]/);
});
