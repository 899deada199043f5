// Entropy and temperature against the fixture's logits; an MXFP4 checkpoint (quantised from the fixture) loading
// end to end through loadModel with quantization_config.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel } from '../../src/model/index.ts';
import { GptOssModel } from '../../src/model/gptoss.ts';
import { packSequences, disposeBatch } from '../../src/model/batch.ts';
import { presetConfig } from '../../src/model/config.ts';
import { Checkpoint, saveCheckpoint, tensorToSave, FP4_E2M1_VALUES, type TensorToSave } from '../../src/model/safetensors.ts';
import { FIXTURE_DIR } from '../helpers/fixtures.ts';
import { Tensor } from '../../src/tensor.ts';
import { embeddingForward } from '../../src/ops/embedding.ts';

test('entropy and temperature-scaled log-probs match the fixture logits', async () => {
  const model = await loadModel(FIXTURE_DIR, { device: 'cpu' });
  const ref = Checkpoint.open(join(FIXTURE_DIR, 'reference.safetensors'));
  const ids = Array.from(ref.load('input_ids', { device: 'cpu', dtype: 'f32' }).toFloat32(), Math.round);
  const logits = ref.load('logits', { device: 'cpu', dtype: 'f32' }).toFloat32();
  const V = model.config.vocabSize;
  const seqs = [ids.slice(0, 40), ids.slice(40, 80)];
  for (const temperature of [1, 0.7, 2]) {
    const b = packSequences(seqs, 'cpu');
    const r = model.forward(b, { temperature });
    const lp = r.logprobs.toFloat32();
    const ent = r.entropy.toFloat32();
    let errLp = 0;
    let errEnt = 0;
    for (let t = 0; t < 80; t++) {
      if (t % 40 === 39) continue;
      const row = Array.from(logits.subarray(t * V, (t + 1) * V), (z) => z / temperature);
      const m = Math.max(...row);
      const lse = m + Math.log(row.reduce((s, z) => s + Math.exp(z - m), 0));
      const refLp = row[ids[t + 1]!]! - lse;
      const refEnt = -row.reduce((s, z) => s + Math.exp(z - lse) * (z - lse), 0);
      errLp = Math.max(errLp, Math.abs(lp[t]! - refLp));
      errEnt = Math.max(errEnt, Math.abs(ent[t]! - refEnt));
    }
    // bf16 activations: logits within ~1e-1 absolute of the fp32 truth (see the parity test), divided by T.
    assert.ok(errLp < 0.15 / Math.min(1, temperature), `T=${temperature}: log-prob error ${errLp}`);
    assert.ok(errEnt < 0.1, `T=${temperature}: entropy error ${errEnt}`);
    disposeBatch(b);
    r.logprobs.dispose();
    r.entropy.dispose();
  }
  ref.close();
  model.dispose();
});

/** Nearest-code MXFP4 quantisation of [E, in, out] f32 weights to blocks [E, out, in/32, 16] and scales [E, out, in/32]. */
function quantiseMxfp4(w: Float32Array, E: number, inDim: number, outDim: number): { blocks: Uint8Array; scales: Uint8Array; deq: Float32Array } {
  const G = inDim / 32;
  const blocks = new Uint8Array(E * outDim * G * 16);
  const scales = new Uint8Array(E * outDim * G);
  const deq = new Float32Array(w.length);
  for (let e = 0; e < E; e++) {
    for (let o = 0; o < outDim; o++) {
      for (let g = 0; g < G; g++) {
        let amax = 0;
        for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(w[(e * inDim + g * 32 + j) * outDim + o]!));
        const exp = amax > 0 ? Math.ceil(Math.log2(amax / 6)) : -127;
        const s = Math.max(0, Math.min(254, exp + 127));
        scales[(e * outDim + o) * G + g] = s;
        for (let j = 0; j < 32; j++) {
          const i = (e * inDim + g * 32 + j) * outDim + o;
          const x = w[i]! / 2 ** (s - 127);
          let best = 0;
          for (let c = 1; c < 16; c++) if (Math.abs(FP4_E2M1_VALUES[c]! - x) < Math.abs(FP4_E2M1_VALUES[best]! - x)) best = c;
          deq[i] = FP4_E2M1_VALUES[best]! * 2 ** (s - 127);
          const bi = ((e * outDim + o) * G + g) * 16 + (j >> 1);
          blocks[bi] = j & 1 ? blocks[bi]! | (best << 4) : blocks[bi]! | best;
        }
      }
    }
  }
  return { blocks, scales, deq };
}

test('an MXFP4 checkpoint (quantization_config mxfp4, *_blocks/*_scales) loads and runs', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mxfp4-'));
  const ck = Checkpoint.open(FIXTURE_DIR);
  const tensors: TensorToSave[] = [];
  const expected = new Map<string, Float32Array>();
  for (const name of ck.names()) {
    const m = /^(.*\.experts\.(gate_up_proj|down_proj))$/.exec(name);
    const t = ck.load(name, { device: 'cpu', dtype: 'f32' });
    if (m) {
      const [E, inDim, outDim] = t.shape as [number, number, number];
      const q = quantiseMxfp4(t.toFloat32(), E, inDim, outDim);
      expected.set(name, q.deq);
      tensors.push({ name: `${name}_blocks`, dtype: 'U8', shape: [E, outDim, inDim / 32, 16], data: q.blocks });
      tensors.push({ name: `${name}_scales`, dtype: 'U8', shape: [E, outDim, inDim / 32], data: q.scales });
    } else tensors.push(tensorToSave(name, t, 'BF16'));
  }
  ck.close();
  const cfg = JSON.parse(readFileSync(join(FIXTURE_DIR, 'config.json'), 'utf8')) as Record<string, unknown>;
  cfg.quantization_config = { quant_method: 'mxfp4', modules_to_not_convert: ['model.layers.*.self_attn', 'model.layers.*.mlp.router', 'model.embed_tokens', 'lm_head'] };
  saveCheckpoint(dir, tensors, { maxShardBytes: 60_000 });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg));
  const model = await loadModel(dir, { device: 'cpu' });
  assert.equal(model.config.quantization?.method, 'mxfp4');
  for (const [name, deq] of expected) {
    const got = model.weights.params.get(name)!.toFloat32();
    for (let i = 0; i < deq.length; i++) assert.equal(got[i], deq[i], `${name}[${i}]`);
  }
  const lp = model.tokenLogprobs([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])[0]!;
  assert.equal(lp.length, 9);
  assert.ok(lp.every((x) => Number.isFinite(x) && x <= 0));
  model.dispose();
  rmSync(dir, { recursive: true });
});

