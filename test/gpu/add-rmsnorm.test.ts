// addRmsnorm on CUDA (the residual add fused with the post-attention RMSNorm, one launch of add_fwd_kernel) against
// the two ops it replaces on the device (add, or a copy with o added in place, then rmsnormForward: two launches)
// bitwise, and against the CPU op: h bitwise (one fp32 add and one rounding on both), y and rstd within the rmsnorm
// test's bounds (the CUDA row sum is a block reduction, the CPU's a sequential loop, so rstd is not bitwise across
// backends). Shapes cover the decode row (T=1, H=2880), a training batch, the tensor-parallel f32 o, odd H (scalar
// path) and misaligned x / o views (the vector partition with element loads). Ends with a timing line per shape
// (the fused op vs add + rmsnormForward).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, cudaDeviceCount } from '../../src/tensor.ts';
import { native } from '../../src/native.ts';
import { addRmsnorm, rmsnormForward } from '../../src/ops/rmsnorm.ts';
import { add, addInPlace } from '../../src/ops/elementwise.ts';
import { uniform, uniformBf16 } from '../helpers/random.ts';
import { maxAbsDiff, maxAbs } from '../helpers/numeric.ts';
import { msPerCall } from '../../bench/timing.ts';

const skip = cudaDeviceCount() === 0 ? 'no CUDA device (GPU machine only)' : false;
const GPU = 'cuda:0';
const cpu = { device: 'cpu' } as const;
const gpu = { device: GPU } as const;
const EPS = 1e-5;

function bits(t: Tensor): Uint32Array {
  const f = t.toFloat32();
  return new Uint32Array(f.buffer, f.byteOffset, f.length);
}

/** A view whose data starts 1 element past a 16-byte boundary. */
function misaligned(data: Float32Array, shape: number[], dtype: 'bf16' | 'f32'): Tensor {
  const n = data.length;
  const buf = new Float32Array(n + 1);
  buf.set(data, 1);
  return Tensor.from(buf, [n + 1], { ...gpu, dtype }).slice(1, n + 1).view(shape);
}

function launches<R>(f: () => R): { r: R; n: number } {
  const before = native().ops.launchCount();
  const r = f();
  return { r, n: native().ops.launchCount() - before };
}

type Case = { t: number; h: number; xd: 'bf16' | 'f32'; od: 'bf16' | 'f32'; wd: 'bf16' | 'f32'; mis: '' | 'x' | 'o' | 'xo' };
const CASES: Case[] = [
  { t: 1, h: 2880, xd: 'bf16', od: 'bf16', wd: 'bf16', mis: '' }, // batch-1 decode
  { t: 4096, h: 2880, xd: 'bf16', od: 'bf16', wd: 'bf16', mis: '' }, // training
  { t: 64, h: 2880, xd: 'bf16', od: 'f32', wd: 'bf16', mis: '' }, // tensor-parallel: o is the f32 all-reduced sum
  { t: 113, h: 7, xd: 'bf16', od: 'bf16', wd: 'bf16', mis: '' }, // odd H: scalar path
  { t: 7, h: 64, xd: 'bf16', od: 'bf16', wd: 'bf16', mis: 'xo' }, // vector partition, element loads
  { t: 5, h: 72, xd: 'bf16', od: 'f32', wd: 'f32', mis: 'o' },
  { t: 3, h: 2880, xd: 'f32', od: 'f32', wd: 'f32', mis: '' },
  { t: 9, h: 40, xd: 'f32', od: 'bf16', wd: 'bf16', mis: 'x' },
  { t: 1, h: 1, xd: 'bf16', od: 'bf16', wd: 'bf16', mis: '' },
];

