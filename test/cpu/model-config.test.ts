// GPT-OSS config parsing: the fixture's real config.json, rope_parameters, layer_types defaults, errors naming keys.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { FIXTURE_DIR } from '../helpers/fixtures.ts';
import { parseConfig, presetConfig, toHfConfig, readConfigFile, parameterCount, PRESET_NAMES } from '../../src/model/config.ts';


test('reads the fixture config.json (legacy rope_scaling, layer_types)', () => {
  const c = readConfigFile(join(FIXTURE_DIR, 'config.json'));
  assert.equal(c.numLayers, 2);
  assert.equal(c.hiddenSize, 64);
  assert.equal(c.numHeads, 4);
  assert.equal(c.numKvHeads, 2);
  assert.equal(c.headDim, 16);
  assert.equal(c.numExperts, 4);
  assert.equal(c.topK, 2);
  assert.equal(c.intermediateSize, 32);
  assert.equal(c.vocabSize, 256);
  assert.equal(c.slidingWindow, 8);
  assert.deepEqual(c.layerTypes, ['sliding_attention', 'full_attention']);
  assert.deepEqual(c.rope, { type: 'yarn', theta: 150000, factor: 32, betaFast: 32, betaSlow: 1, originalMaxPositions: 4096, truncate: false });
  assert.deepEqual(c.eosTokenIds, [254]);
  assert.equal(c.padTokenId, 255);
  assert.equal(c.quantization, null);
});

const base = (): Record<string, unknown> => toHfConfig(presetConfig('gpt-oss-20b'));

test('presets round-trip through config.json form', () => {
  for (const n of PRESET_NAMES) {
    const c = presetConfig(n);
    assert.deepEqual(parseConfig(JSON.parse(JSON.stringify(toHfConfig(c)))), c, n);
  }
  // gpt-oss-20b: ~20.9B parameters; 120b ~116.8B.
  assert.ok(Math.abs(parameterCount(presetConfig('gpt-oss-20b')) / 1e9 - 20.9) < 0.1);
  assert.ok(Math.abs(parameterCount(presetConfig('gpt-oss-120b')) / 1e9 - 116.8) < 0.2);
});

test('newer rope_parameters (with rope_theta inside) and num_experts_per_tok alone', () => {
  const j = base();
  delete j.rope_scaling;
  delete j.rope_theta;
  delete j.experts_per_token;
  j.rope_parameters = { rope_type: 'yarn', rope_theta: 150000, factor: 32, beta_fast: 32, beta_slow: 1, original_max_position_embeddings: 4096, truncate: false };
  const c = parseConfig(j);
  assert.equal(c.rope.theta, 150000);
  assert.equal(c.rope.factor, 32);
  assert.equal(c.topK, 4);
});

test('alternating default when layer_types is absent: even layers sliding', () => {
  const j = base();
  delete j.layer_types;
  const c = parseConfig(j);
  assert.equal(c.layerTypes.length, 24);
  assert.equal(c.layerTypes[0], 'sliding_attention');
  assert.equal(c.layerTypes[1], 'full_attention');
  assert.equal(c.layerTypes[22], 'sliding_attention');
});

test('quantization_config mxfp4 is recognised; others rejected', () => {
  const j = base();
  j.quantization_config = { quant_method: 'mxfp4', modules_to_not_convert: ['model.layers.*.self_attn', 'lm_head'] };
  assert.equal(parseConfig(j).quantization?.method, 'mxfp4');
  j.quantization_config = { quant_method: 'gptq' };
  assert.throws(() => parseConfig(j), /quantization_config\.quant_method/);
});

test('errors name the key', () => {
  const cases: [(j: Record<string, unknown>) => void, RegExp][] = [
    [(j) => delete j.hidden_size, /hidden_size/],
    [(j) => (j.num_attention_heads = 'many'), /num_attention_heads/],
    [(j) => (j.num_key_value_heads = 7), /num_key_value_heads/],
    [(j) => (j.layer_types = ['full_attention']), /layer_types/],
    [(j) => (j.layer_types = Array(24).fill('local')), /layer_types/],
    [(j) => (j.experts_per_token = 2), /experts_per_token/],
    [(j) => { delete j.experts_per_token; delete j.num_experts_per_tok; }, /num_experts_per_tok/],
    [(j) => (j.rope_scaling = { rope_type: 'longrope', factor: 2 }), /rope_scaling\.rope_type/],
    [(j) => (j.rope_scaling = { rope_type: 'yarn', factor: -1 }), /rope_scaling\.factor/],
    [(j) => (j.eos_token_id = 999999), /eos_token_id/],
    [(j) => (j.model_type = 'llama'), /model_type/],
  ];
  for (const [mutate, re] of cases) {
    const j = base();
    mutate(j);
    assert.throws(() => parseConfig(j), re);
  }
});
