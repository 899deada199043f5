// LoRA on the tiny GPT-OSS model (src/model/lora.ts, applied by src/model/layer.ts): zero-init B computes the base
// model exactly; the adapted forward equals the forward of the merged weights (W + scale·B·A); adapter gradients
// against finite differences of the loss, per target; backward allocates no base gradient; the expert adapters in
// the MoE op against a merged-weights MoE; generation (DecoderLayer.step) sees the adapters.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomModel, presetConfig, packSequences, disposeBatch, GptOssModel, GptOssWeights, LoraAdapters, LORA_TARGETS, type LoraSpec } from '../../src/model/index.ts';
import { Tensor } from '../../src/tensor.ts';
import { moeForward, moeBackward } from '../../src/ops/moe.ts';
import { matmul } from '../../src/ops/gemm.ts';
import { generate } from '../../src/inference/generate.ts';
import { loadConfig } from '../../src/config/index.ts';
import { evalLogprobs as evalLogprobsOf } from '../helpers/eval-logprobs.ts';

const cfg = presetConfig('gpt-oss-tiny-256');
const seqs = [
  [1, 5, 9, 13, 17, 21, 30, 41],
  [2, 4, 6, 8, 10],
  [3, 7, 11, 15, 19, 23, 27, 31, 35, 40, 44],
];
const ALL: LoraSpec = { rank: 4, alpha: 8, dropout: 0, targets: LORA_TARGETS };

const logprobs = (m: GptOssModel): Float32Array => evalLogprobsOf(m, seqs);

const maxAbsDiff = (a: Float32Array, b: Float32Array): number => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

test('fresh adapters (B = 0) compute exactly the base model', () => {
  const m = randomModel(cfg, { device: 'cpu', seed: 1, biasStd: 0.02 });
  const base = logprobs(m);
  const a = LoraAdapters.init(cfg, ALL, 'cpu', { seed: 2 });
  m.lora = a;
  assert.deepEqual(Array.from(logprobs(m)), Array.from(base));
  // A is kaiming-uniform (PEFT's default): |A| <= 1/sqrt(fan_in), and not all zero.
  const qa = a.layers[0]!.q!.A.toFloat32();
  assert.ok(qa.every((v) => Math.abs(v) <= 1 / Math.sqrt(cfg.hiddenSize)) && qa.some((v) => v !== 0));
  a.dispose();
  m.dispose();
});

test('the adapted forward equals the forward of the merged weights W + scale·B·A (every target)', () => {
  const m = randomModel(cfg, { device: 'cpu', seed: 3, biasStd: 0.02 });
  const base = logprobs(m);
  const a = LoraAdapters.init(cfg, ALL, 'cpu', { seed: 4, bStd: 0.05 });
  m.lora = a;
  const adapted = logprobs(m);
  // The merged model: every adapted parameter replaced by bf16(W + scale·ΔW).
  const params = new Map<string, Tensor>();
  for (const [n, t] of m.weights.params) params.set(n, t.clone());
  for (const [n, [l, t]] of a.adaptedParams()) {
    params.get(n)!.dispose();
    params.set(n, a.mergedParam(m.weights, l, t));
  }
  const merged = new GptOssModel(new GptOssWeights(cfg, 'cpu', params));
  const mlp = logprobs(merged);
  const dBase = maxAbsDiff(adapted, base), dMerged = maxAbsDiff(adapted, mlp);
  // The adapters move the log-probs far more than the difference between factor form and merged bf16 weights.
  assert.ok(dBase > 0.05, `adapters change the model (max |Δ| ${dBase})`);
  assert.ok(dMerged < 0.02 && dMerged < dBase / 10, `adapted vs merged max |Δ| ${dMerged} (vs base ${dBase})`);
  merged.dispose();
  a.dispose();
  m.dispose();
});

