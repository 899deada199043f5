// MoE block on CUDA against the CPU backend, on every expert-GEMM strategy (grouped kernels, padded slabs with
// batched cuBLASLt, per-expert cuBLASLt). Routing must match exactly; outputs and gradients must stay
// within a FlashAttention-style bound: error vs the fp32 truth (CPU exact mode) <= 2x the error of a plain
// BF16 implementation (CPU default mode, which rounds intermediates to bf16) + a small floor.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, cudaDeviceCount } from '../../src/tensor.ts';
import { moeForward, moeBackward, type MoeContext, type MoeWeights } from '../../src/ops/moe.ts';
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

// The expert-GEMM strategies of the CUDA backend. Which one runs is a pure function of the sizes and the routing
// (plan_expert_gemms in native/cuda/moe.cu: the decode kernels at N = T·k <= 16 routed rows, the grouped kernels
// below 128 rows per expert on average; above, the slab layout when padding every expert to its range's slab adds
// at most 50% rows, else per-expert GEMMs). Each problem below names the strategy it must reach, so that every
// strategy stays covered: if the plan changes, these assertions name the problems to re-pick. (The decode kernels
// against the grouped ones at decode sizes: test/gpu/moe-decode.test.ts.)
type Strategy = 'decode' | 'grouped' | 'slabs' | 'per-expert';

// The strategy the forward reports, checked against what its context shows: the slab layout pads rows (permTok
// longer than T·k, slab boundaries at multiples of 64), the per-expert strategy keeps the gathered rows xp, the
// grouped and decode kernels neither.
function strategyOf(ctx: MoeContext, p: MoeProblem): Strategy {
  const N = p.T * p.k, rows = ctx.permTok.shape[0]!;
  const s = ctx.expertGemms;
  assert.ok(s !== 'cpu', 'a CUDA forward reports its CUDA strategy');
  if (s === 'slabs') {
    const off = ctx.offsets.toInt32();
    assert.ok(rows >= N && off[p.E] === rows && off.every((o) => o % 64 === 0), `slab layout: ${rows} saved rows for N ${N}, offsets ${off}`);
  } else {
    assert.equal(rows, N, `${s}: no padding rows`);
    assert.equal(ctx.xp !== undefined, s === 'per-expert', `${s}: xp kept only by the per-expert strategy`);
  }
  return s;
}

function assertStrategy(name: string, ctx: MoeContext, p: MoeProblem, want: Strategy) {
  assert.equal(strategyOf(ctx, p), want, `${name}: expected the ${want} strategy (counts ${ctx.counts}); pick another problem if the plan changed`);
}

type Out = Record<string, Float32Array> & { idx: Float32Array; counts: Float32Array };

function runOn(device: string, p: MoeProblem, dyVals: Float32Array, opts: { exact?: boolean; dyBf16?: boolean; name?: string; want?: Strategy } = {}): Out {
  const w: MoeWeights = weightsOf(p, device);
  const x = Tensor.from(p.x, [p.T, p.H], { dtype: 'bf16', device });
  const f = moeForward(x, w, { topK: p.k, exact: opts.exact });
  if (opts.want) assertStrategy(opts.name ?? '', f.ctx, p, opts.want);
  const dy = Tensor.from(dyVals, [p.T, p.H], { dtype: opts.dyBf16 ? 'bf16' : 'f32', device });
  const g = moeBackward(dy, f.ctx);
  const out: Out = {
    y: f.y.toFloat32(), idx: f.ctx.topkIdx.toFloat32(), counts: Float32Array.from(f.counts),
    dx: g.dx.toFloat32(), dRouterW: g.dRouterW.toFloat32(), dRouterB: g.dRouterB.toFloat32(),
    dGateUpW: g.dGateUpW.toFloat32(), dGateUpB: g.dGateUpB.toFloat32(), dDownW: g.dDownW.toFloat32(), dDownB: g.dDownB.toFloat32(),
  } as Out;
  f.ctx.dispose();
  for (const t of Object.values(g)) t?.dispose(); // the LoRA adapter grads are undefined without adapters
  for (const t of Object.values(w)) t.dispose();
  return out;
}

