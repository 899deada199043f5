// policyTokenGradient (src/rl/loss.ts): the per-token loss gradient evaluated on slices of each response equals
// policyLoss's dLogprobs bit for bit, for every policy_loss_type, loss_reduction, with/without k3 KL, masks and
// mini-batch normalisers; non-local losses and out-of-range slices are refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { policyLoss, policyTokenGradient, type PolicyLossOptions, type PolicyLossInput, type LossReduction, type PolicyLossType } from '../../src/rl/index.ts';
import { rng } from '../helpers/random.ts';

const base: PolicyLossOptions = { epsClipLow: 0.2, epsClipHigh: 0.28, policyLossType: 'regular', clipRatioC: 3, lossReduction: 'token_mean', maxSeqLen: 16, klCoef: 0 };

function input(seed: number, S: number): PolicyLossInput {
  const r = rng(seed);
  const lens = Array.from({ length: S }, () => 1 + Math.floor(r() * 11));
  const logprobs = lens.map((n) => Float32Array.from({ length: n }, () => -3 * r()));
  const oldLogprobs = logprobs.map((lp) => lp.map((x) => x + (r() - 0.5) * 1.5));
  const refLogprobs = logprobs.map((lp) => lp.map((x) => x + (r() - 0.5) * 2));
  const advantages = Array.from({ length: S }, () => (r() - 0.5) * 3);
  const mask = lens.map((n) => Uint8Array.from({ length: n }, () => (r() < 0.8 ? 1 : 0)));
  return { logprobs, oldLogprobs, refLogprobs, advantages, mask };
}

const reductions: LossReduction[] = ['token_mean', 'sequence_mean', 'seq_mean_token_sum_norm'];
const types: PolicyLossType[] = ['regular', 'dual_clip'];

test('policyTokenGradient on slices == policyLoss dLogprobs, bit for bit', () => {
  let seed = 70;
  for (const lossReduction of reductions) {
    for (const policyLossType of types) {
      for (const kl of [0, 0.05]) {
        for (const withMask of [false, true]) {
          for (const norm of [undefined, { tokens: 123, sequences: 17 }]) {
            const inp = input(seed++, 9);
            if (!withMask) delete inp.mask;
            const o: PolicyLossOptions = { ...base, lossReduction, policyLossType, klCoef: kl, norm };
            const ref = policyLoss(inp, o).dLogprobs;
            const { logprobs, ...rest } = inp;
            const grad = policyTokenGradient(rest, o);
            const what = `${lossReduction} ${policyLossType} kl ${kl} mask ${withMask} norm ${!!norm}`;
            for (let s = 0; s < logprobs.length; s++) {
              const lp = logprobs[s]!;
              // Slices of 1, 3 and all tokens, and the empty slice at the end.
              for (const step of [1, 3, lp.length]) {
                const got = new Float32Array(lp.length);
                for (let t0 = 0; t0 < lp.length; t0 += step) got.set(grad(s, t0, lp.subarray(t0, t0 + step)), t0);
                assert.deepEqual(got, ref[s], `${what} response ${s} slices of ${step}`);
              }
              assert.equal(grad(s, lp.length, new Float32Array(0)).length, 0);
            }
          }
        }
      }
    }
  }
});

test('policyTokenGradient refuses non-local losses and slices outside a response', () => {
  const { logprobs, ...rest } = input(5, 3);
  assert.throws(() => policyTokenGradient(rest, { ...base, policyLossType: 'gspo' as PolicyLossType }), /policy_loss_type 'gspo' is not a per-token loss/);
  assert.throws(() => policyTokenGradient(rest, { ...base, lossReduction: 'seq_max' as LossReduction }), /loss_reduction 'seq_max' has no per-token weight/);
  assert.throws(() => policyLoss({ logprobs, ...rest }, { ...base, lossReduction: 'seq_max' as LossReduction }), /loss_reduction 'seq_max'/);
  assert.throws(() => policyTokenGradient({ ...rest, refLogprobs: undefined }, { ...base, klCoef: 0.1 }), /klCoef > 0 needs refLogprobs/);
  const g = policyTokenGradient(rest, base);
  const n = logprobs[0]!.length;
  assert.throws(() => g(0, 1, new Float32Array(n)), /tokens 1\.\./);
  assert.throws(() => g(0, -1, new Float32Array(1)), /tokens -1\.\./);
  assert.throws(() => g(3, 0, new Float32Array(1)), /response 3 of 3/);
});
