// CUDA vs CPU (and float64) for coreops2's families: matmul/linear, fused chunked log-prob/entropy (+ backward),
// sampling (identical tokens), AdamW (with the fused grad-clip factor), sum of squares and clipping. Prints a few timings. GPU machine only.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, cudaDeviceCount, synchronize, memoryStats, resetPeakMemory, CudaEvent } from '../../src/tensor.ts';
import { matmul, linearBackward } from '../../src/ops/gemm.ts';
import { tokenLogprobs, tokenLogprobsBackward } from '../../src/ops/logprob.ts';
import { sample, sampleRows } from '../../src/ops/sampling.ts';
import { adamwStep, sumOfSquares, gradNormAndClipFactor, scaleGradsInPlace } from '../../src/ops/optim.ts';
import { refMatmul } from '../helpers/coreops2-ref.ts';
import { uniformSym, rng } from '../helpers/random.ts';
import { assertClose, relNorm } from '../helpers/numeric.ts';
import { sampleBySlices, samplingRowTensors } from '../helpers/sampling-rows.ts';
import { roundBf16 } from '../../src/tensor.ts';
import type { DType } from '../../src/native.ts';

const skip = cudaDeviceCount() === 0 ? 'no CUDA device (GPU machine only)' : false;
const G = 'cuda:0';

test('matmul on CUDA matches float64 (transposes, dtypes, bias, alpha, accumulate, awkward sizes)', { skip, timeout: 120000 }, () => {
  const sizes: [number, number, number][] = [[1, 1, 1], [7, 113, 257], [113, 7, 1], [257, 113, 300], [1, 257, 7], [64, 128, 256]];
  let seed = 1;
  for (const [M, N, K] of sizes)
    for (const transA of [false, true])
      for (const transB of [false, true])
        for (const [inD, outD] of [['f32', 'f32'], ['bf16', 'bf16'], ['bf16', 'f32'], ['f32', 'bf16']] as [DType, DType][]) {
          const bf = inD === 'bf16';
          const a = uniformSym(M * K, seed++, 1, bf), b = uniformSym(K * N, seed++, 1, bf), bias = uniformSym(N, seed++, 1, true), c0 = uniformSym(M * N, seed++, 1, outD === 'bf16');
          for (const biasD of ['none', 'bf16', 'f32'] as const) {
            const out = Tensor.from(c0, [M, N], { dtype: outD, device: G });
            const accumulate = biasD === 'f32';
            matmul(
              Tensor.from(a, transA ? [K, M] : [M, K], { dtype: inD, device: G }),
              Tensor.from(b, transB ? [N, K] : [K, N], { dtype: inD, device: G }),
              { transA, transB, out, accumulate, alpha: 0.75, bias: biasD === 'none' ? undefined : Tensor.from(bias, [N], { dtype: biasD, device: G }) },
            );
            const { c, mag } = refMatmul(a, b, M, N, K, transA, transB);
            const got = out.toFloat32();
            for (let i = 0; i < c.length; i++) {
              const want = 0.75 * c[i]! + (biasD === 'none' ? 0 : bias[i % N]!) + (accumulate ? c0[i]! : 0);
              const tol = 4e-6 * mag[i]! * Math.sqrt(K + 1) + 1e-6 + (outD === 'bf16' ? 2 * Math.abs(want) * 2 ** -8 : 0);
              if (!(Math.abs(got[i]! - want) <= tol))
                assert.fail(`M${M} N${N} K${K} tA${transA} tB${transB} ${inD}->${outD} bias ${biasD}: [${i}] got ${got[i]} want ${want}`);
            }
          }
        }
});

