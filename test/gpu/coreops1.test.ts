// CUDA core ops (embedding, RMSNorm, YaRN RoPE, elementwise, SwiGLU-clamp) against the CPU ops on the same
// inputs, at model sizes (vectorised paths) and awkward sizes / misaligned views (scalar paths). Where BF16 is
// involved the bound is FlashAttention-style: the CUDA error against the float64 truth is at most twice the
// CPU (plain fp32-math BF16) error plus a small floor. Ends with a bandwidth table (COREOPS1_OUT=dir writes
// coreops1-bench.json there).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tensor, CudaEvent, cudaDeviceCount, synchronize } from '../../src/tensor.ts';
import { native } from '../../src/native.ts';
import { embeddingForward, embeddingForwardSlice, embeddingBackward } from '../../src/ops/embedding.ts';
import { rmsnormForward, rmsnormBackward } from '../../src/ops/rmsnorm.ts';
import { yarnInvFreqTensor, ropeForward, ropeBackward, ropeQkvSplit, ropeQkvProject, ropeQkvPack } from '../../src/ops/rope.ts';
import { linearForward } from '../../src/ops/gemm.ts';
import { add, addInPlace, scale, scaleInPlace, cast, concatColumns, fill, zerosLike } from '../../src/ops/elementwise.ts';
import { swigluForward, swigluBackward } from '../../src/ops/swiglu.ts';
import { uniform, uniformBf16, randInts } from '../helpers/random.ts';
import { maxAbsDiff, maxAbs } from '../helpers/numeric.ts';

const gpus = cudaDeviceCount();
const skip = gpus === 0 ? 'no CUDA device (GPU machine only)' : false;
const GPU = 'cuda:0';
const cpu = { device: 'cpu' } as const;
const gpu = { device: GPU } as const;

/** CUDA error vs truth <= 2 x CPU error vs truth + floor. */
function assertBound(cuda: Float32Array, cpuOut: Float32Array, truth: ArrayLike<number>, floor: number, what: string): void {
  const eCuda = maxAbsDiff(cuda, truth), eCpu = maxAbsDiff(cpuOut, truth);
  console.log(`  ${what}: max |cuda - truth| ${eCuda.toExponential(3)}, max |cpu - truth| ${eCpu.toExponential(3)}, |truth| ${maxAbs(truth).toExponential(3)}`);
  assert.ok(eCuda <= 2 * eCpu + floor, `${what}: cuda error ${eCuda} > 2 x cpu error ${eCpu} + ${floor}`);
}

function both(data: Float32Array | Int32Array, shape: number[], dtype?: 'bf16' | 'f32' | 'i32'): [Tensor, Tensor] {
  const o = dtype ? { dtype } : {};
  return [Tensor.from(data, shape, { ...cpu, ...o }), Tensor.from(data, shape, { ...gpu, ...o })];
}

/** A view whose data starts 1 element past a 16-byte boundary (forces the kernels' scalar paths). */
function misaligned(data: Float32Array, shape: number[], dtype: 'bf16' | 'f32'): Tensor {
  const n = data.length;
  const buf = new Float32Array(n + 1);
  buf.set(data, 1);
  return Tensor.from(buf, [n + 1], { ...gpu, dtype }).slice(1, n + 1).view(shape);
}

// ---- embedding -----------------------------------------------------------------------------------------------
for (const [v, h, t] of [
  [4096, 2880, 4096],
  [113, 7, 113],
  [256, 64, 1],
] as const) {
  test(`embedding on CUDA equals the CPU (V=${v}, H=${h}, T=${t}); backward deterministic`, { skip }, () => {
    const w = uniformBf16(v * h, 1 + h);
    const ids = randInts(t, 2 + t, Math.min(v, 300)); // repeats
    const [wc, wg] = both(w, [v, h], 'bf16');
    const [ic, ig] = both(ids, [t]);
    const yg = embeddingForward(wg, ig);
    assert.equal(yg.device, GPU);
    assert.deepEqual(yg.toFloat32(), embeddingForward(wc, ic).toFloat32());
    for (const dtype of ['bf16', 'f32'] as const) {
      const d = dtype === 'bf16' ? uniformBf16(t * h, 3) : uniform(t * h, 3);
      const [dc, dg] = both(d, [t, h], dtype);
      const a = embeddingBackward(dg, ig, v).toFloat32();
      const b = embeddingBackward(dg, ig, v).toFloat32();
      assert.deepEqual(a, b, 'bitwise reproducible');
      // Same summation order (token order per id) as the CPU: equal.
      assert.ok(maxAbsDiff(a, embeddingBackward(dc, ic, v).toFloat32()) <= 1e-6, `dW ${dtype}`);
      // Accumulating into a buffer (the vector path and, with H = 7, the scalar one) gives the bits of a fresh
      // gradient added to it.
      const prev = uniform(v * h, 9);
      const into = Tensor.from(prev, [v, h], gpu);
      assert.equal(embeddingBackward(dg, ig, v, { into }), into);
      assert.deepEqual(into.toFloat32(), Float32Array.from(a, (x, i) => Math.fround(prev[i]! + x)), `into ${dtype}`);
    }
  });
}

