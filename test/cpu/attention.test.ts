// Attention with sinks on the CPU backend: fixtures from HF transformers, float64 reference, finite differences,
// packing, padding, GQA ratios, windows and decode.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { native } from '../../src/native.ts';
import { Tensor } from '../../src/tensor.ts';
import {
  attentionForward,
  attentionBackward,
  attentionDecode,
  paddedCuSeqlens,
  packedCuSeqlens,
} from '../../src/ops/attention.ts';
import { refForward, loadAttnFixture, attnOptions, hostResults, type RefShape } from '../helpers/attention-ref.ts';
import { randn } from '../helpers/random.ts';
import { maxAbsDiff } from '../helpers/numeric.ts';

const dev = 'cpu';
const f32 = (a: Float32Array, shape: number[]): Tensor => Tensor.from(a, shape, { device: dev, dtype: 'f32' });
const bf = (a: Float32Array, shape: number[]): Tensor => Tensor.from(a, shape, { device: dev, dtype: 'bf16' });

for (const kind of ['full', 'sliding'] as const) {
  test(`fixture ${kind}: out, lse, dq, dk, dv, dsinks match transformers`, () => {
    const f = loadAttnFixture(kind);
    const T = f.B * f.S;
    const { cuSeqlens, maxSeqlen } = packedCuSeqlens(Array(f.B).fill(f.S), dev);
    const opts = { cuSeqlens, maxSeqlen, window: f.window, sinks: f32(f.sinks, [f.Hq]) };
    // fp32 inputs: the reference itself should agree to ~1e-5.
    const q = f32(f.q, [T, f.Hq, f.D]);
    const k = f32(f.k, [T, f.Hkv, f.D]);
    const v = f32(f.v, [T, f.Hkv, f.D]);
    const { out, lse } = attentionForward(q, k, v, opts);
    assert.ok(maxAbsDiff(out.toFloat32(), f.out) < 2e-5, `out ${maxAbsDiff(out.toFloat32(), f.out)}`);
    assert.ok(maxAbsDiff(lse.toFloat32(), f.lse) < 2e-5, `lse ${maxAbsDiff(lse.toFloat32(), f.lse)}`);
    const g = attentionBackward(f32(f.dout, [T, f.Hq, f.D]), q, k, v, out, lse, { ...opts, gradDtype: 'f32' });
    for (const [name, got, want] of [
      ['dq', g.dq, f.dq],
      ['dk', g.dk, f.dk],
      ['dv', g.dv, f.dv],
    ] as const) {
      const e = maxAbsDiff(got.toFloat32(), want);
      assert.ok(e < 1e-4, `${name} error ${e}`);
    }
    assert.ok(g.dsinks, 'dsinks returned');
    const ed = maxAbsDiff(g.dsinks.toFloat32(), f.dsinks);
    assert.ok(ed < 1e-4, `dsinks error ${ed}`);
    // bf16 inputs (exactly representable): out within bf16 rounding of the fixture.
    const qb = bf(f.q, [T, f.Hq, f.D]);
    const r = attentionForward(qb, bf(f.k, [T, f.Hkv, f.D]), bf(f.v, [T, f.Hkv, f.D]), opts);
    assert.equal(r.out.dtype, 'bf16');
    assert.ok(maxAbsDiff(r.out.toFloat32(), f.out) < 2e-2);
    assert.ok(maxAbsDiff(r.lse.toFloat32(), f.lse) < 1e-4);
  });
}

function rand(s: RefShape, seed: number) {
  return {
    q: randn(s.T * s.Hq * s.D, seed),
    k: randn(s.T * s.Hkv * s.D, seed + 1),
    v: randn(s.T * s.Hkv * s.D, seed + 2),
    dout: randn(s.T * s.Hq * s.D, seed + 3),
  };
}

