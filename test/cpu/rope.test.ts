// YaRN RoPE on the CPU backend: the frequency table against an independent float64 computation of
// transformers' YaRN and design.md's figures, the rotation against a float64 reference, the backward as the
// transpose of the forward (adjoint identity and finite differences).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tensor, roundBf16 } from '../../src/tensor.ts';
import { yarnInvFreq, yarnCorrectionRange, yarnConfigFromHf, yarnInvFreqTensor, ropeForward, ropeBackward, ropeQkvSplit, ropeQkvProject, ropeQkvPack, type YarnConfig } from '../../src/ops/rope.ts';
import { linearForward } from '../../src/ops/gemm.ts';
import { uniform, uniformBf16, randInts, probes } from '../helpers/random.ts';
import { scatterRows } from '../../src/ops/kvcache.ts';
import { native } from '../../src/native.ts';
import { assertClose, assertBf16Close, dot } from '../helpers/numeric.ts';
import { fixturesDir } from '../helpers/fixtures.ts';

const cpu = { device: 'cpu' } as const;
const GPTOSS_20B: YarnConfig = {
  headDim: 64,
  ropeTheta: 150000,
  factor: 32,
  betaFast: 32,
  betaSlow: 1,
  originalMaxPositions: 4096,
  truncate: false,
};

// Independent float64 YaRN (transformers' _compute_yarn_parameters written out directly).
function yarnRef(c: YarnConfig): { invFreq: Float64Array; low: number; high: number; scaling: number } {
  const corr = (rot: number) => (c.headDim * Math.log(c.originalMaxPositions / (rot * 2 * Math.PI))) / (2 * Math.log(c.ropeTheta));
  let low = corr(c.betaFast), high = corr(c.betaSlow);
  if (c.truncate) [low, high] = [Math.floor(low), Math.ceil(high)];
  low = Math.max(low, 0);
  high = Math.min(high, c.headDim - 1);
  const half = c.headDim / 2;
  const invFreq = new Float64Array(half);
  for (let j = 0; j < half; j++) {
    const base = c.ropeTheta ** ((2 * j) / c.headDim);
    const ramp = Math.min(1, Math.max(0, (j - low) / (high - low)));
    const keep = 1 - ramp; // weight of the extrapolated (original) frequency
    invFreq[j] = (1 / (c.factor * base)) * (1 - keep) + (1 / base) * keep;
  }
  return { invFreq, low, high, scaling: 0.1 * Math.log(c.factor) + 1 };
}

test('yarnInvFreq for gpt-oss-20b: correction range ~[8.09, 17.40], scaling ~1.3466, blended table', () => {
  const { low, high } = yarnCorrectionRange(GPTOSS_20B);
  assert.ok(Math.abs(low - 8.09) < 0.005, `low ${low}`);
  assert.ok(Math.abs(high - 17.40) < 0.005, `high ${high}`);
  const { invFreq, attentionScaling } = yarnInvFreq(GPTOSS_20B);
  assert.equal(invFreq.length, 32);
  assert.ok(Math.abs(attentionScaling - 1.3466) < 1e-4, `scaling ${attentionScaling}`);
  assert.equal(attentionScaling, 0.1 * Math.log(32) + 1);
  const ref = yarnRef(GPTOSS_20B);
  assert.equal(ref.low, low);
  assertClose(invFreq, ref.invFreq, 0, 1e-6, 'invFreq');
  // Below low: the original frequencies; above high: divided by the factor; in between: a blend.
  for (let j = 0; j <= 8; j++) assertClose([invFreq[j]!], [150000 ** (-j / 32)], 0, 1e-6, `extrapolated j=${j}`);
  for (let j = 18; j < 32; j++) assertClose([invFreq[j]!], [150000 ** (-j / 32) / 32], 0, 1e-6, `interpolated j=${j}`);
  for (let j = 9; j <= 17; j++) {
    const e = 150000 ** (-j / 32);
    assert.ok(invFreq[j]! < e && invFreq[j]! > e / 32, `blend j=${j}`);
  }
  // truncate=true would round the range to [8, 18]; make sure that is a different table.
  const t = yarnInvFreq({ ...GPTOSS_20B, truncate: true });
  assert.notDeepEqual(t.invFreq, invFreq);
  assert.deepEqual(yarnCorrectionRange({ ...GPTOSS_20B, truncate: true }), { low: 8, high: 18 });
});

