// The MoE decode path (native/cuda/moe_decode.cu: split-K GEMV kernels, chosen by plan_expert_gemms at
// N = T·k <= 16 routed rows) against the CPU backend and against the grouped mma.sync kernels it replaces there
// (forced with moeForward's expertGemms option).
//  - vs the CPU: FlashAttention-style bound, as test/gpu/moe.test.ts: error vs the fp32 truth (CPU exact mode)
//    <= 2x the error of a plain BF16 implementation (CPU default mode) + a small floor; routing equal.
//  - vs the grouped kernels: the same routing (ints equal) and the same rounding points, so the saved rows differ
//    only where the fp32 sums (in another order) round to neighbouring bf16 values: gu within one bf16 ulp per
//    element, and y, h, yp no further apart than the plain BF16 implementation is from the truth.
// At gpt-oss-20b sizes (H 2880, I 2880, E 32, top-4) and a small shape, T = 1, 2, 3, 8, 16, random and skewed
// routing (hot experts, every token on the same experts: an expert with T rows, two row chunks at T 16).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, cudaDeviceCount, f32ToBf16Bits, roundBf16Scalar, synchronize } from '../../src/tensor.ts';
import { native } from '../../src/native.ts';
import { moeForward, moeBackward, type MoeForwardResult, type MoeWeights } from '../../src/ops/moe.ts';
import { addRmsnorm } from '../../src/ops/rmsnorm.ts';
import { makeProblem, weightsOf } from '../helpers/moe-reference.ts';
import { randnBf16, rng } from '../helpers/random.ts';
import { maxAbs, maxErr } from '../helpers/numeric.ts';

const hasCuda = (() => {
  try {
    return cudaDeviceCount() > 0;
  } catch {
    return false;
  }
})();
const skip = hasCuda ? false : 'no CUDA device';
const TOKENS = [1, 2, 3, 8, 16];

const dispose = (...ts: (Tensor | undefined)[]) => ts.forEach((t) => t?.dispose());
const disposeWeights = (w: MoeWeights) => Object.values(w).forEach((t) => t.dispose());
function toDevice(w: MoeWeights, device: string): MoeWeights {
  return {
    routerW: w.routerW.to(device), routerB: w.routerB.to(device), gateUpW: w.gateUpW.to(device),
    gateUpB: w.gateUpB.to(device), downW: w.downW.to(device), downB: w.downB.to(device),
  };
}

// The FlashAttention-style bound of test/gpu/moe.test.ts.
function assertBound(name: string, got: Float32Array, truth: Float32Array, plain: Float32Array): string {
  const eg = maxErr(got, truth), ep = maxErr(plain, truth);
  const bound = 2 * ep.err + 2 ** -9 * ep.scale + 1e-5;
  assert.ok(eg.err <= bound, `${name}: gpu err ${eg.err} > bound ${bound} (plain bf16 err ${ep.err}, scale ${ep.scale})`);
  return `gpu ${eg.err.toExponential(2)} plain ${ep.err.toExponential(2)} scale ${ep.scale.toExponential(2)}`;
}

