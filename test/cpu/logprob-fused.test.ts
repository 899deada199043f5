// CPU token-chunked LM head (tokenLogprobsForwardKeep + tokenLogprobsBackwardFromLogits) against the
// vocabulary-chunked op (tokenLogprobs + tokenLogprobsBackward): log-probs, lse, entropy and the kept logits bit
// for bit; dHidden bit for bit (same vocabulary chunk: the same dz and the same GEMMs over each chunk); dLmHead bit
// for bit with one token chunk, and within fp32 noise when accumulated over several token chunks (the sum over
// tokens is then split into partial sums: a different rounding order). lmHeadTokenChunk's budget.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor } from '../../src/tensor.ts';
import {
  tokenLogprobs,
  tokenLogprobsBackward,
  tokenLogprobsBackwardHidden,
  tokenLogprobsForwardKeep,
  tokenLogprobsBackwardFromLogits,
  logits as fullLogits,
  lmHeadChunk,
  lmHeadTokenChunk,
  lmHeadChunkBytes,
  LM_HEAD_TOKEN_CHUNK_BUDGET_BYTES,
} from '../../src/ops/logprob.ts';
import { uniformSym, rng } from '../helpers/random.ts';
import { assertClose } from '../helpers/numeric.ts';

const dev = 'cpu';

function targets(T: number, V: number, seed: number): Int32Array {
  const r = rng(seed);
  const t = new Int32Array(T);
  for (let i = 0; i < T; i++) t[i] = Math.floor(r() * V);
  if (T > 3) t[3] = -1; // an ignored position: log-prob 0, no gradient
  if (T > 1) t[1] = V - 1;
  return t;
}

const cases: { T: number; H: number; V: number; chunk: number; temp: number; dtype: 'bf16' | 'f32' }[] = [
  { T: 1, H: 7, V: 5, chunk: 5, temp: 1, dtype: 'bf16' },
  { T: 13, H: 16, V: 257, chunk: 100, temp: 0.8, dtype: 'bf16' },
  { T: 40, H: 9, V: 130, chunk: 64, temp: 1, dtype: 'bf16' },
  { T: 11, H: 12, V: 300, chunk: 128, temp: 1.3, dtype: 'f32' },
];

test('tokenLogprobsForwardKeep: the same log-probs, lse and entropy bits as tokenLogprobs, and the logits', () => {
  let seed = 900;
  for (const { T, H, V, chunk, temp, dtype } of cases) {
    const th = Tensor.from(uniformSym(T * H, seed++, 1, true), [T, H], { dtype, device: dev });
    const tw = Tensor.from(uniformSym(V * H, seed++, 0.5, true), [V, H], { dtype, device: dev });
    const tt = Tensor.from(targets(T, V, seed++), [T], { device: dev });
    const a = tokenLogprobs(th, tw, tt, { temperature: temp, chunk });
    const k = tokenLogprobsForwardKeep(th, tw, tt, { temperature: temp, chunk });
    const what = `T${T} H${H} V${V} chunk${chunk} ${dtype}`;
    assert.deepEqual(k.logprobs.toFloat32(), a.logprobs.toFloat32(), `logprobs ${what}`);
    assert.deepEqual(k.lse.toFloat32(), a.lse.toFloat32(), `lse ${what}`);
    assert.deepEqual(k.entropy.toFloat32(), a.entropy.toFloat32(), `entropy ${what}`);
    assert.deepEqual(k.logits.shape, [T, V]);
    const ref = fullLogits(th, tw).toFloat32().map((z) => z * Math.fround(1 / temp));
    assertClose(k.logits.toFloat32(), ref, 1e-6, 1e-6, `logits ${what}`);
    for (const x of [th, tw, tt, a.logprobs, a.lse, a.entropy, k.logprobs, k.lse, k.entropy, k.logits]) x.dispose();
  }
});