const fixtures = fixturesDir();
test('yarnInvFreq from the gptoss-tiny fixture config.json', { skip: fixtures ? false : 'fixtures not found' }, () => {
  const cfgJson = JSON.parse(readFileSync(join(fixtures!, 'gptoss-tiny', 'config.json'), 'utf8'));
  const cfg = yarnConfigFromHf(cfgJson);
  assert.deepEqual(cfg, { headDim: 16, ropeTheta: 150000, factor: 32, betaFast: 32, betaSlow: 1, originalMaxPositions: 4096, truncate: false });
  const ref = yarnRef(cfg);
  const { low, high } = yarnCorrectionRange(cfg);
  assert.ok(Math.abs(low - 2.0234) < 1e-3 && Math.abs(high - 4.3497) < 1e-3, `range [${low}, ${high}]`);
  assert.equal(high, ref.high);
  const { invFreq, attentionScaling } = yarnInvFreq(cfg);
  assert.equal(invFreq.length, 8);
  assertClose(invFreq, ref.invFreq, 0, 1e-6, 'invFreq');
  assert.equal(attentionScaling, ref.scaling);
  // factor 1 (no rope_scaling): plain RoPE, scaling 1.
  const plain = yarnInvFreq(yarnConfigFromHf({ head_dim: 16, rope_theta: 10000 }));
  assert.equal(plain.attentionScaling, 1);
  assertClose(plain.invFreq, Array.from({ length: 8 }, (_, j) => 10000 ** (-j / 8)), 0, 1e-6, 'plain');
  assert.throws(() => yarnInvFreq({ ...cfg, headDim: 15 }), /headDim must be a positive even integer/);
});

function refRope(x: ArrayLike<number>, pos: Int32Array, inv: Float32Array, s: number, heads: number, d: number, sign: number): Float64Array {
  const half = d / 2;
  const y = new Float64Array(x.length);
  for (let t = 0; t < pos.length; t++) {
    for (let j = 0; j < half; j++) {
      const a = Math.fround(pos[t]! * inv[j]!); // fp32 angle, as the kernels compute it
      const c = Math.cos(a) * s, sn = sign * Math.sin(a) * s;
      for (let h = 0; h < heads; h++) {
        const o = (t * heads + h) * d;
        const x1 = x[o + j]!, x2 = x[o + half + j]!;
        y[o + j] = x1 * c - x2 * sn;
        y[o + half + j] = x2 * c + x1 * sn;
      }
    }
  }
  return y;
}

for (const [t, heads, d] of [
  [1, 1, 2],
  [7, 3, 14],
  [113, 2, 16],
  [7, 4, 64],
] as const) {
  test(`ropeForward/ropeBackward match the float64 rotation (T=${t}, heads=${heads}, D=${d})`, () => {
    const cfg = { ...GPTOSS_20B, headDim: d };
    const { invFreq, attentionScaling } = yarnInvFreqTensor(cfg, 'cpu');
    const inv = invFreq.toFloat32();
    const posArr = randInts(t, 40 + t, 131072);
    posArr[0] = 0;
    const pos = Tensor.from(posArr, [t], cpu);
    const n = t * heads * d;
    const x = uniformBf16(n, 41 + d, -2, 2);
    const yb = ropeForward(Tensor.from(x, [t, heads, d], { ...cpu, dtype: 'bf16' }), pos, invFreq, attentionScaling);
    assert.equal(yb.dtype, 'bf16');
    assert.deepEqual(yb.shape, [t, heads, d]);
    const ref = refRope(x, posArr, inv, attentionScaling, heads, d, 1);
    assertBf16Close(yb.toFloat32(), ref, 'y bf16', 1e-5);
    const yf = ropeForward(Tensor.from(x, [t, heads, d], cpu), pos, invFreq, attentionScaling);
    assertClose(yf.toFloat32(), ref, 2e-6, 1e-5, 'y f32');
    // Backward: the transpose (rotation by -angle), f32 out.
    const dy = uniformBf16(n, 42 + d);
    for (const dtype of ['bf16', 'f32'] as const) {
      const dx = ropeBackward(Tensor.from(dy, [t, heads, d], { ...cpu, dtype }), pos, invFreq, attentionScaling);
      assert.equal(dx.dtype, 'f32');
      const refDx = refRope(dy, posArr, inv, attentionScaling, heads, d, -1);
      assertClose(dx.toFloat32(), refDx, 2e-6, 1e-5, `dx (dy ${dtype})`);
      // Adjoint identity <R x, dy> = <x, R^T dy>.
      const lhs = dot(yf.toFloat32(), dy), rhs = dot(x, dx.toFloat32());
      assert.ok(Math.abs(lhs - rhs) <= 1e-5 * (1 + Math.abs(lhs)), `adjoint ${lhs} vs ${rhs}`);
    }
  });
}

