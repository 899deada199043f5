// load.ts: presets (YAML in configs/), overrides and validation into a typed Config.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import type { z } from 'zod';
import { ConfigSchema, type Config, type ConfigInput } from './schema.ts';
import { applyOverrides, ConfigError, lookupKey, parseOverride, unknownKeyMessage, type Override } from './overrides.ts';

export { ConfigError } from './overrides.ts';

/** Extra words for keys whose constraints come from GPT-OSS or from what this implementation offers. */
const EXPLAIN: Record<string, string> = {
  'trainer.bf16': 'training runs BF16 weights/activations with fp32 master weights and fp32 math in norms, softmax and losses; no other precision is offered',
  'trainer.algorithm.use_entropy_loss': 'an entropy bonus is not implemented; entropy is logged as a metric',
  'trainer.algorithm.use_kl_in_reward': 'KL in the reward is not implemented; use trainer.algorithm.use_kl_loss=true (k3, as the peer)',
  'generator.sampling_params.min_p': 'min-p sampling is not implemented (use top_p / top_k)',
  'trainer.flash_attn':
    'GPT-OSS has attention sinks; our fused attention kernel implements them, so true (the fused kernel) and false are both fine',
  'trainer.use_sample_packing':
    'packing is supported for GPT-OSS here (varlen attention with sinks and sliding windows per sequence)',
};

function here(): string {
  return dirname(fileURLToPath(import.meta.url));
}

/** The configs/ folder of the package (src/config/ and dist/src/config/ both sit below the root). */
export function configsDir(): string {
  let dir = here();
  for (let i = 0; i < 5; i++) {
    if (existsSync(join(dir, 'configs')) && existsSync(join(dir, 'package.json'))) return join(dir, 'configs');
    dir = resolve(dir, '..');
  }
  return resolve(here(), '..', '..', 'configs');
}

/** A preset name (`tiny-cpu`, `gsm8k-gptoss-20b`) or a YAML path to a file path. */
export function resolvePreset(nameOrPath: string): string {
  if (existsSync(nameOrPath)) return nameOrPath;
  const p = join(configsDir(), nameOrPath.endsWith('.yaml') ? nameOrPath : `${nameOrPath}.yaml`);
  if (existsSync(p)) return p;
  throw new ConfigError(`config '${nameOrPath}' not found (neither a file nor a preset in ${configsDir()})`);
}

export function readYamlConfig(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError(`cannot read config file ${path}: ${(e as Error).message}`);
  }
  let v: unknown;
  try {
    v = parseYaml(text);
  } catch (e) {
    throw new ConfigError(`config file ${path} is not valid YAML: ${(e as Error).message}`);
  }
  if (v === null || v === undefined) return {};
  if (typeof v !== 'object' || Array.isArray(v)) throw new ConfigError(`config file ${path} must hold a map at the top level`);
  return unflattenDotted(v as Record<string, unknown>);
}

/** YAML files may write `trainer.flash_attn: false` (dotted keys) as the seed's docs do: nest them. */
function unflattenDotted(o: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) {
    const val = typeof v === 'object' && v !== null && !Array.isArray(v) ? unflattenDotted(v as Record<string, unknown>) : v;
    const parts = k.replace(/^\+\+?/, '').split('.');
    let cur = out;
    for (const p of parts.slice(0, -1)) {
      if (typeof cur[p] !== 'object' || cur[p] === null) cur[p] = {};
      cur = cur[p] as Record<string, unknown>;
    }
    const last = parts[parts.length - 1]!;
    const prev = cur[last];
    cur[last] = typeof prev === 'object' && prev !== null && typeof val === 'object' && val !== null && !Array.isArray(val) ? { ...prev, ...val } : val;
  }
  return out;
}

