// The fused q/k/v projection: the weights are one [Hq*D + 2*Hkv*D, H] buffer per layer whose row slices are the
// checkpoint-named parameters; the backward runs one dX/dW GEMM and one bias column sum for the three and hands
// out the gradients as row slices of fused buffers. Checked: the layout, the op-level equality with the unfused
// products, and the same layer gradients whatever the caller's gradient map holds (nothing, zeroGrads()'s fused
// slices, separate buffers, a mix) plus accumulation across two backward passes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, trackTensors, liveTensors } from '../../src/tensor.ts';
import { presetConfig } from '../../src/model/config.ts';
import { GptOssModel } from '../../src/model/gptoss.ts';
import { packSequences, disposeBatch } from '../../src/model/batch.ts';
import { layerPrefix, qkvRows, QKV_PROJ } from '../../src/model/weights.ts';
import { linearBackward } from '../../src/ops/gemm.ts';
import { ropeBackward, ropeQkvPack, yarnInvFreqTensor } from '../../src/ops/rope.ts';
import { uniformBf16, randInts } from '../helpers/random.ts';
import { assertClose } from '../helpers/numeric.ts';

const cpu = { device: 'cpu' } as const;
const CFG = presetConfig('gpt-oss-tiny-256');

test('q/k/v parameters are row slices of one fused buffer per layer (writes through, save order kept)', () => {
  const model = GptOssModel.random(CFG, 'cpu', { seed: 3, biasStd: 0.1 });
  const rows = qkvRows(CFG);
  assert.deepEqual(rows, [64, 32, 32]);
  for (let l = 0; l < CFG.numLayers; l++) {
    const w = model.weights.layers[l]!;
    assert.deepEqual(w.qkvW.shape, [128, CFG.hiddenSize]);
    assert.deepEqual(w.qkvB.shape, [128]);
    const fw = w.qkvW.toFloat32(), fb = w.qkvB.toFloat32();
    let r = 0;
    QKV_PROJ.forEach((n, i) => {
      const pw = model.weights.params.get(`${layerPrefix(l)}.${n}.weight`)!;
      const pb = model.weights.params.get(`${layerPrefix(l)}.${n}.bias`)!;
      assert.ok(pw.native.sameStorage(w.qkvW.native) && pb.native.sameStorage(w.qkvB.native), n);
      assert.deepEqual(pw.toFloat32(), fw.subarray(r * CFG.hiddenSize, (r + rows[i]!) * CFG.hiddenSize), n);
      assert.deepEqual(pb.toFloat32(), fb.subarray(r, r + rows[i]!), n);
      r += rows[i]!;
    });
    // The slices joined are the fused buffer; an in-place update of a parameter (optimizer, load) updates it.
    const joined = Tensor.joinRows(QKV_PROJ.map((n) => model.weights.params.get(`${layerPrefix(l)}.${n}.weight`)!));
    assert.ok(joined);
    assert.deepEqual(joined.shape, w.qkvW.shape);
    joined.dispose();
    const kw = model.weights.params.get(`${layerPrefix(l)}.self_attn.k_proj.weight`)!;
    kw.copyFrom(Tensor.from(new Float32Array(kw.numel).fill(0.5), kw.shape, { ...cpu, dtype: 'bf16' }));
    const after = w.qkvW.toFloat32();
    assert.equal(after[64 * CFG.hiddenSize], 0.5);
    assert.equal(after[96 * CFG.hiddenSize - 1], 0.5);
    assert.equal(after[64 * CFG.hiddenSize - 1], fw[64 * CFG.hiddenSize - 1]);
  }
  assert.deepEqual(model.weights.names(), [...model.weights.params.keys()]);
  model.dispose();
});

test('Tensor.joinRows joins consecutive slices of one storage only', () => {
  const a = Tensor.zeros([6, 4], cpu);
  const [s0, s1, s2] = [a.slice(0, 1), a.slice(1, 4), a.slice(4, 6)];
  const j = Tensor.joinRows([s0, s1, s2])!;
  assert.deepEqual(j.shape, [6, 4]);
  assert.ok(j.native.sameStorage(a.native));
  assert.equal(Tensor.joinRows([s0, s2]), null); // a gap
  assert.equal(Tensor.joinRows([s1, s0]), null); // out of order
  assert.equal(Tensor.joinRows([s0, Tensor.zeros([3, 4], cpu)]), null); // another storage
  assert.equal(Tensor.joinRows([s0, a.view([12, 2]).slice(2, 8)]), null); // another row width
  const b = Tensor.zeros([6], cpu);
  assert.deepEqual(Tensor.joinRows([b.slice(0, 2), b.slice(2, 6)])!.shape, [6]);
});

