// MoE block on the CPU backend: forward against a float64 per-token TS reference, backward against finite
// differences of that reference, routing edge cases and bad inputs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor } from '../../src/tensor.ts';
import { moeForward, moeBackward, type MoeWeights } from '../../src/ops/moe.ts';
import { native } from '../../src/native.ts';
import { add } from '../../src/ops/elementwise.ts';
import { addRmsnorm } from '../../src/ops/rmsnorm.ts';
import { makeProblem, weightsOf, refForward, type MoeProblem } from '../helpers/moe-reference.ts';
import { randnBf16, rng } from '../helpers/random.ts';
import { maxErr } from '../helpers/numeric.ts';

function run(p: MoeProblem, exact: boolean, dyVals?: Float32Array) {
  const w = weightsOf(p, 'cpu');
  const x = Tensor.from(p.x, [p.T, p.H], { dtype: 'bf16', device: 'cpu' });
  const f = moeForward(x, w, { topK: p.k, exact });
  const y = f.y.toFloat32();
  const counts = f.counts;
  const idx = f.ctx.topkIdx.toInt32();
  let grads;
  if (dyVals) {
    const dy = Tensor.from(dyVals, [p.T, p.H], { device: 'cpu' });
    const g = moeBackward(dy, f.ctx);
    grads = {
      dx: g.dx.toFloat32(), dRouterW: g.dRouterW.toFloat32(), dRouterB: g.dRouterB.toFloat32(),
      dGateUpW: g.dGateUpW.toFloat32(), dGateUpB: g.dGateUpB.toFloat32(), dDownW: g.dDownW.toFloat32(), dDownB: g.dDownB.toFloat32(),
    };
  }
  f.ctx.dispose();
  return { y, counts, idx, grads };
}

function checkForward(p: MoeProblem) {
  const ref = refForward(p);
  const ex = run(p, true);
  const rd = run(p, false);
  assert.deepEqual([...ex.idx], [...ref.idx], 'routing');
  assert.deepEqual([...ex.counts], [...ref.counts], 'counts');
  const a = maxErr(ex.y, ref.y);
  // y is stored in bf16: error within half an ulp of the largest value plus fp32 accumulation noise.
  assert.ok(a.err <= a.scale * 2 ** -8 + 1e-4, `exact forward err ${a.err} (scale ${a.scale})`);
  const b = maxErr(rd.y, ref.y);
  assert.ok(b.err <= a.scale * 0.03 + 1e-3, `bf16 forward err ${b.err} (scale ${b.scale})`);
}

test('forward matches the float64 reference (awkward sizes)', () => {
  checkForward(makeProblem(7, 24, 5, 12, 2, 1));
  checkForward(makeProblem(13, 40, 8, 20, 4, 2));
  checkForward(makeProblem(3, 17, 3, 9, 3, 3)); // odd sizes (the CPU backend takes any size)
});

// Loss L = Σ y·g; dL/dθ by central differences of the float64 reference, against moeBackward in exact mode.
test('backward matches finite differences of the reference', () => {
  const p = makeProblem(5, 16, 4, 8, 2, 11);
  const g = randnBf16(p.T * p.H, 1, rng(5));
  const { grads } = run(p, true, g);
  assert.ok(grads);
  const loss = (q: MoeProblem) => refForward(q).y.reduce((s, v, i) => s + v * g[i]!, 0);
  const eps = 1e-5;
  const names = ['x', 'routerW', 'routerB', 'gateUpW', 'gateUpB', 'downW', 'downB'] as const;
  const gradOf = { x: grads.dx, routerW: grads.dRouterW, routerB: grads.dRouterB, gateUpW: grads.dGateUpW,
    gateUpB: grads.dGateUpB, downW: grads.dDownW, downB: grads.dDownB };
  const r = rng(99);
  for (const name of names) {
    const n = p[name].length;
    const picks = new Set<number>();
    for (let s = 0; s < Math.min(n, 12); s++) picks.add(Math.floor(r() * n));
    for (const i of picks) {
      const plus = { ...p, [name]: Float64Array.from(p[name]) } as unknown as MoeProblem;
      const minus = { ...p, [name]: Float64Array.from(p[name]) } as unknown as MoeProblem;
      (plus[name] as unknown as Float64Array)[i] += eps;
      (minus[name] as unknown as Float64Array)[i] -= eps;
      const fd = (loss(plus) - loss(minus)) / (2 * eps);
      const an = gradOf[name][i]!;
      assert.ok(Math.abs(fd - an) <= 2e-3 * Math.max(1, Math.abs(fd)), `d${name}[${i}]: fd ${fd} vs backward ${an}`);
    }
  }
});

