// config.ts: the GPT-OSS model configuration.
//
// parseConfig reads a Hugging Face gpt-oss `config.json` (the field layout of openai/gpt-oss-20b and of
// transformers' GptOssConfig, old and new): RoPE settings either as the legacy `rope_scaling` object (plus a
// top-level `rope_theta`) or as the newer `rope_parameters`; per-layer attention kinds from `layer_types` or, when
// absent, the alternating default (even layers sliding, odd layers full); `experts_per_token` or
// `num_experts_per_tok`; an optional `quantization_config` (MXFP4 experts). Errors name the offending key.
// The result is a camelCase, fully resolved GptOssConfig that the rest of the model code uses.
import { readFileSync } from 'node:fs';
import { z } from 'zod';

export type LayerType = 'sliding_attention' | 'full_attention';

export interface RopeConfig {
  /** 'yarn' (every gpt-oss checkpoint) or 'default' (plain RoPE, factor 1). */
  type: 'yarn' | 'default';
  theta: number;
  factor: number;
  betaFast: number;
  betaSlow: number;
  originalMaxPositions: number;
  truncate: boolean;
  /** rope_scaling.attention_factor when the config gives one (else YaRN's 0.1·ln(factor) + 1). */
  attentionFactor?: number;
}

export interface GptOssConfig {
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  numExperts: number;
  topK: number;
  /** Expert intermediate size I (gate_up is 2I wide, interleaved). */
  intermediateSize: number;
  slidingWindow: number;
  layerTypes: LayerType[];
  rmsNormEps: number;
  swigluLimit: number;
  rope: RopeConfig;
  maxPositions: number;
  attentionBias: boolean;
  tieWordEmbeddings: boolean;
  eosTokenIds: number[];
  padTokenId: number | null;
  bosTokenId: number | null;
  /** Present for the original MXFP4 release (`*_blocks`/`*_scales` expert tensors). */
  quantization: { method: 'mxfp4'; modulesToNotConvert: string[] } | null;
  /** Checkpoint storage dtype as the config names it ('bfloat16' for every known checkpoint). */
  torchDtype: string;
}

const posInt = z.number().int().positive();
const nonNegInt = z.number().int().nonnegative();

const ropeScalingSchema = z
  .object({
    rope_type: z.string().optional(),
    type: z.string().optional(),
    factor: z.number().positive().optional(),
    beta_fast: z.number().optional(),
    beta_slow: z.number().optional(),
    original_max_position_embeddings: posInt.optional(),
    truncate: z.boolean().optional(),
    rope_theta: z.number().positive().optional(),
    attention_factor: z.number().positive().optional(),
  })
  .loose();

const tokenIds = z.union([nonNegInt, z.array(nonNegInt)]);

const rawSchema = z
  .object({
    model_type: z.string().optional(),
    vocab_size: posInt,
    hidden_size: posInt,
    num_hidden_layers: posInt,
    num_attention_heads: posInt,
    num_key_value_heads: posInt.optional(),
    head_dim: posInt.optional(),
    num_local_experts: posInt,
    experts_per_token: posInt.optional(),
    num_experts_per_tok: posInt.optional(),
    intermediate_size: posInt,
    sliding_window: posInt.nullable().optional(),
    layer_types: z.array(z.enum(['sliding_attention', 'full_attention'])).optional(),
    rms_norm_eps: z.number().positive().optional(),
    swiglu_limit: z.number().positive().optional(),
    rope_theta: z.number().positive().optional(),
    rope_scaling: ropeScalingSchema.nullable().optional(),
    rope_parameters: ropeScalingSchema.nullable().optional(),
    max_position_embeddings: posInt.optional(),
    initial_context_length: posInt.optional(),
    attention_bias: z.boolean().optional(),
    tie_word_embeddings: z.boolean().optional(),
    eos_token_id: tokenIds.nullable().optional(),
    pad_token_id: nonNegInt.nullable().optional(),
    bos_token_id: nonNegInt.nullable().optional(),
    torch_dtype: z.string().optional(),
    dtype: z.string().optional(),
    quantization_config: z
      .object({
        quant_method: z.string(),
        modules_to_not_convert: z.array(z.string()).optional(),
      })
      .loose()
      .nullable()
      .optional(),
  })
  .loose();

export type RawGptOssConfig = z.input<typeof rawSchema>;

/** The required config.json fields, in words, for "missing field" messages. */
const FIELD_WORDS: Record<string, string> = {
  vocab_size: 'the vocabulary size',
  hidden_size: 'the hidden (model) width',
  num_hidden_layers: 'the number of transformer layers',
  num_attention_heads: 'the number of query heads',
  num_local_experts: 'the number of MoE experts',
  intermediate_size: "each expert's intermediate width",
};