// Decode against grouped: equal routing; gu within one bf16 ulp per element (|d - g| <= 2^-7 |g|, plus a floor
// for sums that cancel to near zero); h, yp and y no further apart than the plain BF16 implementation (CPU) is
// from the fp32 truth (CPU exact), plus one bf16 ulp of the scale: a gu that rounds the other way moves h and yp
// the way rounding gu at all does. plain, truth: the CPU forwards of the same problem (same row order).
function assertMatchesGrouped(name: string, d: MoeForwardResult, g: MoeForwardResult, plain: MoeForwardResult, truth: MoeForwardResult): string {
  assert.equal(d.ctx.expertGemms, 'decode', `${name}: forced decode`);
  assert.equal(g.ctx.expertGemms, 'grouped', `${name}: forced grouped`);
  for (const key of ['topkIdx', 'offsets', 'permTok', 'slotPos'] as const) {
    assert.deepEqual([...d.ctx[key].toInt32()], [...g.ctx[key].toInt32()], `${name}: ${key}`);
  }
  assert.deepEqual([...d.ctx.topkW.toFloat32()], [...g.ctx.topkW.toFloat32()], `${name}: topkW`);
  const dg = d.ctx.gu.toFloat32(), gg = g.ctx.gu.toFloat32();
  const guScale = maxAbs(gg);
  let flips = 0;
  for (let i = 0; i < gg.length; i++) {
    const diff = Math.abs(dg[i]! - gg[i]!);
    assert.ok(diff <= 2 ** -7 * Math.abs(gg[i]!) + 2 ** -16 * guScale, `${name}: gu[${i}] decode ${dg[i]} grouped ${gg[i]}`);
    if (diff > 0) flips++;
  }
  const rows = [`gu flips ${flips}/${gg.length}`];
  const pairs = [
    ['h', d.ctx.h, g.ctx.h, plain.ctx.h, truth.ctx.h],
    ['yp', d.ctx.yp, g.ctx.yp, plain.ctx.yp, truth.ctx.yp],
    ['y', d.y, g.y, plain.y, truth.y],
  ] as const;
  for (const [key, a, b, p, t] of pairs) {
    const e = maxErr(a.toFloat32(), b.toFloat32()), ep = maxErr(p.toFloat32(), t.toFloat32());
    const bound = ep.err + 2 ** -8 * ep.scale;
    assert.ok(e.err <= bound, `${name}: ${key} decode vs grouped ${e.err} > ${bound} (plain bf16 err ${ep.err}, scale ${ep.scale})`);
    rows.push(`${key} decode-grouped ${e.err.toExponential(2)} (plain ${ep.err.toExponential(2)})`);
  }
  return rows.join(', ');
}

// One problem at every T: y of auto (which must pick decode), forced decode and forced grouped; the CPU truth
// (exact) and plain BF16 runs. wCpu and w: the same weights on the CPU and on cuda:0; x from `xSeed`.
function compareAt(label: string, wCpu: MoeWeights, w: MoeWeights, H: number, k: number, T: number, xSeed: number, backward: boolean) {
  const name = `${label} T${T}`;
  const x = Tensor.from(randnBf16(T * H, 1, rng(xSeed + T)), [T, H], { dtype: 'bf16', device: 'cpu' });
  const truth = moeForward(x, wCpu, { topK: k, exact: true });
  const plain = moeForward(x, wCpu, { topK: k });
  const xg = x.to('cuda:0');
  const auto = moeForward(xg, w, { topK: k });
  assert.equal(auto.ctx.expertGemms, T * k <= 16 ? 'decode' : 'grouped', `${name}: the plan's pick at N = ${T * k} (decode up to 16 rows)`);
  const dec = moeForward(xg, w, { topK: k, expertGemms: 'decode' });
  const grp = moeForward(xg, w, { topK: k, expertGemms: 'grouped' });
  assert.deepEqual([...auto.ctx.topkIdx.toInt32()], [...plain.ctx.topkIdx.toInt32()], `${name}: routing`);
  const forced = T * k <= 16 ? dec : grp;
  assert.deepEqual([...auto.y.toFloat32()], [...forced.y.toFloat32()], `${name}: auto and the forced path it picks`);
  const yTruth = truth.y.toFloat32(), yPlain = plain.y.toFloat32();
  const rows = [`y ${assertBound(`${name} y`, dec.y.toFloat32(), yTruth, yPlain)}`];
  rows.push(assertMatchesGrouped(name, dec, grp, plain, truth));
  if (backward) {
    // A decode context feeds the backward (the grouped kernels) like any other.
    const dyVals = randnBf16(T * H, 1, rng(4321 + T));
    const dyC = Tensor.from(dyVals, [T, H], { device: 'cpu' }), dyG = Tensor.from(dyVals, [T, H], { device: 'cuda:0' });
    const gt = moeBackward(dyC, truth.ctx), gp = moeBackward(dyC, plain.ctx), gd = moeBackward(dyG, dec.ctx);
    for (const key of ['dx', 'dRouterW', 'dRouterB', 'dGateUpW', 'dGateUpB', 'dDownW', 'dDownB'] as const) {
      rows.push(`${key} ${assertBound(`${name} ${key}`, gd[key].toFloat32(), gt[key].toFloat32(), gp[key].toFloat32())}`);
    }
    for (const g of [gt, gp, gd]) Object.values(g).forEach((t) => t?.dispose()); // the LoRA grads are undefined
    dispose(dyC, dyG);
  }
  console.log(`${name}: ${rows.join('; ')}`);
  for (const f of [truth, plain, auto, dec, grp]) {
    f.ctx.dispose();
    f.y.dispose();
  }
  dispose(x, xg);
}