test('matmul on CUDA: mixed dtypes (f32 operand rounded to bf16), linearBackward, large bf16 vs CPU, TFLOP/s', { skip, timeout: 120000 }, () => {
  const M = 33, N = 65, K = 129;
  const a = uniformSym(M * K, 5), b = uniformSym(K * N, 6, 1, true);
  const c = matmul(Tensor.from(a, [M, K], { device: G }), Tensor.from(b, [K, N], { dtype: 'bf16', device: G }), { outDtype: 'f32' });
  assertClose(c.toFloat32(), refMatmul(roundBf16(a), b, M, N, K, false, false).c, 1e-4, 1e-4, 'mixed');

  const T = 300, nIn = 96, nOut = 40;
  const x = uniformSym(T * nIn, 7, 1, true), w = uniformSym(nOut * nIn, 8, 1, true), dy = uniformSym(T * nOut, 9, 1, true);
  const gc = linearBackward(Tensor.from(dy, [T, nOut], { dtype: 'bf16', device: G }), Tensor.from(x, [T, nIn], { dtype: 'bf16', device: G }), Tensor.from(w, [nOut, nIn], { dtype: 'bf16', device: G }));
  const gh = linearBackward(Tensor.from(dy, [T, nOut], { dtype: 'bf16', device: 'cpu' }), Tensor.from(x, [T, nIn], { dtype: 'bf16', device: 'cpu' }), Tensor.from(w, [nOut, nIn], { dtype: 'bf16', device: 'cpu' }));
  assertClose(gc.dx!.toFloat32(), gh.dx!.toFloat32(), 1e-4, 1e-4, 'linear dx');
  assertClose(gc.dW.toFloat32(), gh.dW.toFloat32(), 1e-4, 1e-4, 'linear dW');
  assertClose(gc.db.toFloat32(), gh.db.toFloat32(), 1e-4, 1e-4, 'linear db');

  const [LM, LN, LK] = [512, 1024, 2880];
  const la = uniformSym(LM * LK, 10, 1, true), lb = uniformSym(LN * LK, 11, 1, true);
  const cg = matmul(Tensor.from(la, [LM, LK], { dtype: 'bf16', device: G }), Tensor.from(lb, [LN, LK], { dtype: 'bf16', device: G }), { transB: true, outDtype: 'f32' });
  const cc = matmul(Tensor.from(la, [LM, LK], { dtype: 'bf16', device: 'cpu' }), Tensor.from(lb, [LN, LK], { dtype: 'bf16', device: 'cpu' }), { transB: true, outDtype: 'f32' });
  assertClose(cg.toFloat32(), cc.toFloat32(), 1e-3, 1e-4, 'large bf16 GEMM vs CPU');

  for (const n of [4096, 8192]) {
    const A = Tensor.zeros([n, n], { dtype: 'bf16', device: G }), B = Tensor.zeros([n, n], { dtype: 'bf16', device: G });
    const C = Tensor.zeros([n, n], { dtype: 'bf16', device: G });
    for (let i = 0; i < 3; i++) matmul(A, B, { out: C });
    const e0 = new CudaEvent(G, true).record();
    const reps = 10;
    for (let i = 0; i < reps; i++) matmul(A, B, { transB: true, out: C });
    const e1 = new CudaEvent(G, true).record();
    e1.synchronize();
    const ms = e0.elapsedMs(e1) / reps;
    console.log(`# matmul bf16 ${n}^3 (NT): ${ms.toFixed(3)} ms, ${((2 * n ** 3) / ms / 1e9).toFixed(0)} TFLOP/s`);
    A.dispose(); B.dispose(); C.dispose();
  }
});