for (const c of CASES) {
  const name = `T=${c.t}, H=${c.h}, x ${c.xd}, o ${c.od}, w ${c.wd}${c.mis ? `, ${c.mis} misaligned` : ''}`;
  test(`addRmsnorm on CUDA: one launch, == add + rmsnormForward bitwise; vs the CPU op (${name})`, { skip }, () => {
    const n = c.t * c.h;
    const xs = uniformBf16(n, 3 + n, -4, 4), os = uniform(n, 4 + n, -4, 4), ws = uniform(c.h, 5 + c.h, 0.5, 1.5);
    const xc = Tensor.from(xs, [c.t, c.h], { ...cpu, dtype: c.xd });
    const oc = Tensor.from(os, [c.t, c.h], { ...cpu, dtype: c.od });
    const wc = Tensor.from(ws, [c.h], { ...cpu, dtype: c.wd });
    const xg = c.mis.includes('x') ? misaligned(xs, [c.t, c.h], c.xd) : Tensor.from(xs, [c.t, c.h], { ...gpu, dtype: c.xd });
    const og = c.mis.includes('o') ? misaligned(os, [c.t, c.h], c.od) : Tensor.from(os, [c.t, c.h], { ...gpu, dtype: c.od });
    const wg = Tensor.from(ws, [c.h], { ...gpu, dtype: c.wd });

    const fused = launches(() => addRmsnorm(xg, og, wg, EPS));
    assert.equal(fused.n, 1, 'the fused op is one launch');
    assert.equal(fused.r.h.device, GPU);
    // The two calls the layer made before (add, or a copy with o added in place, then the norm) on the device.
    const hg = xg.clone();
    addInPlace(hg, og);
    if (c.xd === c.od) assert.deepEqual(bits(add(xg, og)), bits(hg), 'add == clone + addInPlace');
    const ng = rmsnormForward(hg, wg, EPS);
    assert.deepEqual(bits(fused.r.h), bits(hg), 'h vs add');
    assert.deepEqual(bits(fused.r.y), bits(ng.y), 'y vs rmsnormForward(h)');
    assert.deepEqual(bits(fused.r.rstd), bits(ng.rstd), 'rstd vs rmsnormForward(h)');

    // Against the CPU op: h bitwise; y and rstd within rmsnorm's CUDA-vs-CPU bounds (float64 truth of the norm of h).
    const fc = addRmsnorm(xc, oc, wc, EPS);
    assert.deepEqual(bits(fused.r.h), bits(fc.h), 'h vs the CPU');
    const hv = fc.h.toFloat32(), wv = wc.toFloat32();
    const yTruth = new Float64Array(n), rTruth = new Float64Array(c.t);
    for (let r = 0; r < c.t; r++) {
      let ss = 0;
      for (let j = 0; j < c.h; j++) ss += hv[r * c.h + j]! ** 2;
      rTruth[r] = 1 / Math.sqrt(ss / c.h + EPS);
      for (let j = 0; j < c.h; j++) yTruth[r * c.h + j] = wv[j]! * hv[r * c.h + j]! * rTruth[r]!;
    }
    const eCuda = maxAbsDiff(fused.r.y.toFloat32(), yTruth), eCpu = maxAbsDiff(fc.y.toFloat32(), yTruth);
    console.log(`  ${name}: y max |cuda - truth| ${eCuda.toExponential(3)}, |cpu - truth| ${eCpu.toExponential(3)}`);
    assert.ok(eCuda <= 2 * eCpu + 1e-6 * maxAbs(yTruth), `y: cuda error ${eCuda} > 2 x cpu error ${eCpu} + floor`);
    assert.ok(maxAbsDiff(fused.r.rstd.toFloat32(), rTruth) <= 1e-5 * maxAbs(rTruth), 'rstd vs float64');
  });
}

test('addRmsnorm on CUDA rejects bad shapes and mixed devices with clear errors', { skip }, () => {
  const x = Tensor.zeros([4, 8], { ...gpu, dtype: 'bf16' });
  const w = Tensor.zeros([8], { ...gpu, dtype: 'bf16' });
  assert.throws(() => addRmsnorm(x, Tensor.zeros([4, 7], { ...gpu, dtype: 'bf16' }), w, EPS), /addRmsnorm: o must have shape \[4, 8\], got bf16\[4, 7\] on cuda:0/);
  assert.throws(() => addRmsnorm(x, Tensor.zeros([4, 8], { ...cpu, dtype: 'bf16' }), w, EPS), /addRmsnorm: o is on cpu but the op runs on cuda:0/);
});

test('addRmsnorm on CUDA: time of the fused op vs add + rmsnormForward (printed)', { skip }, () => {
  for (const t of [1, 64, 16384]) {
    const h = 2880;
    const x = Tensor.from(uniformBf16(t * h, 7, -4, 4), [t, h], { ...gpu, dtype: 'bf16' });
    const o = Tensor.from(uniformBf16(t * h, 8, -4, 4), [t, h], { ...gpu, dtype: 'bf16' });
    const w = Tensor.from(uniform(h, 9, 0.5, 1.5), [h], { ...gpu, dtype: 'bf16' });
    const fusedOp = () => {
      const r = addRmsnorm(x, o, w, EPS);
      r.h.dispose();
      r.y.dispose();
      r.rstd.dispose();
    };
    const twoOps = () => {
      const hs = add(x, o);
      const r = rmsnormForward(hs, w, EPS);
      hs.dispose();
      r.y.dispose();
      r.rstd.dispose();
    };
    const us1 = msPerCall(GPU, 50, fusedOp) * 1000, us0 = msPerCall(GPU, 50, twoOps) * 1000;
    console.log(`  addRmsnorm T=${t} H=${h} bf16: fused ${us1.toFixed(2)} us, add + rmsnormForward ${us0.toFixed(2)} us (host enqueue included at small T)`);
    for (const tt of [x, o, w]) tt.dispose();
  }
});