test('embedding on CUDA reports bad ids by value; misaligned weights use the scalar path', { skip }, () => {
  const w = Tensor.from(uniformBf16(10 * 8, 4), [10, 8], { ...gpu, dtype: 'bf16' });
  assert.throws(() => embeddingForward(w, Tensor.from(new Int32Array([1, 10]), [2], gpu)), /embeddingForward: ids\[1\] = 10 is out of range for vocabulary size V = 10/);
  assert.throws(() => embeddingBackward(Tensor.zeros([1, 8], gpu), Tensor.from(new Int32Array([-3]), [1], gpu), 10), /embeddingBackward: ids\[0\] = -3 is out of range/);
  assert.throws(() => embeddingForward(w, Tensor.from(new Int32Array([1]), [1], cpu)), /embeddingForward: ids is on cpu but the op runs on cuda:0/);
  const wd = uniformBf16(10 * 8, 5);
  const ids = new Int32Array([3, 3, 9, 0]);
  const y = embeddingForward(misaligned(wd, [10, 8], 'bf16'), Tensor.from(ids, [4], gpu)).toFloat32();
  assert.deepEqual(y, embeddingForward(Tensor.from(wd, [10, 8], { ...cpu, dtype: 'bf16' }), Tensor.from(ids, [4], cpu)).toFloat32());
});

test('embeddingForwardSlice and concatColumns on CUDA equal the CPU (vocabulary-parallel pieces, 20b widths)', { skip }, () => {
  // A rank's slice of a vocabulary of 1000 over tp 3 (slices of 334, the last 332 + padding), H 2880 (vectorised)
  // and H 7 (scalar path): ids of every slice, the slice's rows looked up, the others zero.
  for (const H of [2880, 7]) {
    const V = 1000, W = 334;
    const ids = randInts(257, 11, V);
    for (let r = 0; r < 3; r++) {
      const w = uniformBf16(W * H, 20 + r);
      const c = embeddingForwardSlice(Tensor.from(w, [W, H], { ...cpu, dtype: 'bf16' }), Tensor.from(ids, [257], cpu), r * W);
      const g = embeddingForwardSlice(Tensor.from(w, [W, H], { ...gpu, dtype: 'bf16' }), Tensor.from(ids, [257], gpu), r * W);
      assert.deepEqual(new Uint8Array(g.toBuffer()), new Uint8Array(c.toBuffer()), `H ${H} rank ${r}`);
    }
  }
  // concatColumns: f32 logits [tp, S, Vr] -> [S, V] (the 20b vocabulary over tp 4 and an uneven cut), bf16, i32.
  for (const [R, S, W, N, dtype] of [[4, 5, 50272, 201088, 'f32'], [3, 7, 334, 1000, 'f32'], [2, 3, 9, 17, 'bf16'], [5, 1, 4, 20, 'i32']] as const) {
    const src = uniform(R * S * W, R + S + W, -3, 3);
    const c = concatColumns(Tensor.from(src, [R, S, W], { ...cpu, dtype }), N);
    const g = concatColumns(Tensor.from(src, [R, S, W], { ...gpu, dtype }), N);
    assert.deepEqual(g.shape, [S, N]);
    assert.deepEqual(new Uint8Array(g.toBuffer()), new Uint8Array(c.toBuffer()), `concatColumns ${R}x${S}x${W} -> ${N} ${dtype}`);
  }
});

