// MoE block on CUDA against the CPU backend, on every expert-GEMM path (grouped kernels, per-expert cuBLASLt,
// padded batched cuBLASLt). Routing must match exactly; outputs and gradients must stay
// within a FlashAttention-style bound: error vs the fp32 truth (CPU exact mode) <= 2x the error of a plain
// BF16 implementation (CPU default mode, which rounds intermediates to bf16) + a small floor.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, cudaDeviceCount } from '../../src/tensor.ts';
import { moeForward, moeBackward, type MoeWeights } from '../../src/ops/moe.ts';
import { add } from '../../src/ops/elementwise.ts';
import { makeProblem, weightsOf, type MoeProblem } from '../helpers/moe-reference.ts';
import { randnBf16, rng } from '../helpers/random.ts';
import { maxErr } from '../helpers/numeric.ts';

const hasCuda = (() => {
  try {
    return cudaDeviceCount() > 0;
  } catch {
    return false;
  }
})();
const skip = hasCuda ? false : 'no CUDA device';

type Out = Record<string, Float32Array> & { idx: Float32Array; counts: Float32Array };

function runOn(device: string, p: MoeProblem, dyVals: Float32Array, opts: { exact?: boolean; dyBf16?: boolean } = {}): Out {
  const w: MoeWeights = weightsOf(p, device);
  const x = Tensor.from(p.x, [p.T, p.H], { dtype: 'bf16', device });
  const f = moeForward(x, w, { topK: p.k, exact: opts.exact });
  const dy = Tensor.from(dyVals, [p.T, p.H], { dtype: opts.dyBf16 ? 'bf16' : 'f32', device });
  const g = moeBackward(dy, f.ctx);
  const out: Out = {
    y: f.y.toFloat32(), idx: f.ctx.topkIdx.toFloat32(), counts: Float32Array.from(f.counts),
    dx: g.dx.toFloat32(), dRouterW: g.dRouterW.toFloat32(), dRouterB: g.dRouterB.toFloat32(),
    dGateUpW: g.dGateUpW.toFloat32(), dGateUpB: g.dGateUpB.toFloat32(), dDownW: g.dDownW.toFloat32(), dDownB: g.dDownB.toFloat32(),
  } as Out;
  f.ctx.dispose();
  for (const t of Object.values(g)) t.dispose();
  for (const t of Object.values(w)) t.dispose();
  return out;
}

// Every expert-GEMM path: our grouped kernels, per-expert cuBLASLt, and the padded slab layout with one
// strided-batched cuBLASLt GEMM per product (GPTOSS_MOE_GEMM, read on every call).
const PATHS = ['own', 'cublas', 'batched'] as const;

function check(name: string, p: MoeProblem, dyBf16 = false) {
  for (const path of PATHS) {
    process.env.GPTOSS_MOE_GEMM = path;
    try {
      checkOne(`${name} [${path}]`, p, dyBf16);
    } finally {
      delete process.env.GPTOSS_MOE_GEMM;
    }
  }
}

function checkOne(name: string, p: MoeProblem, dyBf16: boolean) {
  const dy = randnBf16(p.T * p.H, 1, rng(1234));
  const truth = runOn('cpu', p, dy, { exact: true });
  const plain = runOn('cpu', p, dy, {});
  const gpu = runOn('cuda:0', p, dy, { dyBf16 });
  assert.deepEqual([...gpu.idx], [...plain.idx], `${name}: routing`);
  assert.deepEqual([...gpu.counts], [...plain.counts], `${name}: counts`);
  const rows: string[] = [];
  for (const key of ['y', 'dx', 'dRouterW', 'dRouterB', 'dGateUpW', 'dGateUpB', 'dDownW', 'dDownB']) {
    const eg = maxErr(gpu[key]!, truth[key]!);
    const ep = maxErr(plain[key]!, truth[key]!);
    const bound = 2 * ep.err + 2 ** -9 * ep.scale + 1e-5;
    rows.push(`${key}: gpu ${eg.err.toExponential(2)} plain ${ep.err.toExponential(2)} scale ${ep.scale.toExponential(2)}`);
    assert.ok(eg.err <= bound, `${name}: ${key} gpu err ${eg.err} > bound ${bound} (plain bf16 err ${ep.err}, scale ${ep.scale})`);
  }
  console.log(`${name}\n  ${rows.join('\n  ')}`);
}

test('random routing, large-tile path (partial tiles in M, N and K)', { skip }, () => {
  check('T333 H128 E6 I96 k3', makeProblem(333, 128, 6, 96, 3, 1));
  check('T300 H256 E8 I192 k4', makeProblem(300, 256, 8, 192, 4, 2), true);
});

