// scatterRows (KV-cache writes) on the CPU: against a TS reference, awkward row sizes, bad input errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor } from '../../src/tensor.ts';
import { scatterRows } from '../../src/ops/kvcache.ts';

function ref(dst: Float32Array, src: Float32Array, index: number[], R: number): Float32Array {
  const out = dst.slice();
  index.forEach((r, n) => out.set(src.subarray(n * R, (n + 1) * R), r * R));
  return out;
}

for (const [dtype, R] of [['bf16', 128], ['bf16', 7], ['f32', 1], ['f32', 113]] as const) {
  test(`scatterRows ${dtype} row ${R}`, () => {
    const M = 37;
    const index = [5, 0, 36, 17, 9, 22, 1];
    const d0 = Float32Array.from({ length: M * R }, (_, i) => (i % 13) - 6);
    const s0 = Float32Array.from({ length: index.length * R }, (_, i) => 100 + (i % 29));
    const dst = Tensor.from(d0, [M, R], { dtype, device: 'cpu' });
    const src = Tensor.from(s0, [index.length, R], { dtype, device: 'cpu' });
    scatterRows(dst, src, Tensor.from(Int32Array.from(index), [index.length], { device: 'cpu' }));
    assert.deepEqual(dst.toFloat32(), ref(d0, s0, index, R));
  });
}

test('scatterRows: a KV cache [B, Smax, Hkv, D] viewed flat, duplicates keep the last, errors', () => {
  const cache = Tensor.zeros([2, 5, 2, 4], { dtype: 'bf16', device: 'cpu' });
  const k = Tensor.from(Float32Array.from({ length: 3 * 8 }, (_, i) => i), [3, 2, 4], { dtype: 'bf16', device: 'cpu' });
  scatterRows(cache.view([10, 2, 4]), k, Tensor.from(new Int32Array([1 * 5 + 3, 0, 1 * 5 + 3]), [3], { device: 'cpu' }));
  const v = cache.toFloat32();
  assert.deepEqual([...v.subarray(8 * 8, 9 * 8)], [16, 17, 18, 19, 20, 21, 22, 23]); // row 8 = the last write
  assert.deepEqual([...v.subarray(0, 8)], [8, 9, 10, 11, 12, 13, 14, 15]);
  const idx = (a: number[]): Tensor => Tensor.from(Int32Array.from(a), [a.length], { device: 'cpu' });
  assert.throws(() => scatterRows(cache.view([10, 8]), k.view([3, 8]), idx([0, 10, 1])), /scatterRows: index\[1\] = 10 is out of range for 10 rows/);
  assert.throws(() => scatterRows(cache.view([10, 8]), k.view([3, 8]), idx([0, -2, 1])), /scatterRows: index\[1\] = -2 is out of range/);
  // -1 skips a row (a CUDA-graph bucket's padding rows): rows 2 and 4 written, nothing else touched.
  const before = cache.toFloat32();
  scatterRows(cache.view([10, 8]), k.view([3, 8]), idx([2, -1, 4]));
  const after = cache.toFloat32();
  const kv = k.toFloat32();
  for (let r = 0; r < 10; r++) {
    const want = r === 2 ? kv.subarray(0, 8) : r === 4 ? kv.subarray(16, 24) : before.subarray(r * 8, r * 8 + 8);
    assert.deepEqual([...after.subarray(r * 8, r * 8 + 8)], [...want], `row ${r}`);
  }
  assert.throws(() => scatterRows(cache.view([10, 8]), k.view([3, 8]), idx([0, 1])), /scatterRows: src .* must have index.length = 2 rows/);
  assert.throws(() => scatterRows(cache.view([20, 4]), k.view([3, 8]), idx([0, 1, 2])), /rows of dst .* differ in size/);
  assert.throws(() => scatterRows(cache.view([10, 8]), Tensor.zeros([3, 8], { dtype: 'f32', device: 'cpu' }), idx([0, 1, 2])), /share a dtype/);
});