// ---- RMSNorm -------------------------------------------------------------------------------------------------
function rmsTruth(x: Float32Array, w: Float32Array, dy: Float32Array, t: number, h: number, eps: number) {
  const y = new Float64Array(t * h), dx = new Float64Array(t * h), dw = new Float64Array(h), rstd = new Float64Array(t);
  for (let r = 0; r < t; r++) {
    let ss = 0, gx = 0;
    for (let j = 0; j < h; j++) {
      const xv = x[r * h + j]!;
      ss += xv * xv;
      gx += dy[r * h + j]! * w[j]! * xv;
    }
    const rs = 1 / Math.sqrt(ss / h + eps);
    rstd[r] = rs;
    for (let j = 0; j < h; j++) {
      const xv = x[r * h + j]!, d = dy[r * h + j]!;
      y[r * h + j] = w[j]! * xv * rs;
      dx[r * h + j] = rs * (d * w[j]! - xv * rs * rs * (gx / h));
      dw[j]! += d * xv * rs;
    }
  }
  return { y, dx, dw, rstd };
}

for (const [t, h, mis] of [
  [4096, 2880, false],
  [113, 7, false],
  [7, 64, true],
  [1, 1, false],
] as const) {
  test(`rmsnorm on CUDA vs CPU (T=${t}, H=${h}${mis ? ', misaligned' : ''})`, { skip }, () => {
    const eps = 1e-5;
    const x = uniformBf16(t * h, 10 + h, -3, 3), w = uniformBf16(h, 11 + h, 0.5, 1.5), dy = uniformBf16(t * h, 12 + h);
    const truth = rmsTruth(x, w, dy, t, h, eps);
    const [xc, xg0] = both(x, [t, h], 'bf16');
    const xg = mis ? misaligned(x, [t, h], 'bf16') : xg0;
    const [wc, wg] = both(w, [h], 'bf16');
    const [dc, dg] = both(dy, [t, h], 'bf16');
    const fc = rmsnormForward(xc, wc, eps), fg = rmsnormForward(xg, wg, eps);
    assertBound(fg.y.toFloat32(), fc.y.toFloat32(), truth.y, 1e-6, 'y');
    assert.ok(maxAbsDiff(fg.rstd.toFloat32(), truth.rstd) <= 1e-5 * maxAbs(truth.rstd), 'rstd');
    const bc = rmsnormBackward(dc, xc, wc, fc.rstd), bg = rmsnormBackward(dg, xg, wg, fg.rstd);
    // dx is a difference of terms of size |dy * w * rstd| (it cancels to ~0 when H = 1): the floor scales with that.
    const termScale = maxAbs(dy) * maxAbs(w) * maxAbs(truth.rstd);
    assertBound(bg.dx.toFloat32(), bc.dx.toFloat32(), truth.dx, 1e-6 * termScale, 'dx');
    assertBound(bg.dw.toFloat32(), bc.dw.toFloat32(), truth.dw, 1e-6 * maxAbs(truth.dw), 'dw');
    const again = rmsnormBackward(dg, xg, wg, fg.rstd);
    assert.deepEqual(again.dw.toFloat32(), bg.dw.toFloat32(), 'dw bitwise reproducible');
    // With a residual gradient added in the same pass: exactly dx + residual on the device too.
    const res = uniformBf16(t * h, 13 + h, -2, 2);
    const withRes = rmsnormBackward(dg, xg, wg, fg.rstd, Tensor.from(res, [t, h], { device: 'cuda:0' }));
    const dxg = bg.dx.toFloat32();
    assert.deepEqual(withRes.dx.toFloat32(), Float32Array.from(dxg, (v, i) => v + res[i]!), 'dx + residual');
  });
}

// ---- RoPE ----------------------------------------------------------------------------------------------------
for (const [t, heads, d, mis] of [
  [4096, 64, 64, false],
  [4096, 8, 64, false],
  [113, 3, 14, false],
  [7, 2, 16, true],
] as const) {
  test(`rope on CUDA vs CPU (T=${t}, heads=${heads}, D=${d}${mis ? ', misaligned' : ''})`, { skip }, () => {
    const cfg = { headDim: d, ropeTheta: 150000, factor: 32, betaFast: 32, betaSlow: 1, originalMaxPositions: 4096, truncate: false };
    const n = t * heads * d, half = d / 2;
    const x = uniformBf16(n, 20 + d, -2, 2), dy = uniformBf16(n, 21 + d);
    const pos = randInts(t, 22, 131072);
    const { invFreq: invC, attentionScaling: s } = yarnInvFreqTensor(cfg, 'cpu');
    const invG = invC.to(GPU);
    const inv = invC.toFloat32();
    const truthY = new Float64Array(n), truthDx = new Float64Array(n);
    for (let ti = 0; ti < t; ti++)
      for (let j = 0; j < half; j++) {
        const a = Math.fround(pos[ti]! * inv[j]!), c = Math.cos(a) * s, sn = Math.sin(a) * s;
        for (let hh = 0; hh < heads; hh++) {
          const o = (ti * heads + hh) * d;
          truthY[o + j] = x[o + j]! * c - x[o + half + j]! * sn;
          truthY[o + half + j] = x[o + half + j]! * c + x[o + j]! * sn;
          truthDx[o + j] = dy[o + j]! * c + dy[o + half + j]! * sn;
          truthDx[o + half + j] = dy[o + half + j]! * c - dy[o + j]! * sn;
        }
      }
    const [pc, pg] = both(pos, [t]);
    const [xc, xg0] = both(x, [t, heads, d], 'bf16');
    const xg = mis ? misaligned(x, [t, heads, d], 'bf16') : xg0;
    assertBound(ropeForward(xg, pg, invG, s).toFloat32(), ropeForward(xc, pc, invC, s).toFloat32(), truthY, 1e-6, 'y');
    const [dc, dg] = both(dy, [t, heads, d], 'bf16');
    assertBound(ropeBackward(dg, pg, invG, s).toFloat32(), ropeBackward(dc, pc, invC, s).toFloat32(), truthDx, 1e-5, 'dx');
  });
}

