// GPU machine: LoRA on CUDA (issue 23). The CPU tests (test/cpu/lora*.test.ts) on CUDA: zero-init B == the base
// model exactly; the adapted forward == the merged weights' forward; adapter gradients against the CPU's; the
// frozen-base backward ops (moeBackward weightGrads false at the three expert-GEMM strategies, the LM head's
// dHidden-only backward) give the same input gradients as the full ones and allocate no weight gradient; expert
// adapters in the CUDA MoE op against the CPU op; a gpt-oss-20b-shaped LoRA step stays far below the memory of
// full fine-tuning (no base gradients). LoRA dropout: the CUDA dropoutForward op == the CPU op bitwise (the same
// mask bits from native/cpu/dropout_rng.h), a training step with dropout on CUDA == the CPU's, the recompute path
// bitwise, and LoraPolicy on CUDA (first passed on an H100 on 2026-12-06, which is when dropout > 0 stopped being
// refused on CUDA).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, memoryStats, resetPeakMemory, synchronize, emptyCache } from '../../src/tensor.ts';
import { presetConfig } from '../../src/model/config.ts';
import { GptOssModel } from '../../src/model/gptoss.ts';
import { GptOssWeights } from '../../src/model/weights.ts';
import { packSequences, disposeBatch } from '../../src/model/batch.ts';
import { LoraAdapters, type LoraSpec } from '../../src/model/lora.ts';
import { moeForward, moeBackward } from '../../src/ops/moe.ts';
import { tokenLogprobs, tokenLogprobsBackward, tokenLogprobsBackwardHidden } from '../../src/ops/logprob.ts';
import { generate } from '../../src/inference/generate.ts';
import { dropoutForward } from '../../src/ops/elementwise.ts';
import { LoraPolicy } from '../../src/trainer/lora-policy.ts';
import { hasCuda } from '../helpers/cuda.ts';
import { evalLogprobs as evalLogprobsOf } from '../helpers/eval-logprobs.ts';

const skip = hasCuda ? false : 'no CUDA device (addon built without CUDA or no GPU visible)';
const DEV = 'cuda:0';
// CUDA's GEMMs need hidden and intermediate sizes that are multiples of 8: the tiny-256 shape qualifies.
const cfg = presetConfig('gpt-oss-tiny-256');
const ALL_TARGETS: LoraSpec = { rank: 8, alpha: 16, dropout: 0, targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'router', 'gate_up_proj', 'down_proj'] };
// Without expert adapters the MoE keeps its usual CUDA strategy (with them it takes the per-expert path, whose
// rounding differs slightly from the grouped kernels'): the bitwise and greedy-token comparisons use this set.
const NO_EXPERTS: LoraSpec = { ...ALL_TARGETS, targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'router'] };
const seqs = [
  [1, 5, 9, 13, 17, 21, 30, 41, 50, 60, 70],
  [2, 4, 6, 8, 10],
  [3, 7, 11, 15, 19, 23, 27, 31, 35, 40, 44, 48, 52],
];
const maxAbsDiff = (a: Float32Array, b: Float32Array): number => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

const logprobs = (m: GptOssModel): Float32Array => evalLogprobsOf(m, seqs);

/** The same random model on cpu and cuda, and adapters copied between them. */
function pair(seed: number, bStd: number, spec: LoraSpec = ALL_TARGETS) {
  const cpuW = GptOssWeights.random(cfg, 'cpu', { seed, biasStd: 0.02 });
  const cpuModel = new GptOssModel(cpuW);
  const gpuModel = new GptOssModel(cpuW.to(DEV));
  const aCpu = LoraAdapters.init(cfg, spec, 'cpu', { seed: seed + 1, bStd });
  const params = new Map<string, Tensor>();
  for (const [n, t] of aCpu.params) params.set(n, t.to(DEV));
  const aGpu = new LoraAdapters(cfg, spec, DEV, params);
  return { cpuModel, gpuModel, aCpu, aGpu, dispose: () => [cpuModel, gpuModel, aCpu, aGpu].forEach((x) => x.dispose()) };
}

