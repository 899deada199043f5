// LoRA files and the LoRA policy: the PEFT layout (adapter_config.json + adapter_model.safetensors, PEFT's tensor
// names and shapes for GPT-OSS) round trip; the merged export loads with loadModel and gives the adapted model's
// log-probs; LoraPolicy trains the adapters only (AdamW), its KL reference is the base (no copy), and its
// checkpoint (adapters + optimizer state) resumes training identically.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomModel, presetConfig, loadModel, LoraAdapters, LORA_TARGETS, saveMergedCheckpoint, Checkpoint, type LoraSpec } from '../../src/model/index.ts';
import { LoraPolicy } from '../../src/trainer/lora-policy.ts';
import { Tensor } from '../../src/tensor.ts';
import type { SequenceBatch } from '../../src/trainer/policy.ts';

const cfg = presetConfig('gpt-oss-tiny-256');
const ALL: LoraSpec = { rank: 4, alpha: 8, dropout: 0, targets: LORA_TARGETS };
const batch: SequenceBatch = {
  sequences: [Int32Array.from([1, 5, 9, 13, 17, 21]), Int32Array.from([2, 4, 6, 8]), Int32Array.from([3, 7, 11, 15, 19, 23, 27, 31, 35])],
  promptLens: [3, 1, 5],
};
const hyper = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 };

test('PEFT layout: names, shapes and config as PEFT writes them for GPT-OSS; load gives the same adapters', () => {
  const dir = mkdtempSync(join(tmpdir(), 'lora-peft-'));
  const a = LoraAdapters.init(cfg, ALL, 'cpu', { seed: 1, bStd: 0.1 });
  a.savePeft(dir, { baseModel: 'unsloth/gpt-oss-20b-BF16' });
  const conf = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
  assert.equal(conf.peft_type, 'LORA');
  assert.equal(conf.r, 4);
  assert.equal(conf.lora_alpha, 8);
  assert.deepEqual(conf.target_modules, ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'lm_head', 'embed_tokens']);
  assert.deepEqual(conf.target_parameters, ['mlp.experts.gate_up_proj', 'mlp.experts.down_proj', 'mlp.router.weight']);
  const ck = Checkpoint.open(join(dir, 'adapter_model.safetensors'));
  const E = cfg.numExperts, H = cfg.hiddenSize, I = cfg.intermediateSize, r = 4;
  const p = 'base_model.model.model.layers.1';
  const want: Record<string, number[]> = {
    [`${p}.self_attn.q_proj.lora_A.weight`]: [r, H],
    [`${p}.self_attn.q_proj.lora_B.weight`]: [cfg.numHeads * cfg.headDim, r],
    [`${p}.self_attn.o_proj.lora_A.weight`]: [r, cfg.numHeads * cfg.headDim],
    [`${p}.mlp.router.lora_A.weight`]: [r, H],
    [`${p}.mlp.router.lora_B.weight`]: [E, r],
    // gate_up_proj (listed first in target_parameters) is the inner ParamWrapper: experts.base_layer.*
    [`${p}.mlp.experts.base_layer.lora_A.weight`]: [r * E, H],
    [`${p}.mlp.experts.base_layer.lora_B.weight`]: [2 * I, r * E],
    [`${p}.mlp.experts.lora_A.weight`]: [r * E, I],
    [`${p}.mlp.experts.lora_B.weight`]: [H, r * E],
    // lm_head: nn.Linear LoRA; embed_tokens: PEFT's Embedding LoRA (plain Parameters lora_embedding_A [r, V], _B [H, r]).
    'base_model.model.lm_head.lora_A.weight': [r, H],
    'base_model.model.lm_head.lora_B.weight': [cfg.vocabSize, r],
    'base_model.model.model.embed_tokens.lora_embedding_A': [r, cfg.vocabSize],
    'base_model.model.model.embed_tokens.lora_embedding_B': [H, r],
  };
  for (const [n, sh] of Object.entries(want)) assert.deepEqual(ck.shapeOf(n), sh, n);
  assert.equal(ck.names().length, (cfg.numLayers * (LORA_TARGETS.length - 2) + 2) * 2);
  // PEFT's Embedding delta for token v: F.embedding(v, lora_embedding_A.T) @ lora_embedding_B.T, i.e. row v of
  // (B·A_peft)ᵀ, equals ours (A[v] · Bᵀ).
  {
    const ea = ck.load('base_model.model.model.embed_tokens.lora_embedding_A', { device: 'cpu', dtype: 'f32' }).toFloat32();
    const eb = ck.load('base_model.model.model.embed_tokens.lora_embedding_B', { device: 'cpu', dtype: 'f32' }).toFloat32();
    const oa = a.embed!.A.toFloat32(), ob = a.embed!.B.toFloat32();
    const V = cfg.vocabSize;
    for (const [v, h] of [[0, 0], [17, 5], [V - 1, H - 1], [100, 31]] as const) {
      let peft = 0, mine = 0;
      for (let j = 0; j < r; j++) {
        peft += ea[j * V + v]! * eb[h * r + j]!;
        mine += oa[v * r + j]! * ob[h * r + j]!;
      }
      assert.ok(Math.abs(peft - mine) < 1e-6, `embedding [${v}, ${h}]: PEFT ${peft} vs ours ${mine}`);
    }
  }
  // PEFT's expert delta: einsum("o r e, e r i -> e i o", B.reshape(out, r, E), A.reshape(E, r, in)) · scale
  // equals ours (scale · A[e] · B[e]) for gate_up of layer 1.
  const pa = ck.load(`${p}.mlp.experts.base_layer.lora_A.weight`, { device: 'cpu', dtype: 'f32' }).toFloat32();
  const pb = ck.load(`${p}.mlp.experts.base_layer.lora_B.weight`, { device: 'cpu', dtype: 'f32' }).toFloat32();
  const ours = a.layers[1]!.gateUp!;
  const A = ours.A.toFloat32(), B = ours.B.toFloat32();
  for (const [e, i, o] of [[0, 0, 0], [3, 17, 40], [2, 63, 63], [1, 5, 9]] as const) {
    let peft = 0, mine = 0;
    for (let j = 0; j < r; j++) {
      peft += pb[o * r * E + j * E + e]! * pa[(e * r + j) * H + i]!;
      mine += A[(e * H + i) * r + j]! * B[(e * r + j) * 2 * I + o]!;
    }
    assert.ok(Math.abs(peft - mine) < 1e-6, `expert ${e} [${i}, ${o}]: PEFT ${peft} vs ours ${mine}`);
  }
  ck.close();
  const b = LoraAdapters.loadPeft(dir, cfg, 'cpu');
  assert.deepEqual(b.spec, ALL);
  for (const [n, t] of a.params) assert.deepEqual(Array.from(b.params.get(n)!.toFloat32()), Array.from(t.toFloat32()), n);
  // A single expert target is the outer (only) wrapper: experts.lora_*.
  const one = LoraAdapters.init(cfg, { ...ALL, targets: ['down_proj'] }, 'cpu', { seed: 2 });
  const d1 = mkdtempSync(join(tmpdir(), 'lora-peft1-'));
  one.savePeft(d1);
  const ck1 = Checkpoint.open(join(d1, 'adapter_model.safetensors'));
  assert.deepEqual(ck1.shapeOf('base_model.model.model.layers.0.mlp.experts.lora_A.weight'), [r * E, I]);
  ck1.close();
  assert.throws(() => LoraAdapters.loadPeft(d1, presetConfig('gpt-oss-tiny-256', { intermediateSize: 16 }), 'cpu'), /shape/);
  [a, b, one].forEach((x) => x.dispose());
});