// The fused q/k/v layout: split (forward) and pack (backward) on CUDA vs CPU, at gpt-oss-20b's shape (vectorised),
// an awkward one (scalar) and a misaligned fused input (scalar). Truth: the float64 rotation of each column block.
for (const [t, hq, hkv, d, mis] of [
  [4096, 64, 8, 64, false],
  [113, 3, 1, 14, false],
  [7, 2, 1, 16, true],
] as const) {
  test(`rope q/k/v split/pack on CUDA vs CPU (T=${t}, Hq=${hq}, Hkv=${hkv}, D=${d}${mis ? ', misaligned' : ''})`, { skip }, () => {
    const cfg = { headDim: d, ropeTheta: 150000, factor: 32, betaFast: 32, betaSlow: 1, originalMaxPositions: 4096, truncate: false };
    const half = d / 2, wq = hq * d, wkv = hkv * d, w = wq + 2 * wkv;
    const pos = randInts(t, 23, 131072);
    const { invFreq: invC, attentionScaling: s } = yarnInvFreqTensor(cfg, 'cpu');
    const invG = invC.to(GPU);
    const inv = invC.toFloat32();
    const [pc, pg] = both(pos, [t]);
    // Truth for heads laid out with row stride `stride` from column `col` (sign +1: forward, -1: backward).
    const rot = (x: Float32Array, stride: number, col: number, heads: number, sign: number): Float64Array => {
      const y = new Float64Array(t * heads * d);
      for (let ti = 0; ti < t; ti++)
        for (let j = 0; j < half; j++) {
          const a = Math.fround(pos[ti]! * inv[j]!), c = Math.cos(a) * s, sn = sign * Math.sin(a) * s;
          for (let hh = 0; hh < heads; hh++) {
            const i = ti * stride + col + hh * d, o = (ti * heads + hh) * d;
            y[o + j] = x[i + j]! * c - x[i + half + j]! * sn;
            y[o + half + j] = x[i + half + j]! * c + x[i + j]! * sn;
          }
        }
      return y;
    };
    const qkv = uniformBf16(t * w, 24 + d, -2, 2);
    const [qc, qg0] = both(qkv, [t, w], 'bf16');
    const qg = mis ? misaligned(qkv, [t, w], 'bf16') : qg0;
    const rc = ropeQkvSplit(qc, pc, invC, s, hq, hkv), rg = ropeQkvSplit(qg, pg, invG, s, hq, hkv);
    assert.equal(rg.q.device, GPU);
    assertBound(rg.q.toFloat32(), rc.q.toFloat32(), rot(qkv, w, 0, hq, 1), 1e-6, 'split q');
    assertBound(rg.k.toFloat32(), rc.k.toFloat32(), rot(qkv, w, wq, hkv, 1), 1e-6, 'split k');
    assert.deepEqual(rg.v.toFloat32(), rc.v.toFloat32(), 'split v (a copy)');
    // With a KV cache to write (the decode step's fused rope + cache write): the same q/k/v, and the cache rows at
    // the slots equal to the returned k and v (bitwise: the same values stored twice), other rows untouched; slot
    // -1 skips a token. M = 3t + 5 rows, slots distinct rows 3i + 2 (the last token skipped when t > 1).
    {
      const M = 3 * t + 5;
      const slotArr = Int32Array.from({ length: t }, (_, i) => (t > 1 && i === t - 1 ? -1 : 3 * i + 2));
      const init = uniformBf16(M * wkv, 26 + d, -1, 1);
      const kc = Tensor.from(init, [M, hkv, d], { ...gpu, dtype: 'bf16' }), vc = Tensor.from(init, [M, hkv, d], { ...gpu, dtype: 'bf16' });
      const slots = Tensor.from(slotArr, [t], { ...gpu, dtype: 'i32' });
      const rw = ropeQkvSplit(qg, pg, invG, s, hq, hkv, { k: kc, v: vc, slots });
      assert.deepEqual(rw.q.toFloat32(), rg.q.toFloat32(), 'split+cache q');
      assert.deepEqual(rw.k.toFloat32(), rg.k.toFloat32(), 'split+cache k');
      assert.deepEqual(rw.v.toFloat32(), rg.v.toFloat32(), 'split+cache v');
      const kh = kc.toFloat32(), vh = vc.toFloat32(), kr = rg.k.toFloat32(), vr = rg.v.toFloat32();
      const written = new Map<number, number>();
      slotArr.forEach((sl, i) => sl >= 0 && written.set(sl, i));
      for (let row = 0; row < M; row++) {
        const i = written.get(row);
        const wantK = i === undefined ? init.subarray(row * wkv, (row + 1) * wkv) : kr.subarray(i * wkv, (i + 1) * wkv);
        const wantV = i === undefined ? init.subarray(row * wkv, (row + 1) * wkv) : vr.subarray(i * wkv, (i + 1) * wkv);
        assert.deepEqual(kh.subarray(row * wkv, (row + 1) * wkv), Float32Array.from(wantK), `k cache row ${row}`);
        assert.deepEqual(vh.subarray(row * wkv, (row + 1) * wkv), Float32Array.from(wantV), `v cache row ${row}`);
      }
      for (const x of [kc, vc, slots, rw.q, rw.k, rw.v]) x.dispose();
    }
    const g = [hq, hkv, hkv].map((h, i) => uniformBf16(t * h * d, 25 + i + d));
    const gc = g.map((x, i) => Tensor.from(x, [t, [hq, hkv, hkv][i]!, d], { ...cpu, dtype: 'bf16' }));
    const gg = g.map((x, i) => (mis ? misaligned(x, [t, [hq, hkv, hkv][i]!, d], 'bf16') : Tensor.from(x, [t, [hq, hkv, hkv][i]!, d], { ...gpu, dtype: 'bf16' })));
    for (const out of ['f32', 'bf16'] as const) {
      const pcpu = ropeQkvPack(gc[0]!, gc[1]!, gc[2]!, pc, invC, s, out).toFloat32();
      const pgpu = ropeQkvPack(gg[0]!, gg[1]!, gg[2]!, pg, invG, s, out).toFloat32();
      // Column blocks of the packed [t, w] result, compared per part.
      const block = (m: Float32Array, c0: number, c1: number): Float32Array => {
        const o = new Float32Array(t * (c1 - c0));
        for (let i = 0; i < t; i++) o.set(m.subarray(i * w + c0, i * w + c1), i * (c1 - c0));
        return o;
      };
      assertBound(block(pgpu, 0, wq), block(pcpu, 0, wq), rot(g[0]!, wq, 0, hq, -1), 1e-5, `pack dq (${out})`);
      assertBound(block(pgpu, wq, wq + wkv), block(pcpu, wq, wq + wkv), rot(g[1]!, wkv, 0, hkv, -1), 1e-5, `pack dk (${out})`);
      assert.deepEqual(block(pgpu, wq + wkv, w), block(pcpu, wq + wkv, w), `pack dv (${out}, a copy)`);
    }
  });
}

