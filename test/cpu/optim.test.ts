// CPU AdamW against a float64 re-statement of torch.optim.AdamW and, bitwise, against the fma-explicit element
// function the CUDA kernel shares; the fused grad-clip factor (bitwise clip-in-place then step); sum of squares;
// grad-norm clipping; bad inputs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, roundBf16 } from '../../src/tensor.ts';
import { adamwStep, sumOfSquares, gradNormAndClipFactor, scaleGradsInPlace } from '../../src/ops/optim.ts';
import { uniformSym } from '../helpers/random.ts';
import { assertClose } from '../helpers/numeric.ts';

const dev = 'cpu';

test('adamwStep follows torch.optim.AdamW over several steps and refreshes the bf16 copy', () => {
  for (const n of [1, 7, 113, 70001]) {
    const p = Float64Array.from(uniformSym(n, n, 1)), m = new Float64Array(n), v = new Float64Array(n);
    const master = Tensor.from(Float32Array.from(p), [n], { device: dev });
    const mt = Tensor.zeros([n], { device: dev }), vt = Tensor.zeros([n], { device: dev });
    const copy = Tensor.zeros([n], { dtype: 'bf16', device: dev });
    const h = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1 };
    for (let step = 1; step <= 4; step++) {
      const g = uniformSym(n, 1000 * n + step, 0.5);
      adamwStep({ master, grad: Tensor.from(g, [n], { device: dev }), m: mt, v: vt, bf16: copy }, { ...h, step });
      const bc1 = 1 - h.beta1 ** step, bc2 = 1 - h.beta2 ** step;
      for (let i = 0; i < n; i++) {
        p[i]! *= 1 - h.lr * h.weightDecay;
        m[i] = h.beta1 * m[i]! + (1 - h.beta1) * g[i]!;
        v[i] = h.beta2 * v[i]! + (1 - h.beta2) * g[i]! * g[i]!;
        p[i]! -= (h.lr / bc1) * (m[i]! / (Math.sqrt(v[i]!) / Math.sqrt(bc2) + h.eps));
      }
    }
    assertClose(master.toFloat32(), p, 1e-6, 1e-5, `master n${n}`);
    assertClose(mt.toFloat32(), m, 1e-7, 1e-5, `m n${n}`);
    assertClose(vt.toFloat32(), v, 1e-9, 1e-5, `v n${n}`);
    assert.deepEqual(copy.toFloat32(), roundBf16(master.toFloat32()));
  }
});

test('sumOfSquares over f32 and bf16 tensors', () => {
  const a = uniformSym(113, 1), b = uniformSym(70001, 2, 1, true), c = Float32Array.from([3]);
  const want = [a, b, c].reduce((s, x) => s + x.reduce((t, y) => t + y * y, 0), 0);
  const got = sumOfSquares([Tensor.from(a, [113], { device: dev }), Tensor.from(b, [70001], { dtype: 'bf16', device: dev }), Tensor.from(c, [1], { device: dev })]);
  assert.ok(Math.abs(got - want) <= 1e-5 * want, `${got} vs ${want}`);
  assert.equal(sumOfSquares([]), 0);
});

test('gradNormAndClipFactor: the factor above maxNorm, 1 for small and non-finite norms; the gradients stay as they are', () => {
  const g1 = Tensor.from([3, 0], [2], { device: dev }), g2 = Tensor.from([4], [1], { dtype: 'bf16', device: dev });
  const r = gradNormAndClipFactor([g1, g2], 1);
  assert.equal(r.norm, 5);
  assert.ok(r.clipped && r.finite);
  assert.equal(r.scale, 1 / (5 + 1e-6));
  assert.deepEqual([...g1.toFloat32()], [3, 0]);
  assert.deepEqual([...g2.toFloat32()], [4]);
  const small = Tensor.from([0.1, 0.2], [2], { device: dev });
  const rs = gradNormAndClipFactor([small], 1);
  assert.ok(!rs.clipped && rs.finite);
  assert.equal(rs.scale, 1);
  const bad = Tensor.from([Infinity, 1], [2], { device: dev });
  const rb = gradNormAndClipFactor([bad, g1], 1);
  assert.ok(!rb.finite && !rb.clipped);
  assert.equal(rb.scale, 1);
  const rn = gradNormAndClipFactor([Tensor.from([NaN], [1], { device: dev })], 1);
  assert.ok(!rn.finite && rn.scale === 1);
});

test('adamwStep with gradScale is bitwise scaling the gradients in place first (the unfused clip), which it leaves alone', () => {
  // Magnitudes over 9 decades, exact zeros and -0: g*s - m is where a fused multiply-add would differ.
  const n = 30011;
  const g0 = uniformSym(n, 17, 0.1).map((x, i) => (i % 89 === 0 ? 0 : i % 89 === 1 ? -0 : x * 10 ** -(i % 9)));
  const h = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 };
  const p0 = uniformSym(n, 18, 0.05);
  const mk = () => ({ master: Tensor.from(p0, [n], { device: dev }), m: Tensor.zeros([n], { device: dev }), v: Tensor.zeros([n], { device: dev }), bf16: Tensor.zeros([n], { dtype: 'bf16', device: dev }) });
  const fused = mk(), unfused = mk();
  // The clip factors of norms above maxNorm = 1 (as clipFactor makes them), and 1 (no clipping) on step 2.
  const scales = [1 / (3.7 + 1e-6), 1, 1 / (1234.5 + 1e-6), 0.999999];
  scales.forEach((s, k) => {
    const step = k + 1;
    const g = g0.map((x, i) => (i % (k + 2) === 0 ? -x : x));
    const gf = Tensor.from(g, [n], { device: dev }), gu = Tensor.from(g, [n], { device: dev });
    adamwStep({ ...fused, grad: gf }, { ...h, step, gradScale: s });
    assert.deepEqual(gf.toFloat32(), g, `step ${step}: the gradient buffer is not rewritten`);
    scaleGradsInPlace([gu], s);
    adamwStep({ ...unfused, grad: gu }, { ...h, step });
    assert.deepEqual(fused.m.toFloat32(), unfused.m.toFloat32(), `m step ${step}`);
    assert.deepEqual(fused.v.toFloat32(), unfused.v.toFloat32(), `v step ${step}`);
    assert.deepEqual(fused.master.toFloat32(), unfused.master.toFloat32(), `master step ${step}`);
    assert.deepEqual(fused.bf16.toFloat32(), unfused.bf16.toFloat32(), `bf16 step ${step}`);
  });
});