test('tokenLogprobs on CUDA matches the CPU (forward and backward, chunked, entropy gradient)', { skip, timeout: 120000 }, () => {
  const T = 300, H = 256, V = 5003;
  const h = uniformSym(T * H, 21, 1, true), w = uniformSym(V * H, 22, 0.2, true);
  const r = rng(23);
  const tg = Int32Array.from({ length: T }, () => Math.floor(r() * V));
  tg[0] = V - 1; tg[1] = 1000; tg[2] = 999; tg[5] = -1;
  const dl = uniformSym(T, 24), de = uniformSym(T, 25);
  const mk = (d: string) => ({
    h: Tensor.from(h, [T, H], { dtype: 'bf16', device: d }),
    w: Tensor.from(w, [V, H], { dtype: 'bf16', device: d }),
    t: Tensor.from(tg, [T], { device: d }),
    dl: Tensor.from(dl, [T], { device: d }),
    de: Tensor.from(de, [T], { device: d }),
  });
  const c = mk('cpu'), g = mk(G);
  for (const chunk of [1000, 0, 4096]) {
    for (const temperature of [1, 0.6]) {
      const fc = tokenLogprobs(c.h, c.w, c.t, { chunk, temperature });
      const fg = tokenLogprobs(g.h, g.w, g.t, { chunk, temperature });
      assertClose(fg.logprobs.toFloat32(), fc.logprobs.toFloat32(), 2e-4, 2e-4, `logprobs chunk ${chunk}`);
      assertClose(fg.entropy.toFloat32(), fc.entropy.toFloat32(), 2e-4, 2e-4, `entropy chunk ${chunk}`);
      assertClose(fg.lse.toFloat32(), fc.lse.toFloat32(), 2e-4, 2e-4, `lse chunk ${chunk}`);
      const bc = tokenLogprobsBackward(c.h, c.w, c.t, fc.lse, c.dl, { chunk, temperature, dEntropy: c.de, entropy: fc.entropy });
      const bg = tokenLogprobsBackward(g.h, g.w, g.t, fg.lse, g.dl, { chunk, temperature, dEntropy: g.de, entropy: fg.entropy });
      // CUDA rounds dlogits to bf16 (like autograd through bf16 logits): relative error ~2^-9.
      const eh = relNorm(bg.dHidden.toFloat32(), bc.dHidden.toFloat32());
      const ew = relNorm(bg.dLmHead.toFloat32(), bc.dLmHead.toFloat32());
      assert.ok(eh < 1e-2 && ew < 1e-2, `backward chunk ${chunk} temp ${temperature}: rel err dHidden ${eh}, dLmHead ${ew}`);
    }
  }
  // A target >= V cannot be checked without a host sync on CUDA: NaN log-prob.
  const bad = Tensor.from(Int32Array.from({ length: T }, (_, i) => (i === 3 ? V : 0)), [T], { device: G });
  const fb = tokenLogprobs(g.h, g.w, bad).logprobs.toFloat32();
  assert.ok(Number.isNaN(fb[3]!) && Number.isFinite(fb[4]!));
});

test('tokenLogprobs on CUDA at GPT-OSS scale: memory stays at one chunk, timing', { skip, timeout: 120000 }, () => {
  const T = 4096, H = 2880, V = 201088;
  const h = Tensor.from(uniformSym(T * H, 31, 1, true), [T, H], { dtype: 'bf16', device: G });
  // lm_head rows: one random [4096, H] block repeated (host-side random data for 579M values would be slow).
  const w = Tensor.empty([V, H], { dtype: 'bf16', device: G });
  const block = Tensor.from(uniformSym(4096 * H, 32, 0.05, true), [4096, H], { dtype: 'bf16', device: G });
  for (let r0 = 0; r0 < V; r0 += 4096) {
    const r1 = Math.min(V, r0 + 4096);
    w.slice(r0, r1).copyFrom(block.slice(0, r1 - r0));
  }
  const r = rng(33);
  const t = Tensor.from(Int32Array.from({ length: T }, () => Math.floor(r() * V)), [T], { device: G });
  const dl = Tensor.from(new Float32Array(T).fill(1 / T), [T], { device: G });
  const dLm = Tensor.zeros([V, H], { dtype: 'f32', device: G });
  let f = tokenLogprobs(h, w, t);
  tokenLogprobsBackward(h, w, t, f.lse, dl, { dLmHead: dLm });
  synchronize(G);
  const base = memoryStats(G).allocated;
  resetPeakMemory(G);
  const e0 = new CudaEvent(G, true).record();
  f = tokenLogprobs(h, w, t);
  const e1 = new CudaEvent(G, true).record();
  const b = tokenLogprobsBackward(h, w, t, f.lse, dl, { dLmHead: dLm });
  const e2 = new CudaEvent(G, true).record();
  e2.synchronize();
  const peak = memoryStats(G).peakAllocated - base;
  const fwd = e0.elapsedMs(e1), bwd = e1.elapsedMs(e2);
  const flops = 2 * T * V * H;
  console.log(`# tokenLogprobs T${T} H${H} V${V}: fwd ${fwd.toFixed(2)} ms (${(flops / fwd / 1e9).toFixed(0)} TFLOP/s), bwd ${bwd.toFixed(2)} ms (${((3 * flops) / bwd / 1e9).toFixed(0)} TFLOP/s), extra peak ${(peak / 2 ** 20).toFixed(0)} MiB (full fp32 logits would be ${((T * V * 4) / 2 ** 20).toFixed(0)} MiB)`);
  assert.ok(peak < T * V * 4 / 4, `peak ${peak} bytes`);
  const lp = f.logprobs.toFloat32();
  assert.ok(lp.every((x) => Number.isFinite(x) && x <= 0));
  assert.ok(b.dHidden.toFloat32().every(Number.isFinite));
});