test('cuda: fresh adapters (B = 0) compute exactly the base; adapted forward == merged weights; == the CPU', { skip }, () => {
  const z = pair(1, 0, NO_EXPERTS);
  const base = logprobs(z.gpuModel);
  z.gpuModel.lora = z.aGpu;
  assert.deepEqual(Array.from(logprobs(z.gpuModel)), Array.from(base));
  z.dispose();
  // With zero expert adapters the MoE's per-expert path gives the base up to its rounding.
  const ze = pair(1, 0);
  const baseE = logprobs(ze.gpuModel);
  ze.gpuModel.lora = ze.aGpu;
  assert.ok(maxAbsDiff(logprobs(ze.gpuModel), baseE) < 0.01, 'zero expert adapters ~ base');
  ze.dispose();

  for (const spec of [ALL_TARGETS, NO_EXPERTS]) {
    const p = pair(2, 0.05, spec);
    const baseG = logprobs(p.gpuModel);
    p.gpuModel.lora = p.aGpu;
    p.cpuModel.lora = p.aCpu;
    const adaptedG = logprobs(p.gpuModel);
    const adaptedC = logprobs(p.cpuModel);
    const params = new Map<string, Tensor>();
    for (const [n, t] of p.gpuModel.weights.params) params.set(n, t.clone());
    for (const [n, [l, t]] of p.aGpu.adaptedParams()) {
      params.get(n)!.dispose();
      params.set(n, p.aGpu.mergedParam(p.gpuModel.weights, l, t));
    }
    const merged = new GptOssModel(new GptOssWeights(cfg, DEV, params));
    const mergedG = logprobs(merged);
    const dBase = maxAbsDiff(adaptedG, baseG);
    assert.ok(dBase > 0.05, `adapters change the model (${dBase})`);
    assert.ok(maxAbsDiff(adaptedG, mergedG) < dBase / 10, `cuda adapted vs merged ${maxAbsDiff(adaptedG, mergedG)} (vs base ${dBase})`);
    assert.ok(maxAbsDiff(adaptedG, adaptedC) < dBase / 10, `cuda vs cpu adapted ${maxAbsDiff(adaptedG, adaptedC)}`);
    // The engine path (KV-cache generation) applies them too: greedy tokens equal the merged model's (bitwise-equal
    // MoE paths only: without expert adapters).
    if (spec === NO_EXPERTS) {
      const gen = (m: GptOssModel) => generate(m, [[1, 5, 9], [2, 4]], { maxNewTokens: 8, temperature: 0, seed: 1, stopTokens: [] }).map((r) => Array.from(r.tokens));
      assert.deepEqual(gen(p.gpuModel), gen(merged));
    }
    merged.dispose();
    p.dispose();
  }
});

/** The adapters' gradients of one training forward + backward over `seqs` with a fixed log-prob gradient. */
function adapterGrads(m: GptOssModel): Map<string, Tensor> {
  const b = packSequences(seqs, m.device);
  const r = m.forward(b, { train: true, releaseBatch: true });
  const T = r.logprobs.numel;
  r.logprobs.dispose();
  r.entropy.dispose();
  const c = Float32Array.from({ length: T }, (_, i) => (i % 3 === 0 ? 0 : Math.cos(i)));
  return m.backward(r.state!, Tensor.from(c, [T], { dtype: 'f32', device: m.device }));
}

test('cuda: adapter gradients match the CPU backward; no base gradient', { skip }, () => {
  const p = pair(3, 0.05);
  p.gpuModel.lora = p.aGpu;
  p.cpuModel.lora = p.aCpu;
  const grads = adapterGrads;
  const gG = grads(p.gpuModel), gC = grads(p.cpuModel);
  assert.deepEqual([...gG.keys()].sort(), p.aGpu.names().sort());
  for (const [n, t] of gC) {
    const want = t.toFloat32(), got = gG.get(n)!.toFloat32();
    const scale = want.reduce((m, v) => Math.max(m, Math.abs(v)), 1e-6);
    // bf16 activations on both sides with different summation orders: a few % of the largest entry.
    assert.ok(maxAbsDiff(got, want) < 0.05 * scale, `${n}: max |cuda - cpu| ${maxAbsDiff(got, want)} (max |g| ${scale})`);
  }
  p.dispose();
});