test('expert adapters inside the MoE op equal the op over merged expert weights (forward and input gradient)', () => {
  const T = 12, H = 16, E = 4, I = 8, r = 3, k = 2, s = 1.5;
  let seed = 7;
  const rnd = (n: number, sd: number) => Float32Array.from({ length: n }, () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648 - 0.5) * 2 * sd);
  const bf = (n: number[], sd: number) => Tensor.from(rnd(n.reduce((a, b) => a * b, 1), sd), n, { dtype: 'bf16', device: 'cpu' });
  const f32 = (n: number[], sd: number) => Tensor.from(rnd(n.reduce((a, b) => a * b, 1), sd), n, { dtype: 'f32', device: 'cpu' });
  const x = bf([T, H], 1);
  const w = { routerW: bf([E, H], 0.5), routerB: bf([E], 0.1), gateUpW: bf([E, H, 2 * I], 0.3), gateUpB: bf([E, 2 * I], 0.1), downW: bf([E, I, H], 0.3), downB: bf([E, H], 0.1) };
  const lora = { gateUpA: f32([E, H, r], 0.3), gateUpB: f32([E, r, 2 * I], 0.3), downA: f32([E, I, r], 0.3), downB: f32([E, r, H], 0.3), scale: s };
  const mergedW = (W: Tensor, A: Tensor, B: Tensor): Tensor => {
    // Exact f32 merge per expert, then the op's bf16 weight.
    const out = Tensor.zeros(W.shape, { dtype: 'f32', device: 'cpu' });
    const wf = W.toFloat32(), af = A.toFloat32(), bfv = B.toFloat32();
    const [, nin, nout] = W.shape as [number, number, number];
    const o = new Float32Array(wf);
    for (let e = 0; e < E; e++) for (let i = 0; i < nin; i++) for (let c = 0; c < nout; c++) {
      let acc = 0;
      for (let j = 0; j < r; j++) acc += af[(e * nin + i) * r + j]! * bfv[(e * r + j) * nout + c]!;
      o[(e * nin + i) * nout + c] += s * acc;
    }
    out.dispose();
    return Tensor.from(o, W.shape, { dtype: 'bf16', device: 'cpu' });
  };
  const wm = { ...w, gateUpW: mergedW(w.gateUpW, lora.gateUpA, lora.gateUpB), downW: mergedW(w.downW, lora.downA, lora.downB) };
  const fa = moeForward(x, w, { topK: k, lora });
  const fm = moeForward(x, wm, { topK: k });
  const fb = moeForward(x, w, { topK: k });
  const ya = fa.y.toFloat32(), ym = fm.y.toFloat32(), yb = fb.y.toFloat32();
  const d = maxAbsDiff(ya, ym), dBase = maxAbsDiff(ya, yb);
  assert.ok(dBase > 0.1 && d < dBase / 20, `adapted vs merged ${d}, vs base ${dBase}`);
  const dy = Tensor.from(rnd(T * H, 1), [T, H], { dtype: 'f32', device: 'cpu' });
  const ga = moeBackward(dy, fa.ctx, undefined, undefined, { weightGrads: false });
  const gm = moeBackward(dy, fm.ctx);
  const dxa = ga.dx.toFloat32(), dxm = gm.dx.toFloat32();
  const scaleDx = dxm.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  assert.ok(maxAbsDiff(dxa, dxm) < 0.03 * scaleDx, `dx adapted vs merged ${maxAbsDiff(dxa, dxm)} (scale ${scaleDx})`);
  // No expert weight gradients with weightGrads false; the adapters' gradients are there with their shapes.
  assert.equal((ga as { dGateUpW?: Tensor }).dGateUpW, undefined);
  assert.deepEqual(ga.dLoraGateUpA!.shape, [E, H, r]);
  assert.deepEqual(ga.dLoraDownB!.shape, [E, r, H]);
  // Chain rule through the merged weight: dA[e] = scale·dW[e]·B[e]ᵀ, dB[e] = scale·A[e]ᵀ·dW[e] (dW of the merged op).
  const check = (dW: Tensor, A: Tensor, B: Tensor, dA: Tensor, dB: Tensor, nin: number, nout: number) => {
    for (let e = 0; e < E; e++) {
      const sl = (t: Tensor, sh: number[]) => { const a = t.slice(e, e + 1); const v = a.view(sh); a.dispose(); return v; };
      const dWe = sl(dW, [nin, nout]), Ae = sl(A, [nin, r]), Be = sl(B, [r, nout]);
      const wantA = matmul(dWe, Be, { transB: true, alpha: s, outDtype: 'f32' }).toFloat32();
      const wantB = matmul(Ae, dWe, { transA: true, alpha: s, outDtype: 'f32' }).toFloat32();
      const gotA = dA.toFloat32().subarray(e * nin * r, (e + 1) * nin * r), gotB = dB.toFloat32().subarray(e * r * nout, (e + 1) * r * nout);
      const tol = (v: Float32Array) => 0.03 * v.reduce((m, x) => Math.max(m, Math.abs(x)), 1e-3);
      assert.ok(maxAbsDiff(gotA, wantA) < tol(wantA), `expert ${e} dA ${maxAbsDiff(gotA, wantA)}`);
      assert.ok(maxAbsDiff(gotB, wantB) < tol(wantB), `expert ${e} dB ${maxAbsDiff(gotB, wantB)}`);
    }
  };
  check(gm.dGateUpW, lora.gateUpA, lora.gateUpB, ga.dLoraGateUpA!, ga.dLoraGateUpB!, H, 2 * I);
  check(gm.dDownW, lora.downA, lora.downB, ga.dLoraDownA!, ga.dLoraDownB!, I, H);
  assert.throws(() => moeBackward(dy, fa.ctx, undefined, { dGateUpW: Tensor.zeros([E, H, 2 * I]), dDownW: Tensor.zeros([E, I, H]) } as never, { weightGrads: false } as never), /weightGrads false/);
  assert.throws(() => moeForward(x, w, { topK: k, lora: { gateUpA: lora.gateUpA, scale: 1 } }), /pairs/);
  assert.throws(() => moeForward(x, w, { topK: k, lora: { gateUpA: lora.downA, gateUpB: lora.gateUpB, scale: 1 } }), /loraGateUpA must have shape/);
});