// ---- the fused q/k/v projection + rope (decode) -----------------------------------------------------------------
// ropeQkvProject on CUDA at M <= 8 rows is one kernel (gemv.cu); it must give the bits of the linear (the gemv,
// bf16 out) followed by ropeQkvSplit, with and without the KV-cache write, and stay within bf16 of the CPU.
for (const [H, hq, hkv, d, biasDtype] of [
  [2880, 64, 8, 64, 'bf16'],
  [2880, 16, 2, 64, 'bf16'], // a tp=4 rank's heads
  [64, 4, 2, 16, 'f32'],
  [128, 2, 1, 128, 'none'],
] as const) {
  test(`ropeQkvProject on CUDA (one kernel at M <= 8) equals linear + ropeQkvSplit bitwise (H=${H}, Hq=${hq}, Hkv=${hkv}, D=${d}, bias ${biasDtype})`, { skip }, () => {
    const cfg = { headDim: d, ropeTheta: 150000, factor: 32, betaFast: 32, betaSlow: 1, originalMaxPositions: 4096, truncate: false };
    const { invFreq: invG, attentionScaling: s } = yarnInvFreqTensor(cfg, GPU);
    const { invFreq: invC } = yarnInvFreqTensor(cfg, 'cpu');
    const N = (hq + 2 * hkv) * d;
    const wv = uniformBf16(N * H, 31, -0.05, 0.05);
    const wG = Tensor.from(wv, [N, H], { device: GPU, dtype: 'bf16' }), wC = Tensor.from(wv, [N, H], { device: 'cpu', dtype: 'bf16' });
    const bv = uniformBf16(N, 32, -0.5, 0.5);
    const bG = biasDtype === 'none' ? undefined : Tensor.from(bv, [N], { device: GPU, dtype: biasDtype });
    const bC = biasDtype === 'none' ? undefined : Tensor.from(bv, [N], { device: 'cpu', dtype: biasDtype });
    for (const M of [1, 2, 3, 4, 5, 8, 9]) {
      const xv = uniformBf16(M * H, 33 + M, -2, 2);
      const xG = Tensor.from(xv, [M, H], { device: GPU, dtype: 'bf16' }), xC = Tensor.from(xv, [M, H], { device: 'cpu', dtype: 'bf16' });
      const posv = randInts(M, 34 + M, 4096);
      const pG = Tensor.from(posv, [M], { device: GPU, dtype: 'i32' }), pC = Tensor.from(posv, [M], { device: 'cpu', dtype: 'i32' });
      const rows = 3 * M + 2;
      const slotv = Int32Array.from({ length: M }, (_, i) => (i === 1 ? -1 : rows - 1 - 2 * i));
      const cache = () => ({
        k: Tensor.from(new Float32Array(rows * hkv * d).fill(0.5), [rows, hkv, d], { device: GPU, dtype: 'bf16' }),
        v: Tensor.from(new Float32Array(rows * hkv * d).fill(0.5), [rows, hkv, d], { device: GPU, dtype: 'bf16' }),
        slots: Tensor.from(slotv, [M], { device: GPU, dtype: 'i32' }),
      });
      const fused = ropeQkvProject(xG, wG, bG, pG, invG, s, hq, hkv);
      const qkv = linearForward(xG, wG, bG);
      const two = ropeQkvSplit(qkv, pG, invG, s, hq, hkv);
      const cf = cache(), c2 = cache();
      const fusedC = ropeQkvProject(xG, wG, bG, pG, invG, s, hq, hkv, cf);
      ropeQkvSplit(qkv, pG, invG, s, hq, hkv, c2);
      const ref = ropeQkvProject(xC, wC, bC, pC, invC, s, hq, hkv);
      for (const key of ['q', 'k', 'v'] as const) {
        const f = fused[key].toFloat32();
        assert.deepEqual(f, two[key].toFloat32(), `M=${M} ${key}: the fused kernel's bits`);
        assert.deepEqual(fusedC[key].toFloat32(), f, `M=${M} ${key} with the cache write`);
        // Against the CPU: the same product in another summation order, rounded to bf16 and rotated.
        const c = ref[key].toFloat32();
        let err = 0, mag = 0;
        for (let i = 0; i < c.length; i++) (err = Math.max(err, Math.abs(f[i]! - c[i]!))), (mag = Math.max(mag, Math.abs(c[i]!)));
        assert.ok(f.every(Number.isFinite) && err <= mag * 2 ** -7, `M=${M} ${key}: cuda vs cpu ${err} (max |value| ${mag})`);
      }
      assert.deepEqual(cf.k.toFloat32(), c2.k.toFloat32(), `M=${M} k cache`);
      assert.deepEqual(cf.v.toFloat32(), c2.v.toFloat32(), `M=${M} v cache`);
    }
  });
}

