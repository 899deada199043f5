// GPT-OSS SwiGLU with clamp on the CPU backend: forward against a float64 reference, backward against the
// float64 analytic gradient (torch.clamp convention) and finite differences.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor } from '../../src/tensor.ts';
import { swigluForward, swigluBackward, SWIGLU_LIMIT, SWIGLU_ALPHA } from '../../src/ops/swiglu.ts';
import { uniform, uniformBf16, probes } from '../helpers/random.ts';
import { assertClose, assertBf16Close, fd, maxAbs } from '../helpers/numeric.ts';

const cpu = { device: 'cpu' } as const;
const L = SWIGLU_LIMIT, A = SWIGLU_ALPHA;
const sig = (z: number) => 1 / (1 + Math.exp(-z));

function refForward(gu: ArrayLike<number>, limit = L, alpha = A): Float64Array {
  const n = gu.length / 2;
  const h = new Float64Array(n);
  for (let k = 0; k < n; k++) {
    const g = Math.min(gu[2 * k]!, limit);
    const u = Math.min(Math.max(gu[2 * k + 1]!, -limit), limit);
    h[k] = (u + 1) * g * sig(alpha * g);
  }
  return h;
}

// torch.clamp's gradient: passes where min <= x <= max (inclusive), zero where clamped.
function refBackward(dh: ArrayLike<number>, gu: ArrayLike<number>, limit = L, alpha = A): Float64Array {
  const n = dh.length;
  const d = new Float64Array(2 * n);
  for (let k = 0; k < n; k++) {
    const g0 = gu[2 * k]!, u0 = gu[2 * k + 1]!;
    const g = Math.min(g0, limit), u = Math.min(Math.max(u0, -limit), limit);
    const s = sig(alpha * g);
    d[2 * k] = g0 <= limit ? dh[k]! * (u + 1) * (s + alpha * g * s * (1 - s)) : 0;
    d[2 * k + 1] = u0 >= -limit && u0 <= limit ? dh[k]! * g * s : 0;
  }
  return d;
}

for (const [nRows, inter] of [
  [1, 1],
  [7, 7],
  [113, 3],
  [5, 113],
  [3, 2880],
] as const) {
  test(`swigluForward/Backward match float64 references (N=${nRows}, I=${inter}), values past the clamp`, () => {
    const n = nRows * inter;
    // [-10, 10): both clamps are reached on gate and up.
    const gu = uniformBf16(2 * n, 1 + n, -10, 10);
    const ref = refForward(gu);
    const hb = swigluForward(Tensor.from(gu, [nRows, 2 * inter], { ...cpu, dtype: 'bf16' }));
    assert.equal(hb.dtype, 'bf16');
    assert.deepEqual(hb.shape, [nRows, inter]);
    assertBf16Close(hb.toFloat32(), ref, 'h bf16', 1e-6);
    const hf = swigluForward(Tensor.from(gu, [nRows, 2 * inter], cpu));
    assertClose(hf.toFloat32(), ref, 1e-5, 1e-5, 'h f32');
    const dh = uniformBf16(n, 2 + n);
    const refD = refBackward(dh, gu);
    for (const dtype of ['bf16', 'f32'] as const) {
      const d = swigluBackward(Tensor.from(dh, [nRows, inter], { ...cpu, dtype }), Tensor.from(gu, [nRows, 2 * inter], { ...cpu, dtype: 'bf16' }));
      assert.equal(d.dtype, 'f32');
      assert.deepEqual(d.shape, [nRows, 2 * inter]);
      assertClose(d.toFloat32(), refD, 1e-5 * maxAbs(refD), 1e-5, `dgu (dh ${dtype})`);
    }
  });
}

test('swiglu clamp edges: gradient passes at exactly +-limit (inclusive, as torch.clamp), zero beyond; NaN propagates', () => {
  // pairs (gate, up)
  const gu = new Float32Array([7, 7, 7.0625, -7, 3, -7.0625, -20, 0.5, NaN, 1, 1, NaN]);
  const h = swigluForward(Tensor.from(gu, [1, 12], cpu)).toFloat32();
  const ref = refForward(gu);
  assertClose(h.subarray(0, 4), ref.subarray(0, 4), 1e-6, 1e-6, 'h');
  assert.ok(Number.isNaN(h[4]!) && Number.isNaN(h[5]!), 'NaN propagates');
  const d = swigluBackward(Tensor.from(new Float32Array(6).fill(1), [1, 6], cpu), Tensor.from(gu, [1, 12], cpu)).toFloat32();
  assert.ok(d[0] !== 0 && d[1] !== 0, 'gate = up = limit: both gradients pass');
  assert.equal(d[2], 0, 'gate > limit: clamped, zero gradient');
  assert.notEqual(d[3], 0, 'up = -limit: passes');
  assert.notEqual(d[4], 0);
  assert.equal(d[5], 0, 'up < -limit: zero');
  assert.notEqual(d[6], 0, 'gate has no lower clamp');
  assert.equal(d[8], 0, 'NaN gate: zero gradient');
  assert.equal(d[11], 0, 'NaN up: zero gradient');
  assertClose(d.subarray(0, 8), refBackward([1, 1, 1, 1], gu.subarray(0, 8)), 1e-6, 1e-5, 'dgu');
});