// compareAt at every T of TOKENS on the CPU weights wCpu (disposed after).
function compareAll(label: string, wCpu: MoeWeights, H: number, xSeed: number, backward: boolean) {
  const w = toDevice(wCpu, 'cuda:0');
  for (const T of TOKENS) compareAt(label, wCpu, w, H, 4, T, xSeed, backward);
  disposeWeights(w);
  disposeWeights(wCpu);
}

// The small shape: H 256, E 8, I 192, top-4 (partial column tiles: 2I = 384 and H = 256 columns are not
// multiples of the 1024-column tiles; K 256 and 192 split in a few blocks).
function smallWeights(seed: number, hot: number[]): MoeWeights {
  const p = makeProblem(1, 256, 8, 192, 4, seed);
  for (const e of hot) p.routerB[e] = 6;
  return weightsOf(p, 'cpu');
}

test('decode path, small shape, random routing: CPU bound and equal to the grouped kernels (forward and backward)', { skip }, () => {
  compareAll('small random', smallWeights(21, []), 256, 100, true);
});

test('decode path, small shape, skewed routing: every token on experts 1, 2, 5, 6 (T rows each, 2 chunks at T 16)', { skip }, () => {
  compareAll('small skewed', smallWeights(22, [1, 2, 5, 6]), 256, 200, true);
});

test('decode kernels forced past the plan (T 40, 5 row chunks) and the plan above 16 rows (grouped)', { skip }, () => {
  const p = makeProblem(40, 128, 4, 96, 2, 23);
  p.routerB[3] = 6; // every token on expert 3: 40 rows
  const wCpu = weightsOf(p, 'cpu');
  const x = Tensor.from(p.x, [p.T, p.H], { dtype: 'bf16', device: 'cpu' });
  const truth = moeForward(x, wCpu, { topK: 2, exact: true }), plain = moeForward(x, wCpu, { topK: 2 });
  const w = toDevice(wCpu, 'cuda:0');
  const xg = x.to('cuda:0');
  const dec = moeForward(xg, w, { topK: 2, expertGemms: 'decode' }), grp = moeForward(xg, w, { topK: 2, expertGemms: 'grouped' });
  const auto = moeForward(xg, w, { topK: 2 });
  assert.equal(auto.ctx.expertGemms, 'grouped', 'N 80 > 16 rows: the grouped kernels');
  const yTruth = truth.y.toFloat32(), yPlain = plain.y.toFloat32();
  console.log(`forced decode T40: y ${assertBound('forced decode T40 y', dec.y.toFloat32(), yTruth, yPlain)}; ${assertMatchesGrouped('forced decode T40', dec, grp, plain, truth)}`);
  for (const f of [truth, plain, dec, grp, auto]) {
    f.ctx.dispose();
    f.y.dispose();
  }
  dispose(x, xg);
  disposeWeights(w);
  disposeWeights(wCpu);
});

// gpt-oss-20b sizes. Each expert's weights are a different window of one random buffer (full-size random
// weights would take minutes to draw in JS); values bf16, std 1/sqrt(fan-in) (gate_up 3/sqrt(H), so that some
// gate/up values reach the ±7 clamp, as makeProblem does).
function bigWeights(E: number, H: number, I: number, hot: number[]): MoeWeights {
  const r = rng(31);
  const expertTensor = (rest: number[], std: number): Tensor => {
    const per = rest.reduce((a, b) => a * b, 1);
    const bits = f32ToBf16Bits(randnBf16(per + 4099 * 8, std, r));
    const t = Tensor.empty([E, ...rest], { dtype: 'bf16', device: 'cpu' });
    for (let e = 0; e < E; e++) {
      const off = ((e * 1013) % 4099) * 8;
      const s = t.slice(e, e + 1);
      s.copyFrom(bits.subarray(off, off + per));
      s.dispose();
    }
    return t;
  };
  const routerB = randnBf16(E, 0.5, r);
  for (const e of hot) routerB[e] = 8;
  return {
    routerW: expertTensor([H], 1 / Math.sqrt(H)),
    routerB: Tensor.from(routerB, [E], { dtype: 'bf16', device: 'cpu' }),
    gateUpW: expertTensor([H, 2 * I], 3 / Math.sqrt(H)),
    gateUpB: expertTensor([2 * I], 0.5),
    downW: expertTensor([I, H], 1 / Math.sqrt(I)),
    downB: expertTensor([H], 0.5),
  };
}

