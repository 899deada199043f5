// Embedding gather and scatter-add backward on the CPU backend, against naive TS references.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor } from '../../src/tensor.ts';
import { embeddingForward, embeddingForwardSlice, embeddingBackward } from '../../src/ops/embedding.ts';
import { uniform, uniformBf16, randInts, probes } from '../helpers/random.ts';
import { assertClose } from '../helpers/numeric.ts';

const cpu = { device: 'cpu' } as const;

function refGather(w: Float32Array, ids: Int32Array, h: number): Float32Array {
  const out = new Float32Array(ids.length * h);
  ids.forEach((id, t) => out.set(w.subarray(id * h, (id + 1) * h), t * h));
  return out;
}

function refScatter(d: Float32Array, ids: Int32Array, v: number, h: number): Float64Array {
  const out = new Float64Array(v * h);
  ids.forEach((id, t) => {
    for (let j = 0; j < h; j++) out[id * h + j]! += d[t * h + j]!;
  });
  return out;
}

for (const [v, h, t] of [
  [1, 1, 1],
  [7, 7, 7],
  [113, 7, 113],
  [5, 113, 37],
  [256, 64, 113],
] as const) {
  test(`embeddingForward gathers rows exactly (V=${v}, H=${h}, T=${t}, bf16 and f32)`, () => {
    const w = uniformBf16(v * h, 1 + v);
    const ids = randInts(t, 2 + t, v);
    for (const dtype of ['bf16', 'f32'] as const) {
      const out = embeddingForward(Tensor.from(w, [v, h], { ...cpu, dtype }), Tensor.from(ids, [t], cpu));
      assert.deepEqual(out.shape, [t, h]);
      assert.equal(out.dtype, dtype);
      assert.deepEqual(out.toFloat32(), refGather(w, ids, h));
    }
  });

  test(`embeddingBackward scatter-adds in fp32 (V=${v}, H=${h}, T=${t})`, () => {
    // Few distinct ids, so rows receive several tokens.
    const ids = randInts(t, 3 + t, Math.max(1, Math.min(v, 5)));
    for (const dtype of ['f32', 'bf16'] as const) {
      const d = dtype === 'bf16' ? uniformBf16(t * h, 4) : uniform(t * h, 4);
      const dw = embeddingBackward(Tensor.from(d, [t, h], { ...cpu, dtype }), Tensor.from(ids, [t], cpu), v);
      assert.deepEqual(dw.shape, [v, h]);
      assert.equal(dw.dtype, 'f32');
      assertClose(dw.toFloat32(), refScatter(d, ids, v, h), 1e-6, 1e-5, `dW ${dtype}`);
    }
  });
}

test('embeddingBackward matches finite differences of the forward (f32)', () => {
  const v = 7, h = 5, t = 9;
  const w = uniform(v * h, 11);
  const ids = randInts(t, 12, v);
  const dOut = uniform(t * h, 13);
  const idsT = Tensor.from(ids, [t], cpu);
  // L(W) = sum(dOut * embeddingForward(W, ids)); dL/dW is the backward of dOut.
  const loss = (wv: Float32Array) => {
    const y = embeddingForward(Tensor.from(wv, [v, h], cpu), idsT).toFloat32();
    let s = 0;
    for (let i = 0; i < y.length; i++) s += dOut[i]! * y[i]!;
    return s;
  };
  const dw = embeddingBackward(Tensor.from(dOut, [t, h], cpu), idsT, v).toFloat32();
  for (const i of probes(v * h, 12, 14)) {
    const eps = 0.25; // the loss is linear in W, so a large step is exact up to f32 rounding
    const wp = w.slice(), wm = w.slice();
    wp[i]! += eps;
    wm[i]! -= eps;
    const g = (loss(wp) - loss(wm)) / (wp[i]! - wm[i]!);
    assert.ok(Math.abs(g - dw[i]!) <= 1e-5 + 1e-5 * Math.abs(g), `dW[${i}]: fd ${g} vs ${dw[i]}`);
  }
});

test('embedding keeps the ids shape and is deterministic', () => {
  const w = uniformBf16(10 * 8, 5);
  const ids = Tensor.from(new Int32Array([1, 2, 3, 1, 1, 9]), [2, 3], cpu);
  const out = embeddingForward(Tensor.from(w, [10, 8], { ...cpu, dtype: 'bf16' }), ids);
  assert.deepEqual(out.shape, [2, 3, 8]);
  const d = Tensor.from(uniform(48, 6), [2, 3, 8], cpu);
  const a = embeddingBackward(d, ids, 10).toFloat32();
  const b = embeddingBackward(d, ids, 10).toFloat32();
  assert.deepEqual(a, b);
  // Row 0 never occurs: zero. Row 1 occurs three times, summed in token order.
  assert.ok(a.subarray(0, 8).every((x) => x === 0));
});