test('adamwStep rejects bad inputs', () => {
  const p = Tensor.zeros([4], { device: dev });
  const z = () => Tensor.zeros([4], { device: dev });
  const h = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: 1 };
  assert.throws(() => adamwStep({ master: p, grad: Tensor.zeros([5], { device: dev }), m: z(), v: z() }, h), /adamwStep: grad must have shape \[4\], got f32\[5\]/);
  assert.throws(() => adamwStep({ master: p, grad: z(), m: Tensor.zeros([4], { dtype: 'bf16', device: dev }), v: z() }, h), /m must be f32/);
  assert.throws(() => adamwStep({ master: p, grad: z(), m: z(), v: z() }, { ...h, step: 0 }), /step is 1-based/);
  assert.throws(() => adamwStep({ master: p, grad: z(), m: z(), v: z(), bf16: z() }, h), /bf16 must be bf16/);
  assert.throws(() => adamwStep({ master: p, grad: z(), m: z(), v: z() }, { ...h, gradScale: NaN }), /adamwStep: gradScale \(the grad-clip factor\) must be finite, got nan/);
  assert.throws(() => sumOfSquares([Tensor.zeros([2], { dtype: 'i32', device: dev })]), /must be f32 or bf16/);
});

// ---- the exact roundings of adamw_element (native/cpu/optim.h), which the CUDA kernel shares -------------------
const f = Math.fround;
const fbuf = new Float32Array(1);
const ibuf = new Int32Array(fbuf.buffer);
/** The float next to x (a float) toward +inf (up) or -inf. */
function nextFloat(x: number, up: boolean): number {
  if (x === 0) return up ? 2 ** -149 : -(2 ** -149);
  fbuf[0] = x;
  ibuf[0]! += (x > 0) === up ? 1 : -1;
  return fbuf[0]!;
}
/** fmaf(a, b, c) correctly rounded: a*b is exact in double; TwoSum gives s + e = a*b + c exactly. */
function fmaf(a: number, b: number, c: number): number {
  const p = a * b;
  const s = p + c;
  const bb = s - p;
  const e = p - (s - bb) + (c - bb);
  const r = f(s);
  if (e === 0 || r === s) return r;
  const other = nextFloat(r, r < s);
  if ((r + other) / 2 !== s) return r; // not a tie: rounding s is rounding s + e
  // s is a midpoint between r and other: e decides.
  return e > 0 === other > r ? other : r;
}

test('adamwStep on the CPU is bitwise the fma-explicit element function (the roundings the CUDA kernel shares)', () => {
  const n = 20011;
  const g0 = uniformSym(n, 7, 0.1).map((x, i) => (i % 89 === 0 ? 0 : x * 10 ** -(i % 9)));
  const h = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 };
  const p = Float32Array.from(uniformSym(n, 8, 0.05)), m = new Float32Array(n), v = new Float32Array(n);
  const master = Tensor.from(p, [n], { device: dev }), mt = Tensor.zeros([n], { device: dev }), vt = Tensor.zeros([n], { device: dev });
  for (let step = 1; step <= 3; step++) {
    // Step 3 clips: g' = fp32(g * fp32(scale)), rounded on its own before g' - m (no fused multiply-add).
    const scale = step === 3 ? 1 / (2.71828 + 1e-6) : 1;
    const graw = g0.map((x, i) => (step === 2 && i % 3 === 0 ? -x : x));
    adamwStep({ master, grad: Tensor.from(graw, [n], { device: dev }), m: mt, v: vt }, { ...h, step, gradScale: scale });
    const g = graw.map((x) => f(x * f(scale)));
    // The binding's constants: computed in double, rounded once to float.
    const decay = f(1 - h.lr * h.weightDecay), omb1 = f(1 - h.beta1), omb2 = f(1 - h.beta2), beta2 = f(h.beta2), eps = f(h.eps);
    const ss = f(h.lr / (1 - h.beta1 ** step)), bc2 = f(Math.sqrt(1 - h.beta2 ** step));
    for (let i = 0; i < n; i++) {
      const pd = f(p[i]! * decay);
      const mi = fmaf(omb1, f(g[i]! - m[i]!), m[i]!);
      const vi = fmaf(beta2, v[i]!, f(f(omb2 * g[i]!) * g[i]!));
      const denom = f(f(f(Math.sqrt(vi)) / bc2) + eps);
      p[i] = fmaf(-ss, f(mi / denom), pd);
      m[i] = mi;
      v[i] = vi;
    }
  }
  assert.deepEqual(mt.toFloat32(), m, 'm');
  assert.deepEqual(vt.toFloat32(), v, 'v');
  assert.deepEqual(master.toFloat32(), p, 'master');
});
