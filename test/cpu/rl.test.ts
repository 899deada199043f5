// GRPO advantages, the PPO-clip/k3 losses and their analytic gradients (against finite differences in float64).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { groupAdvantages, contiguousGroupIds, policyLoss, k3, ppoTokenLoss, crossEntropyLoss, type PolicyLossOptions, type PolicyLossInput } from '../../src/rl/index.ts';

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

test('groupAdvantages: GRPO with unbiased std, Dr. GRPO without', () => {
  const r = [1, 0, 0, 1, /* */ 1, 1, 1, 1, /* */ 0, 0, 0, 1];
  const g = contiguousGroupIds(12, 4);
  const a = groupAdvantages(r, g, { normByStd: true });
  const std = Math.sqrt((4 * 0.25) / 3); // rewards {1,0,0,1}: mean .5, unbiased var 1/3
  assert.ok(Math.abs(a.advantages[0]! - 0.5 / (std + 1e-6)) < 1e-6);
  assert.ok(Math.abs(a.advantages[1]! + 0.5 / (std + 1e-6)) < 1e-6);
  for (let i = 4; i < 8; i++) assert.equal(a.advantages[i], 0);
  const std3 = Math.sqrt((3 * 0.0625 + 0.5625) / 3);
  assert.ok(Math.abs(a.advantages[11]! - 0.75 / (std3 + 1e-6)) < 1e-5);
  assert.equal(a.zeroVarianceGroups, 1);
  const d = groupAdvantages(r, g, { normByStd: false });
  assert.ok(Math.abs(d.advantages[11]! - 0.75) < 1e-7);
  assert.ok(Math.abs(d.advantages[8]! + 0.25) < 1e-7);
  // Interleaved group ids and a singleton group.
  const s = groupAdvantages([3, 1, 5], [7, 9, 7], { normByStd: false });
  assert.deepEqual(Array.from(s.advantages), [-1, 1, 1]);
  assert.throws(() => groupAdvantages([1, NaN], [0, 0], { normByStd: true }), /reward 1 is NaN/);
});

const base: PolicyLossOptions = { epsClipLow: 0.2, epsClipHigh: 0.28, policyLossType: 'regular', clipRatioC: 3, lossReduction: 'token_mean', maxSeqLen: 16, klCoef: 0 };

function randomInput(seed: number, S: number, withRef: boolean, spread = 0.8): PolicyLossInput {
  const r = rng(seed);
  const lens = Array.from({ length: S }, () => 1 + Math.floor(r() * 9));
  const logprobs = lens.map((n) => Float32Array.from({ length: n }, () => -3 * r()));
  // Old log-probs near the new ones so some ratios fall inside the clip range and some outside.
  const oldLogprobs = logprobs.map((lp) => lp.map((x) => x + (r() - 0.5) * spread));
  const refLogprobs = withRef ? logprobs.map((lp) => lp.map((x) => x + (r() - 0.5) * 2)) : undefined;
  const advantages = Array.from({ length: S }, () => (r() - 0.5) * 3);
  const mask = lens.map((n) => Uint8Array.from({ length: n }, () => (r() < 0.85 ? 1 : 0)));
  return { logprobs, oldLogprobs, refLogprobs, advantages, mask };
}

function checkGrad(inp: PolicyLossInput, o: PolicyLossOptions): void {
  const res = policyLoss(inp, o);
  const h = 1e-4;
  let checked = 0;
  for (let s = 0; s < inp.logprobs.length; s++) {
    for (let t = 0; t < inp.logprobs[s]!.length; t++) {
      // Perturb in float64 by evaluating with Float64-backed copies.
      const f = (delta: number): number => {
        const lp = inp.logprobs.map((a) => Float64Array.from(a) as unknown as Float32Array);
        (lp[s] as unknown as Float64Array)[t] += delta;
        return policyLoss({ ...inp, logprobs: lp }, o).loss;
      };
      const fd = (f(h) - f(-h)) / (2 * h);
      const an = res.dLogprobs[s]![t]!;
      // Kinks (clip boundaries) are measure-zero; skip points within h of one.
      assert.ok(Math.abs(fd - an) < 1e-4 + 1e-3 * Math.abs(fd), `token ${s}/${t}: analytic ${an} vs finite difference ${fd} (${o.lossReduction}, ${o.policyLossType}, kl ${o.klCoef})`);
      checked++;
    }
  }
  assert.ok(checked > 10);
}

for (const red of ['token_mean', 'sequence_mean', 'seq_mean_token_sum_norm'] as const) {
  for (const type of ['regular', 'dual_clip'] as const) {
    test(`policyLoss gradient matches finite differences: ${red}, ${type}, with and without k3 KL`, () => {
      checkGrad(randomInput(11, 7, false), { ...base, lossReduction: red, policyLossType: type });
      checkGrad(randomInput(12, 9, true), { ...base, lossReduction: red, policyLossType: type, klCoef: 0.05 });
      // Wide ratios (up to e^1.75) reach the dual-clip bound c = 3.
      const wide = randomInput(13, 12, true, 3.5);
      checkGrad(wide, { ...base, lossReduction: red, policyLossType: type, klCoef: 0.05 });
      if (type === 'dual_clip') assert.ok(policyLoss(wide, { ...base, policyLossType: type }).sums.dualClipped > 0);
    });
  }
}