// ---- elementwise ---------------------------------------------------------------------------------------------
for (const n of [10_000_003, 113, 1]) {
  test(`elementwise on CUDA equals the CPU bitwise (n=${n})`, { skip }, () => {
    const a = uniform(n, 30, -4, 4), b = uniform(n, 31, -4, 4);
    for (const dt of ['bf16', 'f32'] as const) {
      const [ac, ag] = both(a, [n], dt), [bc, bg] = both(b, [n], dt);
      assert.deepEqual(add(ag, bg).toFloat32(), add(ac, bc).toFloat32(), `add ${dt}`);
      assert.deepEqual(scale(ag, 0.37).toFloat32(), scale(ac, 0.37).toFloat32(), `scale ${dt}`);
      const other = dt === 'bf16' ? 'f32' : 'bf16';
      const [oc, og] = both(b, [n], other);
      addInPlace(ac, oc);
      addInPlace(ag, og);
      assert.deepEqual(ag.toFloat32(), ac.toFloat32(), `addInPlace ${dt} += ${other}`);
      scaleInPlace(ag, -1.5);
      scaleInPlace(ac, -1.5);
      assert.deepEqual(ag.toFloat32(), ac.toFloat32(), `scaleInPlace ${dt}`);
      const cg = cast(ag, other), cc = cast(ac, other);
      assert.equal(cg.dtype, other);
      assert.deepEqual(cg.toFloat32(), cc.toFloat32(), `cast ${dt} -> ${other}`);
      fill(ag, 2.3);
      fill(ac, 2.3);
      assert.deepEqual(ag.toFloat32(), ac.toFloat32(), `fill ${dt}`);
      const z = zerosLike(ag);
      assert.equal(z.device, GPU);
      assert.ok(z.toFloat32().every((v) => v === 0));
    }
    const ids = randInts(n, 32, 1 << 24);
    assert.deepEqual(cast(Tensor.from(ids, [n], gpu), 'f32').toFloat32(), Float32Array.from(ids));
    for (const dt of ['i32', 'u8'] as const) {
      const t = Tensor.zeros([n], { ...gpu, dtype: dt });
      fill(t, 7);
      assert.ok(t.toFloat32().every((v) => v === 7), `fill ${dt}`);
    }
    if (n > 8) {
      // misaligned views: scalar path
      const am = misaligned(a, [n], 'f32'), bm = misaligned(b, [n], 'f32');
      assert.deepEqual(add(am, bm).toFloat32(), add(Tensor.from(a, [n], cpu), Tensor.from(b, [n], cpu)).toFloat32(), 'add misaligned');
    }
  });
}