// The decode path's combine comes out of the down product's reduce (moe_decode_kernels.cuh reduce_combine_kernel)
// with combine_kernel's arithmetic: y[t] = bf16(Σ_j w[t,j]·yp[slot[t,j]]) in j order (within one bf16 ulp of a
// host sum without fused multiply-adds), and with a residual exactly bf16(res + y), what combine_kernel gives.
test('decode path: the combine folded into the down reduce (y from the saved yp, with and without a residual)', { skip }, () => {
  const H = 2880, k = 4;
  const p = makeProblem(1, H, 32, 512, k, 77); // H 2880 columns as gpt-oss-20b; a small I keeps the setup quick
  const w = weightsOf(p, 'cuda:0');
  for (const T of [1, 2, 3, 4]) {
    const x = Tensor.from(randnBf16(T * H, 1, rng(500 + T)), [T, H], { dtype: 'bf16', device: 'cuda:0' });
    const resVals = randnBf16(T * H, 1, rng(600 + T));
    const res = Tensor.from(resVals, [T, H], { dtype: 'bf16', device: 'cuda:0' });
    const plainRun = moeForward(x, w, { topK: k });
    const withRes = moeForward(x, w, { topK: k, residual: res });
    assert.equal(plainRun.ctx.expertGemms, 'decode');
    assert.equal(withRes.ctx.expertGemms, 'decode');
    const y = plainRun.y.toFloat32(), yr = withRes.y.toFloat32(), yp = plainRun.ctx.yp.toFloat32();
    const slot = plainRun.ctx.slotPos.toInt32(), tw = plainRun.ctx.topkW.toFloat32();
    const resF = res.toFloat32();
    let worst = 0;
    for (let t = 0; t < T; t++) {
      for (let c = 0; c < H; c++) {
        let acc = 0;
        for (let j = 0; j < k; j++) acc = Math.fround(acc + Math.fround(tw[t * k + j]! * yp[slot[t * k + j]! * H + c]!));
        const want = roundBf16Scalar(acc);
        const got = y[t * H + c]!;
        const ulp = 2 ** (Math.floor(Math.log2(Math.max(Math.abs(want), 2 ** -60))) - 7);
        assert.ok(Math.abs(got - want) <= ulp, `T${T} y[${t}, ${c}] ${got} vs host combine ${want}`);
        worst = Math.max(worst, Math.abs(got - want));
        assert.equal(yr[t * H + c], roundBf16Scalar(Math.fround(resF[t * H + c]! + got)), `T${T} y+res[${t}, ${c}]`);
      }
    }
    console.log(`T${T}: decode y vs host combine of its yp: max diff ${worst}; with residual: bf16(res + y) exactly`);
    for (const f of [plainRun, withRes]) {
      f.ctx.dispose();
      f.y.dispose();
    }
    dispose(x, res);
  }
  disposeWeights(w);
});

test('decode path at gpt-oss-20b sizes (H 2880, I 2880, E 32, top-4), random routing', { skip }, () => {
  compareAll('20b random', bigWeights(32, 2880, 2880, []), 2880, 300, false);
});

test('decode path at gpt-oss-20b sizes, skewed routing: experts 3, 7, 20 hot (T rows each)', { skip }, () => {
  compareAll('20b skewed', bigWeights(32, 2880, 2880, [3, 7, 20]), 2880, 400, false);
});