test('bf16 backward stays close to the exact backward', () => {
  const p = makeProblem(9, 32, 6, 16, 2, 21);
  const g = randnBf16(p.T * p.H, 1, rng(6));
  const ex = run(p, true, g).grads!;
  const rd = run(p, false, g).grads!;
  for (const key of Object.keys(ex) as (keyof typeof ex)[]) {
    const e = maxErr(rd[key], ex[key]);
    assert.ok(e.err <= 0.05 * e.scale + 1e-3, `${key}: err ${e.err} scale ${e.scale}`);
  }
});

test('experts with no tokens get zero gradients; counts sum to T*k', () => {
  const p = makeProblem(2, 16, 8, 8, 2, 31);
  const g = randnBf16(p.T * p.H, 1, rng(7));
  const { counts, grads } = run(p, false, g);
  assert.equal(counts.reduce((a, b) => a + b, 0), 4);
  const empty = [...counts.keys()].filter((e) => counts[e] === 0);
  assert.ok(empty.length >= 4);
  const H = p.H, I = p.I;
  for (const e of empty) {
    assert.ok(grads!.dDownW.subarray(e * I * H, (e + 1) * I * H).every((v) => v === 0));
    assert.ok(grads!.dGateUpW.subarray(e * H * 2 * I, (e + 1) * H * 2 * I).every((v) => v === 0));
    assert.ok(grads!.dDownB.subarray(e * H, (e + 1) * H).every((v) => v === 0));
    assert.equal(grads!.dRouterB[e], 0);
  }
  checkForward(p);
});

test('all tokens to one expert', () => {
  const p = makeProblem(11, 16, 4, 8, 1, 41);
  p.routerB[2] = 64; // dominates every logit
  const { counts, grads } = run(p, false, randnBf16(p.T * p.H, 1, rng(8)));
  assert.deepEqual([...counts], [0, 0, p.T, 0]);
  // k = 1: the routing weight is 1 whatever the logits, so the router gets no gradient.
  assert.ok(grads!.dRouterW.every((v) => v === 0));
  checkForward(p);
  const p2 = makeProblem(11, 16, 4, 8, 2, 42);
  p2.routerB[1] = 64;
  assert.equal(run(p2, false).counts[1], p2.T);
  checkForward(p2);
});

test('T = 1 and k = E', () => {
  checkForward(makeProblem(1, 16, 4, 8, 2, 51));
  checkForward(makeProblem(1, 16, 1, 8, 1, 52));
  const p = makeProblem(6, 16, 4, 8, 4, 53);
  const { counts } = run(p, false);
  assert.deepEqual([...counts], [6, 6, 6, 6]);
  checkForward(p);
});

test('ties in router logits go to the lower expert id', () => {
  const p = makeProblem(3, 8, 6, 8, 3, 61);
  p.routerW.fill(0);
  p.routerB.set([1, 2, 2, 0, 2, 1]);
  const { idx } = run(p, false);
  assert.deepEqual([...idx], [1, 2, 4, 1, 2, 4, 1, 2, 4]);
  p.routerB.fill(0.5);
  assert.deepEqual([...run(p, false).idx], [0, 1, 2, 0, 1, 2, 0, 1, 2]);
  checkForward(p);
});