/** Σ_t c_t·logp_t over the packed batch (c fixed), and its gradients with respect to the adapters. */
function lossAndGrads(m: GptOssModel, c: Float32Array, withGrads: boolean): { loss: number; grads?: Map<string, Tensor> } {
  const b = packSequences(seqs, 'cpu');
  const r = m.forward(b, { train: withGrads, releaseBatch: withGrads });
  const lp = r.logprobs.toFloat32();
  r.logprobs.dispose();
  r.entropy.dispose();
  let loss = 0;
  for (let i = 0; i < lp.length; i++) loss += c[i]! * lp[i]!;
  if (!withGrads) {
    disposeBatch(b);
    return { loss };
  }
  const grads = m.backward(r.state!, Tensor.from(c, [c.length], { dtype: 'f32', device: 'cpu' }));
  return { loss, grads };
}

test('adapter gradients match finite differences of the loss (each target); no base gradient is allocated', () => {
  // top-k = all experts: a routing flip (top-k is discontinuous) under a perturbation would swamp the difference.
  const c4 = presetConfig('gpt-oss-tiny-256', { topK: 4 });
  const m = randomModel(c4, { device: 'cpu', seed: 5, biasStd: 0.02 });
  const a = LoraAdapters.init(c4, ALL, 'cpu', { seed: 6, bStd: 0.05 });
  m.lora = a;
  const n = packSequences(seqs, 'cpu');
  const T = n.numTokens;
  disposeBatch(n);
  const c = Float32Array.from({ length: T }, (_, i) => (i % 3 === 0 ? 0 : Math.cos(i)));
  const { grads } = lossAndGrads(m, c, true);
  // Only adapter names: the frozen base gets nothing (no LM head, embedding, norm or expert buffers).
  assert.deepEqual([...grads!.keys()].sort(), a.names().sort());
  // A directional derivative per adapter tensor (a ±1 direction over all its entries: the bf16 activations make
  // single-entry differences too coarse) against the backward's gradient. The bf16 rounding of the activations
  // leaves up to ~0.06 of noise in the difference (measured over these tensors at eps 0.03), hence the absolute
  // term; across all tensors the differences and the gradient's projections must also correlate (> 0.97).
  let checked = 0;
  const fds: number[] = [], dots: number[] = [];
  for (const name of a.names()) {
    const p = a.params.get(name)!;
    const g = grads!.get(name)!.toFloat32();
    const p0 = p.toFloat32();
    const dir = Float32Array.from(p0, (_, i) => Math.sin(i * 12.9898 + name.length) >= 0 ? 1 : -1);
    const dot = g.reduce((acc, v, i) => acc + v * dir[i]!, 0);
    // The embedding's B is PEFT's normal(0, 1) (50x the tiny base's embedding rows), so its A takes a smaller step
    // to stay in the loss's linear range.
    const eps = name === 'model.embed_tokens.lora_A' ? 0.01 : 0.03;
    const at = (sgn: number) => {
      p.copyFrom(Float32Array.from(p0, (v, i) => v + sgn * eps * dir[i]!));
      return lossAndGrads(m, c, false).loss;
    };
    const fd = (at(1) - at(-1)) / (2 * eps);
    p.copyFrom(p0);
    const tol = 0.15 * Math.abs(dot) + 0.06;
    assert.ok(Math.abs(fd - dot) < tol, `${name}: finite difference ${fd} vs gradient·direction ${dot}`);
    fds.push(fd);
    dots.push(dot);
    checked++;
  }
  const mean = (v: number[]) => v.reduce((x, y) => x + y, 0) / v.length;
  const [mf, md] = [mean(fds), mean(dots)];
  const cov = fds.reduce((acc, f, i) => acc + (f - mf) * (dots[i]! - md), 0);
  const corr = cov / Math.sqrt(fds.reduce((acc, f) => acc + (f - mf) ** 2, 0) * dots.reduce((acc, d) => acc + (d - md) ** 2, 0));
  assert.ok(corr > 0.97, `correlation of finite differences and gradients ${corr}`);
  // Every layer's pairs of the 7 per-layer targets, and the model's lm_head and embed_tokens pairs.
  assert.equal(checked, 2 * (c4.numLayers * (LORA_TARGETS.length - 2) + 2));
  for (const t of grads!.values()) t.dispose();
  a.dispose();
  m.dispose();
});