/** Formats zod issues as one line: `invalid gpt-oss config (file): missing field 'x' (...); y: message`. */
function formatIssues(err: z.ZodError, source: string, json: unknown): string {
  const parts = err.issues.map((i) => {
    const key = i.path.length ? i.path.map(String).join('.') : '(root)';
    let v: unknown = json;
    for (const k of i.path) v = v !== null && typeof v === 'object' ? (v as Record<PropertyKey, unknown>)[k as PropertyKey] : undefined;
    if (i.path.length && v === undefined) return `missing field '${key}'${FIELD_WORDS[key] ? ` (${FIELD_WORDS[key]}, a positive integer)` : ''}`;
    return `${key}: ${i.message.replace(/^Invalid input: /, '')}`;
  });
  if (json === null || typeof json !== 'object' || Array.isArray(json)) return `invalid gpt-oss config (${source}): expected a JSON object at the top level`;
  return `invalid gpt-oss config (${source}): ${parts.join('; ')}`;
}

/** Parses a config.json object into a resolved GptOssConfig; throws naming the key on bad or missing values. */
export function parseConfig(json: unknown, source = 'config.json'): GptOssConfig {
  const r = rawSchema.safeParse(json);
  if (!r.success) throw new Error(formatIssues(r.error, source, json));
  const c = r.data;
  const fail = (key: string, msg: string): never => {
    throw new Error(`invalid gpt-oss config (${source}): ${key}: ${msg}`);
  };
  if (c.model_type !== undefined && c.model_type !== 'gpt_oss') {
    fail('model_type', `expected "gpt_oss", got "${c.model_type}"`);
  }
  const numHeads = c.num_attention_heads;
  const numKvHeads = c.num_key_value_heads ?? numHeads;
  if (numHeads % numKvHeads !== 0) {
    fail('num_key_value_heads', `${numKvHeads} does not divide num_attention_heads ${numHeads}`);
  }
  const headDim = c.head_dim ?? c.hidden_size / numHeads;
  if (!Number.isInteger(headDim)) fail('head_dim', 'missing and hidden_size is not a multiple of num_attention_heads');
  if (headDim % 2 !== 0) fail('head_dim', `must be even for RoPE, got ${headDim}`);

  const k1 = c.experts_per_token;
  const k2 = c.num_experts_per_tok;
  if (k1 !== undefined && k2 !== undefined && k1 !== k2) {
    fail('experts_per_token', `${k1} disagrees with num_experts_per_tok ${k2}`);
  }
  const topK = k1 ?? k2;
  if (topK === undefined) fail('num_experts_per_tok', 'missing (neither experts_per_token nor num_experts_per_tok is set)');
  if (topK! > c.num_local_experts) fail('num_experts_per_tok', `${topK} exceeds num_local_experts ${c.num_local_experts}`);

  const L = c.num_hidden_layers;
  let layerTypes: LayerType[];
  if (c.layer_types) {
    if (c.layer_types.length !== L) {
      fail('layer_types', `has ${c.layer_types.length} entries but num_hidden_layers is ${L}`);
    }
    layerTypes = [...c.layer_types];
  } else {
    layerTypes = Array.from({ length: L }, (_, i) => (i % 2 === 0 ? 'sliding_attention' : 'full_attention'));
  }
  const slidingWindow = c.sliding_window ?? 128;
  if (layerTypes.includes('sliding_attention') && !(slidingWindow > 0)) fail('sliding_window', 'must be positive');

  // RoPE: rope_parameters (new) wins over rope_scaling (legacy); theta from inside either, else rope_theta.
  const rp = c.rope_parameters ?? c.rope_scaling ?? null;
  const rpKey = c.rope_parameters ? 'rope_parameters' : 'rope_scaling';
  const ropeType = rp?.rope_type ?? rp?.type ?? 'default';
  if (ropeType !== 'yarn' && ropeType !== 'default') {
    fail(`${rpKey}.rope_type`, `unsupported "${ropeType}" (gpt-oss uses "yarn")`);
  }
  const theta = rp?.rope_theta ?? c.rope_theta;
  if (theta === undefined) fail('rope_theta', 'missing (neither rope_theta nor rope_parameters.rope_theta is set)');
  const rope: RopeConfig =
    ropeType === 'yarn'
      ? {
          type: 'yarn',
          theta: theta!,
          factor: rp?.factor ?? fail(`${rpKey}.factor`, 'missing for yarn'),
          betaFast: rp?.beta_fast ?? 32,
          betaSlow: rp?.beta_slow ?? 1,
          originalMaxPositions:
            rp?.original_max_position_embeddings ?? c.initial_context_length ?? fail(`${rpKey}.original_max_position_embeddings`, 'missing for yarn'),
          truncate: rp?.truncate ?? true,
          ...(rp?.attention_factor !== undefined ? { attentionFactor: rp.attention_factor } : {}),
        }
      : { type: 'default', theta: theta!, factor: 1, betaFast: 32, betaSlow: 1, originalMaxPositions: c.max_position_embeddings ?? 4096, truncate: false };

  let quantization: GptOssConfig['quantization'] = null;
  if (c.quantization_config) {
    if (c.quantization_config.quant_method !== 'mxfp4') {
      fail('quantization_config.quant_method', `unsupported "${c.quantization_config.quant_method}" (only mxfp4)`);
    }
    quantization = { method: 'mxfp4', modulesToNotConvert: c.quantization_config.modules_to_not_convert ?? [] };
  }
  const eos = c.eos_token_id;
  const eosTokenIds = eos === undefined || eos === null ? [] : Array.isArray(eos) ? eos : [eos];
  for (const [key, id] of [
    ['eos_token_id', eosTokenIds.find((e) => e >= c.vocab_size)],
    ['pad_token_id', c.pad_token_id != null && c.pad_token_id >= c.vocab_size ? c.pad_token_id : undefined],
  ] as const) {
    if (id !== undefined) fail(key, `${id} is outside the vocabulary (vocab_size ${c.vocab_size})`);
  }
  return {
    vocabSize: c.vocab_size,
    hiddenSize: c.hidden_size,
    numLayers: L,
    numHeads,
    numKvHeads,
    headDim: headDim,
    numExperts: c.num_local_experts,
    topK: topK!,
    intermediateSize: c.intermediate_size,
    slidingWindow,
    layerTypes,
    rmsNormEps: c.rms_norm_eps ?? 1e-5,
    swigluLimit: c.swiglu_limit ?? 7,
    rope,
    maxPositions: c.max_position_embeddings ?? 131072,
    attentionBias: c.attention_bias ?? true,
    tieWordEmbeddings: c.tie_word_embeddings ?? false,
    eosTokenIds,
    padTokenId: c.pad_token_id ?? null,
    bosTokenId: c.bos_token_id ?? null,
    quantization,
    torchDtype: c.torch_dtype ?? c.dtype ?? 'bfloat16',
  };
}