test('sample on CUDA draws the same tokens as on the CPU', { skip, timeout: 120000 }, () => {
  for (const [B, V] of [[64, 5003], [4, 201088], [3, 1], [130, 7]] as [number, number][]) {
    const l = uniformSym(B * V, B + V, 4);
    const lc = Tensor.from(l, [B, V], { device: 'cpu' }), lg = Tensor.from(l, [B, V], { device: G });
    for (const o of [
      { temperature: 0, seed: 1 },
      { temperature: 1, seed: 7, step: 3 },
      { temperature: 0.7, topK: 50, seed: 9 },
      { temperature: 1, topP: 0.9, seed: 11, step: 1 },
      { temperature: 0.8, topK: 20, topP: 0.5, seed: 2 ** 40 + 3, step: 12345 },
    ]) {
      const sc = sample(lc, o), sg = sample(lg, o);
      assert.deepEqual([...sg.tokens.toInt32()], [...sc.tokens.toInt32()], `B${B} V${V} ${JSON.stringify(o)}`);
      assertClose(sg.logprobs.toFloat32(), sc.logprobs.toFloat32(), 1e-5, 1e-5, `logprobs B${B} V${V} ${JSON.stringify(o)}`);
    }
  }
});

test('sampleRows on CUDA draws the same tokens as on the CPU (per-row parameters, f32 and bf16 logits)', { skip, timeout: 120000 }, () => {
  for (const [B, V] of [[64, 5003], [5, 201088], [1, 1], [130, 7]] as [number, number][]) {
    const l = uniformSym(B * V, 3 * B + V, 4);
    const kinds = [
      { temperature: 0, topP: 1, topK: 0 },
      { temperature: 1, topP: 1, topK: 0 },
      { temperature: 0.7, topP: 1, topK: 50 },
      { temperature: 1, topP: 0.9, topK: 0 },
      { temperature: 0.8, topP: 0.5, topK: 20 },
    ];
    const rows = Array.from({ length: B }, (_, b) => ({ ...kinds[b % kinds.length]!, seed: 2 ** 31 + 977 * b, counter: b * 31 }));
    const params = (d: string) => samplingRowTensors(rows, d);
    for (const dtype of ['f32', 'bf16'] as const) {
      const sc = sampleRows(Tensor.from(l, [B, V], { device: 'cpu', dtype }), params('cpu'));
      const sg = sampleRows(Tensor.from(l, [B, V], { device: G, dtype }), params(G));
      assert.deepEqual([...sg.tokens.toInt32()], [...sc.tokens.toInt32()], `B${B} V${V} ${dtype}`);
      assertClose(sg.logprobs.toFloat32(), sc.logprobs.toFloat32(), 1e-5, 1e-5, `logprobs B${B} V${V} ${dtype}`);
    }
  }
});

