// Every config key either does something or is refused: a key the code never reads must be one that
// unsupportedSettings() checks (refused unless it has the single-process value) or one whose schema admits only the
// value implemented (a one-value enum or literal) or that a compatibility note explains.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { allKeys, assertSupported, ConfigError, ConfigSchema, engineLayoutProblems, loadConfig, REFUSED_UNLESS_SINGLE_PROCESS, unsupportedSettings } from '../../src/config/index.ts';
import { usesShardedTrainer } from '../../src/config/load.ts';
import { engineOptionsFromConfig } from '../../src/inference/local-generator.ts';
import { presetConfig } from '../../src/model/config.ts';
import { planFromConfig } from '../../src/trainer/memory-plan.ts';
import { trainingModelOptions } from '../../src/trainer/setup.ts';

/** Keys the code does not read, each for a stated reason (what the docs say too). */
const NOT_READ_BY_DESIGN: Record<string, string> = {
  'generator.model_dtype': 'one value: bfloat16',
  'generator.sampling_params.min_p': 'literal 0',
  'generator.weight_sync_backend': 'the in-process engine uses the trainer weights: every backend is the same no-op',
  'trainer.algorithm.kl_estimator': 'one value: k3',
  'trainer.algorithm.use_entropy_loss': 'literal false',
  'trainer.algorithm.use_kl_in_reward': 'literal false',
  'trainer.bf16': 'literal true',
  'trainer.flash_attn': 'both values select the fused kernel (compatibility note)',
  'trainer.strategy': 'over one process there is nothing to shard (compatibility note); placement keys refuse more processes',
};

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    if (statSync(p).isDirectory()) return p.endsWith('config') ? [] : sources(p);
    return p.endsWith('.ts') ? [readFileSync(p, 'utf8')] : [];
  });
}

test('no config key is accepted and silently ignored', () => {
  const code = sources('src').join('\n');
  const defaults = ConfigSchema.parse({});
  const leafKeys = allKeys(ConfigSchema as never);
  const unread: string[] = [];
  for (const key of leafKeys) {
    const leaf = key.split('.').pop()!;
    // A read: `.leaf` (property access), `leaf` in a destructuring / object pattern, or `case 'leaf':` (maps
    // such as chat_template_kwargs are read key by key).
    const read = new RegExp(`\\.${leaf}\\b|[{,]\\s*${leaf}\\s*[,}:]|case '${leaf}':`).test(code);
    if (!read && !REFUSED_UNLESS_SINGLE_PROCESS.includes(key) && !(key in NOT_READ_BY_DESIGN)) unread.push(key);
  }
  assert.deepEqual(unread, [], 'keys nobody reads and nothing refuses');
  assert.ok(defaults && leafKeys.length > 100);
});

/** A value for each refused key that asks for more than one process can do. */
const ASK_MORE: Record<string, unknown> = {
  'trainer.placement.ref_num_nodes': 2,
  'trainer.placement.ref_num_gpus_per_node': 4,
  'trainer.policy.sequence_parallel_size': 2,
  'trainer.gradient_checkpointing_use_reentrant': true,
  'trainer.hf_save_interval': 5,
  'trainer.algorithm.entropy_loss_coef': 0.01,
  'generator.run_engines_locally': false,
  'generator.async_engine': false,
  'generator.batched': false,
  'generator.enable_chunked_prefill': false,
  'environment.skyrl_gym': { max_env_workers: 8 },
};

test('the defaults and the tiny preset ask for nothing refused', () => {
  assert.deepEqual(unsupportedSettings(loadConfig({ config: null })), []);
  assert.deepEqual(unsupportedSettings(loadConfig()), []);
});

test('every refused key: a one-line message naming the key, its value and why', () => {
  assert.deepEqual(Object.keys(ASK_MORE).sort(), [...REFUSED_UNLESS_SINGLE_PROCESS].sort(), 'a test value for each refused key');
  for (const [key, value] of Object.entries(ASK_MORE)) {
    const c = loadConfig({ config: null, overrides: [`++${key}=${JSON.stringify(value)}`] });
    const msgs = unsupportedSettings(c);
    assert.equal(msgs.length, 1, `${key}: ${msgs.join(' | ')}`);
    const m = msgs[0]!;
    assert.ok(m.startsWith(`${key}=`), m);
    assert.doesNotMatch(m, /\n/);
    assert.match(m, /not supported|not implemented|no counterpart|always|only kind|use trainer\.max_prompt_length|lives in the training process/, m);
    assert.throws(() => assertSupported(c), (e: unknown) => e instanceof ConfigError && e.message.includes(key));
  }
});

