// Config: presets, Hydra-style overrides, and errors that name the key path.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadConfig, parseOverride, ConfigError, allKeys, ConfigSchema } from '../../src/config/index.ts';

test('the presets load and carry the seed run\'s keys', () => {
  const tiny = loadConfig();
  assert.equal(tiny.trainer.policy.model.path, 'tiny');
  const c = loadConfig({ config: 'gsm8k-gptoss-20b' });
  assert.equal(c.trainer.policy.model.path, 'unsloth/gpt-oss-20b-BF16');
  assert.equal(c.generator.inference_engine_tensor_parallel_size, 4);
  assert.equal(c.generator.num_inference_engines, 2);
  assert.equal(c.generator.enforce_eager, true);
  assert.equal(c.trainer.algorithm.advantage_estimator, 'grpo');
  assert.equal(c.trainer.policy.optimizer_config.lr, 1e-6);
  assert.deepEqual(c.trainer.policy.optimizer_config.adam_betas, [0.9, 0.999]);
  assert.equal(c.trainer.algorithm.kl_loss_coef, 0.001);
  assert.equal(c.generator.n_samples_per_prompt, 4);
  assert.equal(c.generator.chat_template_kwargs, undefined);
});

test('overrides: =, +, ++, ~ with YAML values (the seed\'s command line works as written)', () => {
  const c = loadConfig({
    config: 'gsm8k-gptoss-20b',
    overrides: [
      'trainer.policy.optimizer_config.lr=1.0e-6',
      '+generator.chat_template_kwargs={reasoning_effort: low}',
      'trainer.flash_attn=false',
      'trainer.use_sample_packing=false',
      'trainer.resume_mode=null',
      'data.train_data=[\'a.parquet\']',
      '++trainer.seed=7',
      '~trainer.epochs',
    ],
  });
  assert.deepEqual(c.generator.chat_template_kwargs, { reasoning_effort: 'low' });
  assert.equal(c.trainer.flash_attn, false);
  assert.equal(c.trainer.use_sample_packing, false);
  assert.equal(c.trainer.resume_mode, 'none');
  assert.deepEqual(c.data.train_data, ['a.parquet']);
  assert.equal(c.trainer.seed, 7);
  assert.equal(c.trainer.epochs, 1, '~ goes back to the schema default');
  assert.equal(loadConfig({ model: '/models/x' }).trainer.policy.model.path, '/models/x');
  assert.deepEqual(parseOverride('+a.b=x=y'), { op: 'add', path: ['a', 'b'], value: 'x=y', text: '+a.b=x=y' });
});

test('an unknown key names its path and the nearest known key', () => {
  assert.throws(() => loadConfig({ overrides: ['trainer.polcy.model.path=x'] }), (e: Error) => {
    assert.ok(e instanceof ConfigError);
    assert.match(e.message, /unknown config key 'trainer\.polcy\.model\.path' \(did you mean 'trainer\.policy\.model\.path'\?\)/);
    return true;
  });
  assert.throws(() => loadConfig({ overrides: ['generator.sampling_params.temprature=0.5'] }), /did you mean 'generator\.sampling_params\.temperature'/);
  assert.throws(() => loadConfig({ base: { trainer: { nope: 1 } } as never }), /unknown config key 'trainer\.nope'/);
});

test('a wrong value type names the key, what was expected and what was given', () => {
  assert.throws(() => loadConfig({ overrides: ['trainer.train_batch_size=abc'] }), /trainer\.train_batch_size: expected number, received string, got "abc"/);
  assert.throws(() => loadConfig({ overrides: ['trainer.algorithm.loss_reduction=mean'] }), /trainer\.algorithm\.loss_reduction: .*token_mean.*got "mean"/);
  assert.throws(() => loadConfig({ overrides: ['trainer.bf16=false'] }), /trainer\.bf16.*fp32 master weights/);
  assert.throws(() => loadConfig({ overrides: ['trainer.train_batch_size=6', 'trainer.policy_mini_batch_size=4'] }), /must be a multiple/);
});