test('train state: releaseBatch hands the batch over; grads accumulate across micro-batches', async () => {
  const model = await loadModel(FIXTURE_DIR, { device: 'cpu' });
  const seqs = [[1, 2, 3, 4, 5, 6], [7, 8, 9]];
  const run = (grads?: Map<string, Tensor>, release = false): Map<string, Tensor> => {
    const b = packSequences(seqs, 'cpu');
    const r = model.forward(b, { train: true, releaseBatch: release });
    const d = new Float32Array(b.numTokens).fill(-0.1);
    const dt = Tensor.from(d, [b.numTokens], { device: 'cpu' });
    const g = model.backward(r.state!, dt, grads);
    assert.equal(b.ids.disposed, release);
    if (!release) disposeBatch(b);
    return g;
  };
  const once = run(undefined, true);
  const twice = run(run(model.zeroGrads()));
  for (const [n, g] of once) {
    const a = g.toFloat32();
    const b2 = twice.get(n)!.toFloat32();
    for (let i = 0; i < a.length; i += 7) assert.ok(Math.abs(2 * a[i]! - b2[i]!) <= 1e-5 + 1e-5 * Math.abs(b2[i]!), `${n}[${i}]`);
  }
  model.dispose();
});

test('tied embeddings: no lm_head parameter; both uses of the embedding get gradient', () => {
  const cfg = { ...presetConfig('gpt-oss-tiny-256'), tieWordEmbeddings: true };
  const model = GptOssModel.random(cfg, 'cpu', { seed: 5, std: 'fanIn' });
  assert.ok(!model.weights.params.has('lm_head.weight'));
  const b = packSequences([[1, 2, 3, 4, 5]], 'cpu');
  const r = model.forward(b, { train: true, releaseBatch: true });
  const grads = model.backward(r.state!, Tensor.from(new Float32Array([-1, -1, -1, -1, 0]), [5], { device: 'cpu' }));
  assert.ok(!grads.has('lm_head.weight'));
  const g = grads.get('model.embed_tokens.weight')!.toFloat32();
  // Rows of tokens never seen as input still get gradient through the LM head.
  const row200 = g.subarray(200 * 64, 201 * 64);
  assert.ok(row200.some((x) => x !== 0));
  model.dispose();
});

test('DecoderLayer.backward with freshExpertGrads writes the expert gradients into uninitialised buffers (the bits of adding into zeros); refused without both buffers', () => {
  const model = GptOssModel.random(presetConfig('gpt-oss-tiny-256'), 'cpu', { seed: 5, biasStd: 0.02 });
  const c = model.config;
  const b = packSequences([[1, 2, 3, 4, 5], [6, 7, 8]], 'cpu');
  const x = embeddingForward(model.weights.embedding, b.ids);
  const layer = model.layers[0]!;
  const expertShapes: [string, number[]][] = [
    ['model.layers.0.mlp.experts.gate_up_proj', [c.numExperts, c.hiddenSize, 2 * c.intermediateSize]],
    ['model.layers.0.mlp.experts.down_proj', [c.numExperts, c.intermediateSize, c.hiddenSize]],
  ];
  const run = (fill: number, fresh: boolean): Map<string, Float32Array> => {
    const { y, saved } = layer.forward(x, b, true);
    y.dispose();
    const grads = new Map(expertShapes.map(([n, s]) => [n, Tensor.from(new Float32Array(s.reduce((a, v) => a * v, 1)).fill(fill), s, { device: 'cpu' })]));
    const dy = Tensor.from(Float32Array.from({ length: b.numTokens * c.hiddenSize }, (_, i) => Math.sin(i)), [b.numTokens, c.hiddenSize], { device: 'cpu' });
    layer.backward(saved!, dy, b, grads, { freshExpertGrads: fresh }).dispose();
    dy.dispose();
    const out = new Map([...grads].map(([n, t]) => [n, t.toFloat32()]));
    for (const t of grads.values()) t.dispose();
    return out;
  };
  const zeros = run(0, false);
  const fresh = run(NaN, true);
  for (const [n] of expertShapes) assert.deepEqual(fresh.get(n), zeros.get(n), n);
  // The other gradients came back too (created in the map: nothing asked of them).
  assert.ok([...zeros.get(expertShapes[0]![0])!].some((v) => v !== 0));
  const { y, saved } = layer.forward(x, b, true);
  y.dispose();
  const dy = Tensor.zeros([b.numTokens, c.hiddenSize], { device: 'cpu' });
  assert.throws(() => layer.backward(saved!, dy, b, new Map(), { freshExpertGrads: true }), /DecoderLayer 0: freshExpertGrads without both expert gradient buffers in grads/);
  dy.dispose();
  x.dispose();
  disposeBatch(b);
  model.dispose();
});