test('several processes: engines x tp must equal the processes when colocated; tp must divide the heads', () => {
  assert.deepEqual(unsupportedSettings(loadConfig({ overrides: ['trainer.placement.policy_num_gpus_per_node=1', 'trainer.strategy=fsdp2'] })), []);
  assert.deepEqual(unsupportedSettings(loadConfig({ overrides: ['trainer.placement.policy_num_gpus_per_node=4', 'generator.num_inference_engines=4'] })), []);
  const msgs = unsupportedSettings(loadConfig({ overrides: ['trainer.placement.policy_num_gpus_per_node=4'] }));
  assert.equal(msgs.length, 1);
  assert.match(msgs[0]!, /^generator\.num_inference_engines=1 x generator\.inference_engine_tensor_parallel_size=1 = 1 engine ranks, but trainer\.placement\.colocate_all=true puts one engine rank on each of the 4 training processes .*make engines x tp = 4$/);
  const one = unsupportedSettings(loadConfig({ overrides: ['generator.num_inference_engines=2'] }));
  assert.match(one.join('\n'), /= 2 engine ranks, but .* each of the 1 training processes/);
  const c = loadConfig({ overrides: ['trainer.placement.policy_num_gpus_per_node=3', 'generator.num_inference_engines=1', 'generator.inference_engine_tensor_parallel_size=3'] });
  assert.deepEqual(engineLayoutProblems(c, { numHeads: 64, numKvHeads: 8 }), ["generator.inference_engine_tensor_parallel_size=3 does not divide the model's 8 key/value heads"]);
});

test('generator.enforce_eager=false: accepted for one-device engines, refused with tensor-parallel engines or LoRA', () => {
  assert.deepEqual(unsupportedSettings(loadConfig({ overrides: ['generator.enforce_eager=false'] })), []);
  assert.equal(engineOptionsFromConfig(loadConfig({ overrides: ['generator.enforce_eager=false'] })).enforceEager, false);
  assert.equal(engineOptionsFromConfig(loadConfig({})).enforceEager, true);
  // The model length: the longest one-turn sequence (prompt limit + the longer of the training and evaluation
  // generations), which bounds the auto-sized KV pool; multi-turn runs keep the model's own.
  assert.equal(engineOptionsFromConfig(loadConfig({ overrides: ['trainer.max_prompt_length=300', 'generator.sampling_params.max_generate_length=700'] })).maxModelLen, 1000);
  assert.equal(
    engineOptionsFromConfig(loadConfig({ overrides: ['trainer.max_prompt_length=300', 'generator.sampling_params.max_generate_length=700', 'generator.eval_sampling_params.max_generate_length=900'] })).maxModelLen,
    1200,
  );
  assert.equal(engineOptionsFromConfig(loadConfig({ overrides: ['generator.max_turns=3', 'environment.env_class=gsm8k_tools'] })).maxModelLen, undefined);
  const tp = unsupportedSettings(loadConfig({ overrides: ['trainer.placement.policy_num_gpus_per_node=2', 'generator.inference_engine_tensor_parallel_size=2', 'generator.enforce_eager=false'] }));
  assert.equal(tp.length, 1, tp.join(' | '));
  assert.match(tp[0]!, /^generator\.enforce_eager=false with generator\.inference_engine_tensor_parallel_size=2: .*not supported/);
  const lora = unsupportedSettings(loadConfig({ overrides: ['trainer.policy.model.lora.rank=8', 'generator.enforce_eager=false'] }));
  assert.equal(lora.length, 1, lora.join(' | '));
  assert.match(lora[0]!, /^generator\.enforce_eager=false with trainer\.policy\.model\.lora\.rank=8: .*not supported/);
});

test("the seed's preset loads (print-config works) and every key of it is honoured (nothing refused)", () => {
  const c = loadConfig({ config: 'gsm8k-gptoss-20b' });
  assert.equal(c.trainer.policy.model.path, 'unsloth/gpt-oss-20b-BF16');
  // 8 processes with 2 engines of tp 4 is a layout that runs; offload_after_step=true is the sharded trainer's.
  assert.equal(c.trainer.policy.optimizer_config.offload_after_step, true);
  assert.deepEqual(unsupportedSettings(c), []);
  assert.doesNotThrow(() => assertSupported(c, "config 'gsm8k-gptoss-20b'"));
  assert.ok(usesShardedTrainer(loadConfig({ config: 'demo-cpu', overrides: ['trainer.policy.optimizer_config.offload_after_step=true'] })), 'offload_after_step on one process runs the sharded trainer');
});