// ---- SwiGLU --------------------------------------------------------------------------------------------------
function swigluTruth(gu: Float32Array, dh: Float32Array, limit = 7, alpha = 1.702) {
  const n = dh.length;
  const h = new Float64Array(n), d = new Float64Array(2 * n);
  for (let k = 0; k < n; k++) {
    const g0 = gu[2 * k]!, u0 = gu[2 * k + 1]!;
    const g = Math.min(g0, limit), u = Math.min(Math.max(u0, -limit), limit);
    const s = 1 / (1 + Math.exp(-alpha * g));
    h[k] = (u + 1) * g * s;
    d[2 * k] = g0 <= limit ? dh[k]! * (u + 1) * (s + alpha * g * s * (1 - s)) : 0;
    d[2 * k + 1] = u0 >= -limit && u0 <= limit ? dh[k]! * g * s : 0;
  }
  return { h, d };
}

for (const [nr, inter, mis] of [
  [4096, 2880, false],
  [113, 7, false],
  [7, 113, true],
  [1, 1, false],
] as const) {
  test(`swiglu on CUDA vs CPU (N=${nr}, I=${inter}${mis ? ', misaligned' : ''})`, { skip }, () => {
    const n = nr * inter;
    const gu = uniformBf16(2 * n, 40 + inter, -10, 10), dh = uniformBf16(n, 41 + inter);
    gu[0] = 7; // exactly at the limit: gradient passes on both backends
    const truth = swigluTruth(gu, dh);
    const [gc, gg0] = both(gu, [nr, 2 * inter], 'bf16');
    const gg = mis ? misaligned(gu, [nr, 2 * inter], 'bf16') : gg0;
    assertBound(swigluForward(gg).toFloat32(), swigluForward(gc).toFloat32(), truth.h, 1e-6, 'h');
    const [dc, dg] = both(dh, [nr, inter], 'bf16');
    assertBound(swigluBackward(dg, gg).toFloat32(), swigluBackward(dc, gc).toFloat32(), truth.d, 1e-5 * maxAbs(truth.d), 'dgu');
  });
}

