// CPU GEMM (matmul, linearForward/Backward) against float64 references: transposes, dtypes, bias, alpha,
// accumulate, awkward sizes, bad inputs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, roundBf16 } from '../../src/tensor.ts';
import { matmul, linearForward, linearBackward } from '../../src/ops/gemm.ts';
import { refMatmul } from '../helpers/coreops2-ref.ts';
import { uniformSym } from '../helpers/random.ts';
import { assertClose } from '../helpers/numeric.ts';
import type { FloatDType } from '../../src/native.ts';

const dev = 'cpu';

function check(M: number, N: number, K: number, transA: boolean, transB: boolean, inDtype: FloatDType, outDtype: FloatDType, seed: number): void {
  const bf = inDtype === 'bf16';
  const a = uniformSym(M * K, seed, 1, bf);
  const b = uniformSym(K * N, seed + 1, 1, bf);
  const ta = Tensor.from(a, transA ? [K, M] : [M, K], { dtype: inDtype, device: dev });
  const tb = Tensor.from(b, transB ? [N, K] : [K, N], { dtype: inDtype, device: dev });
  const c = matmul(ta, tb, { transA, transB, outDtype });
  assert.deepEqual(c.shape, [M, N]);
  assert.equal(c.dtype, outDtype);
  const { c: want, mag } = refMatmul(a, b, M, N, K, transA, transB);
  const got = c.toFloat32();
  const what = `matmul M${M} N${N} K${K} tA${transA} tB${transB} ${inDtype}->${outDtype}`;
  for (let i = 0; i < want.length; i++) {
    // fp32 accumulation error bound, plus one bf16 rounding of the output when it is bf16.
    const tol = 2e-6 * mag[i]! * Math.sqrt(K + 1) + 1e-30 + (outDtype === 'bf16' ? Math.abs(want[i]!) * 2 ** -8 : 0);
    if (!(Math.abs(got[i]! - want[i]!) <= tol)) assert.fail(`${what}: [${i}] got ${got[i]} want ${want[i]} tol ${tol}`);
  }
}

test('matmul matches float64 for every transpose, dtype and awkward size', () => {
  const sizes: [number, number, number][] = [
    [1, 1, 1],
    [7, 113, 257],
    [113, 7, 1],
    [257, 113, 300],
    [1, 257, 7],
    [73, 33, 513],
  ];
  let seed = 1;
  for (const [M, N, K] of sizes)
    for (const transA of [false, true])
      for (const transB of [false, true]) {
        check(M, N, K, transA, transB, 'f32', 'f32', seed++);
        check(M, N, K, transA, transB, 'bf16', 'bf16', seed++);
      }
  check(7, 113, 257, false, true, 'bf16', 'f32', 99);
  check(113, 7, 9, true, false, 'f32', 'bf16', 98);
});

test('matmul bias, alpha and accumulate', () => {
  const M = 7, N = 113, K = 33;
  const a = uniformSym(M * K, 5, 1, true), b = uniformSym(N * K, 6, 1, true), bias = uniformSym(N, 7, 1, true), c0 = uniformSym(M * N, 8);
  const ta = Tensor.from(a, [M, K], { dtype: 'bf16', device: dev });
  const tb = Tensor.from(b, [N, K], { dtype: 'bf16', device: dev });
  const tbias = Tensor.from(bias, [N], { dtype: 'bf16', device: dev });
  const out = Tensor.from(c0, [M, N], { dtype: 'f32', device: dev });
  const r = matmul(ta, tb, { transB: true, bias: tbias, out, accumulate: true, alpha: 0.5 });
  assert.equal(r, out);
  const { c } = refMatmul(a, b, M, N, K, false, true);
  const want = c.map((v, i) => 0.5 * v + bias[i % N]! + c0[i]!);
  assertClose(out.toFloat32(), want, 1e-5, 1e-5, 'bias+alpha+accumulate');
  // f32 bias on a bf16 output
  const y = matmul(ta, tb, { transB: true, bias: Tensor.from(bias, [N], { device: dev }) });
  assert.equal(y.dtype, 'bf16');
  assertClose(y.toFloat32(), roundBf16(Float32Array.from(c.map((v, i) => v + bias[i % N]!))), 1e-6, 2 ** -8, 'bf16 out + f32 bias');
  // K = 0: bias only
  const e = matmul(Tensor.zeros([3, 0], { device: dev }), Tensor.zeros([0, 4], { device: dev }), {
    bias: Tensor.from([1, 2, 3, 4], [4], { device: dev }),
  });
  assert.deepEqual([...e.toFloat32()], [1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4]);
});