test('ropeBackward matches finite differences of the native forward (f32)', () => {
  const t = 5, heads = 2, d = 8, n = t * heads * d;
  const { invFreq, attentionScaling } = yarnInvFreqTensor({ ...GPTOSS_20B, headDim: d }, 'cpu');
  const pos = Tensor.from(new Int32Array([0, 1, 17, 4095, 100000]), [t], cpu);
  const x = uniform(n, 51);
  const dy = uniform(n, 52);
  const loss = (xv: Float32Array) => dot(ropeForward(Tensor.from(xv, [t, heads, d], cpu), pos, invFreq, attentionScaling).toFloat32(), dy);
  const dx = ropeBackward(Tensor.from(dy, [t, heads, d], cpu), pos, invFreq, attentionScaling).toFloat32();
  for (const i of probes(n, 16, 53)) {
    const xp = x.slice(), xm = x.slice();
    xp[i]! += 0.125;
    xm[i]! -= 0.125;
    const num = (loss(xp) - loss(xm)) / 0.25;
    assert.ok(Math.abs(num - dx[i]!) <= 1e-5 * (1 + Math.abs(num)), `dx[${i}]: fd ${num} vs ${dx[i]}`);
  }
});

test('rope ops reject bad shapes and dtypes with clear errors', () => {
  const inv = Tensor.from(new Float32Array(8), [8], cpu);
  const pos = Tensor.from(new Int32Array(3), [3], cpu);
  const x = Tensor.zeros([3, 2, 16], { ...cpu, dtype: 'bf16' });
  assert.throws(() => ropeForward(Tensor.zeros([3, 32], { ...cpu, dtype: 'bf16' }), pos, inv, 1), /ropeForward: x must be \[T, nHeads, D\], got bf16\[3, 32\] on cpu/);
  assert.throws(() => ropeForward(Tensor.zeros([3, 2, 15], cpu), pos, inv, 1), /ropeForward: head dim D must be even, got f32\[3, 2, 15\] on cpu/);
  assert.throws(() => ropeForward(x, Tensor.from(new Int32Array(2), [2], cpu), inv, 1), /ropeForward: positions must have shape \[3\], got i32\[2\] on cpu/);
  assert.throws(() => ropeForward(x, Tensor.from([0, 1, 2], [3], cpu), inv, 1), /ropeForward: positions must be i32, got f32\[3\] on cpu/);
  assert.throws(() => ropeForward(x, pos, Tensor.from(new Float32Array(16), [16], cpu), 1), /ropeForward: invFreq must have shape \[8\], got f32\[16\] on cpu/);
  assert.throws(() => ropeBackward(x, pos, inv, NaN), /ropeBackward: attentionScaling must be finite/);
});

// ---- the fused q/k/v layout ---------------------------------------------------------------------------------------
/** Columns [c0, c1) of a row-major [t, w] host matrix. */
function cols(m: Float32Array, t: number, w: number, c0: number, c1: number): Float32Array {
  const out = new Float32Array(t * (c1 - c0));
  for (let i = 0; i < t; i++) out.set(m.subarray(i * w + c0, i * w + c1), i * (c1 - c0));
  return out;
}