// ---- bandwidth -----------------------------------------------------------------------------------------------
test('bandwidth of the CUDA core ops at gpt-oss-20b sizes (T=16384 tokens)', { skip }, () => {
  const T = 16384, H = 2880, I = 2880, V = 201088;
  const rows: { op: string; ms: number; gbps: number }[] = [];
  // Results are disposed at once (stream-ordered caching allocator) so repeated calls reuse the same blocks.
  const release = (r: unknown) => {
    if (r instanceof Tensor) r.dispose();
    else if (r && typeof r === 'object') for (const v of Object.values(r)) if (v instanceof Tensor) v.dispose();
  };
  const time = (op: string, bytes: number, f0: () => unknown) => {
    const f = () => release(f0());
    for (let i = 0; i < 3; i++) f();
    synchronize(GPU);
    const e0 = new CudaEvent(GPU, true), e1 = new CudaEvent(GPU, true);
    const iters = 20;
    e0.record();
    for (let i = 0; i < iters; i++) f();
    e1.record();
    e1.synchronize();
    const ms = e0.elapsedMs(e1) / iters;
    rows.push({ op, ms, gbps: bytes / (ms * 1e6) });
  };
  const x = Tensor.zeros([T, H], { ...gpu, dtype: 'bf16' });
  fill(x, 0.5);
  const w = Tensor.zeros([H], { ...gpu, dtype: 'bf16' });
  fill(w, 1);
  const { rstd } = rmsnormForward(x, w, 1e-5);
  time('rmsnormForward', T * H * 4 + T * 4, () => rmsnormForward(x, w, 1e-5));
  time('rmsnormBackward', T * H * (2 + 2 + 4) + T * H * 4, () => rmsnormBackward(x, x, w, rstd));
  const q = Tensor.zeros([T, 64, 64], { ...gpu, dtype: 'bf16' });
  fill(q, 0.25);
  const { invFreq, attentionScaling } = yarnInvFreqTensor({ headDim: 64, ropeTheta: 150000, factor: 32, betaFast: 32, betaSlow: 1, originalMaxPositions: 4096, truncate: false }, GPU);
  const pos = Tensor.from(Int32Array.from({ length: T }, (_, i) => i), [T], gpu);
  time('ropeForward q [T,64,64]', T * 4096 * 4, () => ropeForward(q, pos, invFreq, attentionScaling));
  time('ropeBackward q (f32 out)', T * 4096 * 6, () => ropeBackward(q, pos, invFreq, attentionScaling));
  const qkvF = Tensor.zeros([T, 5120], { ...gpu, dtype: 'bf16' });
  fill(qkvF, 0.25);
  const kv = Tensor.zeros([T, 8, 64], { ...gpu, dtype: 'bf16' });
  time('ropeQkvSplit [T,5120] -> q, k, v', T * 5120 * 4, () => ropeQkvSplit(qkvF, pos, invFreq, attentionScaling, 64, 8));
  time('ropeQkvPack dq, dk, dv -> [T,5120] bf16', T * 5120 * 4, () => ropeQkvPack(q, kv, kv, pos, invFreq, attentionScaling, 'bf16'));
  const gu = Tensor.zeros([T, 2 * I], { ...gpu, dtype: 'bf16' });
  fill(gu, 1);
  time('swigluForward', T * I * 6, () => swigluForward(gu));
  const dh = Tensor.zeros([T, I], { ...gpu, dtype: 'bf16' });
  time('swigluBackward (f32 out)', T * I * (2 + 4 + 8), () => swigluBackward(dh, gu));
  const a32 = Tensor.zeros([T, H], gpu);
  time('addInPlace f32 += bf16', T * H * (4 + 2 + 4), () => addInPlace(a32, x));
  time('cast bf16 -> f32', T * H * 6, () => cast(x, 'f32'));
  const emb = Tensor.zeros([V, H], { ...gpu, dtype: 'bf16' });
  const ids = Tensor.from(randInts(T, 50, V), [T], gpu);
  time('embeddingForward (incl. id check sync)', T * H * 4, () => embeddingForward(emb, ids));
  time('embeddingBackward (incl. zeroing f32 [V,H])', V * H * 4 + T * H * 2, () => embeddingBackward(x, ids, V));
  console.log(`device: ${native().ops.deviceName(0)}`);
  console.log('op'.padEnd(44) + 'ms'.padStart(10) + 'GB/s'.padStart(10));
  for (const r of rows) console.log(r.op.padEnd(44) + r.ms.toFixed(4).padStart(10) + r.gbps.toFixed(0).padStart(10));
  if (process.env.COREOPS1_OUT) writeFileSync(join(process.env.COREOPS1_OUT, 'coreops1-bench.json'), JSON.stringify({ device: native().ops.deviceName(0), rows }, null, 2));
});