function run(s: RefShape, x: ReturnType<typeof rand>, withSinks: boolean) {
  const opts = attnOptions(s, dev, withSinks);
  const q = f32(x.q, [s.T, s.Hq, s.D]);
  const k = f32(x.k, [s.T, s.Hkv, s.D]);
  const v = f32(x.v, [s.T, s.Hkv, s.D]);
  const fw = attentionForward(q, k, v, opts);
  const bw = attentionBackward(f32(x.dout, [s.T, s.Hq, s.D]), q, k, v, fw.out, fw.lse, { ...opts, gradDtype: 'f32' });
  return hostResults(fw, bw);
}

test('backward matches finite differences of the float64 forward (GQA 2, window 3, sinks)', () => {
  const s: RefShape = { T: 9, Hq: 4, Hkv: 2, D: 4, cu: [0, 5, 9], window: 3, sinks: [0.3, -0.5, 1.2, 0.0], scale: 0.7 };
  const x = rand(s, 11);
  const got = run(s, x, true);
  // L = sum(dout * out); numerical gradients by central differences in float64.
  const loss = (q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, sinks: ArrayLike<number>): number => {
    const { out } = refForward({ ...s, sinks }, q, k, v);
    let l = 0;
    for (let i = 0; i < out.length; i++) l += out[i]! * x.dout[i]!;
    return l;
  };
  const eps = 1e-4;
  const base = { q: Float64Array.from(x.q), k: Float64Array.from(x.k), v: Float64Array.from(x.v), s: Float64Array.from(s.sinks!) };
  const check = (name: 'q' | 'k' | 'v' | 's', grad: ArrayLike<number>) => {
    const a = base[name];
    for (let i = 0; i < a.length; i++) {
      const old = a[i]!;
      a[i] = old + eps;
      const lp = loss(base.q, base.k, base.v, base.s);
      a[i] = old - eps;
      const lm = loss(base.q, base.k, base.v, base.s);
      a[i] = old;
      const num = (lp - lm) / (2 * eps);
      assert.ok(Math.abs(num - grad[i]!) < 1e-3 * Math.max(1, Math.abs(num)), `d${name}[${i}]: fd ${num} vs ${grad[i]}`);
    }
  };
  check('q', got.dq);
  check('k', got.dk);
  check('v', got.dv);
  check('s', got.dsinks!);
});

test('forward matches the float64 reference: GQA 1/2/8, head_dim 64 and 128, lengths 1, 7, 113', () => {
  for (const [Hq, Hkv, D] of [
    [2, 2, 64],
    [4, 2, 128],
    [8, 1, 64],
  ] as const) {
    for (const window of [0, 5, 500]) {
      const lens = [1, 7, 113];
      const cu = [0, 1, 8, 121];
      const s: RefShape = { T: 121, Hq, Hkv, D, cu, window, sinks: randn(Hq, 5), scale: 1 / Math.sqrt(D) };
      const x = rand(s, Hq * 7 + D + window);
      const got = run(s, x, true);
      const ref = refForward(s, x.q, x.k, x.v);
      assert.ok(maxAbsDiff(got.out, ref.out) < 1e-5, `Hq ${Hq} Hkv ${Hkv} D ${D} W ${window} lens ${lens}`);
      assert.ok(maxAbsDiff(got.lse, ref.lse) < 1e-5);
    }
  }
});

