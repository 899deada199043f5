// lora.ts: low-rank adapters (LoRA) on a frozen GPT-OSS base: the adapter set, its config and names, init, the
// PEFT file layout (save/load) and the merge into a bf16 HF checkpoint.
//
// A target projection W (frozen, bf16) gets W_eff = W + scale·ΔW with scale = alpha / rank, applied at run time in
// factor form by the layer (src/model/layer.ts), never merged into the base:
//   q/k/v/o_proj  (x·Wᵀ, W [out, in]):  y += scale·(x·Aᵀ)·Bᵀ           A [r, in], B [out, r]   (PEFT's own layout)
//   router        (x·Wᵀ, W [E, H]):     the same form, A [r, H], B [E, r]; applied as a merged router weight per call
//                                       (an [E, H] product, 92k values at gpt-oss-20b size)
//   experts       (x·W[e], W [E,in,out]): out_e += scale·(x·A[e])·B[e]  A [E, in, r], B [E, r, out] (the MoE op's
//                                       layout; the PEFT file layout differs, see savePeft)
//   lm_head       (h·Wᵀ, W [V, H]):     A [r, H], B [V, r] (PEFT's nn.Linear layout); the trainer's forward uses
//                                       the merged head bf16(W + scale·B·A) [V, H] per call (the fused chunked
//                                       log-prob op takes one head matrix; its backward's [V, H] gradient gives dA,
//                                       dB as the router's); the engine's logits add scale·(h·Aᵀ)·Bᵀ in factor form
//   embed_tokens  (E[id], E [V, H]):    x += scale·A[id]·Bᵀ  A [V, r], B [H, r] (PEFT's nn.Embedding LoRA stores
//                                       lora_embedding_A [r, V] = our Aᵀ, so a token's row is a gather; B as PEFT)
// Adapters live on the model's device in one dtype: f32 (the CPU default: they are then the trainer's fp32 masters
// themselves) or bf16 (the CUDA default: the GEMMs' own operand dtype, so the run-time products need no casts; the
// trainer keeps fp32 masters beside them and AdamW rewrites the bf16 copy, as for full fine-tuning). B starts at
// zero, so a fresh adapter set computes exactly the base model; A is drawn as PEFT does (kaiming-uniform with
// a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))). The embedding is PEFT's other way round: A zero, B normal(0, 1).
//
// Dropout (PEFT's lora_dropout p): in training forwards only, an adapter reads dropout(x) (inverted: kept elements
// scaled by 1/(1-p)), one mask per adapted module, y = W·x + b + scale·B·A·dropout(x) (src/model/layer.ts). Only
// q/k/v/o_proj take it; checkLoraSpec refuses p > 0 with the other targets, as PEFT does or would have to.
//
// One copy of the base: a GptOssModel holds the adapters beside its weights (model.lora); the trainer's forward and
// backward and the inference engine's steps (DecoderLayer.step) read the same tensors, so an optimizer step is seen
// by the next generation without any weight transfer.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tensor } from '../tensor.ts';
import type { GptOssConfig } from './config.ts';
import { toHfConfig } from './config.ts';
import { layerPrefix, type GptOssWeights } from './weights.ts';
import { Checkpoint, saveCheckpoint, tensorToSave, writeSafetensors, type TensorToSave } from './safetensors.ts';
import { matmul } from '../ops/gemm.ts';
import { cast } from '../ops/elementwise.ts';
import { embeddingForward } from '../ops/embedding.ts';

/**
 * Target names: PEFT's module names for the attention projections, the LM head and the embedding
 * (target_modules); gate_up_proj/down_proj/router for the MoE (target_parameters).
 */
export const LORA_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_up_proj', 'down_proj', 'router', 'lm_head', 'embed_tokens'] as const;
export type LoraTarget = (typeof LORA_TARGETS)[number];
/** The default targets (the attention projections, as PEFT's usual GPT-OSS recipes). */
export const DEFAULT_LORA_TARGETS: readonly LoraTarget[] = ['q_proj', 'k_proj', 'v_proj', 'o_proj'];
const EXPERT_TARGETS: readonly LoraTarget[] = ['gate_up_proj', 'down_proj'];
/** Targets outside the decoder layers (one pair for the model, not one per layer). */
export const MODEL_TARGETS: readonly LoraTarget[] = ['lm_head', 'embed_tokens'];
const isModelTarget = (t: LoraTarget): boolean => MODEL_TARGETS.includes(t);

export interface LoraSpec {
  rank: number;
  alpha: number;
  /**
   * PEFT's lora_dropout: the probability, in [0, 1), of zeroing an element of an adapter's input in training
   * forwards (kept ones scaled by 1/(1-p)). Above 0 only with q/k/v/o_proj targets (checkLoraSpec).
   */
  dropout: number;
  targets: readonly LoraTarget[];
}