test('withoutAdapters runs the base (the KL reference) and generation applies the adapters', () => {
  const m = randomModel(cfg, { device: 'cpu', seed: 8, biasStd: 0.02 });
  const base = logprobs(m);
  const a = LoraAdapters.init(cfg, ALL, 'cpu', { seed: 9, bStd: 0.2 });
  m.lora = a;
  assert.deepEqual(Array.from(m.withoutAdapters(() => logprobs(m))), Array.from(base));
  assert.equal(m.lora, a);
  assert.ok(maxAbsDiff(logprobs(m), base) > 0.05);
  assert.throws(() => m.withoutAdapters(() => Promise.resolve(1)), /synchronous/);
  // Greedy generation with the adapters equals greedy generation from the merged model (same tokens).
  const gen = (mm: GptOssModel) => generate(mm, [[1, 5, 9], [2, 4]], { maxNewTokens: 6, temperature: 0, seed: 1 }).map((r) => Array.from(r.tokens));
  const params = new Map<string, Tensor>();
  for (const [n, t] of m.weights.params) params.set(n, t.clone());
  for (const [n, [l, t]] of a.adaptedParams()) {
    params.get(n)!.dispose();
    params.set(n, a.mergedParam(m.weights, l, t));
  }
  const merged = new GptOssModel(new GptOssWeights(cfg, 'cpu', params));
  const [ga, gm, gb] = [gen(m), gen(merged), m.withoutAdapters(() => gen(m))];
  assert.deepEqual(ga, gm);
  m.lora = null;
  assert.deepEqual(gb, gen(m));
  assert.notDeepEqual(ga, gb);
  m.lora = a;
  merged.dispose();
  a.dispose();
  m.dispose();
});

test('specs are checked with the config key named', () => {
  assert.throws(() => LoraAdapters.init(cfg, { ...ALL, rank: 0 }, 'cpu'), /trainer\.policy\.model\.lora\.rank/);
  // Dropout with expert targets: PEFT's ParamWrapper refuses it (every refusal: test/cpu/lora-dropout.test.ts).
  assert.throws(() => LoraAdapters.init(cfg, { ...ALL, dropout: 0.1 }, 'cpu'), /lora\.dropout=0\.1 with target 'gate_up_proj'.*ParamWrapper/);
  assert.throws(() => LoraAdapters.init(cfg, { ...ALL, targets: ['q_proj', 'mlp'] as never }, 'cpu'), /unknown target 'mlp'/);
  assert.throws(() => LoraAdapters.init(cfg, { ...ALL, targets: [] }, 'cpu'), /target_modules is empty/);
  // The config accepts PEFT's lm_head / embed_tokens and refuses other names with the key path.
  assert.deepEqual(loadConfig({ config: 'demo-cpu', overrides: ['trainer.policy.model.lora.target_modules=[q_proj,lm_head,embed_tokens]'] }).trainer.policy.model.lora.target_modules, ['q_proj', 'lm_head', 'embed_tokens']);
  assert.throws(() => loadConfig({ config: 'demo-cpu', overrides: ['trainer.policy.model.lora.target_modules=[lm_head,wte]'] }), /trainer\.policy\.model\.lora\.target_modules\.1: .*got "wte"/);
  // Tied word embeddings (one tensor for both) cannot hold two deltas: refused.
  assert.throws(() => LoraAdapters.init(presetConfig('gpt-oss-tiny-256', { tieWordEmbeddings: true }), { ...ALL, targets: ['lm_head'] }, 'cpu'), /untied word embeddings/);
});

