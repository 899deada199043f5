// Tensor runtime on the CPU backend: factories, views, copies, dispose, errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, StreamEvent, cudaDeviceCount, f32ToBf16Bits, bf16BitsToF32, roundBf16, roundBf16Scalar, memoryStats, resetPeakMemory } from '../../src/tensor.ts';
import { chooseBackend } from '../../src/native.ts';

test('from/toFloat32 round trips f32, i32, u8 and bf16', () => {
  const a = Tensor.from(new Float32Array([1, 2.5, -3, 4]), [2, 2], { device: 'cpu' });
  assert.deepEqual(a.shape, [2, 2]);
  assert.equal(a.dtype, 'f32');
  assert.deepEqual([...a.toFloat32()], [1, 2.5, -3, 4]);
  const b = Tensor.from([1.0001, 3], [2], { dtype: 'bf16', device: 'cpu' });
  assert.deepEqual([...b.toFloat32()], [1, 3]);
  const i = Tensor.from(new Int32Array([7, -1]), [2], { device: 'cpu' });
  assert.deepEqual([...i.toInt32()], [7, -1]);
  const u = Tensor.from(new Uint8Array([255, 0, 3]), [3], { device: 'cpu' });
  assert.deepEqual([...u.toUint8()], [255, 0, 3]);
});

test('bf16 conversion rounds to nearest even and keeps NaN', () => {
  const v = new Float32Array([1 + 2 ** -8, 1 + 3 * 2 ** -8, NaN, Infinity, -0]);
  const r = bf16BitsToF32(f32ToBf16Bits(v));
  assert.equal(r[0], 1);
  assert.equal(r[1], 1 + 2 ** -6);
  assert.ok(Number.isNaN(r[2]));
  assert.equal(r[3], Infinity);
  assert.ok(Object.is(r[4], -0));
});

test('view and slice share memory; copyFrom writes through', () => {
  const a = Tensor.zeros([3, 2], { device: 'cpu' });
  const row = a.slice(1, 2);
  assert.deepEqual(row.shape, [1, 2]);
  row.copyFrom(new Float32Array([5, 6]));
  assert.deepEqual([...a.toFloat32()], [0, 0, 5, 6, 0, 0]);
  const flat = a.view([6]);
  assert.ok(flat.native.sameStorage(a.native));
  assert.throws(() => a.view([4]), /cannot view f32\[3, 2\] on cpu as \[4\]/);
  assert.throws(() => a.slice(2, 5), /slice: range \[2, 5\) out of bounds for f32\[3, 2\]/);
});

test('use after dispose and bad inputs throw errors that name the problem', () => {
  const a = Tensor.zeros([4], { device: 'cpu' });
  const c = a.clone();
  a.dispose();
  assert.ok(a.disposed);
  assert.throws(() => a.toFloat32(), /used after dispose\(\) \(f32\[4\] on cpu\)/);
  assert.deepEqual([...c.toFloat32()], [0, 0, 0, 0]);
  assert.throws(() => Tensor.from([1, 2, 3], [2, 2], { device: 'cpu' }), /3 values do not fill shape \[2, 2\]/);
  assert.throws(() => Tensor.zeros([2], { dtype: 'f64' as never, device: 'cpu' }), /unknown dtype 'f64'/);
  assert.throws(() => Tensor.zeros([-1], { device: 'cpu' }), /non-negative integer/);
});

test('backend choice: cpu without CUDA, override errors are clear', () => {
  assert.equal(chooseBackend('cpu').device, 'cpu');
  assert.throws(() => chooseBackend('tpu'), /GPTOSS_DEVICE must be cpu, cuda or cuda:N/);
  if (!chooseBackend(undefined).device.startsWith('cuda')) {
    assert.equal(chooseBackend(undefined).device, 'cpu');
  }
});

test('roundBf16Scalar equals roundBf16 (ties to even, signed zeros, infinities, NaN, subnormals)', () => {
  const xs = [0, -0, 1, 1.00390625, 1.005859375, 1.0078125 + 2 ** -9, 3.14159, -2.71828e-20, 3.4e38, 3.4028234e38, Infinity, -Infinity, NaN, 1e-45, -1e-40];
  const want = roundBf16(Float32Array.from(xs));
  xs.forEach((x, i) => {
    const got = roundBf16Scalar(x);
    assert.ok(Object.is(got, want[i]) || (Number.isNaN(got) && Number.isNaN(want[i]!)), `${x}: ${got} vs ${want[i]}`);
  });
});

test('pinned host tensors: ordinary memory without a GPU; copyFromAsync between host tensors; StreamEvent on the CPU', () => {
  const a = Tensor.zeros([5], { device: 'cpu', pinned: true });
  // Only a CUDA build with a visible GPU has anything to pin for (cudaHostAlloc); elsewhere plain memory.
  assert.equal(a.pinned, cudaDeviceCount() > 0);
  assert.equal(Tensor.zeros([5], { device: 'cpu' }).pinned, false);
  const b = Tensor.from([1, 2, 3, 4, 5], [5], { device: 'cpu' });
  a.copyFromAsync(b);
  assert.deepEqual([...a.toFloat32()], [1, 2, 3, 4, 5]);
  const v = a.slice(1, 3);
  assert.equal(v.pinned, a.pinned, 'a view shares its storage, pinned or not');
  assert.throws(() => a.copyFromAsync(Tensor.zeros([4], { device: 'cpu' })), /copyFromAsync: destination f32\[5\] on cpu does not match source f32\[4\]/);
  // The CPU's StreamEvent: record/wait order nothing (every op is done when it returns); timing is wall time.
  const e0 = new StreamEvent('cpu', true).record();
  const e1 = new StreamEvent('cpu', true).record('comm');
  e1.wait();
  e1.synchronize();
  assert.ok(e0.elapsedMs(e1) >= 0);
  assert.throws(() => new StreamEvent('cpu').elapsedMs(e1), /both events need timing/);
});

test("memoryStats('cpu'): host tensors' bytes, their peak since resetPeakMemory, allocations", () => {
  resetPeakMemory('cpu');
  const before = memoryStats('cpu');
  assert.equal(before.peakAllocated, before.allocated);
  assert.equal(before.reserved, before.allocated);
  const t = Tensor.zeros([1000, 1000], { device: 'cpu' }); // 4,000,000 bytes
  const during = memoryStats('cpu');
  assert.equal(during.allocated - before.allocated, 4_000_000);
  assert.equal(during.numAllocs - before.numAllocs, 1);
  t.dispose();
  const after = memoryStats('cpu');
  assert.equal(after.allocated, before.allocated);
  assert.ok(after.peakAllocated >= before.allocated + 4_000_000, `peak ${after.peakAllocated}`);
  resetPeakMemory('cpu');
  assert.equal(memoryStats('cpu').peakAllocated, memoryStats('cpu').allocated);
});