test('cuda: lm_head and embed_tokens adapters (f32 and bf16): zero init == base; == merged; == CPU; gradients == CPU; engine == trainer', { skip }, async () => {
  const HEAD_EMBED: LoraSpec = { rank: 8, alpha: 16, dropout: 0, targets: ['q_proj', 'lm_head', 'embed_tokens'] };
  const { cast } = await import('../../src/ops/elementwise.ts');
  const { createEngine } = await import('../../src/inference/engine.ts');
  for (const dtype of ['f32', 'bf16'] as const) {
    // PEFT's init (lm_head B zero, embedding A zero): the base bitwise.
    const z = pair(4, 0, HEAD_EMBED);
    const base = logprobs(z.gpuModel);
    const toDtype = (a: LoraAdapters) => new LoraAdapters(cfg, a.spec, DEV, new Map([...a.params].map(([n, t]) => [n, dtype === 'f32' ? t.clone() : cast(t, 'bf16')])));
    const z2 = toDtype(z.aGpu);
    z.gpuModel.lora = z2;
    assert.deepEqual(Array.from(logprobs(z.gpuModel)), Array.from(base), `${dtype}: zero init`);
    z2.dispose();
    z.dispose();

    const p = pair(5, 0.05, HEAD_EMBED);
    const aG = toDtype(p.aGpu);
    const baseG = logprobs(p.gpuModel);
    p.gpuModel.lora = aG;
    p.cpuModel.lora = p.aCpu;
    const adaptedG = logprobs(p.gpuModel), adaptedC = logprobs(p.cpuModel);
    const params = new Map<string, Tensor>();
    for (const [n, t] of p.gpuModel.weights.params) params.set(n, t.clone());
    for (const [n, [l, t]] of aG.adaptedParams()) {
      params.get(n)!.dispose();
      params.set(n, aG.mergedParam(p.gpuModel.weights, l, t));
    }
    const merged = new GptOssModel(new GptOssWeights(cfg, DEV, params));
    const dBase = maxAbsDiff(adaptedG, baseG);
    assert.ok(dBase > 0.05, `${dtype}: adapters change the model (${dBase})`);
    assert.ok(maxAbsDiff(adaptedG, logprobs(merged)) < dBase / 10, `${dtype}: cuda adapted vs merged`);
    assert.ok(maxAbsDiff(adaptedG, adaptedC) < dBase / 10, `${dtype}: cuda vs cpu adapted ${maxAbsDiff(adaptedG, adaptedC)}`);
    // Gradients of the lm_head / embedding adapters against the CPU's (the merged head's f32 gradient on CUDA).
    const grads = adapterGrads;
    const gG = grads(p.gpuModel), gC = grads(p.cpuModel);
    assert.deepEqual([...gG.keys()].sort(), aG.names().sort());
    for (const [n, t] of gC) {
      const want = t.toFloat32(), got = gG.get(n)!.toFloat32();
      const sc = want.reduce((m, v) => Math.max(m, Math.abs(v)), 1e-6);
      assert.ok(maxAbsDiff(got, want) < 0.05 * sc, `${dtype} ${n}: max |cuda - cpu| ${maxAbsDiff(got, want)} (max |g| ${sc})`);
    }
    // The engine's steps (model.embed / model.logits with the adapters): its log-probs equal the trainer forward's.
    const e = await createEngine(p.gpuModel, { blockSize: 16, numBlocks: 64 });
    const ps = [[1, 5, 9, 13, 17, 21, 30], [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22]];
    const out = await e.generate(ps.map((prompt, i) => ({ prompt, n: 2, maxNewTokens: 10, temperature: 1, seed: i, stopTokens: [] })));
    let worst = 0;
    out.forEach((r, i) => {
      for (const smp of r.samples) {
        const lp = p.gpuModel.tokenLogprobs([[...ps[i]!, ...smp.tokens]])[0]!.slice(ps[i]!.length - 1);
        smp.logprobs.forEach((x, t) => (worst = Math.max(worst, Math.abs(x - lp[t]!))));
      }
    });
    assert.ok(worst < 2e-2, `${dtype}: max |engine - trainer| ${worst}`);
    e.dispose();
    merged.dispose();
    aG.dispose();
    p.dispose();
  }
});