// The fused router (native/cuda/moe.cu router_fused_kernel: logits, top-k + softmax and the placement in one launch
// at T <= 16) against the CPU reference routing. Its fp32 logits sum in another order than the CPU's, so the chosen
// experts may differ only at near ties: tokens whose float64 logits have two of the k + 1 largest within 1e-3 are
// checked to have chosen experts among those within 1e-3 of the k-th largest; every other token must match the CPU
// exactly (ids and order) with weights within 1e-5, and when no token is near a tie so must counts, offsets,
// permTok and slotPos. Shapes: gpt-oss-20b's router (H 2880, E 32: two H slices per expert pair, 32 blocks), an
// odd E (the last pair has one expert; 8 slices of 4 vectors, 32 blocks) and E 128 (one slice, 64 blocks); I is
// small (only the routing matters).
test('moeForward on CUDA: the fused router at T <= 16 routes as the CPU reference', { skip, timeout: 300000 }, () => {
  const shapes = [
    { H: 2880, E: 32, k: 4 },
    { H: 256, E: 7, k: 3 },
    { H: 512, E: 128, k: 4 },
  ];
  for (const { H, E, k } of shapes) {
    for (const T of [1, 2, 8, 16]) {
      const name = `H${H} E${E} k${k} T${T}`;
      const p = makeProblem(T, H, E, 32, k, 9000 + 31 * T + E);
      const wCpu = weightsOf(p, 'cpu'), w = toDevice(wCpu, 'cuda:0');
      const x = Tensor.from(p.x, [T, H], { dtype: 'bf16', device: 'cpu' }), xg = x.to('cuda:0');
      const ref = moeForward(x, wCpu, { topK: k });
      const got = moeForward(xg, w, { topK: k });
      const ri = ref.ctx.topkIdx.toInt32(), gi = got.ctx.topkIdx.toInt32();
      const rw = ref.ctx.topkW.toFloat32(), gw = got.ctx.topkW.toFloat32();
      let nearTies = 0;
      for (let t = 0; t < T; t++) {
        const logit = Array.from({ length: E }, (_, e) => {
          let acc = p.routerB[e]!;
          for (let h = 0; h < H; h++) acc += p.x[t * H + h]! * p.routerW[e * H + h]!;
          return acc;
        });
        const sorted = [...logit].sort((a, b) => b - a);
        let near = false;
        for (let j = 0; j < Math.min(k, E - 1); j++) if (sorted[j]! - sorted[j + 1]! < 1e-3) near = true;
        if (near) {
          nearTies++;
          for (let j = 0; j < k; j++) {
            const e = gi[t * k + j]!;
            assert.ok(logit[e]! >= sorted[k - 1]! - 1e-3, `${name}: token ${t} (near a tie) chose expert ${e}, logit ${logit[e]} below the k-th ${sorted[k - 1]}`);
          }
          continue;
        }
        for (let j = 0; j < k; j++) {
          const i = t * k + j;
          assert.equal(gi[i], ri[i], `${name}: token ${t} choice ${j}`);
          assert.ok(Math.abs(gw[i]! - rw[i]!) <= 1e-5, `${name}: token ${t} weight ${j}: ${gw[i]} vs ${rw[i]}`);
        }
      }
      assert.ok(nearTies <= Math.max(1, T / 8), `${name}: ${nearTies} tokens near a tie; the data should have few`);
      if (nearTies === 0) {
        assert.deepEqual([...got.ctx.counts], [...ref.ctx.counts], `${name}: counts`);
        for (const key of ['offsets', 'permTok', 'slotPos'] as const)
          assert.deepEqual([...got.ctx[key].toInt32()], [...ref.ctx[key].toInt32()], `${name}: ${key}`);
      }
      console.log(`${name}: fused router matches the CPU (${nearTies} near ties)`);
      for (const f of [ref, got]) {
        f.ctx.dispose();
        f.y.dispose();
      }
      dispose(x, xg);
      disposeWeights(w);
      disposeWeights(wCpu);
    }
  }
});

// The fused router is one launch of many blocks (one per (expert pair, H slice) task); the last block to finish, found
// with a ticket counter in device memory that wraps back to 0 at the last ticket, does the top-k and placement. So:
//  - determinism: at gpt-oss-20b's router (H 2880, E 32, top-4: 32 blocks) for every T 1..16, interleaved with
//    E 7 (32 blocks) and E 128 (64 blocks), so a counter left anywhere but 0 by one launch would break the next
//    one's last-block choice, two runs give the same bits: routing ints, topkW, and y (the decode GEMVs' fixed-order
//    sums are deterministic too);
//  - CUDA graphs: captured at T 1 and 16 (no memset, scratch at fixed addresses), the replays with new inputs give
//    the bits of eager calls made between them (graph and eager launches share the counter).
type RouteBits = Record<'topkIdx' | 'counts' | 'offsets' | 'permTok' | 'slotPos', number[]> & { topkW: number[]; y: number[] };
function routeBits(f: MoeForwardResult): RouteBits {
  const ints = (t: Tensor) => [...t.toInt32()];
  return {
    topkIdx: ints(f.ctx.topkIdx), counts: ints(f.ctx.countsTensor), offsets: ints(f.ctx.offsets),
    permTok: ints(f.ctx.permTok), slotPos: ints(f.ctx.slotPos), topkW: [...f.ctx.topkW.toFloat32()], y: [...f.y.toFloat32()],
  };
}
function disposeForward(f: MoeForwardResult): void {
  f.ctx.dispose();
  f.y.dispose();
}