test('matmul mixes bf16 and f32 inputs exactly on the CPU', () => {
  const M = 5, N = 9, K = 17;
  const a = uniformSym(M * K, 11), b = uniformSym(K * N, 12, 1, true);
  const c = matmul(Tensor.from(a, [M, K], { device: dev }), Tensor.from(b, [K, N], { dtype: 'bf16', device: dev }), { outDtype: 'f32' });
  assertClose(c.toFloat32(), refMatmul(a, b, M, N, K, false, false).c, 1e-5, 1e-5, 'mixed');
});

test('linearForward / linearBackward match the formulas and finite differences', () => {
  const T = 7, nIn = 13, nOut = 5;
  const x = uniformSym(T * nIn, 21, 1, true), w = uniformSym(nOut * nIn, 22, 1, true), b = uniformSym(nOut, 23, 1, true);
  const tx = Tensor.from(x, [T, nIn], { dtype: 'bf16', device: dev });
  const tw = Tensor.from(w, [nOut, nIn], { dtype: 'bf16', device: dev });
  const tbias = Tensor.from(b, [nOut], { dtype: 'bf16', device: dev });
  const y = linearForward(tx, tw, tbias);
  assert.equal(y.dtype, 'bf16');
  const yref = refMatmul(x, w, T, nOut, nIn, false, true).c.map((v, i) => v + b[i % nOut]!);
  assertClose(y.toFloat32(), yref, 1e-6, 2 ** -8, 'linearForward');

  const dy = uniformSym(T * nOut, 24);
  const tdy = Tensor.from(dy, [T, nOut], { device: dev });
  const dW0 = uniformSym(nOut * nIn, 25);
  const dWacc = Tensor.from(dW0, [nOut, nIn], { device: dev });
  const g = linearBackward(tdy, tx, tw, { dW: dWacc });
  assert.equal(g.dW, dWacc);
  assertClose(g.dx!.toFloat32(), refMatmul(dy, w, T, nIn, nOut, false, false).c, 1e-5, 1e-5, 'dx');
  const dWref = refMatmul(dy, x, nOut, nIn, T, true, false).c.map((v, i) => v + dW0[i]!);
  assertClose(g.dW.toFloat32(), dWref, 1e-5, 1e-5, 'dW (accumulated)');
  const dbref = new Float64Array(nOut);
  for (let t = 0; t < T; t++) for (let o = 0; o < nOut; o++) dbref[o]! += dy[t * nOut + o]!;
  assertClose(g.db.toFloat32(), dbref, 1e-5, 1e-5, 'db');

  // Finite differences of L = Σ dy ⊙ (x Wᵀ + b) in f32 (exactly linear, so central differences are exact up to rounding).
  const xf = Tensor.from(x, [T, nIn], { device: dev });
  const wf = Tensor.from(w, [nOut, nIn], { device: dev });
  const loss = (xs: Float32Array): number => {
    const yy = matmul(Tensor.from(xs, [T, nIn], { device: dev }), wf, { transB: true }).toFloat32();
    let s = 0;
    for (let i = 0; i < yy.length; i++) s += yy[i]! * dy[i]!;
    return s;
  };
  const gf = linearBackward(tdy, xf, wf, { needDx: true });
  const dx = gf.dx!.toFloat32();
  for (const i of [0, 5, 40, T * nIn - 1]) {
    const h = 1e-2;
    const xp = Float32Array.from(x), xm = Float32Array.from(x);
    xp[i]! += h;
    xm[i]! -= h;
    const fd = (loss(xp) - loss(xm)) / (2 * h);
    assert.ok(Math.abs(fd - dx[i]!) < 1e-3 * (1 + Math.abs(fd)), `dx[${i}] fd ${fd} vs ${dx[i]}`);
  }
  assert.equal(linearBackward(tdy, tx, tw, { needDx: false }).dx, undefined);
});

test('matmul rejects bad inputs with the shapes in the message', () => {
  const a = Tensor.zeros([3, 4], { device: dev });
  const b = Tensor.zeros([5, 6], { device: dev });
  assert.throws(() => matmul(a, b), /matmul: inner dimensions differ: a f32\[3, 4\] on cpu and b f32\[5, 6\] on cpu/);
  assert.throws(() => matmul(a, Tensor.zeros([4, 6], { device: dev }), { bias: Tensor.zeros([5], { device: dev }) }), /bias must be bf16 or f32 \[6\], got f32\[5\]/);
  assert.throws(() => matmul(a, Tensor.zeros([4, 6], { device: dev }), { out: Tensor.zeros([3, 5], { device: dev }) }), /out must be bf16 or f32 \[3, 6\], got f32\[3, 5\]/);
  assert.throws(() => matmul(a, Tensor.zeros([4, 6], { device: dev }), { accumulate: true }), /accumulate needs an out tensor/);
  assert.throws(() => matmul(Tensor.zeros([3, 4], { dtype: 'i32', device: dev }), a), /must be 2-d bf16 or f32 tensors/);
  assert.throws(() => matmul(Tensor.zeros([3], { device: dev }), a), /must be 2-d bf16 or f32 tensors/);
});
