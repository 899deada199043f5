// CUDA tensor runtime: allocation, copies in every direction, views, caching allocator statistics, events,
// out-of-memory and misuse errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, CudaEvent, StreamEvent, memoryStats, emptyCache, synchronize, cudaDeviceCount } from '../../src/tensor.ts';
import { native } from '../../src/native.ts';

const gpus = cudaDeviceCount();
const skip = gpus === 0 ? 'no CUDA device (GPU machine only)' : false;

test('host <-> device <-> device copies keep values', { skip }, () => {
  const host = new Float32Array(1000).map((_, i) => i * 0.5 - 7);
  const a = Tensor.from(host, [10, 100], { device: 'cuda:0' });
  assert.equal(a.device, 'cuda:0');
  const b = a.clone();
  assert.deepEqual(b.toFloat32(), host);
  const c = b.to('cpu');
  assert.deepEqual(c.toFloat32(), host);
  const bf = Tensor.from(host, [1000], { device: 'cuda:0', dtype: 'bf16' });
  const round = Tensor.from(host, [1000], { device: 'cpu', dtype: 'bf16' });
  assert.deepEqual(bf.toFloat32(), round.toFloat32());
  const row = a.slice(3, 4);
  row.copyFrom(new Float32Array(100).fill(1));
  assert.equal(a.toFloat32()[300], 1);
  assert.equal(a.toFloat32()[299], host[299]);
  if (gpus > 1) {
    const d = a.to('cuda:1');
    assert.deepEqual(d.toFloat32(), a.toFloat32());
  }
});

test('caching allocator reuses freed blocks and reports allocated/reserved/peak', { skip }, () => {
  emptyCache('cuda:0');
  const before = memoryStats('cuda:0');
  const t = Tensor.empty([1 << 20], { device: 'cuda:0' }); // 4 MiB
  const mid = memoryStats('cuda:0');
  assert.equal(mid.allocated - before.allocated, 4 << 20);
  t.dispose();
  const after = memoryStats('cuda:0');
  assert.equal(after.allocated, before.allocated);
  assert.ok(after.reserved >= 4 << 20);
  assert.ok(after.peakAllocated >= mid.allocated);
  const mallocs = after.numCudaMallocs;
  const t2 = Tensor.empty([1 << 20], { device: 'cuda:0' });
  assert.equal(memoryStats('cuda:0').numCudaMallocs, mallocs, 'second allocation served from the cache');
  t2.dispose();
});

test('zeros, events and timing', { skip }, () => {
  const z = Tensor.zeros([4097], { device: 'cuda:0', dtype: 'bf16' });
  assert.ok(z.toFloat32().every((v) => v === 0));
  const e0 = new CudaEvent('cuda:0', true).record();
  const big = Tensor.zeros([1 << 24], { device: 'cuda:0' });
  const e1 = new CudaEvent('cuda:0', true).record();
  e1.synchronize();
  assert.ok(e1.query());
  assert.ok(e0.elapsedMs(e1) >= 0);
  big.dispose();
  synchronize('cuda:0');
});

test('out of memory and bad devices throw clear errors', { skip }, () => {
  assert.throws(() => Tensor.empty([1 << 30, 1 << 10], { device: 'cuda:0' }), /out of memory on cuda:0 allocating/);
  assert.throws(() => Tensor.empty([4], { device: `cuda:${gpus + 3}` }), /does not exist/);
  const a = Tensor.zeros([4], { device: 'cuda:0' });
  assert.throws(() => a.copyFrom(new Float32Array(5)), /host buffer has 20 bytes but f32\[4\] on cuda:0 needs 16/);
});

test('pinned host tensors: asynchronous copies both ways, ordered by an event; pageable ones refused', { skip }, () => {
  const n = 1 << 20;
  const host = new Float32Array(n).map((_, i) => (i % 1000) * 0.25 - 3);
  const src = Tensor.empty([n], { device: 'cpu', pinned: true });
  assert.equal(src.pinned, true);
  src.copyFrom(host);
  const dev = Tensor.empty([n], { device: 'cuda:0' });
  dev.copyFromAsync(src);
  const back = Tensor.zeros([n], { device: 'cpu', pinned: true });
  back.copyFromAsync(dev);
  const done = new StreamEvent('cuda:0').record();
  done.synchronize();
  assert.deepEqual(back.toFloat32(), host);
  assert.throws(() => dev.copyFromAsync(Tensor.zeros([n], { device: 'cpu' })), /copyFromAsync: host tensor f32\[1048576\] on cpu is not pinned/);
  assert.throws(() => Tensor.empty([4], { device: 'cuda:0', pinned: true }), /pinned applies to host tensors, not cuda:0/);
});

test('comm stream: work ordered by events both ways gives the values of one stream', { skip }, () => {
  // A copy on the compute stream, then (after an event) the comm stream waits and a second event makes compute
  // wait for it: the values read back are the last write's.
  const a = Tensor.from(new Float32Array(4096).fill(2), [4096], { device: 'cuda:0' });
  const ready = new StreamEvent('cuda:0').record('compute');
  ready.wait('comm');
  const done = new StreamEvent('cuda:0').record('comm');
  done.wait('compute');
  const b = a.clone();
  assert.deepEqual([...b.toFloat32()].slice(0, 3), [2, 2, 2]);
  assert.throws(() => native().ops.eventRecord(native().ops.eventCreate(0), 0, 'other' as 'comm'), /stream must be 'compute' or 'comm', got 'other'/);
  synchronize('cuda:0');
});
