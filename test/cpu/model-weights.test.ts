// Weights: parameter names/shapes, seeded random init, save/load round trip, fixture load, missing tensors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { presetConfig, readConfigFile } from '../../src/model/config.ts';
import { GptOssWeights, paramSpecs } from '../../src/model/weights.ts';
import { Checkpoint } from '../../src/model/safetensors.ts';
import { FIXTURE_DIR } from '../helpers/fixtures.ts';

const FIX = FIXTURE_DIR;

test('parameter names match the fixture checkpoint exactly', () => {
  const cfg = readConfigFile(join(FIX, 'config.json'));
  const ck = Checkpoint.open(FIX);
  const ours = paramSpecs(cfg).map((s) => s.name).sort();
  assert.deepEqual(ours, ck.names().sort());
  for (const s of paramSpecs(cfg)) assert.deepEqual(ck.shapeOf(s.name), s.shape, s.name);
  ck.close();
});

test('random init is seeded and has the requested statistics', () => {
  const cfg = presetConfig('gpt-oss-tiny-256');
  const a = GptOssWeights.random(cfg, 'cpu', { seed: 1 });
  const b = GptOssWeights.random(cfg, 'cpu', { seed: 1 });
  const c = GptOssWeights.random(cfg, 'cpu', { seed: 2 });
  const n = 'model.layers.1.mlp.experts.gate_up_proj';
  const va = a.params.get(n)!.toFloat32();
  assert.deepEqual(va, b.params.get(n)!.toFloat32());
  assert.notDeepEqual(va, c.params.get(n)!.toFloat32());
  const mean = va.reduce((s, x) => s + x, 0) / va.length;
  const std = Math.sqrt(va.reduce((s, x) => s + (x - mean) ** 2, 0) / va.length);
  assert.ok(Math.abs(mean) < 2e-3 && Math.abs(std - 0.02) < 2e-3, `mean ${mean} std ${std}`);
  assert.ok(a.finalNorm.toFloat32().every((x) => x === 1));
  assert.equal(a.numParameters(), paramSpecs(cfg).reduce((s, p) => s + p.shape.reduce((x, y) => x * y, 1), 0));
  for (const w of [a, b, c]) w.dispose();
});

test('routerStd draws only the MoE router weights with its std (the other matrices keep theirs)', () => {
  const cfg = presetConfig('gpt-oss-tiny-256');
  const base = GptOssWeights.random(cfg, 'cpu', { seed: 3 });
  const wide = GptOssWeights.random(cfg, 'cpu', { seed: 3, routerStd: 0.5 });
  const std = (v: Float32Array): number => Math.sqrt(v.reduce((s, x) => s + x * x, 0) / v.length);
  for (let l = 0; l < cfg.numLayers; l++) {
    const r = wide.params.get(`model.layers.${l}.mlp.router.weight`)!.toFloat32();
    assert.ok(Math.abs(std(r) - 0.5) < 0.05, `layer ${l} router std ${std(r)}`);
    for (const n of [`model.layers.${l}.mlp.experts.gate_up_proj`, `model.layers.${l}.self_attn.q_proj.weight`, `model.layers.${l}.mlp.router.bias`]) {
      assert.deepEqual(wide.params.get(n)!.toFloat32(), base.params.get(n)!.toFloat32(), n);
    }
  }
  for (const w of [base, wide]) w.dispose();
});

test('residualStd draws o_proj and down_proj with its std, embedStd the embedding (the other matrices keep theirs)', () => {
  const cfg = presetConfig('gpt-oss-tiny-256');
  const base = GptOssWeights.random(cfg, 'cpu', { seed: 3 });
  const scaled = GptOssWeights.random(cfg, 'cpu', { seed: 3, residualStd: 0.004, embedStd: 1 });
  const std = (n: string): number => {
    const v = scaled.params.get(n)!.toFloat32();
    return Math.sqrt(v.reduce((s, x) => s + x * x, 0) / v.length);
  };
  assert.ok(Math.abs(std('model.embed_tokens.weight') - 1) < 0.05, `embedding std ${std('model.embed_tokens.weight')}`);
  for (let l = 0; l < cfg.numLayers; l++) {
    for (const n of [`model.layers.${l}.self_attn.o_proj.weight`, `model.layers.${l}.mlp.experts.down_proj`]) {
      assert.ok(Math.abs(std(n) - 0.004) < 0.0004, `${n} std ${std(n)}`);
    }
    for (const n of [`model.layers.${l}.mlp.experts.gate_up_proj`, `model.layers.${l}.self_attn.q_proj.weight`, `model.layers.${l}.mlp.router.weight`]) {
      assert.deepEqual(scaled.params.get(n)!.toFloat32(), base.params.get(n)!.toFloat32(), n);
    }
  }
  for (const w of [base, scaled]) w.dispose();
});

test('save/load round trip (sharded) is bit exact, with config.json', () => {
  const cfg = presetConfig('gpt-oss-tiny-256');
  const w = GptOssWeights.random(cfg, 'cpu', { seed: 3, biasStd: 0.1 });
  const d = mkdtempSync(join(tmpdir(), 'ckpt-'));
  w.save(d, { maxShardBytes: 100_000 });
  assert.ok(readdirSync(d).includes('model.safetensors.index.json'));
  assert.ok(readdirSync(d).includes('config.json'));
  const cfg2 = readConfigFile(join(d, 'config.json'));
  assert.deepEqual(cfg2, cfg);
  const ck = Checkpoint.open(d);
  const w2 = GptOssWeights.fromCheckpoint(cfg2, ck, 'cpu');
  ck.close();
  for (const n of w.names()) assert.deepEqual(Buffer.from(w2.params.get(n)!.toBuffer()), Buffer.from(w.params.get(n)!.toBuffer()), n);
  w.dispose();
  w2.dispose();
  rmSync(d, { recursive: true });
});

test('loading a checkpoint of another shape fails naming the tensor', () => {
  const ck = Checkpoint.open(FIX);
  const cfg = presetConfig('gpt-oss-tiny-256', { intermediateSize: 16 });
  assert.throws(() => GptOssWeights.fromCheckpoint(cfg, ck, 'cpu'), /gate_up_proj' has shape \[4, 64, 64\], expected \[4, 64, 32\]/);
  const cfg3 = presetConfig('gpt-oss-tiny-256', { numLayers: 3 });
  assert.throws(() => GptOssWeights.fromCheckpoint(cfg3, ck, 'cpu'), /lacks model\.layers\.2\./);
  ck.close();
});
