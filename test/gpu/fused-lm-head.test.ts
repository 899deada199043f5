// GPU machine: the fused LM-head backward (trainer.fused_lm_head_backward; written without a GPU, refused on CUDA
// by src/trainer/grpo.ts until this file has passed).
// - Ops: CUDA tokenLogprobsForwardKeep vs the CPU (log-probs, lse, entropy, kept logits) and
//   tokenLogprobsBackwardFromLogits over several token chunks (dLmHead accumulated) vs the CPU's vocabulary-chunked
//   backward: its error is at most 2x the CUDA vocabulary-chunked backward's error against the same CPU reference
//   (both round dlogits to bf16; FlashAttention-style tolerance).
// - Model: a training step of a small GPT-OSS (gpt-oss-20b attention shape, vocab 8192) with lossGradient (several
//   token chunks) vs the recomputing backward: every parameter gradient's error against the CPU's recomputing step is
//   at most 2x the CUDA recomputing step's (+1e-6 floor for exact ones).
// - Policy: one GRPO micro-batch through GptOssPolicy with policyTokenGradient vs policyLoss + backward: loss within
//   1e-4 relative (the kept-logits GEMMs have other row counts than the chunked ones: cuBLAS may round differently),
//   grad norm within 1e-3 relative.
// - ShardedPolicy at N = 1 on CUDA (its shard in place, and collectivesAtOne: the head unit's gradient buffer kept
//   from the forward to the backward's NCCL reduce-scatter): one step of a mini-batch in several micro-batches with
//   the rank's loss gradient vs pgLoss + backward: loss 1e-4, grad norm 1e-3 relative (as the policy test).
// The errors are printed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor } from '../../src/tensor.ts';
import { tokenLogprobs, tokenLogprobsBackward, tokenLogprobsForwardKeep, tokenLogprobsBackwardFromLogits } from '../../src/ops/logprob.ts';
import { presetConfig } from '../../src/model/config.ts';
import { GptOssModel } from '../../src/model/gptoss.ts';
import { GptOssWeights } from '../../src/model/weights.ts';
import { packSequences, disposeBatch } from '../../src/model/batch.ts';
import { GptOssPolicy } from '../../src/trainer/gptoss-policy.ts';
import { policyLoss, policyTokenGradient, type PolicyLossOptions } from '../../src/rl/loss.ts';
import { uniformSym, rng } from '../helpers/random.ts';
import { assertClose, relNorm } from '../helpers/numeric.ts';
import { hasCuda } from '../helpers/cuda.ts';
import { initDistributed } from '../../src/distributed/launch.ts';
import { randomModel } from '../../src/model/index.ts';
import { ShardedPolicy, rankMicroBatches, shardSequences } from '../../src/trainer/sharded-policy.ts';
import { CFG, SEED, MICRO, stepBatch, normTokens, pgLoss } from '../helpers/fsdp-common.ts';

const skip = hasCuda ? false : 'no CUDA device (addon built without CUDA or no GPU visible)';
const G = 'cuda:0';