test('sampleRows on CUDA: the split layout (few rows, no thresholds) draws the single-block tokens', { skip, timeout: 120000 }, () => {
  // gpt-oss vocabulary at the decode batch sizes the split layout is for, plus a batch with threshold rows mixed in
  // (those stay on one block inside the split launch), a tiny V (one chunk) and -inf chunks (masked vocabulary).
  const cases: { B: number; V: number; temps: number[]; mixed?: boolean; masked?: boolean }[] = [
    { B: 1, V: 201088, temps: [1, 0] },
    { B: 4, V: 201088, temps: [1, 0] },
    { B: 6, V: 201088, temps: [0.7], mixed: true },
    { B: 3, V: 201088, temps: [1, 0], masked: true },
    { B: 2, V: 5, temps: [1, 0] },
  ];
  for (const { B, V, temps, mixed, masked } of cases) {
    const l = uniformSym(B * V, 7 * B + V, 4);
    if (masked) for (let b = 0; b < B; b++) l.fill(-Infinity, b * V, b * V + 150000);  // whole chunks of -inf
    for (const temperature of temps) {
      const rows = Array.from({ length: B }, (_, b) => ({
        temperature,
        topP: mixed && b % 3 === 1 ? 0.9 : 1,
        topK: mixed && b % 3 === 2 ? 40 : 0,
        seed: 2 ** 31 + 131 * b,
        counter: 17 * b + 3,
      }));
      for (const dtype of ['f32', 'bf16'] as const) {
        const what = `B${B} V${V} T${temperature} ${dtype}${mixed ? ' mixed' : ''}${masked ? ' masked' : ''}`;
        const x = Tensor.from(l, [B, V], { device: G, dtype });
        const single = sampleRows(x, samplingRowTensors(rows, G), { strategy: 'single' });
        const split = sampleRows(x, samplingRowTensors(rows, G), { strategy: 'split' });
        const auto = sampleRows(x, samplingRowTensors(rows, G));
        const cpu = sampleRows(Tensor.from(l, [B, V], { device: 'cpu', dtype }), samplingRowTensors(rows, 'cpu'));
        const want = [...single.tokens.toInt32()];
        assert.deepEqual([...split.tokens.toInt32()], want, `split tokens ${what}`);
        assert.deepEqual([...auto.tokens.toInt32()], want, `auto tokens ${what}`);
        assert.deepEqual([...cpu.tokens.toInt32()], want, `cpu tokens ${what}`);
        assertClose(split.logprobs.toFloat32(), single.logprobs.toFloat32(), 1e-5, 1e-5, `split logprobs ${what}`);
        assertClose(auto.logprobs.toFloat32(), single.logprobs.toFloat32(), 1e-5, 1e-5, `auto logprobs ${what}`);
        // Bitwise repeatable: the chunks combine in a fixed layout.
        const again = sampleRows(x, samplingRowTensors(rows, G), { strategy: 'split' });
        assertClose(again.logprobs.toFloat32(), split.logprobs.toFloat32(), 0, 0, `split repeat ${what}`);
      }
    }
  }
});

test('vocabulary-parallel sampling on CUDA: slices summarised and combined draw the single-block tokens (tp 1-8, uneven slices)', { skip, timeout: 120000 }, () => {
  // The 20b vocabulary over tp 2, 4, 8 (even) and 3 (uneven: the last slice padded), at decode batches 1, 6 and 64
  // (few and many chunks per slice), greedy and temperature rows with threshold rows mixed in (left to the
  // gathered path: token -1); the CPU's slices (one part per row) give the same tokens.
  const V = 201088;
  for (const B of [1, 6, 64]) {
    const l = uniformSym(B * V, 3 * B + 1, 4);
    if (B === 6) l.fill(-Infinity, 0, 120000); // row 0: whole slices of -inf
    const rows = Array.from({ length: B }, (_, b) => ({
      temperature: b % 4 === 0 ? 0 : 0.8,
      topP: b % 5 === 3 ? 0.9 : 1,
      topK: b % 7 === 6 ? 40 : 0,
      seed: 2 ** 31 + 97 * b,
      counter: 5 * b + 1,
    }));
    for (const dtype of ['f32', 'bf16'] as const) {
      const x = Tensor.from(l, [B, V], { device: G, dtype });
      const single = sampleRows(x, samplingRowTensors(rows, G), { strategy: 'single' });
      const want = single.tokens.toInt32(), wantLp = single.logprobs.toFloat32();
      for (const tp of [1, 2, 3, 4, 8]) {
        const what = `B${B} ${dtype} tp ${tp}`;
        const g = sampleBySlices(l, B, V, tp, rows, { device: G, dtype });
        const c = tp === 4 ? sampleBySlices(l, B, V, tp, rows, { device: 'cpu', dtype }) : null;
        rows.forEach((o, b) => {
          const thr = o.temperature !== 0 && (o.topP < 1 || o.topK > 0);
          assert.equal(g.tokens[b], thr ? -1 : want[b], `${what} row ${b}`);
          if (!thr) assert.ok(Math.abs(g.logprobs[b]! - wantLp[b]!) <= 1e-5 + 1e-5 * Math.abs(wantLp[b]!), `${what} row ${b}: ${g.logprobs[b]} vs ${wantLp[b]}`);
          if (c) assert.equal(c.tokens[b], g.tokens[b], `${what} row ${b}: cpu`);
        });
      }
    }
  }
});