function describe(v: unknown): string {
  if (v === undefined) return 'nothing';
  const s = JSON.stringify(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function valueAt(o: unknown, path: PropertyKey[]): unknown {
  let cur = o;
  for (const k of path) {
    if (typeof cur !== 'object' || cur === null) return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[k];
  }
  return cur;
}

/** Validates a raw object; errors list every problem with its key path (and a hint for GPT-OSS keys). */
export function validateConfig(raw: unknown, source = 'config'): Config {
  const r = ConfigSchema.safeParse(raw);
  if (r.success) return r.data;
  const lines = r.error.issues.map((iss) => {
    if (iss.code === 'unrecognized_keys') {
      return iss.keys
        .map((k) => {
          const key = [...iss.path, k].join('.');
          const look = lookupKey(ConfigSchema as unknown as z.ZodType, [...iss.path.map(String), k]);
          return `  - ${look.kind === 'unknown' ? unknownKeyMessage(ConfigSchema as unknown as z.ZodType, key, look) : `unknown key ${key}`}`;
        })
        .join('\n');
    }
    const key = iss.path.join('.') || '(top level)';
    const got = valueAt(raw, iss.path);
    const hint = EXPLAIN[key] ? ` (${EXPLAIN[key]})` : '';
    const gotText = iss.code === 'custom' ? '' : `, got ${describe(got)}`;
    return `  - ${key}: ${iss.message.replace(/^Invalid input: /, '')}${gotText}${hint}`;
  });
  throw new ConfigError(`invalid ${source}:\n${lines.join('\n')}`);
}

export interface LoadConfigOptions {
  /** A preset name or YAML path; default `tiny-cpu`. Pass null for schema defaults only. */
  config?: string | null;
  /** Hydra-style overrides, applied in order. */
  overrides?: Array<string | Override>;
  /** Shorthand for trainer.policy.model.path=... (applied before the overrides). */
  model?: string;
  /** Extra raw config merged before the overrides (library callers). */
  base?: ConfigInput;
}

function deepMerge(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const prev = out[k];
    out[k] =
      typeof prev === 'object' && prev !== null && !Array.isArray(prev) && typeof v === 'object' && v !== null && !Array.isArray(v)
        ? deepMerge(prev as Record<string, unknown>, v as Record<string, unknown>)
        : v;
  }
  return out;
}

export function loadConfig(opts: LoadConfigOptions = {}): Config {
  const name = opts.config === undefined ? 'tiny-cpu' : opts.config;
  let raw: Record<string, unknown> = {};
  let source = 'config';
  if (name !== null) {
    const path = resolvePreset(name);
    raw = readYamlConfig(path);
    source = `config (${path})`;
    validateConfig(raw, source); // a bad preset is reported as such, before any override
  }
  if (opts.base) raw = deepMerge(raw, opts.base as Record<string, unknown>);
  const effective = validateConfig(raw, source);
  const overrides: Array<string | Override> = [];
  if (opts.model) overrides.push(parseOverride(`++trainer.policy.model.path=${JSON.stringify(opts.model)}`));
  overrides.push(...(opts.overrides ?? []));
  const present = (p: string[]): boolean => valueAt(effective, p) !== undefined;
  const applied = applyOverrides(ConfigSchema as unknown as z.ZodType, raw, overrides, present);
  return validateConfig(applied, overrides.length ? `${source} with overrides` : source);
}

/** Checks the overrides alone (for a CLI's early exit); returns them parsed. */
export function parseOverrides(list: string[]): Override[] {
  return list.map(parseOverride);
}

/** Warnings about keys accepted for compatibility whose value changes nothing here (the CLI logs them). */
export function compatibilityNotes(c: Config): string[] {
  const notes: string[] = [];
  if (c.generator.backend !== 'native') notes.push(`generator.backend=${c.generator.backend}: generation runs on our own engine (no Python); the name is accepted for compatibility`);
  if (!c.trainer.flash_attn) notes.push('trainer.flash_attn=false: the peer needs this for GPT-OSS (FlashAttention has no sinks); our fused kernel handles sinks, so it is used either way');
  if (!c.trainer.use_sample_packing) notes.push('trainer.use_sample_packing=false: micro-batches are padded; packing is supported for GPT-OSS here and is faster');
  const world = trainingWorldSize(c);
  if (world === 1 && c.trainer.strategy !== 'single' && !usesShardedTrainer(c)) notes.push(`trainer.strategy=${c.trainer.strategy} over one process: there is nothing to shard, the single-process trainer runs`);
  if (world > 1 && c.trainer.strategy === 'single') notes.push(`trainer.strategy=single over ${world} processes: the trainer is sharded over them (ZeRO-3 style, as fsdp2)`);
  return notes;
}

/** What later work brings the refused settings (named in the messages and in docs/training.md). */
const SHARDED = 'the sharded multi-GPU trainer (issue 21) will bring it';
const ENGINE_POOL = 'the inference-engine pool will bring it';

/**
 * Settings this version accepts in the schema (the seed's keys) but cannot honour: each entry is the key, the
 * test of the value that matches what one process does, and why another value is refused.
 */
const SINGLE_PROCESS: Array<{ key: string; ok: (v: unknown, c: Config) => boolean; want: string; why: string }> = [

  // The KL reference is a frozen sharded copy on the policy's own processes: the policy's placement or one process.
  { key: 'trainer.placement.ref_num_nodes', ok: (v, c) => v === 1 || v === c.trainer.placement.policy_num_nodes, want: '1 or trainer.placement.policy_num_nodes', why: `a reference model placed apart from the policy is not supported yet (it is sharded over the policy's processes); ${SHARDED}` },
  { key: 'trainer.placement.ref_num_gpus_per_node', ok: (v, c) => v === 1 || v === c.trainer.placement.policy_num_gpus_per_node, want: '1 or trainer.placement.policy_num_gpus_per_node', why: `a reference model placed apart from the policy is not supported yet (it is sharded over the policy's processes); ${SHARDED}` },
  { key: 'trainer.policy.sequence_parallel_size', ok: (v) => v === 1, want: '1', why: 'sequence parallelism is not supported yet' },
  { key: 'trainer.gradient_checkpointing_use_reentrant', ok: (v) => v === false, want: 'false', why: "PyTorch's reentrant checkpointing has no counterpart here (trainer.gradient_checkpointing recomputes each layer in its backward)" },
  { key: 'trainer.hf_save_interval', ok: (v) => v === -1 || v === 0, want: '-1', why: 'a separate HF-format export is not supported yet; every checkpoint (<ckpt_path>/global_step_N) already holds the model in the HF layout, loadable with --model' },
  { key: 'trainer.algorithm.entropy_loss_coef', ok: (v) => v === 0, want: '0', why: 'an entropy bonus in the loss is not implemented (entropy is logged as a metric)' },
  { key: 'generator.run_engines_locally', ok: (v) => v === true, want: 'true', why: 'remote inference engines are not supported; the engine runs in the training process' },
  { key: 'generator.async_engine', ok: (v) => v === true, want: 'true', why: 'the in-process engine is asynchronous (the only kind there is)' },
  { key: 'generator.batched', ok: (v) => v === true, want: 'true', why: 'generation is always batched (up to generator.max_num_seqs sequences)' },
  { key: 'generator.enable_chunked_prefill', ok: (v) => v === true, want: 'true', why: 'the engine always prefills in chunks within generator.max_num_batched_tokens (a whole-prompt prefill mode is not built)' },
  { key: 'environment.skyrl_gym', ok: (v) => v === undefined, want: '(unset)', why: "the peer's per-environment options have no counterpart here (environment.reward_rule picks the reward)" },
];

/**
 * Whether `npm run train` runs the sharded trainer (src/trainer/distributed-run.ts, ShardedPolicy): over several
 * processes, and also on one when a setting only it honours is asked for: trainer.policy.fsdp_config.cpu_offload
 * (fp32 masters and AdamW moments in pinned host memory, AdamW on the host), trainer.policy.optimizer_config.
 * offload_after_step (masters and moments moved to host memory after each optimizer step, for the generation
 * phase, and back before training) or trainer.placement.colocate_policy_ref=false (the KL reference's weights kept
 * in host memory between its uses).
 */
export function usesShardedTrainer(c: Config): boolean {
  return trainingWorldSize(c) > 1 || c.trainer.policy.fsdp_config.cpu_offload || c.trainer.policy.optimizer_config.offload_after_step || !c.trainer.placement.colocate_policy_ref;
}

/** Trainer processes of a run: trainer.placement.policy_num_nodes x policy_num_gpus_per_node. */
export function trainingWorldSize(c: Config): number {
  return c.trainer.placement.policy_num_nodes * c.trainer.placement.policy_num_gpus_per_node;
}

/**
 * Processes of a run: the trainer's, plus the engines' own (num_inference_engines x tp) when they are not colocated
 * (trainer.placement.colocate_all=false: trainer ranks 0..P-1, engine ranks after them).
 */
export function processCount(c: Config): number {
  const g = c.generator;
  return trainingWorldSize(c) + (c.trainer.placement.colocate_all ? 0 : g.num_inference_engines * g.inference_engine_tensor_parallel_size);
}

/**
 * The engine layout against the process count (colocated: engine e runs on ranks e*tp .. e*tp+tp-1, so the engines
 * must cover every process exactly), and the divisibility of the model's heads when the model is known.
 */
export function engineLayoutProblems(c: Config, model?: { numHeads: number; numKvHeads: number }): string[] {
  const g = c.generator;
  const world = trainingWorldSize(c);
  const engines = g.num_inference_engines;
  const tp = g.inference_engine_tensor_parallel_size;
  const out: string[] = [];
  const layout = `generator.num_inference_engines=${engines} x generator.inference_engine_tensor_parallel_size=${tp}`;
  if (!Number.isInteger(engines) || engines < 1) out.push(`generator.num_inference_engines=${engines}: must be a positive integer`);
  if (!Number.isInteger(tp) || tp < 1) out.push(`generator.inference_engine_tensor_parallel_size=${tp}: must be a positive integer`);
  else if (c.trainer.placement.colocate_all && engines * tp !== world) {
    out.push(`${layout} = ${engines * tp} engine ranks, but trainer.placement.colocate_all=true puts one engine rank on each of the ${world} training processes (policy_num_nodes=${c.trainer.placement.policy_num_nodes} x policy_num_gpus_per_node=${c.trainer.placement.policy_num_gpus_per_node}); make engines x tp = ${world}`);
  }
  if (!c.trainer.placement.colocate_all && c.trainer.placement.policy_num_nodes > 1) {
    out.push(`trainer.placement.policy_num_nodes=${c.trainer.placement.policy_num_nodes} with trainer.placement.colocate_all=false: engines on their own processes run on one node only (where the engine ranks of several nodes go is not built; use 1 node, or colocate_all=true)`);
  }
  if (!c.trainer.placement.colocate_all && g.weight_sync_backend !== 'nccl') {
    out.push(`generator.weight_sync_backend=${g.weight_sync_backend}: engines on their own processes (trainer.placement.colocate_all=false) receive the weights by a broadcast from trainer rank 0 (use nccl: NCCL on GPUs, the CPU collectives on CPU processes); ${g.weight_sync_backend} is not built`);
  }
  if (model && Number.isInteger(tp) && tp >= 1) {
    if (model.numKvHeads % tp !== 0) out.push(`generator.inference_engine_tensor_parallel_size=${tp} does not divide the model's ${model.numKvHeads} key/value heads`);
    else if (model.numHeads % tp !== 0) out.push(`generator.inference_engine_tensor_parallel_size=${tp} does not divide the model's ${model.numHeads} attention heads`);
  }
  return out;
}

/** Every key path SINGLE_PROCESS checks (tests walk it so that none is forgotten). */
export const REFUSED_UNLESS_SINGLE_PROCESS: readonly string[] = SINGLE_PROCESS.map((r) => r.key);

/**
 * The settings of `c` this version cannot honour, one message each naming the key, its value and why, e.g.
 * `trainer.placement.policy_num_gpus_per_node=8 is not supported yet: multi-GPU training ... (set 1)`.
 */
export function unsupportedSettings(c: Config): string[] {
  const out: string[] = [];
  for (const r of SINGLE_PROCESS) {
    const v = valueAt(c, r.key.split('.'));
    if (r.ok(v, c)) continue;
    out.push(`${r.key}=${describe(v)}: ${r.why} (use ${r.want})`);
  }
  // The layout is judged once every key it is made of is one this version can run.
  return out.length ? out : [...engineLayoutProblems(c), ...loraProblems(c), ...cudaGraphProblems(c), ...batchInvariantProblems(c)];
}

/**
 * trainer.batch_invariant=true: the engines' rows must be computed as the trainer computes them. A tensor-parallel
 * engine sums o_proj and the MoE over its ranks' slices (another order than one device's), and on CUDA the LoRA
 * adapters' GEMMs are cuBLAS: both refused rather than silently off-policy.
 */
export function batchInvariantProblems(c: Config): string[] {
  if (!c.trainer.batch_invariant) return [];
  const out: string[] = [];
  const tp = c.generator.inference_engine_tensor_parallel_size;
  if (tp > 1) out.push(`trainer.batch_invariant=true with generator.inference_engine_tensor_parallel_size=${tp}: a tensor-parallel engine adds its ranks' partial sums in another order than the trainer's single-device forward; set tp 1 (more engines instead) or trainer.batch_invariant=false`);
  const rank = c.trainer.policy.model.lora.rank;
  if (rank > 0 && c.trainer.device.startsWith('cuda')) out.push(`trainer.batch_invariant=true with trainer.policy.model.lora.rank=${rank} on trainer.device=${c.trainer.device}: the adapters' GEMMs on CUDA are not batch-invariant; set trainer.batch_invariant=false or train without LoRA (on trainer.device=cpu both work)`);
  return out;
}

/**
 * generator.enforce_eager=false: decode steps replay CUDA graphs (src/inference/cuda-graphs.ts), which exist for the
 * one-device engine without adapters. A tensor-parallel engine (its layers are NCCL collectives driven from JS) or
 * LoRA adapters (the MoE's adapter path decides its work on the host) would run eagerly anyway: refused rather than
 * silently ignored. (On the CPU the graph path runs eagerly over the same padded static buffers.)
 */
export function cudaGraphProblems(c: Config): string[] {
  const g = c.generator;
  if (g.enforce_eager) return [];
  const out: string[] = [];
  const tp = g.inference_engine_tensor_parallel_size;
  if (tp > 1) out.push(`generator.enforce_eager=false with generator.inference_engine_tensor_parallel_size=${tp}: CUDA graphs are not supported on tensor-parallel engines yet (their layers are NCCL collectives driven step by step); set generator.enforce_eager=true or tp 1`);
  const rank = c.trainer.policy.model.lora.rank;
  if (rank > 0) out.push(`generator.enforce_eager=false with trainer.policy.model.lora.rank=${rank}: CUDA graphs are not supported with LoRA adapters yet (adapter steps run eagerly); set generator.enforce_eager=true`);
  return out;
}

/** LoRA (trainer.policy.model.lora.rank > 0) runs on the single-process trainer only. */
export function loraProblems(c: Config): string[] {
  const rank = c.trainer.policy.model.lora.rank;
  const world = trainingWorldSize(c);
  if (rank === 0 || world === 1) return [];
  return [`trainer.policy.model.lora.rank=${rank} with ${world} processes: LoRA is not supported by the sharded trainer yet; it runs on one process (one GPU or the CPU: set trainer.placement.policy_num_gpus_per_node=1)`];
}

/** Throws a ConfigError listing every setting this version cannot honour (what a run checks before it starts). */
export function assertSupported(c: Config, source = 'the config'): void {
  const bad = unsupportedSettings(c);
  if (bad.length === 0) return;
  throw new ConfigError(`${source} asks for what this version cannot do:\n${bad.map((b) => `  - ${b}`).join('\n')}`);
}