/**
 * Validates a spec; errors name the config key (trainer.policy.model.lora.*). training (default true): also refuse
 * dropout > 0 with the targets it cannot train with (DROPOUT_REFUSED); false for adapters only run or merged (a
 * loaded PEFT file: its lora_dropout is a training setting that inference does not apply, as PEFT's eval mode).
 */
export function checkLoraSpec(s: LoraSpec, opts: { training?: boolean } = {}): void {
  const k = 'trainer.policy.model.lora';
  if (!Number.isInteger(s.rank) || s.rank < 1) throw new Error(`${k}.rank must be a positive integer, got ${s.rank}`);
  if (!(s.alpha > 0)) throw new Error(`${k}.alpha must be positive, got ${s.alpha}`);
  if (!(s.dropout >= 0 && s.dropout < 1)) {
    throw new Error(`${k}.dropout must be in [0, 1), got ${s.dropout} (1 would zero every adapter input: no training signal)`);
  }
  if (s.targets.length === 0) throw new Error(`${k}.target_modules is empty: name at least one of ${LORA_TARGETS.join(', ')}`);
  for (const t of s.targets) {
    if (!LORA_TARGETS.includes(t)) throw new Error(`${k}.target_modules: unknown target '${t}' (known: ${LORA_TARGETS.join(', ')})`);
  }
  if (new Set(s.targets).size !== s.targets.length) throw new Error(`${k}.target_modules lists a target twice: ${s.targets.join(', ')}`);
  if (s.dropout > 0 && (opts.training ?? true)) {
    for (const t of s.targets) {
      const why = DROPOUT_REFUSED[t];
      if (why) throw new Error(`${k}.dropout=${s.dropout} with target '${t}' in ${k}.target_modules: ${why}; use dropout 0 or only q/k/v/o_proj targets`);
    }
  }
}

/** Why dropout > 0 is refused with a target (absent: supported, the attention projections). */
const DROPOUT_REFUSED: Partial<Record<LoraTarget, string>> = {
  gate_up_proj: "PEFT's LoRA for target_parameters (lora.ParamWrapper) does not work with lora_dropout != 0 (it raises)",
  down_proj: "PEFT's LoRA for target_parameters (lora.ParamWrapper) does not work with lora_dropout != 0 (it raises)",
  router: "PEFT's LoRA for target_parameters (lora.ParamWrapper, how the router weight is adapted) does not work with lora_dropout != 0 (it raises)",
  lm_head:
    "the training forward merges the LM-head adapter into the head of the fused log-prob op (W + scale·B·A), which takes " +
    'one head matrix and no per-token input mask, so a dropout on the adapter input cannot be applied there',
  embed_tokens:
    "PEFT's Embedding LoRA applies no dropout (its forward gathers lora_embedding_A rows by token id and never calls " +
    'lora_dropout), so PEFT would silently ignore the setting; refused rather than ignored',
};

export const loraScale = (s: LoraSpec): number => s.alpha / s.rank;

/** One adapter pair (layouts in the header). */
export interface LoraPair {
  A: Tensor;
  B: Tensor;
}

/** The adapters of one decoder layer, by target (absent: not adapted). */
export interface LayerLora {
  q?: LoraPair;
  k?: LoraPair;
  v?: LoraPair;
  o?: LoraPair;
  router?: LoraPair;
  gateUp?: LoraPair;
  down?: LoraPair;
}

/** LayerLora field of each per-layer target (the model targets live in LoraAdapters.head / .embed). */
const FIELD: Partial<Record<LoraTarget, keyof LayerLora>> = {
  q_proj: 'q',
  k_proj: 'k',
  v_proj: 'v',
  o_proj: 'o',
  router: 'router',
  gate_up_proj: 'gateUp',
  down_proj: 'down',
};

/**
 * Checkpoint-style module path of a target within layer l (our adapter names: `${path}.lora_A` / `.lora_B`); the
 * model targets ignore l (`lm_head`, `model.embed_tokens`).
 */
export function loraModulePath(l: number, t: LoraTarget): string {
  const p = layerPrefix(l);
  switch (t) {
    case 'lm_head':
      return 'lm_head';
    case 'embed_tokens':
      return 'model.embed_tokens';
    case 'q_proj':
    case 'k_proj':
    case 'v_proj':
    case 'o_proj':
      return `${p}.self_attn.${t}`;
    case 'router':
      return `${p}.mlp.router`;
    case 'gate_up_proj':
    case 'down_proj':
      return `${p}.mlp.experts.${t}`;
  }
}