test('the merged export loads with loadModel and gives the adapted model\'s log-probs', async () => {
  const m = randomModel(cfg, { device: 'cpu', seed: 3, biasStd: 0.02 });
  const a = LoraAdapters.init(cfg, ALL, 'cpu', { seed: 4, bStd: 0.1 });
  const seqs = batch.sequences.map((s) => Array.from(s));
  const base = m.tokenLogprobs(seqs);
  m.lora = a;
  const adapted = m.tokenLogprobs(seqs);
  const dir = mkdtempSync(join(tmpdir(), 'lora-merged-'));
  saveMergedCheckpoint(m.weights, a, dir);
  assert.ok(existsSync(join(dir, 'config.json')));
  const merged = await loadModel(dir, { device: 'cpu' });
  assert.equal(merged.lora, null);
  const got = merged.tokenLogprobs(seqs);
  let dMerged = 0, dBase = 0;
  got.forEach((g, i) => g.forEach((v, j) => {
    dMerged = Math.max(dMerged, Math.abs(v - adapted[i]![j]!));
    dBase = Math.max(dBase, Math.abs(base[i]![j]! - adapted[i]![j]!));
  }));
  assert.ok(dBase > 0.05 && dMerged < 0.02 && dMerged < dBase / 10, `merged export vs adapted ${dMerged} (adapters moved the log-probs by ${dBase})`);
  // The base itself is untouched by the export.
  m.lora = null;
  assert.deepEqual(m.tokenLogprobs(seqs).map((x) => Array.from(x)), base.map((x) => Array.from(x)));
  merged.dispose();
  a.dispose();
  m.dispose();
});