test('ppoTokenLoss: clipping and dual clip values', () => {
  const o = { epsClipLow: 0.2, epsClipHigh: 0.2, policyLossType: 'regular' as const, clipRatioC: 3 };
  // ratio e^0.5 ≈ 1.65 > 1.2 with A > 0: clipped, loss = -1.2·A, no gradient.
  let r = ppoTokenLoss(0.5, 0, 2, o);
  assert.ok(r.clipped);
  assert.ok(Math.abs(r.loss + 2.4) < 1e-12);
  assert.equal(r.dlogp, 0);
  // Same ratio with A < 0: unclipped branch (-ratio·A is larger), gradient -A·ratio.
  r = ppoTokenLoss(0.5, 0, -2, o);
  assert.ok(!r.clipped);
  assert.ok(Math.abs(r.loss - 2 * Math.exp(0.5)) < 1e-12);
  // Dual clip: a huge ratio with A < 0 is bounded by c·|A|.
  r = ppoTokenLoss(3, 0, -1, { ...o, policyLossType: 'dual_clip' });
  assert.ok(r.dualClipped);
  assert.equal(r.loss, 3);
  assert.equal(r.dlogp, 0);
  // The log-ratio is clamped to ±20 before exp.
  r = ppoTokenLoss(100, 0, -1, o);
  assert.ok(Number.isFinite(r.loss));
  assert.ok(Math.abs(r.ratio - Math.exp(20)) / Math.exp(20) < 1e-12);
});

test('k3 KL: value, clamp at 10, gradient', () => {
  assert.equal(k3(-1, -1).kl, 0);
  const { kl, dlogp } = k3(-1, -1.5); // x = -0.5
  assert.ok(Math.abs(kl - (Math.exp(-0.5) + 0.5 - 1)) < 1e-12);
  assert.ok(Math.abs(dlogp - (1 - Math.exp(-0.5))) < 1e-12);
  assert.equal(k3(-20, -2).kl, 10);
  assert.equal(k3(-20, -2).dlogp, 0);
});

test('micro-batches with mini-batch normalisers add up to the full batch (all reductions)', () => {
  const inp = randomInput(5, 8, true);
  for (const red of ['token_mean', 'sequence_mean', 'seq_mean_token_sum_norm'] as const) {
    const o = { ...base, lossReduction: red, klCoef: 0.01 };
    const full = policyLoss(inp, o);
    const tokens = inp.mask!.reduce((a, m) => a + m.reduce((x, y) => x + y, 0), 0);
    let sum = 0;
    for (const [a, b] of [[0, 3], [3, 8]] as const) {
      const part = policyLoss(
        { logprobs: inp.logprobs.slice(a, b), oldLogprobs: inp.oldLogprobs.slice(a, b), refLogprobs: inp.refLogprobs!.slice(a, b), advantages: (inp.advantages as number[]).slice(a, b), mask: inp.mask!.slice(a, b) },
        { ...o, norm: { tokens, sequences: 8 } },
      );
      sum += part.loss;
      for (let s = a; s < b; s++) assert.deepEqual(part.dLogprobs[s - a], full.dLogprobs[s]);
    }
    assert.ok(Math.abs(sum - full.loss) < 1e-9, `${red}: ${sum} vs ${full.loss}`);
  }
});

test('policyLoss: at ratio 1 the token_mean loss is -mean(A) and the gradient -A/tokens', () => {
  const lp = [Float32Array.from([-1, -2]), Float32Array.from([-0.5])];
  const r = policyLoss({ logprobs: lp, oldLogprobs: lp, advantages: [1, -2] }, base);
  assert.ok(Math.abs(r.loss - -(1 + 1 - 2) / 3) < 1e-9);
  assert.ok(Math.abs(r.dLogprobs[1]![0]! - 2 / 3) < 1e-7);
  assert.equal(r.sums.clipped, 0);
  const bad = policyLoss({ logprobs: [Float32Array.from([NaN])], oldLogprobs: [Float32Array.from([0])], advantages: [1] }, base);
  assert.ok(Number.isNaN(bad.loss));
  assert.equal(bad.sums.nonFinite, 1);
});

test('crossEntropyLoss: value and gradient', () => {
  const r = crossEntropyLoss([Float32Array.from([-1, -3])], [Uint8Array.from([1, 1])]);
  assert.equal(r.loss, 2);
  assert.deepEqual(Array.from(r.dLogprobs[0]!), [-0.5, -0.5]);
});