// D=6: the scalar path (D/2 not a multiple of 8); D=64: gpt-oss's head dim (the vectorised path on CUDA).
for (const [t, hq, hkv, d] of [
  [1, 1, 1, 2],
  [9, 4, 2, 6],
  [37, 4, 2, 16],
  [5, 8, 2, 64],
] as const) {
  test(`ropeQkvSplit / ropeQkvPack equal ropeForward / ropeBackward on the q/k/v column blocks (T=${t}, Hq=${hq}, Hkv=${hkv}, D=${d})`, () => {
    const { invFreq, attentionScaling: s } = yarnInvFreqTensor({ ...GPTOSS_20B, headDim: d }, 'cpu');
    const posArr = randInts(t, 60 + t, 131072);
    const pos = Tensor.from(posArr, [t], cpu);
    const wq = hq * d, wkv = hkv * d, w = wq + 2 * wkv;
    const qkvHost = uniformBf16(t * w, 61 + d, -2, 2);
    const blocks = [cols(qkvHost, t, w, 0, wq), cols(qkvHost, t, w, wq, wq + wkv), cols(qkvHost, t, w, wq + wkv, w)];
    const heads = [hq, hkv, hkv];
    for (const dtype of ['bf16', 'f32'] as const) {
      const opt = { ...cpu, dtype };
      // Forward: q and k bit-identical to the plain op on the same values, v a copy.
      const qkv = Tensor.from(qkvHost, [t, w], opt);
      const r = ropeQkvSplit(qkv, pos, invFreq, s, hq, hkv);
      for (const [i, got] of [r.q, r.k, r.v].entries()) {
        assert.deepEqual(got.shape, [t, heads[i]!, d]);
        assert.equal(got.dtype, dtype);
        const src = Tensor.from(blocks[i]!, [t, heads[i]!, d], opt);
        const want = i < 2 ? ropeForward(src, pos, invFreq, s) : src;
        assert.deepEqual(got.toFloat32(), want.toFloat32(), `${'qkv'[i]} (${dtype})`);
      }
      // Backward: dq, dk through the plain backward (f32 out; a bf16 output is its rounding), dv copied.
      const g = [0, 1, 2].map((i) => uniformBf16(t * heads[i]! * d, 70 + i + d));
      const gt = g.map((v, i) => Tensor.from(v, [t, heads[i]!, d], opt));
      const want = gt.map((x, i) => (i < 2 ? ropeBackward(x, pos, invFreq, s).toFloat32() : x.toFloat32()));
      for (const out of ['f32', 'bf16'] as const) {
        const dqkv = ropeQkvPack(gt[0]!, gt[1]!, gt[2]!, pos, invFreq, s, out);
        assert.deepEqual(dqkv.shape, [t, w]);
        assert.equal(dqkv.dtype, out);
        const h = dqkv.toFloat32();
        const c = [0, wq, wq + wkv, w];
        for (let i = 0; i < 3; i++) {
          const exp = out === 'bf16' ? roundBf16(want[i]!) : want[i]!;
          assert.deepEqual(cols(h, t, w, c[i]!, c[i + 1]!), exp, `d${'qkv'[i]} (${dtype} in, ${out} out)`);
        }
        dqkv.dispose();
      }
      for (const x of [qkv, r.q, r.k, r.v, ...gt]) x.dispose();
    }
  });
}