test('bad inputs name the op and the shapes', () => {
  const p = makeProblem(2, 16, 4, 8, 2, 71);
  const w = weightsOf(p, 'cpu');
  const x = Tensor.from(p.x, [p.T, p.H], { dtype: 'bf16', device: 'cpu' });
  assert.throws(() => moeForward(x, w, { topK: 5 }), /moeForward: topK must be in \[1, min\(E, 32\)\] with E = 4, got 5/);
  const bad: MoeWeights = { ...w, downW: Tensor.zeros([4, 8, 15], { dtype: 'bf16', device: 'cpu' }) };
  assert.throws(() => moeForward(x, bad, { topK: 2 }), /moeForward: downW must have shape \[4, 8, 16\], got bf16\[4, 8, 15\] on cpu/);
  const xf = Tensor.from(p.x, [p.T, p.H], { device: 'cpu' });
  assert.throws(() => moeForward(xf, w, { topK: 2 }), /moeForward: x must be bf16, got f32\[2, 16\] on cpu/);
  // The expert-kernel choice is a CUDA option: the CPU has one path and says so rather than ignoring it.
  assert.throws(() => moeForward(x, w, { topK: 2, expertGemms: 'decode' }), /moeForward: expertGemms 'decode' picks CUDA kernels; the CPU backend has one expert path \(use 'auto'\)/);
  assert.throws(() => moeForward(x, w, { topK: 2, expertGemms: 'fast' as 'auto' }), /moeForward: expertGemms must be 'auto', 'decode' or 'grouped', got 'fast'/);
  const f = moeForward(x, w, { topK: 2, expertGemms: 'auto' });
  assert.equal(f.ctx.expertGemms, 'cpu');
  assert.throws(() => moeBackward(Tensor.zeros([3, 16], { device: 'cpu' }), f.ctx), /moeBackward: dy must have shape \[2, 16\], got f32\[3, 16\]/);
  assert.equal(f.counts.reduce((a, b) => a + b, 0), 4);
  f.ctx.dispose();
  assert.throws(() => moeBackward(Tensor.zeros([2, 16], { device: 'cpu' }), f.ctx), /MoeContext was disposed/);
  assert.equal(f.counts.reduce((a, b) => a + b, 0), 4); // counts read before dispose stay readable
  const f2 = moeForward(x, w, { topK: 2 });
  f2.ctx.dispose();
  assert.throws(() => f2.counts, /read the token counts before dispose/);
});

test('weight gradients accumulate into given buffers (gradient accumulation), bad buffers are named', () => {
  const p = makeProblem(9, 32, 4, 16, 2, 81);
  const w = weightsOf(p, 'cpu');
  const x = Tensor.from(p.x, [p.T, p.H], { dtype: 'bf16', device: 'cpu' });
  const dy = Tensor.from(randnBf16(p.T * p.H, 1, rng(82)), [p.T, p.H], { device: 'cpu' });
  const f = moeForward(x, w, { topK: p.k });
  const fresh = moeBackward(dy, f.ctx);
  const prevGU = Float32Array.from({ length: p.E * p.H * 2 * p.I }, (_, i) => (i % 7) - 3);
  const prevD = Float32Array.from({ length: p.E * p.I * p.H }, (_, i) => (i % 5) * 0.5);
  const into = { dGateUpW: Tensor.from(prevGU, [p.E, p.H, 2 * p.I], { device: 'cpu' }), dDownW: Tensor.from(prevD, [p.E, p.I, p.H], { device: 'cpu' }) };
  const acc = moeBackward(dy, f.ctx, undefined, into);
  assert.equal(acc.dGateUpW, into.dGateUpW);
  assert.equal(acc.dDownW, into.dDownW);
  const gu = fresh.dGateUpW.toFloat32(), d = fresh.dDownW.toFloat32();
  assert.deepEqual(acc.dGateUpW.toFloat32(), Float32Array.from(gu, (v, i) => v + prevGU[i]!));
  assert.deepEqual(acc.dDownW.toFloat32(), Float32Array.from(d, (v, i) => v + prevD[i]!));
  assert.deepEqual(acc.dx.toFloat32(), fresh.dx.toFloat32());
  const wrong = { dGateUpW: Tensor.zeros([p.E, p.H, p.I], { device: 'cpu' }), dDownW: into.dDownW };
  assert.throws(() => moeBackward(dy, f.ctx, undefined, wrong), /moeBackward: accGateUpW must have shape \[4, 32, 32\], got f32\[4, 32, 16\]/);
  // overwrite: buffers that hold no gradient yet (NaN here, as uninitialised memory may) are written, never read.
  const nan = () => ({ dGateUpW: Tensor.from(new Float32Array(p.E * p.H * 2 * p.I).fill(NaN), [p.E, p.H, 2 * p.I], { device: 'cpu' }), dDownW: Tensor.from(new Float32Array(p.E * p.I * p.H).fill(NaN), [p.E, p.I, p.H], { device: 'cpu' }) });
  const over = nan();
  const wr = moeBackward(dy, f.ctx, undefined, { ...over, overwrite: true });
  assert.equal(wr.dGateUpW, over.dGateUpW);
  assert.deepEqual(wr.dGateUpW.toFloat32(), gu);
  assert.deepEqual(wr.dDownW.toFloat32(), d);
  assert.deepEqual(wr.dx.toFloat32(), fresh.dx.toFloat32());
  assert.throws(
    () => native().ops.moeBackward(dy, w.routerW, w.routerB, w.gateUpW, w.gateUpB, w.downW, w.downB, f.ctx.x, f.ctx.topkIdx, f.ctx.topkW, f.ctx.countsTensor, f.ctx.offsets, f.ctx.permTok, f.ctx.slotPos, f.ctx.gu, f.ctx.h, f.ctx.yp, p.k, f.ctx.limit, f.ctx.exact, null, null, null, null, true, null, null, null, null, 1, true),
    /moeBackward: accOverwrite needs the buffers accGateUpW\/accDownW/,
  );
  f.ctx.dispose();
});