test('packed sequences == the same sequences one by one; a window larger than the sequence == full causal', () => {
  const base = { Hq: 8, Hkv: 2, D: 64, window: 0, scale: 0.125, sinks: randn(8, 3) };
  const lens = [7, 1, 30, 13];
  const cu = [0];
  for (const l of lens) cu.push(cu[cu.length - 1]! + l);
  const T = cu[cu.length - 1]!;
  const all: RefShape = { ...base, T, cu };
  const x = rand(all, 21);
  const packed = run(all, x, true);
  const big = run({ ...all, window: 1000 }, x, true);
  for (const key of ['out', 'lse', 'dq', 'dk', 'dv', 'dsinks'] as const) assert.deepEqual(big[key], packed[key], key);
  const dsinks = new Float64Array(8);
  for (let i = 0; i < lens.length; i++) {
    const a = cu[i]!;
    const b = cu[i + 1]!;
    const sl = (arr: Float32Array, w: number) => arr.slice(a * w, b * w);
    const one: RefShape = { ...base, T: b - a, cu: [0, b - a] };
    const r = run(one, { q: sl(x.q, 8 * 64), k: sl(x.k, 2 * 64), v: sl(x.v, 2 * 64), dout: sl(x.dout, 8 * 64) }, true);
    assert.deepEqual(r.out, sl(packed.out, 8 * 64));
    assert.deepEqual(r.dq, sl(packed.dq, 8 * 64));
    assert.deepEqual(r.dk, sl(packed.dk, 2 * 64));
    assert.deepEqual(r.dv, sl(packed.dv, 2 * 64));
    for (let h = 0; h < 8; h++) {
      assert.deepEqual(r.lse.slice(h * (b - a), (h + 1) * (b - a)), packed.lse.slice(h * T + a, h * T + b));
      dsinks[h]! += r.dsinks![h]!;
    }
  }
  assert.ok(maxAbsDiff(dsinks, packed.dsinks!) < 1e-5);
});

test('padding rows: zero output and gradients, real rows unchanged', () => {
  const S = 16;
  const lengths = [16, 9, 1];
  const base: RefShape = { T: 48, Hq: 4, Hkv: 4, D: 64, cu: [0, 16, 32, 48], window: 0, scale: 0.125, sinks: randn(4, 9) };
  const x = rand(base, 31);
  const padded = run({ ...base, used: lengths }, x, true);
  const full = run(base, x, true);
  for (let b = 0; b < 3; b++) {
    for (let i = 0; i < S; i++) {
      const t = b * S + i;
      const rowQ = (arr: Float32Array) => arr.slice(t * 4 * 64, (t + 1) * 4 * 64);
      if (i < lengths[b]!) {
        assert.deepEqual(rowQ(padded.out), rowQ(full.out));
      } else {
        assert.ok(rowQ(padded.out).every((z) => z === 0));
        assert.ok(rowQ(padded.dq).every((z) => z === 0));
        assert.ok(rowQ(padded.dk).every((z) => z === 0));
        assert.ok(rowQ(padded.dv).every((z) => z === 0));
      }
    }
  }
  const helper = paddedCuSeqlens(lengths, S, dev);
  assert.deepEqual([...helper.cuSeqlens.toInt32()], [0, 16, 32, 48]);
  assert.deepEqual([...helper.seqUsed.toInt32()], lengths);
});

test('length 1023 with sliding window 128: matches the float64 reference on sampled rows', () => {
  const s: RefShape = { T: 1023, Hq: 2, Hkv: 1, D: 64, cu: [0, 1023], window: 128, scale: 0.125, sinks: [0.5, -1] };
  const x = rand(s, 41);
  const got = run(s, x, true);
  const ref = refForward(s, x.q, x.k, x.v);
  assert.ok(maxAbsDiff(got.out, ref.out) < 1e-5);
  assert.ok(maxAbsDiff(got.lse, ref.lse) < 1e-5);
});