/** [in, out] of a target's base weight (as x·W_effᵀ or x·W_eff[e] sees it). */
function targetDims(c: GptOssConfig, t: LoraTarget): { in: number; out: number; experts: boolean } {
  const H = c.hiddenSize, qd = c.numHeads * c.headDim, kvd = c.numKvHeads * c.headDim, I = c.intermediateSize;
  switch (t) {
    case 'q_proj':
      return { in: H, out: qd, experts: false };
    case 'k_proj':
    case 'v_proj':
      return { in: H, out: kvd, experts: false };
    case 'o_proj':
      return { in: qd, out: H, experts: false };
    case 'router':
      return { in: H, out: c.numExperts, experts: false };
    case 'gate_up_proj':
      return { in: H, out: 2 * I, experts: true };
    case 'down_proj':
      return { in: I, out: H, experts: true };
    case 'lm_head':
      return { in: H, out: c.vocabSize, experts: false };
    case 'embed_tokens':
      // nn.Embedding's in/out as PEFT names them (num_embeddings, embedding_dim).
      return { in: c.vocabSize, out: H, experts: false };
  }
}

/** Shapes of a target's A and B in our layout (header). */
export function loraShapes(c: GptOssConfig, t: LoraTarget, r: number): { A: number[]; B: number[] } {
  const d = targetDims(c, t);
  const E = c.numExperts;
  if (t === 'embed_tokens') return { A: [d.in, r], B: [d.out, r] };
  return d.experts ? { A: [E, d.in, r], B: [E, r, d.out] } : { A: [r, d.in], B: [d.out, r] };
}

/** xorshift32 uniform stream in [0, 1) (seeded per tensor name, as weights.ts does for random weights). */
function uniforms(n: number, seedStr: string, seed: number): Float32Array {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < seedStr.length; i++) h = Math.imul(h ^ seedStr.charCodeAt(i), 0x01000193) >>> 0;
  let s = h || 0x9e3779b9;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = (s >>> 0) / 4294967296;
  }
  return out;
}