test("the optional saved rows and host offsets of a context are checked before use", () => {
  // A CUDA forward returns ctx.xp (the gathered rows) and ctx.offsetsHost (offsets on the host) so the backward
  // neither gathers again nor waits for the device; the binding validates them on every backend.
  const p = makeProblem(2, 16, 4, 8, 2, 72);
  const w = weightsOf(p, 'cpu');
  const x = Tensor.from(p.x, [p.T, p.H], { dtype: 'bf16', device: 'cpu' });
  const f = moeForward(x, w, { topK: 2 });
  const c = f.ctx;
  const dy = Tensor.zeros([2, 16], { device: 'cpu' });
  const call = (xp?: Tensor, offsetsHost?: Tensor): unknown =>
    native().ops.moeBackward(
      dy, w.routerW, w.routerB, w.gateUpW, w.gateUpB, w.downW, w.downB,
      c.x, c.topkIdx, c.topkW, c.countsTensor, c.offsets, c.permTok, c.slotPos, c.gu, c.h, c.yp,
      c.topK, c.limit, c.exact, undefined, undefined, xp?.native, offsetsHost?.native,
    );
  const i32 = (v: number[]): Tensor => Tensor.from(Int32Array.from(v), [v.length], { dtype: 'i32', device: 'cpu' });
  assert.throws(() => call(undefined, i32([0, 1, 2])), /moeBackward: ctx.offsetsHost must have shape \[5\]/);
  assert.throws(() => call(undefined, i32([0, 1, 1, 2, 3])), /moeBackward: ctx.offsetsHost must run from 0 to 4 \(ctx.permTok rows\), got 0 .. 3/);
  assert.throws(() => call(Tensor.zeros([3, 16], { dtype: 'bf16', device: 'cpu' })), /moeBackward: ctx.xp must have shape \[4, 16\]/);
  assert.doesNotThrow(() => call(undefined, i32(Array.from(c.offsets.toInt32()))));
  c.dispose();
});