/** Reads and parses `<dir>/config.json` (or the given file). */
export function readConfigFile(path: string): GptOssConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new Error(`cannot read gpt-oss config ${path}: ${(e as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`gpt-oss config ${path} is not valid JSON: ${(e as Error).message}`);
  }
  return parseConfig(json, path);
}

/** The config.json object for a resolved config (what save writes; parseConfig(toHfConfig(c)) == c). */
export function toHfConfig(c: GptOssConfig): Record<string, unknown> {
  const out: Record<string, unknown> = {
    architectures: ['GptOssForCausalLM'],
    model_type: 'gpt_oss',
    attention_bias: c.attentionBias,
    attention_dropout: 0.0,
    eos_token_id: c.eosTokenIds.length === 1 ? c.eosTokenIds[0] : c.eosTokenIds,
    pad_token_id: c.padTokenId,
    experts_per_token: c.topK,
    num_experts_per_tok: c.topK,
    head_dim: c.headDim,
    hidden_act: 'silu',
    hidden_size: c.hiddenSize,
    initial_context_length: c.rope.originalMaxPositions,
    initializer_range: 0.02,
    intermediate_size: c.intermediateSize,
    layer_types: c.layerTypes,
    max_position_embeddings: c.maxPositions,
    num_attention_heads: c.numHeads,
    num_hidden_layers: c.numLayers,
    num_key_value_heads: c.numKvHeads,
    num_local_experts: c.numExperts,
    output_router_logits: false,
    rms_norm_eps: c.rmsNormEps,
    rope_scaling:
      c.rope.type === 'yarn'
        ? {
            rope_type: 'yarn',
            factor: c.rope.factor,
            beta_fast: c.rope.betaFast,
            beta_slow: c.rope.betaSlow,
            original_max_position_embeddings: c.rope.originalMaxPositions,
            truncate: c.rope.truncate,
            ...(c.rope.attentionFactor !== undefined ? { attention_factor: c.rope.attentionFactor } : {}),
          }
        : null,
    rope_theta: c.rope.theta,
    sliding_window: c.slidingWindow,
    swiglu_limit: c.swigluLimit,
    tie_word_embeddings: c.tieWordEmbeddings,
    torch_dtype: c.torchDtype,
    use_cache: true,
    vocab_size: c.vocabSize,
  };
  if (c.bosTokenId !== null) out.bos_token_id = c.bosTokenId;
  if (c.quantization) {
    out.quantization_config = { quant_method: 'mxfp4', modules_to_not_convert: c.quantization.modulesToNotConvert };
  }
  return out;
}

// ---- presets -----------------------------------------------------------------------------------------------------
const HARMONY_VOCAB = 201088;

function preset(o: {
  layers: number;
  hidden: number;
  heads: number;
  kv: number;
  headDim: number;
  experts: number;
  topK: number;
  inter: number;
  vocab: number;
  window: number;
  eos: number[];
  pad: number;
  bos: number | null;
}): GptOssConfig {
  return {
    vocabSize: o.vocab,
    hiddenSize: o.hidden,
    numLayers: o.layers,
    numHeads: o.heads,
    numKvHeads: o.kv,
    headDim: o.headDim,
    numExperts: o.experts,
    topK: o.topK,
    intermediateSize: o.inter,
    slidingWindow: o.window,
    layerTypes: Array.from({ length: o.layers }, (_, i) => (i % 2 === 0 ? 'sliding_attention' : 'full_attention')),
    rmsNormEps: 1e-5,
    swigluLimit: 7,
    rope: { type: 'yarn', theta: 150000, factor: 32, betaFast: 32, betaSlow: 1, originalMaxPositions: 4096, truncate: false },
    maxPositions: 131072,
    attentionBias: true,
    tieWordEmbeddings: false,
    eosTokenIds: o.eos,
    padTokenId: o.pad,
    bosTokenId: o.bos,
    quantization: null,
    torchDtype: 'bfloat16',
  };
}

export type PresetName = 'gpt-oss-20b' | 'gpt-oss-120b' | 'gpt-oss-tiny' | 'gpt-oss-tiny-large' | 'gpt-oss-tiny-256';

export const PRESET_NAMES: readonly PresetName[] = ['gpt-oss-20b', 'gpt-oss-120b', 'gpt-oss-tiny', 'gpt-oss-tiny-large', 'gpt-oss-tiny-256'];

/**
 * Known shapes. gpt-oss-20b/120b: the released models. gpt-oss-tiny: the GPT-OSS architecture at toy size with
 * the real o200k_harmony vocabulary (the CPU default of the CLI). gpt-oss-tiny-large: a larger toy for one GPU
 * (4 layers, hidden 512, 8 query / 2 kv heads of head_dim 64, 8 experts top-4, intermediate 512, window 128;
 * 27.9M parameters besides the embedding and LM head, 234M with them on the real vocabulary).
 * gpt-oss-tiny-256: the fixture's shape (vocab 256).
 */
export function presetConfig(name: PresetName, overrides: Partial<GptOssConfig> = {}): GptOssConfig {
  let c: GptOssConfig;
  const harmony = { eos: [200002, 199999, 200012], pad: 199999, bos: 199998 };
  switch (name) {
    case 'gpt-oss-20b':
      c = preset({ layers: 24, hidden: 2880, heads: 64, kv: 8, headDim: 64, experts: 32, topK: 4, inter: 2880, vocab: HARMONY_VOCAB, window: 128, ...harmony });
      break;
    case 'gpt-oss-120b':
      c = preset({ layers: 36, hidden: 2880, heads: 64, kv: 8, headDim: 64, experts: 128, topK: 4, inter: 2880, vocab: HARMONY_VOCAB, window: 128, ...harmony });
      break;
    case 'gpt-oss-tiny':
      c = preset({ layers: 2, hidden: 64, heads: 4, kv: 2, headDim: 16, experts: 4, topK: 2, inter: 32, vocab: HARMONY_VOCAB, window: 8, ...harmony });
      break;
    case 'gpt-oss-tiny-large':
      c = preset({ layers: 4, hidden: 512, heads: 8, kv: 2, headDim: 64, experts: 8, topK: 4, inter: 512, vocab: HARMONY_VOCAB, window: 128, ...harmony });
      break;
    case 'gpt-oss-tiny-256':
      c = preset({ layers: 2, hidden: 64, heads: 4, kv: 2, headDim: 16, experts: 4, topK: 2, inter: 32, vocab: 256, window: 8, eos: [254], pad: 255, bos: null });
      break;
    default:
      throw new Error(`unknown gpt-oss preset '${name as string}' (${PRESET_NAMES.join(', ')})`);
  }
  const out = { ...c, ...overrides };
  if (overrides.numLayers !== undefined && overrides.layerTypes === undefined) {
    out.layerTypes = Array.from({ length: out.numLayers }, (_, i) => (i % 2 === 0 ? 'sliding_attention' : 'full_attention'));
  }
  return out;
}

/** Parameter count of a config (all experts). */
export function parameterCount(c: GptOssConfig): number {
  const H = c.hiddenSize;
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  const attn = q * H + q + 2 * (kv * H + kv) + H * q + H + c.numHeads;
  const moe = c.numExperts * H + c.numExperts + c.numExperts * (H * 2 * c.intermediateSize + 2 * c.intermediateSize + c.intermediateSize * H + H);
  const layer = attn + moe + 2 * H;
  return c.vocabSize * H * (c.tieWordEmbeddings ? 1 : 2) + c.numLayers * layer + H;
}