test('cuda tokenLogprobsForwardKeep / BackwardFromLogits vs the CPU (error <= 2x the vocabulary-chunked op\'s)', { skip, timeout: 300_000 }, () => {
  const T = 300, H = 256, V = 5003;
  const h = uniformSym(T * H, 41, 1, true), w = uniformSym(V * H, 42, 0.2, true);
  const r = rng(43);
  const tg = Int32Array.from({ length: T }, () => Math.floor(r() * V));
  tg[0] = V - 1; tg[1] = 1000; tg[2] = 999; tg[5] = -1;
  const dl = uniformSym(T, 44);
  const mk = (d: string) => ({
    h: Tensor.from(h, [T, H], { dtype: 'bf16', device: d }),
    w: Tensor.from(w, [V, H], { dtype: 'bf16', device: d }),
    t: Tensor.from(tg, [T], { device: d }),
    dl: Tensor.from(dl, [T], { device: d }),
  });
  const c = mk('cpu'), g = mk(G);
  for (const chunk of [1000, 4096]) {
    for (const temperature of [1, 0.6]) {
      const what = `chunk ${chunk} temp ${temperature}`;
      const kc = tokenLogprobsForwardKeep(c.h, c.w, c.t, { chunk, temperature });
      const kg = tokenLogprobsForwardKeep(g.h, g.w, g.t, { chunk, temperature });
      assertClose(kg.logprobs.toFloat32(), kc.logprobs.toFloat32(), 2e-4, 2e-4, `logprobs ${what}`);
      assertClose(kg.entropy.toFloat32(), kc.entropy.toFloat32(), 2e-4, 2e-4, `entropy ${what}`);
      assertClose(kg.lse.toFloat32(), kc.lse.toFloat32(), 2e-4, 2e-4, `lse ${what}`);
      assertClose(kg.logits.toFloat32(), kc.logits.toFloat32(), 2e-4, 2e-4, `logits ${what}`);
      // CPU reference: the vocabulary-chunked backward (fp32 dlogits).
      const fc = tokenLogprobs(c.h, c.w, c.t, { chunk, temperature });
      const ref = tokenLogprobsBackward(c.h, c.w, c.t, fc.lse, c.dl, { chunk, temperature });
      const fg = tokenLogprobs(g.h, g.w, g.t, { chunk, temperature });
      const old = tokenLogprobsBackward(g.h, g.w, g.t, fg.lse, g.dl, { chunk, temperature });
      const ehOld = relNorm(old.dHidden.toFloat32(), ref.dHidden.toFloat32());
      const ewOld = relNorm(old.dLmHead.toFloat32(), ref.dLmHead.toFloat32());
      for (const tc of [T, 128, 37]) {
        const dLm = Tensor.zeros([V, H], { dtype: 'f32', device: G });
        const dH = Tensor.empty([T, H], { dtype: 'f32', device: G });
        for (let t0 = 0; t0 < T; t0 += tc) {
          const t1 = Math.min(T, t0 + tc);
          const hs = g.h.slice(t0, t1), ts = g.t.slice(t0, t1), ds = g.dl.slice(t0, t1), dhs = dH.slice(t0, t1);
          const k = tokenLogprobsForwardKeep(hs, g.w, ts, { chunk, temperature });
          tokenLogprobsBackwardFromLogits(k.logits, hs, g.w, ts, k.lse, ds, { chunk, temperature, dLmHead: dLm, dHidden: dhs });
          for (const x of [hs, ts, ds, dhs, k.logprobs, k.entropy, k.lse, k.logits]) x.dispose();
        }
        const eh = relNorm(dH.toFloat32(), ref.dHidden.toFloat32());
        const ew = relNorm(dLm.toFloat32(), ref.dLmHead.toFloat32());
        console.log(`# ${what} token chunk ${tc}: rel err dHidden ${eh.toExponential(2)} (vocabulary-chunked ${ehOld.toExponential(2)}), dLmHead ${ew.toExponential(2)} (${ewOld.toExponential(2)})`);
        assert.ok(eh <= 2 * ehOld + 1e-7, `${what} token chunk ${tc}: dHidden rel err ${eh} > 2x ${ehOld}`);
        assert.ok(ew <= 2 * ewOld + 1e-7, `${what} token chunk ${tc}: dLmHead rel err ${ew} > 2x ${ewOld}`);
        dLm.dispose();
        dH.dispose();
      }
      // Frozen head: dHidden only.
      const k = tokenLogprobsForwardKeep(g.h, g.w, g.t, { chunk, temperature });
      const dh = tokenLogprobsBackwardFromLogits(k.logits, g.h, g.w, g.t, k.lse, g.dl, { chunk, temperature });
      assert.ok(relNorm(dh.toFloat32(), ref.dHidden.toFloat32()) <= 2 * ehOld + 1e-7);
      for (const x of [kc.logprobs, kc.entropy, kc.lse, kc.logits, kg.logprobs, kg.entropy, kg.lse, kg.logits, fc.logprobs, fc.entropy, fc.lse, fg.logprobs, fg.entropy, fg.lse, ref.dHidden, ref.dLmHead, old.dHidden, old.dLmHead, k.logprobs, k.entropy, k.lse, k.logits, dh]) x.dispose();
    }
  }
});

test('cuda model step with lossGradient (several token chunks) vs the recomputing backward: error <= 2x against the CPU', { skip, timeout: 600_000 }, () => {
  const cfg = presetConfig('gpt-oss-20b', { numLayers: 2, vocabSize: 8192, numExperts: 8, topK: 4 });
  const seqs = [300, 500].map((n, s) => Array.from({ length: n }, (_, i) => (i * 7919 + s * 104729) % cfg.vocabSize));
  const cpuW = GptOssWeights.random(cfg, 'cpu', { seed: 12, fast: true, biasStd: 0.02 });
  const T = seqs.reduce((a, s) => a + s.length, 0);
  const d = uniformSym(T, 13, 1e-2);
  const step = (dev: string, fused: boolean): Map<string, Float32Array> => {
    const params = new Map([...cpuW.params].map(([n, t]) => [n, dev === 'cpu' ? t.clone() : t.to(dev)] as const));
    const model = new GptOssModel(new GptOssWeights(cfg, dev, params), { recompute: true, deterministic: true, lmHeadTokenChunk: fused ? 97 : undefined });
    const b = packSequences(seqs, dev);
    const grads = new Map<string, Tensor>();
    const r = model.forward(b, { train: true, lossGradient: fused ? { grad: (t0, lp) => d.slice(t0, t0 + lp.length), grads } : undefined });
    const dt = fused ? null : Tensor.from(d, [T], { dtype: 'f32', device: dev });
    model.backward(r.state!, dt, grads);
    dt?.dispose();
    r.logprobs.dispose();
    r.entropy.dispose();
    disposeBatch(b);
    const out = new Map([...grads].map(([n, t]) => [n, t.toFloat32()] as const));
    for (const t of grads.values()) t.dispose();
    model.dispose();
    return out;
  };
  const ref = step('cpu', false);
  const old = step(G, false);
  const fused = step(G, true);
  for (const [n, g] of ref) {
    const eo = relNorm(old.get(n)!, g);
    const ef = relNorm(fused.get(n)!, g);
    console.log(`# ${n}: rel err fused ${ef.toExponential(2)}, recomputing ${eo.toExponential(2)}`);
    assert.ok(ef <= 2 * eo + 1e-6, `${n}: fused rel err ${ef} > 2x the recomputing backward's ${eo}`);
  }
  cpuW.dispose();
});