test('cuda: moeBackward weightGrads false gives the same dx at each strategy and no expert weight gradients', { skip }, () => {
  const H = 256, I = 256, E = 32, k = 4;
  let s = 11;
  const rnd = (n: number, sd: number) => Float32Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648 - 0.5) * 2 * sd);
  const bf = (shape: number[], sd: number) => Tensor.from(rnd(shape.reduce((a, b) => a * b, 1), sd), shape, { dtype: 'bf16', device: DEV });
  const w = { routerW: bf([E, H], 0.3), routerB: bf([E], 0.1), gateUpW: bf([E, H, 2 * I], 0.05), gateUpB: bf([E, 2 * I], 0.1), downW: bf([E, I, H], 0.05), downB: bf([E, H], 0.1) };
  // T 16: grouped kernels; T 2048: cuBLAS (slabs or per expert, as the routing falls).
  for (const T of [16, 2048]) {
    const x = bf([T, H], 1);
    const dy = Tensor.from(rnd(T * H, 1), [T, H], { dtype: 'f32', device: DEV });
    const f = moeForward(x, w, { topK: k });
    const full = moeBackward(dy, f.ctx);
    const frozen = moeBackward(dy, f.ctx, undefined, undefined, { weightGrads: false });
    assert.deepEqual(Array.from(frozen.dx.toFloat32()), Array.from(full.dx.toFloat32()), `T ${T}: dx`);
    assert.deepEqual(Array.from(frozen.dRouterW.toFloat32()), Array.from(full.dRouterW.toFloat32()), `T ${T}: dRouterW`);
    assert.equal((frozen as { dGateUpW?: Tensor }).dGateUpW, undefined);
    assert.equal((frozen as { dDownW?: Tensor }).dDownW, undefined);
    f.ctx.dispose();
  }
  for (const t of Object.values(w)) t.dispose();
});