test('adamwStep (with and without the fused grad-clip factor), sumOfSquares and gradNormAndClipFactor on CUDA match the CPU', { skip, timeout: 120000 }, () => {
  const n = 100003;
  // Gradients over many magnitudes (down to 1e-12, where eps dominates the denominator) and some exact zeros.
  const p0 = uniformSym(n, 41), g0 = uniformSym(n, 42, 0.1).map((x, i) => (i % 97 === 0 ? 0 : x * 10 ** -(i % 12)));
  const mk = (d: string) => ({
    master: Tensor.from(p0, [n], { device: d }),
    grad: Tensor.from(g0, [n], { device: d }),
    m: Tensor.zeros([n], { device: d }),
    v: Tensor.zeros([n], { device: d }),
    bf16: Tensor.zeros([n], { dtype: 'bf16', device: d }),
  });
  const c = mk('cpu'), g = mk(G);
  // Steps 2 and 4 clip (gradScale: the factor a norm of 3.7, then 250, above maxNorm 1 gives), 1 and 3 do not.
  const scales = [1, 1 / (3.7 + 1e-6), 1, 1 / (250 + 1e-6)];
  scales.forEach((gradScale, k) => {
    const hp = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step: k + 1, gradScale };
    adamwStep(c, hp);
    adamwStep(g, hp);
  });
  // Bitwise: both backends run optim.h's adamw_element (explicit fmas, every other op rounded on its own, the
  // clip factor's product too), which the sharded trainer's cpu_offload relies on (AdamW on the host must give the
  // device's weights).
  assertClose(g.master.toFloat32(), c.master.toFloat32(), 0, 0, 'master');
  assertClose(g.m.toFloat32(), c.m.toFloat32(), 0, 0, 'm');
  assertClose(g.v.toFloat32(), c.v.toFloat32(), 0, 0, 'v');
  assertClose(g.bf16.toFloat32(), c.bf16.toFloat32(), 0, 0, 'bf16 copy (CUDA vs CPU)');
  assertClose(g.bf16.toFloat32(), roundBf16(g.master.toFloat32()), 0, 0, 'bf16 copy');
  assert.deepEqual(g.grad.toFloat32(), Float32Array.from(g0), 'the fused factor leaves the gradient buffer alone');
  // The fused factor on CUDA is bitwise the unfused clip (scale in place, then a plain step) on CUDA.
  const u = mk(G);
  scales.forEach((gradScale, k) => {
    const grad = Tensor.from(g0, [n], { device: G });
    scaleGradsInPlace([grad], gradScale);
    adamwStep({ ...u, grad }, { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step: k + 1 });
    grad.dispose();
  });
  assertClose(u.master.toFloat32(), g.master.toFloat32(), 0, 0, 'master (unfused clip on CUDA)');
  assertClose(u.m.toFloat32(), g.m.toFloat32(), 0, 0, 'm (unfused clip on CUDA)');
  assertClose(u.v.toFloat32(), g.v.toFloat32(), 0, 0, 'v (unfused clip on CUDA)');
  const ts = [g.grad, g.bf16, Tensor.from(uniformSym(7, 43), [7], { device: G })];
  const tc = ts.map((t) => t.to('cpu'));
  const sg = sumOfSquares(ts), sc = sumOfSquares(tc);
  assert.ok(Math.abs(sg - sc) <= 1e-5 * sc, `sumOfSquares ${sg} vs ${sc}`);
  const r = gradNormAndClipFactor(ts, 1);
  assert.ok(r.clipped && r.finite);
  assert.equal(r.scale, 1 / (r.norm + 1e-6));
  scaleGradsInPlace(ts, r.scale);
  assert.ok(Math.abs(Math.sqrt(sumOfSquares(ts)) - 1) < 1e-2);
  const nan = Tensor.from(new Float32Array([1, NaN]), [2], { device: G });
  const rn = gradNormAndClipFactor([nan, g.grad], 1);
  assert.equal(rn.finite, false);
  assert.equal(rn.clipped, false);
  assert.equal(rn.scale, 1);
});