test('swiglu float64 analytic gradient matches finite differences away from the clamp kinks', () => {
  const n = 40;
  const gu = Float64Array.from(uniform(2 * n, 11, -9, 9));
  for (let i = 0; i < gu.length; i++) if (Math.abs(Math.abs(gu[i]!) - L) < 1e-3) gu[i]! += 0.01;
  const dh = Float64Array.from(uniform(n, 12));
  const ref = refBackward(dh, gu);
  const loss = (v: Float64Array) => refForward(v).reduce((s, h, k) => s + h * dh[k]!, 0);
  for (let i = 0; i < 2 * n; i++) assert.ok(Math.abs(fd(loss, gu, i, 1e-6) - ref[i]!) < 1e-6, `dgu[${i}]`);
});

test('swigluBackward matches finite differences of the native forward (f32)', () => {
  for (const [nRows, inter] of [
    [1, 1],
    [7, 7],
    [3, 113],
  ] as const) {
    const n = nRows * inter;
    const gu = uniform(2 * n, 21 + n, -9, 9);
    for (let i = 0; i < gu.length; i++) if (Math.abs(Math.abs(gu[i]!) - L) < 0.05) gu[i]! += 0.1;
    const dh = uniform(n, 22 + n);
    const loss = (v: Float32Array) => {
      const h = swigluForward(Tensor.from(v, [nRows, 2 * inter], cpu)).toFloat32();
      let s = 0;
      for (let k = 0; k < n; k++) s += h[k]! * dh[k]!;
      return s;
    };
    const d = swigluBackward(Tensor.from(dh, [nRows, inter], cpu), Tensor.from(gu, [nRows, 2 * inter], cpu)).toFloat32();
    for (const i of probes(2 * n, 12, 23 + n)) {
      const step = 1e-2;
      const p = gu.slice(), m = gu.slice();
      p[i]! += step;
      m[i]! -= step;
      const num = (loss(p) - loss(m)) / (p[i]! - m[i]!);
      assert.ok(Math.abs(num - d[i]!) <= 2e-3 * (1 + Math.abs(num)), `N=${nRows} I=${inter} dgu[${i}] (gu ${gu[i]}): fd ${num} vs ${d[i]}`);
    }
  }
});

test('swiglu custom limit and alpha', () => {
  const gu = uniform(2 * 9, 31, -5, 5);
  const h = swigluForward(Tensor.from(gu, [3, 6], cpu), 2, 1).toFloat32();
  assertClose(h, refForward(gu, 2, 1), 1e-6, 1e-5, 'h');
  const dh = uniform(9, 32);
  const d = swigluBackward(Tensor.from(dh, [3, 3], cpu), Tensor.from(gu, [3, 6], cpu), 2, 1).toFloat32();
  assertClose(d, refBackward(dh, gu, 2, 1), 1e-6, 1e-5, 'dgu');
});

test('swiglu ops reject bad shapes and parameters with clear errors', () => {
  assert.throws(() => swigluForward(Tensor.zeros([2, 7], { ...cpu, dtype: 'bf16' })), /swigluForward: gu must be \[N, 2I\] \(even last dimension\), got bf16\[2, 7\] on cpu/);
  assert.throws(() => swigluForward(Tensor.zeros([2, 8], { ...cpu, dtype: 'i32' })), /swigluForward: gu must be bf16 or f32, got i32\[2, 8\] on cpu/);
  assert.throws(() => swigluForward(Tensor.zeros([2, 8], cpu), 0), /swigluForward: limit must be a finite positive number, got 0/);
  assert.throws(() => swigluBackward(Tensor.zeros([2, 8], cpu), Tensor.zeros([2, 8], cpu)), /swigluBackward: dh must have shape \[2, 4\], got f32\[2, 8\] on cpu/);
});