test('moeForward on CUDA: the fused router is deterministic (T 1..16, two runs) and replays from a CUDA graph', { skip, timeout: 300000 }, () => {
  const G = 'cuda:0';
  const shapes = [
    { H: 2880, E: 32, k: 4 },
    { H: 256, E: 7, k: 3 },
    { H: 512, E: 128, k: 4 },
  ];
  const problems = shapes.map(({ H, E, k }) => {
    const p = makeProblem(16, H, E, 32, k, 9500 + E);
    const wCpu = weightsOf(p, 'cpu'), w = toDevice(wCpu, G);
    disposeWeights(wCpu);
    return { H, E, k, p, w };
  });
  for (let T = 1; T <= 16; T++) {
    for (const { H, E, k, p, w } of problems) {
      const name = `H${H} E${E} k${k} T${T}`;
      const x = Tensor.from(p.x.subarray(0, T * H), [T, H], { dtype: 'bf16', device: G });
      const a = moeForward(x, w, { topK: k }), b = moeForward(x, w, { topK: k });
      assert.equal(a.ctx.expertGemms, T * k <= 16 ? 'decode' : 'grouped', `${name}: expert strategy`);
      assert.deepEqual(routeBits(b), routeBits(a), `${name}: a second run gives other bits`);
      disposeForward(a);
      disposeForward(b);
      x.dispose();
    }
  }
  const ops = native().ops;
  const { H, k, w } = problems[0]!;
  for (const T of [1, 16]) {
    const x = Tensor.from(randnBf16(T * H, 1, rng(9600 + T)), [T, H], { dtype: 'bf16', device: G });
    disposeForward(moeForward(x, w, { topK: k })); // warm-up outside the capture
    synchronize(G);
    const pool = ops.graphPoolCreate(0);
    ops.captureBegin(0, pool);
    let cap: MoeForwardResult, graph: number;
    try {
      cap = moeForward(x, w, { topK: k });
      graph = ops.captureEnd(0);
    } catch (e) {
      ops.captureAbort(0);
      throw e;
    }
    const replays: RouteBits[] = [];
    for (const seed of [9601, 9602, 9603]) {
      const xh = Tensor.from(randnBf16(T * H, 1, rng(seed + 10 * T)), [T, H], { dtype: 'bf16', device: 'cpu' });
      x.copyFrom(xh);
      xh.dispose();
      ops.graphLaunch(graph, 0);
      synchronize(G);
      const replay = routeBits(cap);
      const eager = moeForward(x, w, { topK: k });
      assert.deepEqual(replay, routeBits(eager), `T${T} seed ${seed}: graph replay vs eager`);
      disposeForward(eager);
      replays.push(replay);
    }
    assert.notDeepEqual(replays[1]!.y, replays[0]!.y, `T${T}: the replays read the new inputs`);
    console.log(`T${T}: fused router under a CUDA graph (${ops.graphNodeCount(graph)} nodes) matches eager calls`);
    ops.graphDestroy(graph);
    disposeForward(cap);
    ops.graphPoolRelease(0, pool);
    x.dispose();
  }
  for (const { w } of problems) disposeWeights(w);
});