test('LoraPolicy: AdamW moves the adapters only; the KL reference is the base; checkpoints resume identically', async () => {
  const mk = () => new LoraPolicy(randomModel(cfg, { device: 'cpu', seed: 5 }), LoraAdapters.init(cfg, ALL, 'cpu', { seed: 6 }));
  const p = mk();
  const baseBefore = [...p.model.weights.params].map(([n, t]) => [n, Array.from(t.toFloat32())] as const);
  const ref = await p.frozenCopy();
  const lp0 = (await p.logprobs(batch)).logprobs.map((x) => Array.from(x));
  assert.deepEqual((await ref.logprobs(batch)).logprobs.map((x) => Array.from(x)), lp0); // B = 0: policy == base
  const nll = (lp: Float32Array[]) => -lp.reduce((acc, l) => acc + l.reduce((x, y) => x + y, 0), 0);
  const train = async (q: LoraPolicy, steps: number[]) => {
    for (const s of steps) {
      q.zeroGrad();
      const f = await q.forward(batch);
      await f.backward(f.logprobs.map((l) => l.map(() => -1)));
      const clip = q.clipGradNorm(1.0);
      assert.ok(clip.finite && clip.norm > 0);
      q.optimizerStep(hyper, s);
    }
  };
  await train(p, [1, 2, 3]);
  const after = nll((await p.logprobs(batch)).logprobs);
  assert.ok(after < nll((await ref.logprobs(batch)).logprobs) - 0.3, `NLL did not fall: ${after}`);
  // The base did not move; the reference still gives the base's log-probs.
  for (const [n, v] of baseBefore) assert.deepEqual(Array.from(p.model.weights.params.get(n)!.toFloat32()), v, n);
  assert.deepEqual((await ref.logprobs(batch)).logprobs.map((x) => Array.from(x)), lp0);
  assert.equal(p.numParameters(), p.adapters.numParameters());
  // Save after 3 steps, train 2 more; a fresh policy loading the save and training the same 2 steps matches.
  const dir = mkdtempSync(join(tmpdir(), 'lora-pol-'));
  await p.save(dir);
  assert.ok(existsSync(join(dir, 'adapter_model.safetensors')) && existsSync(join(dir, 'optimizer', 'optimizer.json')));
  await train(p, [4, 5]);
  const q = mk();
  await q.load(dir);
  assert.equal(q.optimizerSteps, 3);
  await train(q, [4, 5]);
  for (const [n, t] of p.adapters.params) assert.deepEqual(Array.from(q.adapters.params.get(n)!.toFloat32()), Array.from(t.toFloat32()), n);
  // A checkpoint of another rank is refused with both specs named.
  const other = new LoraPolicy(randomModel(cfg, { device: 'cpu', seed: 5 }), LoraAdapters.init(cfg, { ...ALL, rank: 2 }, 'cpu'));
  await assert.rejects(other.load(dir), /rank 4.*this run has rank 2/);
  // withBase trains every base weight (the SFT warm start) and reattaches the adapters.
  await p.withBase(async (b) => {
    assert.equal(p.model.lora, null);
    b.zeroGrad();
    const f = await b.forward(batch);
    await f.backward(f.logprobs.map((l) => l.map(() => -1)));
    b.optimizerStep(hyper, 1);
  });
  assert.equal(p.model.lora, p.adapters);
  assert.notDeepEqual(Array.from(p.model.weights.params.get('lm_head.weight')!.toFloat32()), baseBefore.find(([n]) => n === 'lm_head.weight')![1]);
  ref.dispose();
  [p, q, other].forEach((x) => x.dispose());
});

test('gptoss merge-lora: base directory + PEFT adapter -> a checkpoint loadModel reads (the adapted log-probs)', async () => {
  const { spawnSync } = await import('node:child_process');
  const m = randomModel(cfg, { device: 'cpu', seed: 7, biasStd: 0.02 });
  const a = LoraAdapters.init(cfg, ALL, 'cpu', { seed: 8, bStd: 0.1 });
  const baseDir = mkdtempSync(join(tmpdir(), 'lora-base-'));
  const adDir = mkdtempSync(join(tmpdir(), 'lora-ad-'));
  const out = join(mkdtempSync(join(tmpdir(), 'lora-out-')), 'merged');
  m.weights.save(baseDir);
  a.savePeft(adDir);
  const seqs = batch.sequences.map((s) => Array.from(s));
  m.lora = a;
  const adapted = m.tokenLogprobs(seqs);
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'merge-lora', '--base', baseDir, '--adapter', adDir, '--out', out], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const merged = await loadModel(out, { device: 'cpu' });
  const got = merged.tokenLogprobs(seqs);
  const d = Math.max(...got.flatMap((g, i) => Array.from(g, (v, j) => Math.abs(v - adapted[i]![j]!))));
  assert.ok(d < 0.02, `merged checkpoint vs adapted model ${d}`);
  const bad = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'merge-lora', '--base', baseDir, '--adapter', baseDir, '--out', out], { encoding: 'utf8' });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /adapter_config\.json not found/);
  merged.dispose();
  a.dispose();
  m.dispose();
});