/** Standard normal values (Box-Muller over the uniform stream). */
function normals(n: number, seedStr: string, seed: number): Float32Array {
  const u = uniforms(2 * n, seedStr, seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.sqrt(-2 * Math.log(1 - u[2 * i]!)) * Math.cos(2 * Math.PI * u[2 * i + 1]!);
  return out;
}

/** The per-layer targets of a spec (MODEL_TARGETS excluded). */
export function layerTargets(s: LoraSpec): LoraTarget[] {
  return s.targets.filter((t) => !isModelTarget(t));
}

export interface LoraInitOptions {
  seed?: number;
  /** The adapters' dtype (default f32). */
  dtype?: LoraDType;
  /** Test hook: B drawn like A (scaled by bStd) instead of zeros, so the adapters change the model. */
  bStd?: number;
}

/** Adapter storage dtypes (see the header). */
export type LoraDType = 'f32' | 'bf16';

/** The adapters of a model: every layer's pairs for the spec's targets, in one dtype on one device. */
export class LoraAdapters {
  readonly spec: LoraSpec;
  readonly config: GptOssConfig;
  readonly device: string;
  readonly scale: number;
  /** Our adapter names (`${loraModulePath}.lora_A|lora_B`) -> tensor, layer by layer in target order. */
  readonly params: Map<string, Tensor>;
  readonly layers: LayerLora[];
  /** lm_head's pair (A [r, H], B [V, r]) when targeted. */
  readonly head?: LoraPair;
  /** embed_tokens' pair (A [V, r], B [H, r]) when targeted. */
  readonly embed?: LoraPair;
  readonly dtype: LoraDType;

  /** Takes `params` over (every name of the spec must be there with its shape, all of one dtype, f32 or bf16). */
  constructor(config: GptOssConfig, spec: LoraSpec, device: string, params: Map<string, Tensor>) {
    // The training checks (dropout targets, dropout on CUDA) are init's and LoraPolicy's: loaded adapters may be
    // merged or served, where dropout does not apply.
    checkLoraSpec(spec, { training: false });
    const first = params.values().next().value as Tensor | undefined;
    this.dtype = first?.dtype === 'bf16' ? 'bf16' : 'f32';
    this.spec = spec;
    this.config = config;
    this.device = device;
    this.scale = loraScale(spec);
    this.params = params;
    this.layers = [];
    const pair = (l: number, t: LoraTarget): LoraPair => {
      const p = loraModulePath(l, t);
      const sh = loraShapes(config, t, spec.rank);
      const get = (n: string, shape: number[]): Tensor => {
        const x = params.get(n);
        if (!x) throw new Error(`LoraAdapters: missing adapter tensor '${n}'`);
        if (x.dtype !== this.dtype || x.device !== device || x.shape.length !== shape.length || x.shape.some((d, i) => d !== shape[i])) {
          throw new Error(`LoraAdapters: '${n}' is ${x.toString()}, expected ${this.dtype} [${shape.join(', ')}] on ${device}`);
        }
        return x;
      };
      return { A: get(`${p}.lora_A`, sh.A), B: get(`${p}.lora_B`, sh.B) };
    };
    if (config.tieWordEmbeddings && spec.targets.some(isModelTarget)) {
      // One tensor serves as both: a merged export could not hold two different deltas of it.
      throw new Error('trainer.policy.model.lora.target_modules: lm_head / embed_tokens need untied word embeddings (tie_word_embeddings is true)');
    }
    for (let l = 0; l < config.numLayers; l++) {
      const ll: LayerLora = {};
      for (const t of layerTargets(spec)) ll[FIELD[t]!] = pair(l, t);
      this.layers.push(ll);
    }
    if (spec.targets.includes('lm_head')) this.head = pair(0, 'lm_head');
    if (spec.targets.includes('embed_tokens')) this.embed = pair(0, 'embed_tokens');
  }

  /**
   * The LM head with its adapter merged: a fresh bf16(W + scale·B·A) [V, H] (the caller frees it), or null without
   * an lm_head adapter. The trainer's log-probs and the merged export use this form (the engine's logits add the
   * adapter in factor form, GptOssModel.logits).
   */
  mergedHead(w: GptOssWeights): Tensor | null {
    return this.head ? this.mergedParam(w, 0, 'lm_head') : null;
  }

  /**
   * Adds the embedding adapter to the gathered base rows: x bf16 [N, H] (embeddingForward of the base) ->
   * a fresh bf16(x + scale·A[ids]·Bᵀ) [N, H] (x is freed). Without an embed_tokens adapter, x itself.
   */
  embedAdapted(x: Tensor, ids: Tensor, opts: { checked?: boolean } = {}): Tensor {
    if (!this.embed) return x;
    const u = embeddingForward(this.embed.A, ids, opts); // [N, r]
    const acc = cast(x, 'f32');
    x.dispose();
    matmul(u, this.embed.B, { transB: true, alpha: this.scale, out: acc, accumulate: true }); // += scale·u·Bᵀ [N, H]
    u.dispose();
    const y = cast(acc, 'bf16');
    acc.dispose();
    return y;
  }

  /** Fresh adapters: A kaiming-uniform (PEFT's default), B zero (the model starts as the base). */
  static init(config: GptOssConfig, spec: LoraSpec, device: string, opts: LoraInitOptions = {}): LoraAdapters {
    checkLoraSpec(spec);
    const seed = opts.seed ?? 0;
    const dtype = opts.dtype ?? 'f32';
    const params = new Map<string, Tensor>();
    const draw = (name: string, shape: number[], bound: number): Tensor => {
      const u = uniforms(shape.reduce((a, b) => a * b, 1), name, seed);
      for (let i = 0; i < u.length; i++) u[i] = (2 * u[i]! - 1) * bound;
      return Tensor.from(u, shape, { dtype, device });
    };
    const add = (l: number, t: LoraTarget): void => {
      const p = loraModulePath(l, t);
      const sh = loraShapes(config, t, spec.rank);
      if (t === 'embed_tokens') {
        // PEFT's Embedding LoRA: A zero, B normal(0, 1) (nn.Embedding's init). Test hook bStd: A drawn too.
        params.set(`${p}.lora_A`, opts.bStd ? draw(`${p}.lora_A`, sh.A, opts.bStd * Math.sqrt(3)) : Tensor.zeros(sh.A, { dtype, device }));
        params.set(`${p}.lora_B`, Tensor.from(normals(sh.B[0]! * sh.B[1]!, `${p}.lora_B`, seed), sh.B, { dtype, device }));
        return;
      }
      const fanIn = targetDims(config, t).in;
      params.set(`${p}.lora_A`, draw(`${p}.lora_A`, sh.A, 1 / Math.sqrt(fanIn)));
      params.set(`${p}.lora_B`, opts.bStd ? draw(`${p}.lora_B`, sh.B, opts.bStd * Math.sqrt(3)) : Tensor.zeros(sh.B, { dtype, device }));
    };
    for (let l = 0; l < config.numLayers; l++) for (const t of layerTargets(spec)) add(l, t);
    for (const t of spec.targets.filter(isModelTarget)) add(0, t);
    return new LoraAdapters(config, spec, device, params);
  }

  names(): string[] {
    return [...this.params.keys()];
  }

  /** The pair of target t (in layer l for the per-layer targets). */
  pairOf(l: number, t: LoraTarget): LoraPair {
    const p = t === 'lm_head' ? this.head : t === 'embed_tokens' ? this.embed : this.layers[l]?.[FIELD[t]!];
    if (!p) throw new Error(`LoraAdapters: no '${t}' adapter${isModelTarget(t) ? '' : ` in layer ${l}`}`);
    return p;
  }

  /** [layer, target] of every adapter pair (the model targets once, as layer 0), in the PEFT file's order. */
  private pairs(): [number, LoraTarget][] {
    const out: [number, LoraTarget][] = [];
    for (let l = 0; l < this.config.numLayers; l++) for (const t of layerTargets(this.spec)) out.push([l, t]);
    for (const t of this.spec.targets.filter(isModelTarget)) out.push([0, t]);
    return out;
  }

  numParameters(): number {
    let n = 0;
    for (const t of this.params.values()) n += t.numel;
    return n;
  }

  /** Copies values from another adapter set of the same spec (e.g. one loaded from disk; any dtype). */
  copyFrom(o: LoraAdapters): void {
    for (const [n, t] of this.params) {
      const s = o.params.get(n);
      if (!s) throw new Error(`LoraAdapters.copyFrom: the source lacks '${n}'`);
      if (s.dtype === t.dtype) t.copyFrom(s);
      else {
        const c = cast(s, t.dtype);
        t.copyFrom(c);
        c.dispose();
      }
    }
  }

  dispose(): void {
    for (const t of this.params.values()) t.dispose();
  }

  // ---- files -------------------------------------------------------------------------------------------------
  /**
   * Saves in the PEFT layout: `adapter_config.json` + `adapter_model.safetensors` (F32), tensor names as PEFT writes
   * them for transformers' GptOssForCausalLM (adapter name "default" dropped):
   *   base_model.model.model.layers.N.self_attn.{q,k,v,o}_proj.lora_A.weight [r, in], .lora_B.weight [out, r]
   *     (target_modules; nn.Linear LoRA)
   *   base_model.model.model.layers.N.mlp.router.lora_A.weight [r, H], .lora_B.weight [E, r]
   *     (target_parameters "mlp.router.weight": GptOssTopKRouter is not an nn.Linear, so PEFT wraps its 2-d weight
   *     with ParamWrapper: num_experts 1, in = H, out = E)
   *   experts (target_parameters "mlp.experts.gate_up_proj", "mlp.experts.down_proj"; ParamWrapper on the 3-d
   *     parameters [E, in, out]): lora_A.weight [r·E, in] (row e·r + j = our A[e][:, j]), lora_B.weight [out, r·E]
   *     (column j·E + e = our B[e][j, :]): PEFT's delta is einsum("o r e, e r i -> e i o", B.reshape(out, r, E),
   *     A.reshape(E, r, in))·scale. Two parameters of one module nest their wrappers in target_parameters order:
   *     the first listed (gate_up_proj) is the inner one, `mlp.experts.base_layer.lora_*`, the second (down_proj)
   *     `mlp.experts.lora_*`; a single expert target is `mlp.experts.lora_*`.
   *   base_model.model.lm_head.lora_A.weight [r, H], .lora_B.weight [V, r] (target_modules "lm_head"; nn.Linear LoRA)
   *   base_model.model.model.embed_tokens.lora_embedding_A [r, V] (= our Aᵀ), .lora_embedding_B [H, r]
   *     (target_modules "embed_tokens"; PEFT's Embedding LoRA keeps plain Parameters, hence no ".weight")
   */
  savePeft(dir: string, opts: { baseModel?: string; values?: ReadonlyMap<string, Tensor> } = {}): void {
    mkdirSync(dir, { recursive: true });
    const tensors: TensorToSave[] = [];
    for (const [l, t] of this.pairs()) {
      // opts.values: the same names with other tensors (a trainer's fp32 masters of bf16 adapters).
      const pth = loraModulePath(l, t);
      const A = opts.values?.get(`${pth}.lora_A`) ?? this.pairOf(l, t).A;
      const B = opts.values?.get(`${pth}.lora_B`) ?? this.pairOf(l, t).B;
      const names = peftNames(this.spec.targets, l, t);
      let a: Float32Array, b: Float32Array, shA: number[], shB: number[];
      if (EXPERT_TARGETS.includes(t)) {
        [a, b] = expertToPeft(A, B);
        [shA, shB] = peftExpertShapes(A, B);
      } else if (t === 'embed_tokens') {
        const [V, r] = A.shape as [number, number];
        [a, b, shA, shB] = [transpose2d(A.toFloat32(), V, r), B.toFloat32(), [r, V], B.shape];
      } else [a, b, shA, shB] = [A.toFloat32(), B.toFloat32(), A.shape, B.shape];
      tensors.push({ name: names.A, dtype: 'F32', shape: shA, data: new Uint8Array(a.buffer) });
      tensors.push({ name: names.B, dtype: 'F32', shape: shB, data: new Uint8Array(b.buffer) });
    }
    writeSafetensors(join(dir, 'adapter_model.safetensors'), tensors, { format: 'pt' });
    const modules = this.spec.targets.filter((t) => (t.endsWith('_proj') && !EXPERT_TARGETS.includes(t)) || isModelTarget(t));
    const params = [
      ...(this.spec.targets.includes('gate_up_proj') ? ['mlp.experts.gate_up_proj'] : []),
      ...(this.spec.targets.includes('down_proj') ? ['mlp.experts.down_proj'] : []),
      ...(this.spec.targets.includes('router') ? ['mlp.router.weight'] : []),
    ];
    const cfg = {
      peft_type: 'LORA',
      task_type: 'CAUSAL_LM',
      base_model_name_or_path: opts.baseModel ?? null,
      r: this.spec.rank,
      lora_alpha: this.spec.alpha,
      lora_dropout: this.spec.dropout,
      target_modules: modules,
      target_parameters: params.length ? params : null,
      bias: 'none',
      fan_in_fan_out: false,
      use_rslora: false,
      use_dora: false,
      init_lora_weights: true,
      inference_mode: true,
      modules_to_save: null,
      layers_to_transform: null,
      rank_pattern: {},
      alpha_pattern: {},
    };
    writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify(cfg, null, 2) + '\n');
  }

  /** Loads what savePeft wrote (or a PEFT adapter of the same layout) for a base of `config` (default dtype f32). */
  static loadPeft(dir: string, config: GptOssConfig, device: string, opts: { dtype?: LoraDType } = {}): LoraAdapters {
    const dtype = opts.dtype ?? 'f32';
    const cfgPath = join(dir, 'adapter_config.json');
    if (!existsSync(cfgPath)) throw new Error(`LoRA adapter ${dir}: adapter_config.json not found`);
    const cfg = JSON.parse(readFileSync(cfgPath, 'utf8')) as Record<string, unknown>;
    const bad = (why: string): Error => new Error(`LoRA adapter ${cfgPath}: ${why}`);
    if (cfg.peft_type !== 'LORA') throw bad(`peft_type is ${JSON.stringify(cfg.peft_type)}, expected "LORA"`);
    for (const k of ['use_rslora', 'use_dora', 'fan_in_fan_out'] as const) if (cfg[k]) throw bad(`${k} is not supported`);
    if (cfg.bias !== undefined && cfg.bias !== 'none') throw bad(`bias ${JSON.stringify(cfg.bias)} is not supported (only "none")`);
    for (const k of ['rank_pattern', 'alpha_pattern'] as const) {
      if (cfg[k] && Object.keys(cfg[k] as object).length) throw bad(`${k} (per-module ranks/alphas) is not supported`);
    }
    if (cfg.layers_to_transform != null) throw bad('layers_to_transform is not supported (every layer is adapted)');
    const mods = cfg.target_modules;
    if (!Array.isArray(mods)) throw bad(`target_modules must be a list of module names, got ${JSON.stringify(mods)}`);
    const targets: LoraTarget[] = [];
    for (const m of mods as string[]) {
      if (!['q_proj', 'k_proj', 'v_proj', 'o_proj', 'lm_head', 'embed_tokens'].includes(m)) throw bad(`target_modules: unsupported module '${m}'`);
      targets.push(m as LoraTarget);
    }
    const tp = (cfg.target_parameters ?? []) as string[];
    if (!Array.isArray(tp)) throw bad('target_parameters must be a list');
    const fromParam: Record<string, LoraTarget> = {
      'mlp.experts.gate_up_proj': 'gate_up_proj',
      'mlp.experts.down_proj': 'down_proj',
      'mlp.router.weight': 'router',
    };
    const experts = tp.filter((p) => p.startsWith('mlp.experts.'));
    if (experts.length === 2 && experts[0] !== 'mlp.experts.gate_up_proj') {
      throw bad('target_parameters lists down_proj before gate_up_proj: that nesting order is not supported');
    }
    for (const p of tp) {
      const t = fromParam[p];
      if (!t) throw bad(`target_parameters: unsupported parameter '${p}'`);
      targets.push(t);
    }
    const dropout = cfg.lora_dropout ?? 0;
    if (typeof dropout !== 'number') throw bad(`lora_dropout must be a number, got ${JSON.stringify(cfg.lora_dropout)}`);
    const spec: LoraSpec = { rank: Number(cfg.r), alpha: Number(cfg.lora_alpha), dropout, targets: LORA_TARGETS.filter((t) => targets.includes(t)) };
    try {
      checkLoraSpec(spec, { training: false });
    } catch (e) {
      throw bad((e as Error).message);
    }
    const file = join(dir, 'adapter_model.safetensors');
    if (!existsSync(file)) throw new Error(`LoRA adapter ${dir}: adapter_model.safetensors not found`);
    const ck = Checkpoint.open(file);
    const params = new Map<string, Tensor>();
    const pairs: [number, LoraTarget][] = [];
    for (let l = 0; l < config.numLayers; l++) for (const t of layerTargets(spec)) pairs.push([l, t]);
    for (const t of spec.targets.filter(isModelTarget)) pairs.push([0, t]);
    try {
      for (const [l, t] of pairs) {
        const names = peftNames(spec.targets, l, t);
        const sh = loraShapes(config, t, spec.rank);
        const p = loraModulePath(l, t);
        if (EXPERT_TARGETS.includes(t)) {
          const E = config.numExperts, r = spec.rank;
          const [inD, outD] = [sh.A[1]!, sh.B[2]!];
          const a = ck.load(names.A, { device: 'cpu', dtype: 'f32', shape: [r * E, inD] });
          const b = ck.load(names.B, { device: 'cpu', dtype: 'f32', shape: [outD, r * E] });
          const [A, B] = expertFromPeft(a.toFloat32(), b.toFloat32(), E, r, inD, outD);
          a.dispose();
          b.dispose();
          params.set(`${p}.lora_A`, Tensor.from(A, sh.A, { dtype, device }));
          params.set(`${p}.lora_B`, Tensor.from(B, sh.B, { dtype, device }));
        } else if (t === 'embed_tokens') {
          // lora_embedding_A [r, V] -> our A [V, r].
          const [V, r] = sh.A as [number, number];
          const a = ck.load(names.A, { device: 'cpu', dtype: 'f32', shape: [r, V] });
          params.set(`${p}.lora_A`, Tensor.from(transpose2d(a.toFloat32(), r, V), sh.A, { dtype, device }));
          a.dispose();
          params.set(`${p}.lora_B`, ck.load(names.B, { device, dtype, shape: sh.B }));
        } else {
          params.set(`${p}.lora_A`, ck.load(names.A, { device, dtype, shape: sh.A }));
          params.set(`${p}.lora_B`, ck.load(names.B, { device, dtype, shape: sh.B }));
        }
      }
    } catch (e) {
      for (const t of params.values()) t.dispose();
      throw e;
    } finally {
      ck.close();
    }
    return new LoraAdapters(config, spec, device, params);
  }

  // ---- merge -------------------------------------------------------------------------------------------------------
  /** Checkpoint name of the base parameter a target adapts in layer l (q/k/v: the per-projection names). */
  baseParamName(l: number, t: LoraTarget): string {
    if (t === 'router') return `${layerPrefix(l)}.mlp.router.weight`;
    if (isModelTarget(t)) return `${loraModulePath(l, t)}.weight`;
    return EXPERT_TARGETS.includes(t) ? loraModulePath(l, t) : `${loraModulePath(l, t)}.weight`;
  }

  /** Base parameter name -> [layer, target] of every adapted parameter. */
  adaptedParams(): Map<string, [number, LoraTarget]> {
    const m = new Map<string, [number, LoraTarget]>();
    for (const [l, t] of this.pairs()) m.set(this.baseParamName(l, t), [l, t]);
    return m;
  }

  /** A fresh bf16 tensor W + scale·ΔW for target t of layer l (the base is untouched). */
  mergedParam(w: GptOssWeights, l: number, t: LoraTarget): Tensor {
    const { A, B } = this.pairOf(l, t);
    const base = w.params.get(this.baseParamName(l, t))!;
    const m = base.clone();
    if (t === 'embed_tokens') {
      // E [V, H] += scale·A·Bᵀ (= scale·(B·A_peft)ᵀ, PEFT's get_delta_weight for an Embedding).
      matmul(A, B, { out: m, accumulate: true, alpha: this.scale, transB: true });
    } else if (EXPERT_TARGETS.includes(t)) {
      // Per expert: W[e] [in, out] += scale·A[e]·B[e].
      for (let e = 0; e < this.config.numExperts; e++) {
        const we = m.slice(e, e + 1), ae = A.slice(e, e + 1), be = B.slice(e, e + 1);
        const wv = we.view(base.shape.slice(1)), av = ae.view(A.shape.slice(1)), bv = be.view(B.shape.slice(1));
        matmul(av, bv, { out: wv, accumulate: true, alpha: this.scale });
        [we, ae, be, wv, av, bv].forEach((x) => x.dispose());
      }
    } else {
      // W [out, in] += scale·B·A.
      matmul(B, A, { out: m, accumulate: true, alpha: this.scale });
    }
    return m;
  }
}