test('fused projection backward equals the three unfused ones (rope backward + linearBackward per block)', () => {
  const T = 23, H = 48, hq = 4, hkv = 2, d = 16;
  const { invFreq, attentionScaling: s } = yarnInvFreqTensor({ headDim: d, ropeTheta: 150000, factor: 32, betaFast: 32, betaSlow: 1, originalMaxPositions: 4096, truncate: false }, 'cpu');
  const pos = Tensor.from(randInts(T, 5, 4096), [T], cpu);
  const bf = { ...cpu, dtype: 'bf16' } as const;
  const heads = [hq, hkv, hkv];
  const g = heads.map((h, i) => Tensor.from(uniformBf16(T * h * d, 10 + i), [T, h, d], bf));
  const a1 = Tensor.from(uniformBf16(T * H, 20), [T, H], bf);
  const W = Tensor.from(uniformBf16((hq + 2 * hkv) * d * H, 21), [(hq + 2 * hkv) * d, H], bf);
  // Fused: the pack (f32, as the model does on the CPU) and one linear backward.
  const dqkv = ropeQkvPack(g[0]!, g[1]!, g[2]!, pos, invFreq, s, 'f32');
  const f = linearBackward(dqkv, a1, W, { dxDtype: 'f32' });
  // Unfused: today's path, a rope backward per part and a linear backward per weight block, dx summed.
  let r = 0;
  const dx = new Float32Array(T * H);
  const fw = f.dW.toFloat32(), fb = f.db.toFloat32();
  heads.forEach((h, i) => {
    const dy = i < 2 ? ropeBackward(g[i]!, pos, invFreq, s) : Tensor.from(g[i]!.toFloat32(), [T, h, d], cpu);
    const wi = W.slice(r, r + h * d);
    const u = linearBackward(dy.view([T, h * d]), a1, wi, { dxDtype: 'f32' });
    assertClose(fw.subarray(r * H, (r + h * d) * H), u.dW.toFloat32(), 1e-6, 1e-6, `dW ${'qkv'[i]}`);
    assertClose(fb.subarray(r, r + h * d), u.db.toFloat32(), 1e-6, 1e-6, `db ${'qkv'[i]}`);
    u.dx!.toFloat32().forEach((v, j) => (dx[j]! += v));
    r += h * d;
  });
  assertClose(f.dx!.toFloat32(), dx, 1e-5, 1e-5, 'dx');
});

/** One forward + backward of layer l (a sliding and a full layer) into `grads`; returns dx. */
function layerGrads(model: GptOssModel, l: number, grads: Map<string, Tensor>): Float32Array {
  const T = 29;
  const batch = packSequences([Array.from({ length: 17 }, (_, i) => (i * 7) % 256), Array.from({ length: T - 17 }, (_, i) => (i * 13 + 5) % 256)], 'cpu');
  const x = Tensor.from(uniformBf16(T * CFG.hiddenSize, 30 + l), [T, CFG.hiddenSize], { ...cpu, dtype: 'bf16' });
  const dy = Tensor.from(uniformBf16(T * CFG.hiddenSize, 40 + l), [T, CFG.hiddenSize], cpu);
  const r = model.layers[l]!.forward(x, batch, true);
  r.y.dispose();
  const dx = model.layers[l]!.backward(r.saved!, dy, batch, grads);
  const out = dx.toFloat32();
  for (const t of [dx, x, dy]) t.dispose();
  disposeBatch(batch);
  return out;
}

const qkvNames = (l: number): string[] => (['weight', 'bias'] as const).flatMap((k) => QKV_PROJ.map((n) => `${layerPrefix(l)}.${n}.${k}`));

test('layer gradients are the same whatever the gradient map holds, and accumulate', () => {
  trackTensors(true);
  try {
    const model = GptOssModel.random(CFG, 'cpu', { seed: 7, biasStd: 0.1 });
    for (let l = 0; l < CFG.numLayers; l++) {
      const names = qkvNames(l);
      // Set-to-none: fresh fused buffers, handed out as slices of one storage.
      const fresh = new Map<string, Tensor>();
      const dx0 = layerGrads(model, l, fresh);
      const ref = new Map(names.map((n) => [n, fresh.get(n)!.toFloat32()]));
      for (const k of [0, 3]) {
        const j = Tensor.joinRows(names.slice(k, k + 3).map((n) => fresh.get(n)!));
        assert.ok(j, 'fresh q/k/v gradients are one fused buffer');
        j.dispose();
      }
      // Accumulation into those slices (the fused path, beta 1): twice the gradient.
      const dx1 = layerGrads(model, l, fresh);
      assert.deepEqual(dx1, dx0);
      for (const n of names) assertClose(fresh.get(n)!.toFloat32(), ref.get(n)!.map((v) => 2 * v), 1e-6, 1e-6, `accumulated ${n}`);
      // zeroGrads(): fused zero buffers, accumulated in place.
      const zero = model.zeroGrads();
      const zq = zero.get(names[0]!)!;
      assert.deepEqual(layerGrads(model, l, zero), dx0);
      assert.equal(zero.get(names[0]!), zq, 'accumulated in place');
      for (const n of names) assert.deepEqual(zero.get(n)!.toFloat32(), ref.get(n), `zeroGrads ${n}`);
      // Separate buffers (not one storage) and a mix of present and missing: added per slice / slices kept.
      const sep = new Map<string, Tensor>();
      for (const n of names) sep.set(n, Tensor.zeros(fresh.get(n)!.shape, cpu));
      const mixed = new Map<string, Tensor>([[names[1]!, Tensor.zeros(fresh.get(names[1]!)!.shape, cpu)], [names[5]!, Tensor.zeros(fresh.get(names[5]!)!.shape, cpu)]]);
      for (const m of [sep, mixed]) {
        assert.deepEqual(layerGrads(model, l, m), dx0);
        for (const n of names) assert.deepEqual(m.get(n)!.toFloat32(), ref.get(n), `fallback ${n}`);
      }
      for (const m of [fresh, zero, sep, mixed]) for (const t of m.values()) t.dispose();
    }
    model.dispose();
    const left = liveTensors();
    assert.equal(left.length, 0, left.map((t) => `${t.tensor.toString()}\n${t.stack}`).join('\n'));
  } finally {
    trackTensors(false);
  }
});