test('bf16 adapters (the GPU default): fp32 masters in the policy, the PEFT file holds the masters, resume is identical', async () => {
  const mk = () => new LoraPolicy(randomModel(cfg, { device: 'cpu', seed: 9 }), LoraAdapters.init(cfg, ALL, 'cpu', { seed: 10, dtype: 'bf16' }));
  const p = mk();
  assert.equal(p.adapters.dtype, 'bf16');
  const train = async (q: LoraPolicy, steps: number[]) => {
    for (const s of steps) {
      q.zeroGrad();
      const f = await q.forward(batch);
      await f.backward(f.logprobs.map((l) => l.map(() => -1)));
      q.clipGradNorm(1.0);
      q.optimizerStep({ ...hyper, lr: 1e-3 }, s);
    }
  };
  await train(p, [1, 2]);
  const dir = mkdtempSync(join(tmpdir(), 'lora-bf16-'));
  await p.save(dir);
  // The file's values are the fp32 masters: not all on the bf16 grid, and they round to the adapters.
  const file = LoraAdapters.loadPeft(dir, cfg, 'cpu');
  const name = 'model.layers.1.self_attn.q_proj.lora_B';
  const master = file.params.get(name)!.toFloat32();
  const adapter = p.adapters.params.get(name)!.toFloat32();
  assert.ok(master.some((v, i) => v !== adapter[i]), 'masters carry more than bf16');
  const rounded = Tensor.from(master, [master.length], { dtype: 'bf16' }).toFloat32();
  assert.deepEqual(Array.from(rounded), Array.from(adapter));
  file.dispose();
  await train(p, [3, 4]);
  const q = mk();
  await q.load(dir);
  await train(q, [3, 4]);
  for (const [n, t] of p.adapters.params) assert.deepEqual(Array.from(q.adapters.params.get(n)!.toFloat32()), Array.from(t.toFloat32()), n);
  // The same adapter values in f32 compute the same log-probs within bf16 noise.
  const f32 = LoraAdapters.init(cfg, ALL, 'cpu', { seed: 10 });
  f32.copyFrom(p.adapters);
  const lpBf = (await p.logprobs(batch)).logprobs;
  p.model.lora = f32;
  const lpF = (await p.logprobs(batch)).logprobs;
  p.model.lora = p.adapters;
  const d = Math.max(...lpBf.flatMap((l, i) => Array.from(l, (v, j) => Math.abs(v - lpF[i]![j]!))));
  assert.ok(d < 0.05, `bf16 vs f32 adapter compute ${d}`);
  f32.dispose();
  [p, q].forEach((x) => x.dispose());
});

test('LoRA+ (loraplusLrRatio): the B factors step with lr x ratio, the A factors with lr', async () => {
  const step = async (ratio: number) => {
    const p = new LoraPolicy(randomModel(cfg, { device: 'cpu', seed: 11 }), LoraAdapters.init(cfg, ALL, 'cpu', { seed: 12, bStd: 0.05 }), { loraplusLrRatio: ratio });
    const before = new Map([...p.adapters.params].map(([n, t]) => [n, t.toFloat32()]));
    p.zeroGrad();
    const f = await p.forward(batch);
    await f.backward(f.logprobs.map((l) => l.map(() => -1)));
    p.optimizerStep({ ...hyper, lr: 1e-3 }, 1);
    // Adam's first step moves every entry with a gradient by lr (m / sqrt(v) = ±1): the largest move is the lr.
    const moved = (suffix: string) =>
      Math.max(...[...p.adapters.params].filter(([n]) => n.endsWith(suffix)).map(([n, t]) => t.toFloat32().reduce((m, v, i) => Math.max(m, Math.abs(v - before.get(n)![i]!)), 0)));
    const r = { a: moved('.lora_A'), b: moved('.lora_B') };
    p.dispose();
    return r;
  };
  const plain = await step(1), plus = await step(16);
  assert.ok(Math.abs(plain.a - 1e-3) < 1e-6 && Math.abs(plain.b - 1e-3) < 1e-6, JSON.stringify(plain));
  assert.ok(Math.abs(plus.a - 1e-3) < 1e-6 && Math.abs(plus.b - 16e-3) < 1e-5, JSON.stringify(plus));
  assert.throws(() => new LoraPolicy(randomModel(cfg, { device: 'cpu' }), LoraAdapters.init(cfg, ALL, 'cpu'), { loraplusLrRatio: 0 }), /loraplusLrRatio must be positive/);
});