test('lm_head and embed_tokens adapters alone: B·A = 0 at init is the base; forward == merged weights; the engine == the trainer', async () => {
  const spec: LoraSpec = { rank: 4, alpha: 8, dropout: 0, targets: ['lm_head', 'embed_tokens'] };
  const m = randomModel(cfg, { device: 'cpu', seed: 11, biasStd: 0.02 });
  const base = logprobs(m);
  // PEFT's init: the LM head's B zero (A kaiming-uniform), the embedding's A zero (B normal(0, 1)).
  const fresh = LoraAdapters.init(cfg, spec, 'cpu', { seed: 12 });
  assert.ok(fresh.head!.B.toFloat32().every((v) => v === 0) && fresh.embed!.A.toFloat32().every((v) => v === 0));
  const eb = fresh.embed!.B.toFloat32();
  const sd = Math.sqrt(eb.reduce((s, v) => s + v * v, 0) / eb.length);
  assert.ok(sd > 0.8 && sd < 1.2, `embedding B ~ normal(0, 1): std ${sd}`);
  m.lora = fresh;
  assert.deepEqual(Array.from(logprobs(m)), Array.from(base));
  fresh.dispose();
  const a = LoraAdapters.init(cfg, spec, 'cpu', { seed: 13, bStd: 0.05 });
  m.lora = a;
  const adapted = logprobs(m);
  const params = new Map<string, Tensor>();
  for (const [n, t] of m.weights.params) params.set(n, t.clone());
  assert.deepEqual([...a.adaptedParams().keys()].sort(), ['lm_head.weight', 'model.embed_tokens.weight']);
  for (const [n, [l, t]] of a.adaptedParams()) {
    params.get(n)!.dispose();
    params.set(n, a.mergedParam(m.weights, l, t));
  }
  const merged = new GptOssModel(new GptOssWeights(cfg, 'cpu', params));
  const dBase = maxAbsDiff(adapted, base), dMerged = maxAbsDiff(adapted, logprobs(merged));
  assert.ok(dBase > 0.05, `adapters change the model (max |Δ| ${dBase})`);
  // The head is merged the same way in both (bf16(W + scale·B·A)); the embedding rows differ by one bf16 rounding.
  assert.ok(dMerged < 0.01 && dMerged < dBase / 10, `adapted vs merged max |Δ| ${dMerged} (vs base ${dBase})`);
  // The engine's steps (model.embed / model.logits) apply the adapters: its sampled tokens' log-probs equal the
  // trainer's forward over prompt + output.
  const { createEngine } = await import('../../src/inference/engine.ts');
  const e = await createEngine(m, { blockSize: 4, numBlocks: 64 });
  const ps = [[1, 5, 9, 13, 17, 21, 30], [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30]];
  const out = await e.generate(ps.map((prompt, i) => ({ prompt, n: 2, maxNewTokens: 10, temperature: 1, seed: i, stopTokens: [] })));
  let worst = 0, moved = 0;
  out.forEach((r, i) => {
    for (const s of r.samples) {
      const full = [...ps[i]!, ...s.tokens];
      const lp = m.tokenLogprobs([full])[0]!.slice(ps[i]!.length - 1);
      const lb = m.withoutAdapters(() => m.tokenLogprobs([full]))[0]!.slice(ps[i]!.length - 1);
      s.logprobs.forEach((x, t) => {
        worst = Math.max(worst, Math.abs(x - lp[t]!));
        moved = Math.max(moved, Math.abs(x - lb[t]!));
      });
    }
  });
  assert.ok(worst < 2e-2 && moved > 10 * worst, `max |engine - trainer| = ${worst} (vs the base ${moved})`);
  e.dispose();
  merged.dispose();
  a.dispose();
  m.dispose();
});