test('cuda GptOssPolicy GRPO micro-batch with policyTokenGradient vs policyLoss + backward (loss 1e-4, grad norm 1e-3 relative)', { skip, timeout: 300_000 }, async () => {
  const cfg = presetConfig('gpt-oss-20b', { numLayers: 2, vocabSize: 8192, numExperts: 8, topK: 4 });
  const batch = { sequences: [200, 340].map((n, s) => Int32Array.from({ length: n }, (_, i) => (i * 31 + s * 17) % cfg.vocabSize)), promptLens: [50, 90] };
  const lens = batch.sequences.map((s, i) => s.length - batch.promptLens[i]!);
  const o: PolicyLossOptions = { epsClipLow: 0.2, epsClipHigh: 0.28, policyLossType: 'regular', clipRatioC: 3, lossReduction: 'token_mean', maxSeqLen: 512, klCoef: 0 };
  const norms: number[] = [];
  const losses: number[] = [];
  for (const fusedOn of [false, true]) {
    const p = new GptOssPolicy(new GptOssModel(GptOssWeights.random(cfg, G, { seed: 14, fast: true, biasStd: 0.02 }), { recompute: true, deterministic: true, lmHeadTokenChunk: fusedOn ? 101 : undefined }));
    const old = await p.logprobs(batch);
    const inp = { oldLogprobs: old.logprobs.map((l) => l.map((x, t) => x + 0.1 * Math.sin(t))), advantages: [0.8, -0.5] };
    assert.deepEqual(inp.oldLogprobs.map((l) => l.length), lens);
    const f = await p.forward(batch, { lossGradient: fusedOn ? policyTokenGradient(inp, o) : undefined });
    const res = policyLoss({ logprobs: f.logprobs, ...inp }, o);
    await (fusedOn ? f.backward() : f.backward(res.dLogprobs));
    losses.push(res.loss);
    norms.push((await p.clipGradNorm(1e9)).norm);
    p.dispose();
  }
  console.log(`# GRPO micro-batch: loss ${losses.join(' / ')}, grad norm ${norms.join(' / ')} (off / on)`);
  assert.ok(Math.abs(losses[1]! - losses[0]!) <= 1e-4 * Math.abs(losses[0]!) + 1e-7, `loss ${losses}`);
  assert.ok(Math.abs(norms[1]! - norms[0]!) <= 1e-3 * norms[0]!, `grad norm ${norms}`);
});

test('cuda ShardedPolicy N = 1 with the fused LM-head backward vs pgLoss + backward (in place and through NCCL; loss 1e-4, grad norm 1e-3 relative)', { skip, timeout: 300_000 }, async () => {
  const ctx = await initDistributed();
  for (const collectivesAtOne of [false, true]) {
    const out: { loss: number; norm: number }[] = [];
    for (const fused of [false, true]) {
      const m = randomModel(CFG, { device: G, seed: SEED });
      const p = ShardedPolicy.fromWeights(m.weights, ctx.collectives, { deterministic: true, collectivesAtOne });
      m.dispose();
      const mb = stepBatch(1);
      const norm = normTokens(mb);
      p.zeroGrad();
      let loss = 0;
      for (const idx of rankMicroBatches(shardSequences(mb.sequences.map((s) => s.length), 1), MICRO)[0]!) {
        const lossGradient = fused ? (seq: number, _t0: number, lp: Float32Array) => new Float32Array(lp.length).fill(-mb.advantages[idx[seq]!]! / norm) : undefined;
        const fwd = await p.forward({ sequences: idx.map((i) => mb.sequences[i]!), promptLens: idx.map((i) => mb.promptLens[i]!) }, { lossGradient });
        const l = pgLoss(fwd.logprobs, idx.map((i) => mb.advantages[i]!), norm);
        loss += l.loss;
        await (fused ? fwd.backward() : fwd.backward(l.d));
      }
      out.push({ loss, norm: (await p.clipGradNorm(1e9)).norm });
      p.dispose();
    }
    const [off, on] = out as [{ loss: number; norm: number }, { loss: number; norm: number }];
    console.log(`# sharded (collectivesAtOne ${collectivesAtOne}): loss ${off.loss} / ${on.loss}, grad norm ${off.norm} / ${on.norm} (off / on)`);
    assert.ok(Math.abs(on.loss - off.loss) <= 1e-4 * Math.abs(off.loss) + 1e-7, `loss ${off.loss} vs ${on.loss}`);
    assert.ok(Math.abs(on.norm - off.norm) <= 1e-3 * off.norm, `grad norm ${off.norm} vs ${on.norm}`);
  }
  await ctx.destroy();
});