test('cuda: expert adapters in the MoE op match the CPU op (forward, dx, adapter gradients) at decode and training sizes', { skip }, () => {
  const H = 64, I = 64, E = 8, k = 2, r = 4, scale = 2;
  let s = 5;
  const rnd = (n: number, sd: number) => Float32Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648 - 0.5) * 2 * sd);
  const both = (shape: number[], sd: number, dtype: 'bf16' | 'f32') => {
    const v = rnd(shape.reduce((a, b) => a * b, 1), sd);
    return { c: Tensor.from(v, shape, { dtype, device: 'cpu' }), g: Tensor.from(v, shape, { dtype, device: DEV }) };
  };
  const wb = { routerW: both([E, H], 0.3, 'bf16'), routerB: both([E], 0.1, 'bf16'), gateUpW: both([E, H, 2 * I], 0.1, 'bf16'), gateUpB: both([E, 2 * I], 0.1, 'bf16'), downW: both([E, I, H], 0.1, 'bf16'), downB: both([E, H], 0.1, 'bf16') };
  const lb = { gateUpA: both([E, H, r], 0.2, 'f32'), gateUpB: both([E, r, 2 * I], 0.2, 'f32'), downA: both([E, I, r], 0.2, 'f32'), downB: both([E, r, H], 0.2, 'f32') };
  const pick = (side: 'c' | 'g') => ({
    w: Object.fromEntries(Object.entries(wb).map(([n, v]) => [n, v[side]])) as unknown as Parameters<typeof moeForward>[1],
    l: { gateUpA: lb.gateUpA[side], gateUpB: lb.gateUpB[side], downA: lb.downA[side], downB: lb.downB[side], scale },
  });
  const rel = (got: Float32Array, want: Float32Array) => maxAbsDiff(got, want) / want.reduce((m, v) => Math.max(m, Math.abs(v)), 1e-6);
  for (const T of [8, 1024]) {
    const x = both([T, H], 1, 'bf16');
    const dy = both([T, H], 1, 'f32');
    const C = pick('c'), G = pick('g');
    const fc = moeForward(x.c, C.w, { topK: k, lora: C.l });
    const fg = moeForward(x.g, G.w, { topK: k, lora: G.l });
    const fb = moeForward(x.c, C.w, { topK: k });
    const yc = fc.y.toFloat32(), yg = fg.y.toFloat32();
    assert.ok(maxAbsDiff(yc, fb.y.toFloat32()) > 0.05, 'the adapters change the output');
    assert.ok(rel(yg, yc) < 0.02, `T ${T}: y cuda vs cpu rel ${rel(yg, yc)}`);
    const gc = moeBackward(dy.c, fc.ctx, undefined, undefined, { weightGrads: false });
    const gg = moeBackward(dy.g, fg.ctx, undefined, undefined, { weightGrads: false });
    assert.ok(rel(gg.dx.toFloat32(), gc.dx.toFloat32()) < 0.03, `T ${T}: dx rel ${rel(gg.dx.toFloat32(), gc.dx.toFloat32())}`);
    for (const n of ['dLoraGateUpA', 'dLoraGateUpB', 'dLoraDownA', 'dLoraDownB'] as const) {
      const want = gc[n]!.toFloat32(), got = gg[n]!.toFloat32();
      assert.ok(rel(got, want) < 0.05, `T ${T}: ${n} rel ${rel(got, want)}`);
    }
    // The full backward with adapters also gives the base weight gradients (accumulated in place on this path).
    const full = moeBackward(dy.g, fg.ctx);
    assert.deepEqual(Array.from(full.dx.toFloat32()), Array.from(gg.dx.toFloat32()));
    [fc, fg, fb].forEach((f) => f.ctx.dispose());
  }
});

test('cuda: the LM head backward without dLmHead gives the same dHidden', { skip }, () => {
  const T = 37, H = 64, V = 1000;
  const h = Tensor.from(Float32Array.from({ length: T * H }, (_, i) => Math.sin(i)), [T, H], { dtype: 'bf16', device: DEV });
  const lm = Tensor.from(Float32Array.from({ length: V * H }, (_, i) => 0.05 * Math.cos(i * 0.37)), [V, H], { dtype: 'bf16', device: DEV });
  const tg = Tensor.from(Int32Array.from({ length: T }, (_, i) => (i * 31) % V), [T], { device: DEV });
  const f = tokenLogprobs(h, lm, tg);
  const d = Tensor.from(Float32Array.from({ length: T }, (_, i) => (i % 2 ? -1 : 0.5)), [T], { dtype: 'f32', device: DEV });
  const full = tokenLogprobsBackward(h, lm, tg, f.lse, d);
  const only = tokenLogprobsBackwardHidden(h, lm, tg, f.lse, d);
  assert.deepEqual(Array.from(only.toFloat32()), Array.from(full.dHidden.toFloat32()));
});