test('trainer.gradient_checkpointing_keep_attention: default true, a boolean, and what the planner counts', () => {
  assert.equal(loadConfig({ config: null }).trainer.gradient_checkpointing_keep_attention, true);
  const off = loadConfig({ config: 'gsm8k-gptoss-20b', overrides: ['trainer.gradient_checkpointing_keep_attention=false'] });
  assert.equal(off.trainer.gradient_checkpointing_keep_attention, false);
  assert.throws(
    () => loadConfig({ config: null, overrides: ['trainer.gradient_checkpointing_keep_attention=3'] }),
    (e: unknown) => e instanceof ConfigError && /trainer\.gradient_checkpointing_keep_attention: expected boolean/.test(e.message),
  );
  // The planner follows the key: the kept attention is a row of the default plan, none with the key off (or
  // without gradient_checkpointing, where every activation is kept anyway).
  const g20 = presetConfig('gpt-oss-20b');
  const target = { gpus: 8, gpuMemoryBytes: 80e9 };
  const on = planFromConfig(g20, loadConfig({ config: 'gsm8k-gptoss-20b' }), target);
  const kept = on.train.rows.find((r) => r.key === 'keptAttention');
  assert.ok(kept && kept.bytes > 0);
  assert.equal(planFromConfig(g20, off, target).train.rows.find((r) => r.key === 'keptAttention'), undefined);
  const noRecompute = loadConfig({ config: 'gsm8k-gptoss-20b', overrides: ['trainer.gradient_checkpointing=false'] });
  assert.equal(planFromConfig(g20, noRecompute, target).train.rows.find((r) => r.key === 'keptAttention'), undefined);
  assert.equal(planFromConfig(g20, off, target).input.keepAttention, false);
  // ... and the trained model: the options both the single-process model and the sharded policy are built with.
  assert.equal(trainingModelOptions(loadConfig({ config: 'gsm8k-gptoss-20b' })).keepAttention, true);
  assert.equal(trainingModelOptions(off).keepAttention, false);
});

test("trainer.fused_lm_head_backward: default 'auto', a boolean or 'auto'", () => {
  assert.equal(loadConfig({ config: null }).trainer.fused_lm_head_backward, 'auto');
  assert.equal(loadConfig({ config: null, overrides: ['trainer.fused_lm_head_backward=true'] }).trainer.fused_lm_head_backward, true);
  assert.equal(loadConfig({ config: null, overrides: ['trainer.fused_lm_head_backward=false'] }).trainer.fused_lm_head_backward, false);
  assert.throws(
    () => loadConfig({ config: null, overrides: ['trainer.fused_lm_head_backward=3'] }),
    (e: unknown) => e instanceof ConfigError && /trainer\.fused_lm_head_backward: Invalid input, got 3/.test(e.message),
  );
  // The planner follows the key: the LM head's buffers become one token chunk's fp32 logits + bf16 dlogits
  // [min(T, 3559), V] (lmHeadTokenChunk) instead of [T, lmHeadChunk(T, V)].
  const g20 = presetConfig('gpt-oss-20b');
  const target = { gpus: 1, gpuMemoryBytes: 80e9, microBatchTokens: 4096 };
  const row = (fused: boolean | 'auto') =>
    planFromConfig(g20, loadConfig({ config: 'gsm8k-gptoss-20b', overrides: [`trainer.fused_lm_head_backward=${fused}`] }), target).train.rows.find((r) => r.key === 'lmHeadChunk')!;
  assert.equal(row(false).bytes, 4096 * 16384 * 6);
  assert.equal(row(true).bytes, 3559 * g20.vocabSize * 6);
  assert.match(row(true).label, /token-chunk buffers \(3,559 tokens, fused backward\)/);
  assert.equal(row('auto').bytes, row(true).bytes, "'auto' plans the fused buffers (every library policy has the fused path)");
  // What it does (and its refusal for a policy without it):
  // test/cpu/fused-lm-head.test.ts.
});