test('decode == the last row of the full forward (window, sinks, GQA 4, varying lengths)', () => {
  const Hq = 8;
  const Hkv = 2;
  const D = 64;
  const Smax = 40;
  const lens = [40, 1, 17];
  const sinks = randn(Hq, 2);
  for (const window of [0, 8]) {
    const kc = randn(3 * Smax * Hkv * D, 51);
    const vc = randn(3 * Smax * Hkv * D, 52);
    const qAll = randn(3 * Smax * Hq * D, 53);
    const qDec = new Float32Array(3 * Hq * D);
    for (let b = 0; b < 3; b++) qDec.set(qAll.slice((b * Smax + lens[b]! - 1) * Hq * D, (b * Smax + lens[b]!) * Hq * D), b * Hq * D);
    const out = attentionDecode(bf(qDec, [3, Hq, D]), bf(kc, [3, Smax, Hkv, D]), bf(vc, [3, Smax, Hkv, D]), {
      seqLens: Tensor.from(Int32Array.from(lens), [3], { device: dev }),
      window,
      sinks: f32(sinks, [Hq]),
    }).toFloat32();
    const full = attentionForward(bf(qAll, [3 * Smax, Hq, D]), bf(kc, [3 * Smax, Hkv, D]), bf(vc, [3 * Smax, Hkv, D]), {
      cuSeqlens: Tensor.from(Int32Array.from([0, 40, 80, 120]), [4], { device: dev }),
      maxSeqlen: Smax,
      window,
      sinks: f32(sinks, [Hq]),
    }).out.toFloat32();
    for (let b = 0; b < 3; b++) {
      const t = b * Smax + lens[b]! - 1;
      assert.deepEqual(out.slice(b * Hq * D, (b + 1) * Hq * D), full.slice(t * Hq * D, (t + 1) * Hq * D));
    }
  }
});

test('no sinks = plain softmax attention; dsinks absent', () => {
  const s: RefShape = { T: 7, Hq: 2, Hkv: 1, D: 64, cu: [0, 7], window: 0, scale: 0.125 };
  const x = rand(s, 61);
  const got = run(s, x, false);
  const ref = refForward(s, x.q, x.k, x.v);
  assert.ok(maxAbsDiff(got.out, ref.out) < 1e-5);
  assert.equal(got.dsinks, undefined);
});

test('bad inputs name the op and the shapes', () => {
  const q = Tensor.zeros([4, 3, 64], { device: dev, dtype: 'bf16' });
  const k = Tensor.zeros([4, 2, 64], { device: dev, dtype: 'bf16' });
  const cu = Tensor.from(Int32Array.from([0, 4]), [2], { device: dev });
  assert.throws(() => attentionForward(q, k, k, { cuSeqlens: cu, maxSeqlen: 4 }), /attentionForward: query heads must be a multiple of kv heads/);
  const q2 = Tensor.zeros([4, 2, 64], { device: dev, dtype: 'bf16' });
  const v2 = Tensor.zeros([5, 2, 64], { device: dev, dtype: 'bf16' });
  assert.throws(() => attentionForward(q2, k, v2, { cuSeqlens: cu, maxSeqlen: 4 }), /attentionForward: v must have shape \[4, 2, 64\]/);
  const badCu = Tensor.from(Int32Array.from([0, 9]), [2], { device: dev });
  assert.throws(() => attentionForward(q2, k, k, { cuSeqlens: badCu, maxSeqlen: 9 }), /cuSeqlens/);
  assert.throws(() => attentionForward(q2, k, k, { cuSeqlens: cu, maxSeqlen: 4, sinks: Tensor.zeros([3], { device: dev }) }), /sinks must have shape \[2\]/);
});

test('results do not depend on the CPU thread count (1, 7, 32 threads)', () => {
  const s: RefShape = { T: 421, Hq: 8, Hkv: 1, D: 64, cu: [0, 1, 8, 121, 421], window: 0, scale: 0.125, sinks: randn(8, 71) };
  const x = rand(s, 72);
  const ops = native().ops;
  const before = ops.numThreads();
  try {
    const results = [1, 7, 32].map((n) => {
      ops.setNumThreads(n);
      return run(s, x, true);
    });
    for (const r of results.slice(1)) for (const key of ['out', 'lse', 'dq', 'dk', 'dv', 'dsinks'] as const) assert.deepEqual(r[key], results[0]![key], key);
  } finally {
    ops.setNumThreads(before);
  }
});