/**
 * Exports base + adapters merged (W + scale·ΔW, rounded to bf16 once) as a HF checkpoint in `dir` (sharded
 * safetensors + config.json, as GptOssWeights.save writes): loadModel and transformers load it as a plain model.
 * Merged tensors are made one at a time as the writer reaches them; the base stays untouched.
 */
export function saveMergedCheckpoint(w: GptOssWeights, a: LoraAdapters, dir: string, opts: { maxShardBytes?: number } = {}): string[] {
  mkdirSync(dir, { recursive: true });
  const adapted = a.adaptedParams();
  const tensors: TensorToSave[] = w.names().map((n) => {
    const at = adapted.get(n);
    const base = tensorToSave(n, w.params.get(n)!, 'BF16');
    if (!at) return base;
    return {
      ...base,
      data: () => {
        const m = a.mergedParam(w, at[0], at[1]);
        try {
          return new Uint8Array(m.toBuffer());
        } finally {
          m.dispose();
        }
      },
    };
  });
  return saveCheckpoint(dir, tensors, {
    maxShardBytes: opts.maxShardBytes,
    extraFiles: { 'config.json': JSON.stringify(toHfConfig(w.config), null, 2) + '\n' },
  });
}

/** PEFT tensor names of a target's pair in layer l (see savePeft). */
function peftNames(targets: readonly LoraTarget[], l: number, t: LoraTarget): { A: string; B: string } {
  if (t === 'lm_head') return { A: 'base_model.model.lm_head.lora_A.weight', B: 'base_model.model.lm_head.lora_B.weight' };
  if (t === 'embed_tokens') return { A: 'base_model.model.model.embed_tokens.lora_embedding_A', B: 'base_model.model.model.embed_tokens.lora_embedding_B' };
  const base = `base_model.model.${layerPrefix(l)}`;
  let mod: string;
  if (t === 'router') mod = `${base}.mlp.router`;
  else if (EXPERT_TARGETS.includes(t)) {
    const both = targets.includes('gate_up_proj') && targets.includes('down_proj');
    mod = both && t === 'gate_up_proj' ? `${base}.mlp.experts.base_layer` : `${base}.mlp.experts`;
  } else mod = `${base}.self_attn.${t}`;
  return { A: `${mod}.lora_A.weight`, B: `${mod}.lora_B.weight` };
}