test('cuda: a gpt-oss-20b-shaped LoRA step (2 layers, 4096 tokens) allocates no base gradient', { skip }, () => {
  const c20 = presetConfig('gpt-oss-20b', { numLayers: 2 });
  emptyCache(DEV);
  const m = new GptOssModel(GptOssWeights.random(c20, DEV, { seed: 1, fast: true, biasStd: 0.02 }), { recompute: true });
  const a = LoraAdapters.init(c20, { rank: 16, alpha: 32, dropout: 0, targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'router'] }, DEV, { seed: 2, bStd: 0.01 });
  m.lora = a;
  synchronize(DEV);
  const weightsBytes = memoryStats(DEV).allocated;
  resetPeakMemory(DEV);
  const T = 4096;
  const b = packSequences([Array.from({ length: T }, (_, i) => (i * 7919) % c20.vocabSize)], DEV);
  const r = m.forward(b, { train: true, releaseBatch: true });
  r.logprobs.dispose();
  r.entropy.dispose();
  const g = m.backward(r.state!, Tensor.from(new Float32Array(T).fill(-1 / T), [T], { dtype: 'f32', device: DEV }));
  synchronize(DEV);
  const over = memoryStats(DEV).peakAllocated - weightsBytes;
  // Full fine-tuning would add the f32 LM head and embedding gradients (2 x 2.3 GB) and 3.2 GB of expert gradients
  // per layer; LoRA's peak over the weights is the step's activations.
  assert.ok(over < 5e9, `peak over the weights ${(over / 1e9).toFixed(2)} GB`);
  assert.deepEqual([...g.keys()].sort(), a.names().sort());
  for (const t of g.values()) t.dispose();
  console.log(`gpt-oss-20b shape, 2 layers, LoRA rank 16: peak ${(over / 1e9).toFixed(2)} GB over ${(weightsBytes / 1e9).toFixed(2)} GB of weights at T ${T}`);
  a.dispose();
  m.dispose();
});

test('cuda: dropoutForward equals the CPU op bitwise (bf16 and f32, odd sizes, several seeds and salts)', { skip }, () => {
  for (const shape of [[7], [3, 1001], [512, 2880], [4096, 64, 3]]) {
    const n = shape.reduce((a, b) => a * b, 1);
    const x = Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37) * 3 + 0.01);
    for (const dtype of ['f32', 'bf16'] as const) {
      const xc = Tensor.from(x, shape, { dtype, device: 'cpu' });
      const xg = xc.to(DEV);
      for (const [p, seed, salt] of [[0.1, 0, 0], [0.3, 123456789, 17], [0.5, 2 ** 52 + 3, 95], [0, 5, 5]] as const) {
        const yc = dropoutForward(xc, p, seed, salt), yg = dropoutForward(xg, p, seed, salt);
        // Bitwise: the same raw bytes (mask and rounding).
        assert.deepEqual(new Uint8Array(yg.toBuffer()), new Uint8Array(yc.toBuffer()), `${dtype} [${shape}] p ${p} seed ${seed} salt ${salt}`);
        yc.dispose();
        yg.dispose();
      }
      xc.dispose();
      xg.dispose();
    }
  }
});