test('a residual rides the combine pass: moeForward(x, { residual }) == add(residual, moeForward(x)) bitwise', () => {
  const p = makeProblem(37, 16, 4, 8, 2, 73);
  const w = weightsOf(p, 'cpu');
  const x = Tensor.from(p.x, [p.T, p.H], { dtype: 'bf16', device: 'cpu' });
  const res = Tensor.from(randnBf16(p.T * p.H, 3, rng(5)), [p.T, p.H], { dtype: 'bf16', device: 'cpu' });
  const plain = moeForward(x, w, { topK: 2 });
  const want = add(res, plain.y);
  const fused = moeForward(x, w, { topK: 2, residual: res });
  assert.deepEqual([...fused.y.toFloat32()], [...want.toFloat32()]);
  assert.throws(() => moeForward(x, w, { topK: 2, residual: Tensor.zeros([p.T, p.H], { device: 'cpu' }) }), /moeForward: residual must be bf16, got f32\[37, 16\]/);
  plain.ctx.dispose();
  fused.ctx.dispose();
});

test('preNorm: moeForward(x, { preNorm }) == addRmsnorm then moeForward(normed, { residual: h }) bitwise; bad inputs are named', () => {
  const p = makeProblem(21, 24, 4, 8, 2, 91);
  const w = weightsOf(p, 'cpu');
  const x = Tensor.from(p.x, [p.T, p.H], { dtype: 'bf16', device: 'cpu' });
  const normW = Tensor.from(randnBf16(p.H, 0.5, rng(8)).map((v) => 1 + v), [p.H], { dtype: 'bf16', device: 'cpu' });
  for (const oDtype of ['bf16', 'f32'] as const) {
    // o as o_proj gives it: bf16 on one device, f32 from a tensor-parallel all-reduce.
    const o = Tensor.from(randnBf16(p.T * p.H, 2, rng(6)), [p.T, p.H], { dtype: oDtype, device: 'cpu' });
    const ref = addRmsnorm(x, o, normW, 1e-5);
    const plain = moeForward(ref.y, w, { topK: 2, residual: ref.h });
    const fused = moeForward(x, w, { topK: 2, preNorm: { o, weight: normW, eps: 1e-5 } });
    assert.ok(fused.preNorm, 'preNorm outputs');
    assert.deepEqual([...fused.y.toFloat32()], [...plain.y.toFloat32()], `y (o ${oDtype})`);
    assert.deepEqual([...fused.preNorm.h.toFloat32()], [...ref.h.toFloat32()], 'h');
    assert.deepEqual([...fused.preNorm.normed.toFloat32()], [...ref.y.toFloat32()], 'normed');
    assert.deepEqual([...fused.preNorm.rstd.toFloat32()], [...ref.rstd.toFloat32()], 'rstd');
    assert.deepEqual([...fused.ctx.x.toFloat32()], [...ref.y.toFloat32()], 'the saved MoE input is the normed rows');
    assert.deepEqual([...fused.ctx.topkIdx.toInt32()], [...plain.ctx.topkIdx.toInt32()], 'routing');
    assert.equal(plain.preNorm, undefined);
    for (const t of [o, ref.h, ref.y, ref.rstd, plain.y, fused.y, fused.preNorm.h, fused.preNorm.normed, fused.preNorm.rstd]) t.dispose();
    plain.ctx.dispose();
    fused.ctx.dispose();
  }
  const o = Tensor.zeros([p.T, p.H], { dtype: 'bf16', device: 'cpu' });
  assert.throws(() => moeForward(x, w, { topK: 2, residual: x, preNorm: { o, weight: normW, eps: 1e-5 } }), /moeForward: preNorm adds its own residual/);
  assert.throws(() => moeForward(x, w, { topK: 2, preNorm: { o: Tensor.zeros([p.T, p.H + 1], { device: 'cpu' }), weight: normW, eps: 1e-5 } }), /moeForward: preNorm\.o/);
  assert.throws(() => moeForward(x, w, { topK: 2, preNorm: { o, weight: Tensor.zeros([p.H - 1], { device: 'cpu' }), eps: 1e-5 } }), /moeForward: preNorm\.weight/);
  assert.throws(() => moeForward(x, w, { topK: 2, preNorm: { o, weight: normW, eps: Number.NaN } }), /moeForward: preNorm\.eps must be a finite non-negative number/);
});