test('tokenLogprobsBackwardFromLogits: dHidden bit for bit, dLmHead accumulated over token chunks', () => {
  let seed = 1000;
  for (const { T, H, V, chunk, temp, dtype } of cases) {
    const h = uniformSym(T * H, seed++, 1, true);
    const th = Tensor.from(h, [T, H], { dtype, device: dev });
    const tw = Tensor.from(uniformSym(V * H, seed++, 0.5, true), [V, H], { dtype, device: dev });
    const tg = targets(T, V, seed++);
    const tt = Tensor.from(tg, [T], { device: dev });
    const dl = uniformSym(T, seed++);
    const tdl = Tensor.from(dl, [T], { device: dev });
    const what = `T${T} H${H} V${V} chunk${chunk} ${dtype}`;
    const f = tokenLogprobs(th, tw, tt, { temperature: temp, chunk });
    const ref = tokenLogprobsBackward(th, tw, tt, f.lse, tdl, { temperature: temp, chunk });
    const refDh = ref.dHidden.toFloat32();
    const refDw = ref.dLmHead.toFloat32();
    // Token chunks of every size from T (one chunk: dLmHead bitwise too) down to 1.
    for (const tc of [...new Set([T, Math.ceil(T / 2), 3, 1])]) {
      const dLm = Tensor.zeros([V, H], { dtype: 'f32', device: dev });
      const dH = Tensor.empty([T, H], { dtype: 'f32', device: dev });
      for (let t0 = 0; t0 < T; t0 += tc) {
        const t1 = Math.min(T, t0 + tc);
        const hs = th.slice(t0, t1);
        const ts = tt.slice(t0, t1);
        const k = tokenLogprobsForwardKeep(hs, tw, ts, { temperature: temp, chunk });
        const d = Tensor.from(dl.subarray(t0, t1), [t1 - t0], { device: dev });
        const dhs = dH.slice(t0, t1);
        const out = tokenLogprobsBackwardFromLogits(k.logits, hs, tw, ts, k.lse, d, { temperature: temp, chunk, dLmHead: dLm, dHidden: dhs });
        assert.equal(out, dhs);
        for (const x of [hs, ts, k.logprobs, k.lse, k.entropy, k.logits, d, dhs]) x.dispose();
      }
      assert.deepEqual(dH.toFloat32(), refDh, `dHidden ${what} token chunk ${tc}`);
      if (tc >= T) assert.deepEqual(dLm.toFloat32(), refDw, `dLmHead ${what} one token chunk`);
      else assertClose(dLm.toFloat32(), refDw, 1e-6, 1e-6, `dLmHead ${what} token chunk ${tc}`);
      dLm.dispose();
      dH.dispose();
    }
    // A frozen head: dHidden only, the same bits as the recomputing op's dHidden-only path.
    const k = tokenLogprobsForwardKeep(th, tw, tt, { temperature: temp, chunk });
    const dh = tokenLogprobsBackwardFromLogits(k.logits, th, tw, tt, k.lse, tdl, { temperature: temp, chunk });
    const frozen = tokenLogprobsBackwardHidden(th, tw, tt, f.lse, tdl, { temperature: temp, chunk });
    assert.deepEqual(dh.toFloat32(), frozen.toFloat32(), `frozen dHidden ${what}`);
    for (const x of [th, tw, tt, tdl, f.logprobs, f.lse, f.entropy, ref.dHidden, ref.dLmHead, k.logprobs, k.lse, k.entropy, k.logits, dh, frozen]) x.dispose();
  }
});

test('tokenLogprobsBackwardFromLogits rejects mismatched logits, dHidden and dLmHead with the argument named', () => {
  const T = 4, H = 8, V = 20;
  const th = Tensor.from(uniformSym(T * H, 1), [T, H], { dtype: 'bf16', device: dev });
  const tw = Tensor.from(uniformSym(V * H, 2), [V, H], { dtype: 'bf16', device: dev });
  const tt = Tensor.from(targets(T, V, 3), [T], { device: dev });
  const k = tokenLogprobsForwardKeep(th, tw, tt);
  const d = Tensor.from(uniformSym(T, 4), [T], { device: dev });
  const bad = Tensor.zeros([T, V - 1], { dtype: 'f32', device: dev });
  assert.throws(() => tokenLogprobsBackwardFromLogits(bad, th, tw, tt, k.lse, d), /logits/);
  const badH = Tensor.zeros([T + 1, H], { dtype: 'f32', device: dev });
  assert.throws(() => tokenLogprobsBackwardFromLogits(k.logits, th, tw, tt, k.lse, d, { dHidden: badH }), /dHidden/);
  const badW = Tensor.zeros([V, H + 1], { dtype: 'f32', device: dev });
  assert.throws(() => tokenLogprobsBackwardFromLogits(k.logits, th, tw, tt, k.lse, d, { dLmHead: badW }), /dLmHead/);
  const tgBad = Tensor.from(new Int32Array([0, 1, V, 2]), [T], { device: dev });
  assert.throws(() => tokenLogprobsForwardKeep(th, tw, tgBad), /out of range/);
  for (const x of [th, tw, tt, k.logprobs, k.lse, k.entropy, k.logits, d, bad, badH, badW, tgBad]) x.dispose();
});

test('lmHeadTokenChunk: the most tokens whose f32 logits + bf16 dlogits fit the LM-head budget, at least 1', () => {
  const V = 201088;
  const tc = lmHeadTokenChunk(V);
  assert.equal(tc, 3559);
  assert.ok(lmHeadChunkBytes(tc, V, V) <= LM_HEAD_TOKEN_CHUNK_BUDGET_BYTES);
  assert.ok(lmHeadChunkBytes(tc + 1, V, V) > LM_HEAD_TOKEN_CHUNK_BUDGET_BYTES);
  assert.equal(lmHeadTokenChunk(2 ** 30), 1);
  assert.throws(() => lmHeadTokenChunk(0), /vocab/);
  assert.ok(lmHeadChunk(16, 300) > 0);
});