test('+ refuses a key that is set; bad override syntax is explained', () => {
  assert.throws(() => loadConfig({ overrides: ['+trainer.seed=1'] }), /'trainer\.seed' is already set; use trainer\.seed=\.\.\. to change it or \+\+trainer\.seed=\.\.\. to force/);
  assert.throws(() => parseOverride('trainer.seed'), /missing '=value'/);
  assert.throws(() => parseOverride('trainer..x=1'), /is not a key path/);
  assert.throws(() => parseOverride('a={b'), /not valid YAML/);
  assert.throws(() => loadConfig({ config: 'no-such-preset' }), /config 'no-such-preset' not found/);
});

test('the schema covers the seed keys', () => {
  const keys = new Set(allKeys(ConfigSchema as never));
  for (const k of [
    'trainer.policy.model.path', 'trainer.flash_attn', 'trainer.use_sample_packing', 'trainer.policy.optimizer_config.lr',
    'trainer.train_batch_size', 'trainer.policy_mini_batch_size', 'trainer.micro_train_batch_size_per_gpu',
    'trainer.micro_forward_batch_size_per_gpu', 'trainer.epochs', 'trainer.eval_interval', 'trainer.ckpt_interval',
    'trainer.resume_mode', 'trainer.algorithm.advantage_estimator', 'trainer.algorithm.use_kl_loss', 'trainer.algorithm.kl_loss_coef',
    'trainer.algorithm.eps_clip_low', 'trainer.algorithm.eps_clip_high', 'trainer.algorithm.clip_ratio_c', 'trainer.algorithm.loss_reduction',
    'generator.n_samples_per_prompt', 'generator.sampling_params.temperature', 'generator.sampling_params.max_generate_length',
    'generator.chat_template_kwargs.reasoning_effort', 'generator.inference_engine_tensor_parallel_size', 'generator.num_inference_engines',
    'generator.enforce_eager', 'environment.env_class', 'data.train_data', 'data.val_data',
  ]) assert.ok(keys.has(k), k);
});

test('Hydra flow maps without spaces, and shell-split overrides are joined back', async () => {
  const { joinOverrides } = await import('../../src/cli/args.ts');
  const c = loadConfig({ overrides: ["++generator.chat_template_kwargs={reasoning_effort:'high'}"] });
  assert.equal(c.generator.chat_template_kwargs?.reasoning_effort, 'high');
  assert.deepEqual(joinOverrides(['+generator.chat_template_kwargs={reasoning_effort:', 'low}', 'trainer.seed=3']), [
    '+generator.chat_template_kwargs={reasoning_effort: low}',
    'trainer.seed=3',
  ]);
  assert.throws(() => joinOverrides(['trainer.seed']), /not an override/);
  assert.throws(() => joinOverrides(['a={b: 1']), /unbalanced/);
  assert.throws(() => loadConfig({ overrides: ['++generator.chat_template_kwargs={reasoning_effort: extreme}'] }), /generator\.chat_template_kwargs\.reasoning_effort/);
});

test('the CLI parser takes options and positional overrides', async () => {
  const { parseCli } = await import('../../src/cli/args.ts');
  const a = await parseCli(['node', 'train', '--model', 'tiny', '-c', 'gsm8k-gptoss-20b', 'trainer.seed=3', '+generator.chat_template_kwargs={reasoning_effort:', 'low}', '~trainer.epochs'], { name: 't', description: 'd', defaultConfigHelp: 'configs/tiny-cpu.yaml' });
  assert.equal(a.model, 'tiny');
  assert.equal(a.config, 'gsm8k-gptoss-20b');
  assert.deepEqual(a.overrides, ['trainer.seed=3', '+generator.chat_template_kwargs={reasoning_effort: low}', '~trainer.epochs']);
  // Without --config the preset is left to the command, which chooses it after parsing (configFromCli).
  const b = await parseCli(['node', 'train', 'trainer.seed=3'], { name: 't', description: 'd', defaultConfigHelp: 'configs/tiny-cpu.yaml' });
  assert.equal(b.config, undefined);
});