test('ropeQkvSplit with a KV cache writes the k and v rows at the slots, as scatterRows does', () => {
  const t = 5, hq = 4, hkv = 2, d = 16, wkv = hkv * d, w = (hq + 2 * hkv) * d, M = 11;
  const { invFreq, attentionScaling: s } = yarnInvFreqTensor({ ...GPTOSS_20B, headDim: d }, 'cpu');
  const pos = Tensor.from(randInts(t, 80, 4096), [t], cpu);
  const bf = { ...cpu, dtype: 'bf16' } as const;
  const qkv = Tensor.from(uniformBf16(t * w, 81, -2, 2), [t, w], bf);
  const init = uniformBf16(M * wkv, 82, -1, 1);
  const slots = Tensor.from(Int32Array.from([9, 0, -1, 4, 10]), [t], { ...cpu, dtype: 'i32' });
  const kc = Tensor.from(init, [M, hkv, d], bf), vc = Tensor.from(init, [M, hkv, d], bf);
  const r = ropeQkvSplit(qkv, pos, invFreq, s, hq, hkv, { k: kc, v: vc, slots });
  const plain = ropeQkvSplit(qkv, pos, invFreq, s, hq, hkv);
  for (const key of ['q', 'k', 'v'] as const) assert.deepEqual(r[key].toFloat32(), plain[key].toFloat32(), key);
  const kw = Tensor.from(init, [M, hkv, d], bf), vw = Tensor.from(init, [M, hkv, d], bf);
  scatterRows(kw, plain.k, slots);
  scatterRows(vw, plain.v, slots);
  assert.deepEqual(kc.toFloat32(), kw.toFloat32(), 'k cache');
  assert.deepEqual(vc.toFloat32(), vw.toFloat32(), 'v cache');
  // Bad caches and slots, named.
  const p = (o: Partial<{ k: Tensor; v: Tensor; slots: Tensor }>) => ({ k: kc, v: vc, slots, ...o });
  assert.throws(() => ropeQkvSplit(qkv, pos, invFreq, s, hq, hkv, p({ k: Tensor.zeros([M, hkv, d], cpu) })), /ropeQkvSplit: kCache must be bf16 \[M, 2, 16\] \(a flat pool\), got f32\[11, 2, 16\]/);
  assert.throws(() => ropeQkvSplit(qkv, pos, invFreq, s, hq, hkv, p({ k: Tensor.zeros([M, 1, 2 * d], bf) })), /ropeQkvSplit: kCache must be bf16 \[M, 2, 16\]/);
  assert.throws(() => ropeQkvSplit(qkv, pos, invFreq, s, hq, hkv, p({ v: Tensor.zeros([M + 1, hkv, d], bf) })), /ropeQkvSplit: vCache must have shape \[11, 2, 16\]/);
  assert.throws(() => ropeQkvSplit(qkv, pos, invFreq, s, hq, hkv, p({ slots: Tensor.zeros([t], cpu) })), /ropeQkvSplit: slots must be i32/);
  assert.throws(() => ropeQkvSplit(qkv, pos, invFreq, s, hq, hkv, p({ slots: Tensor.zeros([t + 1], { ...cpu, dtype: 'i32' }) })), /ropeQkvSplit: slots must have shape \[5\]/);
  assert.throws(() => ropeQkvSplit(qkv, pos, invFreq, s, hq, hkv, p({ slots: Tensor.from(Int32Array.from([0, 1, 2, 3, M]), [t], { ...cpu, dtype: 'i32' }) })), /index\[4\] = 11 is out of range for 11 rows/);
  assert.throws(() => native().ops.ropeQkvSplit(qkv.native, pos.native, invFreq.native, s, hq, hkv, kc.native), /ropeQkvSplit: kCache, vCache and slots go together \(got kCache, no vCache, no slots\)/);
});