/** [rows, cols] row-major -> its transpose [cols, rows] (host f32). */
function transpose2d(x: Float32Array, rows: number, cols: number): Float32Array {
  const y = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) y[j * rows + i] = x[i * cols + j]!;
  return y;
}

function peftExpertShapes(A: Tensor, B: Tensor): [number[], number[]] {
  const [E, inD, r] = A.shape as [number, number, number];
  const outD = B.shape[2]!;
  return [[r * E, inD], [outD, r * E]];
}

/** Our expert layout (A [E,in,r], B [E,r,out]) -> PEFT's (A [r·E, in], B [out, r·E]), host f32. */
function expertToPeft(A: Tensor, B: Tensor): [Float32Array, Float32Array] {
  const [E, inD, r] = A.shape as [number, number, number];
  const outD = B.shape[2]!;
  const a = A.toFloat32(), b = B.toFloat32();
  const pa = new Float32Array(r * E * inD), pb = new Float32Array(outD * r * E);
  for (let e = 0; e < E; e++)
    for (let j = 0; j < r; j++) {
      for (let i = 0; i < inD; i++) pa[(e * r + j) * inD + i] = a[(e * inD + i) * r + j]!;
      for (let o = 0; o < outD; o++) pb[o * r * E + j * E + e] = b[(e * r + j) * outD + o]!;
    }
  return [pa, pb];
}

/** The inverse of expertToPeft. */
function expertFromPeft(pa: Float32Array, pb: Float32Array, E: number, r: number, inD: number, outD: number): [Float32Array, Float32Array] {
  const a = new Float32Array(E * inD * r), b = new Float32Array(E * r * outD);
  for (let e = 0; e < E; e++)
    for (let j = 0; j < r; j++) {
      for (let i = 0; i < inD; i++) a[(e * inD + i) * r + j] = pa[(e * r + j) * inD + i]!;
      for (let o = 0; o < outD; o++) b[(e * r + j) * outD + o] = pb[o * r * E + j * E + e]!;
    }
  return [a, b];
}