// moeForward's preNorm on CUDA: at decode sizes the fused router computes h = x + o and the post-attention norm in
// each of its blocks (addRmsnorm's row code at 256 threads a row: its bits) before its dot products; elsewhere (a
// small H, whose addRmsnorm takes fewer threads a row, or T > 16) addRmsnorm runs first. Either way the op must give
// exactly what addRmsnorm + moeForward(normed, { residual: h }) give: h, the normed rows, rstd, the routing and y,
// for o in bf16 and in f32 (a tensor-parallel all-reduce's), in eager calls and in a CUDA-graph replay.
test('moeForward on CUDA: preNorm (the add + norm in the fused router) equals addRmsnorm + moeForward bitwise', { skip, timeout: 300000 }, () => {
  const G = 'cuda:0';
  for (const { H, E, k, Ts } of [
    { H: 2880, E: 32, k: 4, Ts: [1, 2, 3, 8, 16, 17] }, // gpt-oss-20b's router: fused at T <= 16, addRmsnorm first at 17
    { H: 256, E: 7, k: 3, Ts: [1, 4] }, // addRmsnorm's row takes 32 threads: not fused
  ]) {
    const p = makeProblem(17, H, E, 32, k, 9700 + E);
    const wCpu = weightsOf(p, 'cpu'), w = toDevice(wCpu, G);
    disposeWeights(wCpu);
    const normW = Tensor.from(randnBf16(H, 0.3, rng(9701)).map((v) => 1 + v), [H], { dtype: 'bf16', device: G });
    for (const T of Ts) {
      for (const oDtype of ['bf16', 'f32'] as const) {
        const name = `H${H} E${E} T${T} o ${oDtype}`;
        const x = Tensor.from(p.x.subarray(0, T * H), [T, H], { dtype: 'bf16', device: G });
        const o = Tensor.from(randnBf16(T * H, 2, rng(9702 + T)), [T, H], { dtype: oDtype, device: G });
        const ref = addRmsnorm(x, o, normW, 1e-5);
        const plain = moeForward(ref.y, w, { topK: k, residual: ref.h });
        const fused = moeForward(x, w, { topK: k, preNorm: { o, weight: normW, eps: 1e-5 } });
        const pre = fused.preNorm!;
        assert.deepEqual([...pre.h.toFloat32()], [...ref.h.toFloat32()], `${name}: h`);
        assert.deepEqual([...pre.normed.toFloat32()], [...ref.y.toFloat32()], `${name}: normed`);
        assert.deepEqual([...pre.rstd.toFloat32()], [...ref.rstd.toFloat32()], `${name}: rstd`);
        assert.deepEqual(routeBits(fused), routeBits(plain), `${name}: routing and y`);
        for (const t of [x, o, ref.h, ref.y, ref.rstd, pre.h, pre.normed, pre.rstd]) t.dispose();
        disposeForward(plain);
        disposeForward(fused);
      }
    }
    disposeWeights(w);
    normW.dispose();
  }
  // A CUDA-graph replay of the fused op with new inputs gives the bits of an eager call (T 1, gpt-oss-20b's router).
  const H = 2880, k = 4, T = 1;
  const p = makeProblem(1, H, 32, 32, k, 9800);
  const wCpu = weightsOf(p, 'cpu'), w = toDevice(wCpu, G);
  disposeWeights(wCpu);
  const normW = Tensor.from(randnBf16(H, 0.3, rng(9801)).map((v) => 1 + v), [H], { dtype: 'bf16', device: G });
  const x = Tensor.from(p.x, [T, H], { dtype: 'bf16', device: G });
  const o = Tensor.from(randnBf16(T * H, 2, rng(9802)), [T, H], { dtype: 'bf16', device: G });
  const run = () => moeForward(x, w, { topK: k, preNorm: { o, weight: normW, eps: 1e-5 } });
  const bits = (f: MoeForwardResult) => ({ ...routeBits(f), h: [...f.preNorm!.h.toFloat32()], normed: [...f.preNorm!.normed.toFloat32()], rstd: [...f.preNorm!.rstd.toFloat32()] });
  const drop = (f: MoeForwardResult) => {
    disposeForward(f);
    for (const t of [f.preNorm!.h, f.preNorm!.normed, f.preNorm!.rstd]) t.dispose();
  };
  drop(run()); // warm-up outside the capture
  synchronize(G);
  const ops = native().ops;
  const pool = ops.graphPoolCreate(0);
  ops.captureBegin(0, pool);
  let cap: MoeForwardResult, graph: number;
  try {
    cap = run();
    graph = ops.captureEnd(0);
  } catch (e) {
    ops.captureAbort(0);
    throw e;
  }
  for (const seed of [9803, 9804]) {
    const oh = Tensor.from(randnBf16(T * H, 2, rng(seed)), [T, H], { dtype: 'bf16', device: 'cpu' });
    o.copyFrom(oh);
    oh.dispose();
    ops.graphLaunch(graph, 0);
    synchronize(G);
    const eager = run();
    assert.deepEqual(bits(cap), bits(eager), `seed ${seed}: graph replay vs eager`);
    drop(eager);
  }
  console.log(`preNorm fused router under a CUDA graph (${ops.graphNodeCount(graph)} nodes) matches eager calls`);
  ops.graphDestroy(graph);
  drop(cap);
  ops.graphPoolRelease(0, pool);
  dispose(x, o, normW);
  disposeWeights(w);
});