test('random routing, decode path (few rows per expert)', { skip }, () => {
  check('T5 H128 E8 I64 k2', makeProblem(5, 128, 8, 64, 2, 3));
  check('T1 H64 E4 I32 k2', makeProblem(1, 64, 4, 32, 2, 4));
  check('T16 H192 E32 I96 k4', makeProblem(16, 192, 32, 96, 4, 5));
});

test('skewed routing: hot experts, empty experts, all to one, k = E', { skip }, () => {
  const p = makeProblem(400, 128, 8, 64, 2, 6);
  p.routerB[3] = 3;
  p.routerB[5] = 2.5;
  p.routerB[0] = -20;
  check('skewed', p);
  const q = makeProblem(257, 64, 4, 64, 1, 7);
  q.routerB[2] = 64;
  check('all to one', q);
  check('k = E', makeProblem(70, 64, 4, 32, 4, 8));
});

test('ties in router logits are broken like the CPU', { skip }, () => {
  const p = makeProblem(40, 64, 6, 32, 3, 9);
  p.routerW.fill(0);
  p.routerB.set([1, 2, 2, 0, 2, 1]);
  check('ties', p);
});

test('weight gradients accumulate into given buffers on every GEMM path', { skip }, () => {
  const p = makeProblem(300, 128, 4, 64, 2, 10);
  for (const path of PATHS) {
    process.env.GPTOSS_MOE_GEMM = path;
    try {
      const w = weightsOf(p, 'cuda:0');
      const x = Tensor.from(p.x, [p.T, p.H], { dtype: 'bf16', device: 'cuda:0' });
      const dy = Tensor.from(randnBf16(p.T * p.H, 1, rng(11)), [p.T, p.H], { device: 'cuda:0' });
      const f = moeForward(x, w, { topK: p.k });
      // The batched path saves the padded slab layout (slabs of a multiple of 64 rows per expert).
      const N = p.T * p.k, rows = f.ctx.permTok.shape[0]!;
      if (path === 'batched') {
        const off = f.ctx.offsets.toInt32();
        assert.ok(rows > N && off[p.E] === rows && off.every((o) => o % 64 === 0), `[batched] ${rows} saved rows for N ${N}: ${off}`);
      }
      else assert.equal(rows, N, `[${path}] saved rows`);
      const fresh = moeBackward(dy, f.ctx);
      const prevGU = Float32Array.from({ length: p.E * p.H * 2 * p.I }, (_, i) => (i % 7) - 3);
      const prevD = Float32Array.from({ length: p.E * p.I * p.H }, (_, i) => (i % 5) * 0.5);
      const into = { dGateUpW: Tensor.from(prevGU, [p.E, p.H, 2 * p.I], { device: 'cuda:0' }), dDownW: Tensor.from(prevD, [p.E, p.I, p.H], { device: 'cuda:0' }) };
      const acc = moeBackward(dy, f.ctx, undefined, into);
      assert.equal(acc.dGateUpW, into.dGateUpW);
      for (const [got, base, prev, name] of [[acc.dGateUpW, fresh.dGateUpW, prevGU, 'dGateUpW'], [acc.dDownW, fresh.dDownW, prevD, 'dDownW']] as const) {
        const want = Float32Array.from(base.toFloat32(), (v, i) => v + prev[i]!);
        const e = maxErr(got.toFloat32(), want);
        assert.ok(e.err <= 1e-5 * e.scale + 1e-6, `[${path}] ${name}: accumulated err ${e.err} (scale ${e.scale})`);
      }
      f.ctx.dispose();
    } finally {
      delete process.env.GPTOSS_MOE_GEMM;
    }
  }
});

test('a residual rides the combine pass: equal to add(residual, moe(x)) on every GEMM path', { skip }, () => {
  const p = makeProblem(300, 128, 4, 96, 2, 9);
  const res = randnBf16(p.T * p.H, 2, rng(77));
  for (const path of PATHS) {
    process.env.GPTOSS_MOE_GEMM = path;
    try {
      const w = weightsOf(p, 'cuda:0');
      const x = Tensor.from(p.x, [p.T, p.H], { dtype: 'bf16', device: 'cuda:0' });
      const r = Tensor.from(res, [p.T, p.H], { dtype: 'bf16', device: 'cuda:0' });
      const plain = moeForward(x, w, { topK: 2 });
      const want = add(r, plain.y).toFloat32();
      const fused = moeForward(x, w, { topK: 2, residual: r });
      assert.deepEqual([...fused.y.toFloat32()], [...want], `[${path}] fused residual`);
      plain.ctx.dispose();
      fused.ctx.dispose();
    } finally {
      delete process.env.GPTOSS_MOE_GEMM;
    }
  }
});