test('cuda: a LoRA training step with dropout equals the CPU one (same masks); recompute bitwise; LoraPolicy on CUDA', { skip }, async () => {
  const DROP: LoraSpec = { rank: 8, alpha: 16, dropout: 0.25, targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj'] };
  {
    const p = pair(7, 0.05, DROP);
    p.gpuModel.lora = p.aGpu;
    p.cpuModel.lora = p.aCpu;
    const step = (m: GptOssModel, seed: number) => {
      const b = packSequences(seqs, m.device);
      const r = m.forward(b, { train: true, releaseBatch: true, dropoutSeed: seed });
      const lp = r.logprobs.toFloat32();
      const T = r.logprobs.numel;
      r.logprobs.dispose();
      r.entropy.dispose();
      const c = Float32Array.from({ length: T }, (_, i) => (i % 3 === 0 ? 0 : Math.cos(i)));
      const g = m.backward(r.state!, Tensor.from(c, [T], { dtype: 'f32', device: m.device }));
      const out = new Map([...g].map(([n, t]) => [n, t.toFloat32()] as const));
      g.forEach((t) => t.dispose());
      return { lp, g: out };
    };
    const gG = step(p.gpuModel, 11), gC = step(p.cpuModel, 11), gOther = step(p.cpuModel, 12);
    assert.deepEqual([...gG.g.keys()].sort(), p.aGpu.names().sort());
    let nearSame = 0, nearOther = 0;
    for (const [n, want] of gC.g) {
      const got = gG.g.get(n)!;
      const scale = want.reduce((m, v) => Math.max(m, Math.abs(v)), 1e-6);
      // As the no-dropout test: bf16 activations with different summation orders, a few % of the largest entry.
      assert.ok(maxAbsDiff(got, want) < 0.05 * scale, `${n}: max |cuda - cpu| ${maxAbsDiff(got, want)} (max |g| ${scale})`);
      nearSame += maxAbsDiff(got, want);
      nearOther += maxAbsDiff(got, gOther.g.get(n)!);
    }
    // The masks are the CPU's: another seed's CPU gradients are much farther away.
    assert.ok(nearSame < nearOther / 5, `cuda vs cpu same seed ${nearSame}, other seed ${nearOther}`);
    assert.ok(maxAbsDiff(gG.lp, gC.lp) < 0.05, `log-probs cuda vs cpu ${maxAbsDiff(gG.lp, gC.lp)}`);
    // The recompute regenerates the masks: bitwise the same gradients (deterministic attention backward).
    p.gpuModel.deterministic = true;
    const det = step(p.gpuModel, 11);
    p.gpuModel.recompute = true;
    const rec = step(p.gpuModel, 11);
    for (const [n, v] of det.g) assert.deepEqual(rec.g.get(n), v, `recompute ${n}`);
    p.gpuModel.recompute = false;
    p.dispose();
    // LoraPolicy on CUDA (bf16 adapters, fp32 masters) with dropout: two steps against the CPU policy's (f32).
    const batch = { sequences: seqs.map((q) => Int32Array.from(q)), promptLens: [3, 1, 5] };
    const hyper = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 };
    const mkPolicy = (dev: string) => {
      const w = GptOssWeights.random(cfg, 'cpu', { seed: 9, biasStd: 0.02 });
      const model = new GptOssModel(dev === 'cpu' ? w : w.to(DEV));
      if (dev !== 'cpu') w.dispose();
      return new LoraPolicy(model, LoraAdapters.init(cfg, DROP, dev, { seed: 10, bStd: 0.05, dtype: dev === 'cpu' ? 'f32' : 'bf16' }), { dropoutSeed: 3 });
    };
    const pc = mkPolicy('cpu'), pg = mkPolicy(DEV);
    const init = new Map([...pc.adapters.params].map(([n, t]) => [n, t.toFloat32()] as const));
    const initG = new Map([...pg.adapters.params].map(([n, t]) => [n, t.toFloat32()] as const)); // bf16-rounded
    for (const q of [pc, pg]) {
      for (const s of [1, 2]) {
        q.zeroGrad();
        const f = await q.forward(batch);
        await f.backward(f.logprobs.map((l) => l.map(() => -1)));
        q.optimizerStep(hyper, s);
      }
    }
    // AdamW's first steps move each entry by about ±lr: the updates (after - init; the CUDA side's bf16 adapters
    // rounded, against its own bf16 init) must agree in direction: correlation over every adapter entry > 0.9.
    const dc: number[] = [], dg: number[] = [];
    for (const [n, t] of pc.adapters.params) {
      const i0 = init.get(n)!, g0 = initG.get(n)!, want = t.toFloat32(), got = pg.adapters.params.get(n)!.toFloat32();
      for (let i = 0; i < want.length; i++) {
        dc.push(want[i]! - i0[i]!);
        dg.push(got[i]! - g0[i]!);
      }
    }
    const corr = (a: number[], b: number[]) => {
      const ma = a.reduce((x, y) => x + y, 0) / a.length, mb = b.reduce((x, y) => x + y, 0) / b.length;
      let c = 0, va = 0, vb = 0;
      for (let i = 0; i < a.length; i++) (c += (a[i]! - ma) * (b[i]! - mb), va += (a[i]! - ma) ** 2, vb += (b[i]! - mb) ** 2);
      return c / Math.sqrt(va * vb);
    };
    assert.ok(corr(dc, dg) > 0.9, `LoraPolicy updates cuda vs cpu: correlation ${corr(dc, dg)}`);
    pc.dispose();
    pg.dispose();
  }
});