test('embeddingBackward into a buffer adds the gradient: the bits of a fresh one added to it, untouched rows kept', () => {
  for (const [v, h, t] of [[7, 7, 20], [113, 64, 37]] as const) {
    const ids = randInts(t, 5 + t, Math.min(v, 5)); // repeats; rows >= 5 get no token
    for (const dtype of ['bf16', 'f32'] as const) {
      const d = Tensor.from(dtype === 'bf16' ? uniformBf16(t * h, 3) : uniform(t * h, 3), [t, h], { ...cpu, dtype });
      const idsT = Tensor.from(ids, [t], cpu);
      const fresh = embeddingBackward(d, idsT, v).toFloat32();
      const prev = uniform(v * h, 11);
      const into = Tensor.from(prev, [v, h], cpu);
      assert.equal(embeddingBackward(d, idsT, v, { into }), into);
      assert.deepEqual(into.toFloat32(), Float32Array.from(fresh, (x, i) => Math.fround(prev[i]! + x)), `V=${v} H=${h} ${dtype}`);
    }
  }
  const d = Tensor.zeros([3, 4], cpu);
  const ids = Tensor.from(new Int32Array([0, 1, 2]), [3], cpu);
  assert.throws(() => embeddingBackward(d, ids, 7, { into: Tensor.zeros([7, 5], cpu) }), /embeddingBackward: into must have shape \[7, 4\]/);
  assert.throws(() => embeddingBackward(d, ids, 7, { into: Tensor.zeros([7, 4], { ...cpu, dtype: 'bf16' }) }), /embeddingBackward: into must be f32/);
});

test('embedding ops reject bad ids, dtypes and shapes with clear errors', () => {
  const w = Tensor.from(uniformBf16(113 * 4, 7), [113, 4], { ...cpu, dtype: 'bf16' });
  assert.throws(
    () => embeddingForward(w, Tensor.from(new Int32Array([0, 5, 113]), [3], cpu)),
    /embeddingForward: ids\[2\] = 113 is out of range for vocabulary size V = 113/,
  );
  assert.throws(
    () => embeddingForward(w, Tensor.from(new Int32Array([-1]), [1], cpu)),
    /embeddingForward: ids\[0\] = -1 is out of range for vocabulary size V = 113/,
  );
  assert.throws(() => embeddingForward(w, Tensor.from([1, 2], [2], cpu)), /embeddingForward: ids must be i32, got f32\[2\] on cpu/);
  assert.throws(
    () => embeddingForward(Tensor.zeros([4], { ...cpu, dtype: 'bf16' }), Tensor.from(new Int32Array([0]), [1], cpu)),
    /embeddingForward: weight must have 2 dimensions, got bf16\[4\] on cpu/,
  );
  const d = Tensor.zeros([3, 4], cpu);
  assert.throws(
    () => embeddingBackward(d, Tensor.from(new Int32Array([0, 1, 7]), [3], cpu), 7),
    /embeddingBackward: ids\[2\] = 7 is out of range for vocabulary size V = 7/,
  );
  assert.throws(
    () => embeddingBackward(d, Tensor.from(new Int32Array([0, 1]), [2], cpu), 7),
    /embeddingBackward: dOut must have shape ids.shape \+ \[H\], got dOut f32\[3, 4\] on cpu and ids i32\[2\] on cpu/,
  );
  assert.throws(() => embeddingBackward(d, Tensor.from(new Int32Array([0, 1, 2]), [3], cpu), 0), /vocabSize must be positive/);
});

test('embeddingForwardSlice: each vocabulary slice gives its rows and zeros elsewhere; the slices sum to the full lookup', () => {
  const V = 24, H = 10, T = 40;
  const w = uniformBf16(V * H, 3, -2, 2);
  const ids = randInts(T, 9, V);
  const full = embeddingForward(Tensor.from(w, [V, H], { ...cpu, dtype: 'bf16' }), Tensor.from(ids, [T], cpu)).toFloat32();
  for (const tp of [2, 3, 4]) {
    const W = V / tp;
    const sum = new Float32Array(T * H);
    for (let r = 0; r < tp; r++) {
      const slice = Tensor.from(w.subarray(r * W * H, (r + 1) * W * H), [W, H], { ...cpu, dtype: 'bf16' });
      const out = embeddingForwardSlice(slice, Tensor.from(ids, [T], cpu), r * W).toFloat32();
      ids.forEach((id, t) => {
        const mine = id >= r * W && id < (r + 1) * W;
        for (let j = 0; j < H; j++) {
          const v = out[t * H + j]!;
          if (!mine) assert.ok(Object.is(v, 0), `tp ${tp} rank ${r} token ${t}: another rank's id gives +0`);
          sum[t * H + j]! += v;
        }
      });
    }
    assert.deepEqual(sum, full, `tp ${tp}: the sum over the slices is the full lookup`);
  }
  const w2 = Tensor.zeros([4, H], { ...cpu, dtype: 'bf16' });
  assert.throws(() => embeddingForwardSlice(w2, Tensor.from(ids, [T], cpu), -1), /embeddingForwardSlice: vocabStart must be >= 0, got -1/);
  assert.throws(() => embeddingForwardSlice(w2, Tensor.zeros([T], cpu), 0), /embeddingForwardSlice: ids must be i32/);
});