test('ropeQkvProject on the CPU is linearForward then ropeQkvSplit (with the cache write), and names bad arguments', () => {
  const t = 3, H = 24, hq = 4, hkv = 2, d = 16, n = (hq + 2 * hkv) * d, M = 7;
  const { invFreq, attentionScaling: s } = yarnInvFreqTensor({ ...GPTOSS_20B, headDim: d }, 'cpu');
  const bf = { ...cpu, dtype: 'bf16' } as const;
  const x = Tensor.from(uniformBf16(t * H, 90, -2, 2), [t, H], bf);
  const w = Tensor.from(uniformBf16(n * H, 91, -0.5, 0.5), [n, H], bf);
  const b = Tensor.from(uniformBf16(n, 92, -0.5, 0.5), [n], bf);
  const pos = Tensor.from(randInts(t, 93, 4096), [t], cpu);
  const slots = Tensor.from(Int32Array.from([6, -1, 0]), [t], { ...cpu, dtype: 'i32' });
  const kc = Tensor.zeros([M, hkv, d], bf), vc = Tensor.zeros([M, hkv, d], bf);
  const r = ropeQkvProject(x, w, b, pos, invFreq, s, hq, hkv, { k: kc, v: vc, slots });
  const qkv = linearForward(x, w, b);
  const kw = Tensor.zeros([M, hkv, d], bf), vw = Tensor.zeros([M, hkv, d], bf);
  const two = ropeQkvSplit(qkv, pos, invFreq, s, hq, hkv, { k: kw, v: vw, slots });
  for (const key of ['q', 'k', 'v'] as const) assert.deepEqual(r[key].toFloat32(), two[key].toFloat32(), key);
  assert.deepEqual(kc.toFloat32(), kw.toFloat32(), 'k cache');
  assert.deepEqual(vc.toFloat32(), vw.toFloat32(), 'v cache');
  const noBias = ropeQkvProject(x, w, undefined, pos, invFreq, s, hq, hkv);
  assert.deepEqual(noBias.q.toFloat32(), ropeQkvSplit(linearForward(x, w), pos, invFreq, s, hq, hkv).q.toFloat32(), 'no bias');
  assert.throws(() => ropeQkvProject(x, Tensor.zeros([n - d, H], bf), b, pos, invFreq, s, hq, hkv), /ropeQkvProject: w must be \[128, 24\] \(\(numHeads \+ 2\*numKvHeads\) \* D rows\), got bf16\[112, 24\]/);
  assert.throws(() => ropeQkvProject(x, w, Tensor.zeros([n + 1], bf), pos, invFreq, s, hq, hkv), /ropeQkvProject: bias must be bf16 or f32 \[128\], got bf16\[129\]/);
  assert.throws(() => ropeQkvProject(x, w, b, Tensor.from(randInts(t + 1, 94, 9), [t + 1], cpu), invFreq, s, hq, hkv), /ropeQkvProject: positions must have shape \[3\]/);
  assert.throws(() => native().ops.ropeQkvProject(x.native, w.native, b.native, pos.native, invFreq.native, s, hq, hkv, kc.native), /ropeQkvProject: kCache, vCache and slots go together \(got kCache, no vCache, no slots\)/);
});

test('ropeQkvSplit / ropeQkvPack reject inconsistent shapes with clear errors', () => {
  const inv = Tensor.from(new Float32Array(8), [8], cpu);
  const pos = Tensor.from(new Int32Array(3), [3], cpu);
  const bf = { ...cpu, dtype: 'bf16' } as const;
  assert.throws(() => ropeQkvSplit(Tensor.zeros([3, 16 * 5], bf), pos, inv, 1, 4, 1), /ropeQkvSplit: qkv must have shape \[3, 96\], got bf16\[3, 80\] on cpu/);
  assert.throws(() => ropeQkvSplit(Tensor.zeros([3, 2, 48], bf), pos, inv, 1, 1, 1), /ropeQkvSplit: qkv must be \[T, \(Hq \+ 2\*Hkv\) \* D\]/);
  assert.throws(() => ropeQkvSplit(Tensor.zeros([2, 48], bf), pos, inv, 1, 1, 1), /ropeQkvSplit: positions must have shape \[2\]/);
  const dq = Tensor.zeros([3, 2, 16], bf), dk = Tensor.zeros([3, 1, 16], bf);
  assert.throws(() => ropeQkvPack(dq, dk, Tensor.zeros([3, 1, 16], cpu), pos, inv, 1, 'bf16'), /ropeQkvPack: q, k and v must share a dtype/);
  assert.throws(() => ropeQkvPack(dq, dk, Tensor.zeros([3, 2, 16], bf), pos, inv, 1, 'bf16'), /ropeQkvPack: v must have shape \[3, 1, 16\]/);
  assert.throws(() => ropeQkvPack(dq, dk, dk, pos, inv, 1, 'i32' as 'f32'), /ropeQkvPack: outDtype must be bf16 or f32/);
});