function check(name: string, p: MoeProblem, want: Strategy, dyBf16 = false) {
  name = `${name} [${want}]`;
  const dy = randnBf16(p.T * p.H, 1, rng(1234));
  const truth = runOn('cpu', p, dy, { exact: true });
  const plain = runOn('cpu', p, dy, {});
  const gpu = runOn('cuda:0', p, dy, { dyBf16, name, want });
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

// Skewed routing that the slab layout would pad by more than 50%: even experts hot, odd ones cold (bias ±b).
function hotAndCold(p: MoeProblem, b: number): MoeProblem {
  for (let e = 0; e < p.E; e++) p.routerB[e] = e % 2 === 0 ? b : -b;
  return p;
}

test('random routing, grouped kernels with large tiles (partial tiles in M, N and K)', { skip }, () => {
  check('T200 H128 E6 I96 k3', makeProblem(200, 128, 6, 96, 3, 1), 'grouped');
  check('T200 H256 E8 I192 k4', makeProblem(200, 256, 8, 192, 4, 2), 'grouped', true);
});

test('random routing, slab layout (partial slabs, partial tiles)', { skip }, () => {
  check('T333 H128 E6 I96 k3', makeProblem(333, 128, 6, 96, 3, 1), 'slabs');
  check('T300 H256 E8 I192 k4', makeProblem(300, 256, 8, 192, 4, 2), 'slabs', true);
});

test('hot and cold experts, per-expert GEMMs', { skip }, () => {
  check('hot/cold T1024 H128 E16 I96 k2', hotAndCold(makeProblem(1024, 128, 16, 96, 2, 12), 0.5), 'per-expert');
  check('hot/cold T700 H256 E16 I192 k3', hotAndCold(makeProblem(700, 256, 16, 192, 3, 13), 0.75), 'per-expert', true);
});

test('random routing, decode path (few rows per expert)', { skip }, () => {
  check('T5 H128 E8 I64 k2', makeProblem(5, 128, 8, 64, 2, 3), 'decode');
  check('T1 H64 E4 I32 k2', makeProblem(1, 64, 4, 32, 2, 4), 'decode');
  check('T4 H192 E32 I96 k4', makeProblem(4, 192, 32, 96, 4, 5), 'decode');
  check('T5 H192 E32 I96 k4', makeProblem(5, 192, 32, 96, 4, 5), 'grouped');
});

test('skewed routing: hot experts, empty experts, all to one, k = E', { skip }, () => {
  const skewed = (T: number) => {
    const p = makeProblem(T, 128, 8, 64, 2, 6);
    p.routerB[3] = 3;
    p.routerB[5] = 2.5;
    p.routerB[0] = -20;
    return p;
  };
  check('skewed T400', skewed(400), 'grouped');
  check('skewed T600', skewed(600), 'slabs');
  const allToOne = (T: number, E: number) => {
    const q = makeProblem(T, 64, E, 64, 1, 7);
    q.routerB[2] = 64;
    return q;
  };
  check('all to one T257 E4', allToOne(257, 4), 'grouped');
  check('all to one T600 E4', allToOne(600, 4), 'slabs');
  check('all to one T2048 E16', allToOne(2048, 16), 'per-expert');
  check('k = E T70', makeProblem(70, 64, 4, 32, 4, 8), 'grouped');
  check('k = E T150', makeProblem(150, 64, 4, 32, 4, 8), 'slabs');
  // Every count 128, a multiple of 64: the forward runs the slab plan (and reports 'slabs'), which pads nothing, so
  // it saves the plain layout (with xp) and the backward runs per expert.
  check('k = E T128, slabs without padding', makeProblem(128, 64, 4, 32, 4, 8), 'slabs');
});

test('ties in router logits are broken like the CPU', { skip }, () => {
  const ties = (T: number) => {
    const p = makeProblem(T, 64, 6, 32, 3, 9);
    p.routerW.fill(0);
    p.routerB.set([1, 2, 2, 0, 2, 1]);
    return p;
  };
  check('ties T40', ties(40), 'grouped');
  check('ties T300', ties(300), 'per-expert');
});

// One problem per strategy for the tests below: [problem, the strategy it reaches].
function perStrategy(I: number, seed: number): [MoeProblem, Strategy][] {
  return [
    [makeProblem(200, 128, 4, I, 2, seed), 'grouped'],
    [makeProblem(300, 128, 4, I, 2, seed), 'slabs'],
    [hotAndCold(makeProblem(1024, 128, 16, I, 2, 12), 0.5), 'per-expert'],
  ];
}

test('weight gradients accumulate into (or, with overwrite, are written into) given buffers on every strategy', { skip }, () => {
  for (const [p, want] of perStrategy(64, 10)) {
    const name = `T${p.T} E${p.E} [${want}]`;
    const w = weightsOf(p, 'cuda:0');
    const x = Tensor.from(p.x, [p.T, p.H], { dtype: 'bf16', device: 'cuda:0' });
    const dy = Tensor.from(randnBf16(p.T * p.H, 1, rng(11)), [p.T, p.H], { device: 'cuda:0' });
    const f = moeForward(x, w, { topK: p.k });
    assertStrategy(name, f.ctx, p, want);
    const fresh = moeBackward(dy, f.ctx);
    const prevGU = Float32Array.from({ length: p.E * p.H * 2 * p.I }, (_, i) => (i % 7) - 3);
    const prevD = Float32Array.from({ length: p.E * p.I * p.H }, (_, i) => (i % 5) * 0.5);
    const into = { dGateUpW: Tensor.from(prevGU, [p.E, p.H, 2 * p.I], { device: 'cuda:0' }), dDownW: Tensor.from(prevD, [p.E, p.I, p.H], { device: 'cuda:0' }) };
    const acc = moeBackward(dy, f.ctx, undefined, into);
    assert.equal(acc.dGateUpW, into.dGateUpW);
    for (const [got, base, prev, key] of [[acc.dGateUpW, fresh.dGateUpW, prevGU, 'dGateUpW'], [acc.dDownW, fresh.dDownW, prevD, 'dDownW']] as const) {
      const expected = Float32Array.from(base.toFloat32(), (v, i) => v + prev[i]!);
      const e = maxErr(got.toFloat32(), expected);
      assert.ok(e.err <= 1e-5 * e.scale + 1e-6, `${name} ${key}: accumulated err ${e.err} (scale ${e.scale})`);
    }
    // overwrite (a sharded trainer's fresh buffers): NaN-filled buffers, as uninitialised memory may hold, are
    // written (beta 0, or copied on the grouped strategy), never read: the fresh gradients' bits, every expert
    // (those without rows get zeros).
    const over = {
      dGateUpW: Tensor.from(new Float32Array(p.E * p.H * 2 * p.I).fill(NaN), [p.E, p.H, 2 * p.I], { device: 'cuda:0' }),
      dDownW: Tensor.from(new Float32Array(p.E * p.I * p.H).fill(NaN), [p.E, p.I, p.H], { device: 'cuda:0' }),
    };
    const wr = moeBackward(dy, f.ctx, undefined, { ...over, overwrite: true });
    assert.equal(wr.dGateUpW, over.dGateUpW);
    assert.deepEqual(wr.dGateUpW.toFloat32(), fresh.dGateUpW.toFloat32(), `${name} dGateUpW overwrite`);
    assert.deepEqual(wr.dDownW.toFloat32(), fresh.dDownW.toFloat32(), `${name} dDownW overwrite`);
    f.ctx.dispose();
  }
});

test('a residual rides the combine pass: equal to add(residual, moe(x)) on every strategy', { skip }, () => {
  for (const [p, want] of perStrategy(96, 9)) {
    const name = `T${p.T} E${p.E} [${want}]`;
    const res = randnBf16(p.T * p.H, 2, rng(77));
    const w = weightsOf(p, 'cuda:0');
    const x = Tensor.from(p.x, [p.T, p.H], { dtype: 'bf16', device: 'cuda:0' });
    const r = Tensor.from(res, [p.T, p.H], { dtype: 'bf16', device: 'cuda:0' });
    const plain = moeForward(x, w, { topK: 2 });
    assertStrategy(name, plain.ctx, p, want);
    const wantY = add(r, plain.y).toFloat32();
    const fused = moeForward(x, w, { topK: 2, residual: r });
    assert.deepEqual([...fused.y.toFloat32()], [...wantY], `${name}: fused residual`);
    plain.ctx.dispose();
    fused.ctx.dispose();
  }
});
