// memory-plan.ts: how much memory a training configuration needs per GPU, before anything is loaded.
//
// Pure arithmetic on a model config (src/model/config.ts) and a training config (src/config/schema.ts): no native
// code, no files. The sharded trainer checks it at start-up, the colocated inference engine sizes its paged KV
// pool from `generate.kvPoolBytes`, and `npx gptoss plan` prints it (src/cli/plan.ts).
//
// The layout planned (ZeRO-3 / FSDP style over N ranks, one process per GPU; docs/training.md "Memory planner"):
// - Parameter units: the embedding, each decoder layer, and the head (final norm + LM head). Each unit is one flat
//   buffer padded to a multiple of N; rank r owns elements [r·s, (r+1)·s) with s = ceil(P_unit / N).
// - Per rank, persistent: the bf16 compute-weight shard (2 B/param), the fp32 master shard (4 B), AdamW's two
//   fp32 moments (8 B) and the fp32 gradient shard (4 B): 18 B per owned parameter. With
//   trainer.policy.fsdp_config.cpu_offload the masters and moments live in pinned host memory instead (with two
//                                          pinned staging slots; AdamW runs on the host).
// - Per rank, transient: the all-gathered bf16 unit in use plus the next one prefetched (forward, and again in the
//   backward, where the recompute and the backward of a layer share one gather), the unsharded fp32 gradient of
//   the unit whose backward runs plus that of the unit being reduce-scattered, and the activations of one
//   micro-batch (counted from the tensors src/model/layer.ts keeps: LayerSaved, MoeContext, the backward's
//   temporaries; under recompute the layer inputs and, with keepAttention, each layer's kept attention output and
//   LSE; the fused LM head's chunk buffers at the chunk src/ops/logprob.ts lmHeadChunk picks).
// - Colocated (trainer.placement.colocate_all): generation and training take turns on the same GPUs. While the
//   engine generates, the trainer keeps its bf16 shard (and the reference shard), drops its gradients (they are
//   set-to-none after each step), and keeps or moves to host its masters and moments
//   (trainer.policy.optimizer_config.offload_after_step); the engine holds its tensor-parallel slice of the
//   weights, its working buffers and the paged KV cache, all within generator.gpu_memory_utilization x M.
//
// LoRA form (trainer.policy.model.lora.rank > 0; planLoraTraining below): one GPU holds the frozen bf16 base once,
// shared by the trainer and the colocated engine (src/model/lora.ts), the f32 adapters with their AdamW moments and
// gradients, and the activations of a frozen-base backward (no base weight gradients, no fp32 masters, no reference
// copy: the KL reference is the base with the adapters off).
//
// Bytes are plain numbers (exact below 2^53: ample for any GPU). "GB" means 1e9 bytes throughout.
import type { Config } from '../config/schema.ts';
import type { GptOssConfig } from '../model/config.ts';
import { LORA_TARGETS, MODEL_TARGETS, loraShapes, type LoraTarget } from '../model/lora.ts';
import { lmHeadChunk, lmHeadChunkBytes, lmHeadTokenChunk } from '../ops/logprob.ts';

// ---- parameters ------------------------------------------------------------------------------------------------

/** Parameters of one decoder layer by part (checkpoint names in src/model/weights.ts paramSpecs). */
export interface LayerParams {
  /** input_layernorm + post_attention_layernorm: 2·H. */
  norms: number;
  /** q/k/v/o weights and biases + sinks: (Hq·D + 2·Hkv·D)·(H + 1) + H·Hq·D + H + Hq. */
  attention: number;
  /** router weight and bias: E·H + E. */
  router: number;
  /** gate_up [E,H,2I] + bias [E,2I] + down [E,I,H] + bias [E,H]: E·(2I·H + 2I + I·H + H). */
  experts: number;
  total: number;
}

export function layerParams(c: GptOssConfig): LayerParams {
  const H = c.hiddenSize;
  const qd = c.numHeads * c.headDim; // q width Hq·D (gpt-oss-20b: 4096)
  const kvd = c.numKvHeads * c.headDim; // k/v width Hkv·D (512)
  const E = c.numExperts;
  const I = c.intermediateSize;
  const norms = 2 * H;
  const attention = (qd + 2 * kvd) * H + (qd + 2 * kvd) + H * qd + H + c.numHeads;
  const router = E * H + E;
  const experts = E * (H * 2 * I + 2 * I + I * H + H);
  return { norms, attention, router, experts, total: norms + attention + router + experts };
}

/** The parameter units the sharded trainer gathers and reduce-scatters one at a time. */
export interface ParamUnits {
  /** model.embed_tokens.weight: V·H. */
  embedding: number;
  /** One entry per decoder layer (all equal for gpt-oss). */
  layers: number[];
  /** model.norm.weight (H) + lm_head.weight (V·H; 0 when tied to the embedding). */
  head: number;
  total: number;
}

export function paramUnits(c: GptOssConfig): ParamUnits {
  const embedding = c.vocabSize * c.hiddenSize;
  const layer = layerParams(c).total;
  const layers = Array.from({ length: c.numLayers }, () => layer);
  const head = c.hiddenSize + (c.tieWordEmbeddings ? 0 : c.vocabSize * c.hiddenSize);
  return { embedding, layers, head, total: embedding + c.numLayers * layer + head };
}

/** Elements rank r owns of a unit of `p` parameters padded to a multiple of n: ceil(p / n). */
export function shardSize(p: number, n: number): number {
  return Math.ceil(p / n);
}

// ---- activations -----------------------------------------------------------------------------------------------

/** Per-token byte counts of the tensors one training micro-batch keeps (see trainingActivations). */
export interface ActivationTerms {
  /** LayerSaved without the MoE context: x, a1, h, a2 bf16 [T,H]; qr, attn bf16 [T,Hq·D]; kr, v bf16 [T,Hkv·D];
   *  lse f32 [Hq,T]; rstd1, rstd2 f32 [T]. */
  layerSavedDense: number;
  /** MoeContext: topkIdx i32, topkW f32, slotPos i32 [T,k]; per routed row (T·k·padding of them) permTok i32, gu
   *  bf16 [2I], h bf16 [I], yp bf16 [H], xp bf16 [H] (xp: the CUDA cuBLAS paths, i.e. every large batch). */
  layerSavedMoe: number;
  /** moeBackward's temporaries (native/cuda/moe.cu): per routed row dyp bf16 [H], dlp f32, dh bf16 [I], dgu bf16
   *  [2I], dxp bf16 [H]; per token dl f32 [k] and dx f32 [H]. */
  moeBackward: number;
  /** attentionBackward and its neighbours: dH f32 [H], dAttn bf16 [Hq·D], dq bf16 [Hq·D], dk/dv bf16 [Hkv·D],
   *  the fp32 dq accumulator [Hq·D] (non-deterministic mode), dlt f32 [Hq]. By then the MoE context, h, a2 and
   *  rstd2 are freed. */
  attentionBackward: number;
  /** What the attention phase runs without: the MoE context, h and a2 (bf16 [H] each) and rstd2. */
  freedBeforeAttention: number;
  /** The layer's incoming gradient dy, f32 [T,H], alive through its backward. */
  dy: number;
  /** One layer input kept under recompute: bf16 [T,H]. */
  layerInput: number;
  /** One layer's attention kept under recompute with keepAttention (KeptAttention, src/model/layer.ts): out bf16
   *  [T,Hq·D] and lse f32 [Hq,T]. Part of layerSavedDense (the recompute takes them over into the saved set). */
  keptAttention: number;
  /** Kept through the whole step: xL, hf bf16 [T,H]; rstdf, lse, logprobs, entropy, dLogprobs f32 [T]; ids,
   *  positions, targets i32 [T]. */
  final: number;
  /** The head's backward: dHidden f32 [T,H]. */
  headBackward: number;
}

export function activationTerms(c: GptOssConfig, moeRowPadding: number): ActivationTerms {
  const H = c.hiddenSize;
  const qd = c.numHeads * c.headDim;
  const kvd = c.numKvHeads * c.headDim;
  const I = c.intermediateSize;
  const k = c.topK;
  const rows = k * moeRowPadding; // routed rows per token, slab padding included
  const layerSavedDense = 4 * (2 * H) + 2 * (2 * qd) + 2 * (2 * kvd) + 4 * c.numHeads + 2 * 4;
  const layerSavedMoe = k * (4 + 4 + 4) + rows * (4 + 2 * 2 * I + 2 * I + 2 * H + 2 * H);
  const moeBackward = rows * (2 * H + 4 + 2 * I + 2 * 2 * I + 2 * H) + 4 * k + 4 * H;
  const attentionBackward = 4 * H + 2 * qd + 2 * qd + 2 * (2 * kvd) + 4 * qd + 4 * c.numHeads;
  const freedBeforeAttention = layerSavedMoe + 2 * (2 * H) + 4;
  return {
    layerSavedDense,
    layerSavedMoe,
    moeBackward,
    attentionBackward,
    freedBeforeAttention,
    dy: 4 * H,
    layerInput: 2 * H,
    keptAttention: 2 * qd + 4 * c.numHeads,
    final: 2 * (2 * H) + 5 * 4 + 3 * 4,
    headBackward: 4 * H,
  };
}

/** Activation bytes of one training micro-batch of `tokens` tokens at its peak, by phase. */
export interface TrainingActivations {
  tokens: number;
  recompute: boolean;
  /** Recompute with each layer's attention output and LSE kept (false without recompute). */
  keepAttention: boolean;
  /** Kept from the forward until each layer's backward: layer inputs (recompute; with keepAttention also every
   *  layer's kept attention) or every LayerSaved. */
  storedBytes: number;
  /** The part of storedBytes that is kept attention: L x T x keptAttention (0 unless recompute + keepAttention). */
  keptAttentionBytes: number;
  /** Peak inside the last layer's backward (where the most is stored): stored + final + the layer's saved set
   *  (recomputed) + dy + the larger of the MoE and attention backward temporaries. */
  layerBackwardPeakBytes: number;
  /** Peak in the fused LM head backward: stored + final + dHidden + its [T, chunk] fp32 logits and bf16
   *  dlogits buffers. */
  headBackwardPeakBytes: number;
  /** The vocabulary chunk of the fused log-prob op at this token count (src/ops/logprob.ts lmHeadChunk). */
  logprobChunk: number;
  /**
   * The LM head backward's chunk buffers (part of headBackwardPeakBytes): T x min(chunk, V) x (4 + 2) B, or with
   * fusedLmHead min(T, tokenChunk) x V x (4 + 2) B (a token chunk's full-vocabulary logits and dlogits).
   */
  logprobChunkBytes: number;
  /** The fused LM-head backward (trainer.fused_lm_head_backward): chunks of tokens, not of the vocabulary. */
  fusedLmHead: boolean;
  /** With fusedLmHead: tokens per chunk (src/ops/logprob.ts lmHeadTokenChunk), else 0. */
  lmHeadTokenChunk: number;
  peakBytes: number;
}

/**
 * keepAttention (recompute only; ModelOptions.keepAttention, default on): each layer's attention output and LSE
 * stay from the forward until that layer's backward, whose recompute takes them over into the rebuilt saved set.
 */
export function trainingActivations(
  c: GptOssConfig,
  tokens: number,
  recompute: boolean,
  moeRowPadding: number,
  keepAttention = recompute,
  fusedLmHead = false,
): TrainingActivations {
  const t = activationTerms(c, moeRowPadding);
  const L = c.numLayers;
  const T = tokens;
  const keep = recompute && keepAttention;
  const layerSaved = t.layerSavedDense + t.layerSavedMoe;
  const kept = keep ? t.keptAttention : 0;
  // Recompute: L layer inputs (bf16 [T,H] each), with keepAttention also L kept attentions. Otherwise: L full
  // saved sets.
  const storedPerToken = recompute ? L * (t.layerInput + kept) : L * layerSaved;
  // Under recompute the last layer's saved set is rebuilt beside the stored inputs (its x is one of them, and its
  // kept attention output and LSE become its attn and lse).
  const rebuiltPerToken = recompute ? layerSaved - t.layerInput - kept : 0;
  const phasePerToken = Math.max(t.moeBackward, t.attentionBackward - t.freedBeforeAttention);
  const layerPeakPerToken = storedPerToken + t.final + rebuiltPerToken + t.dy + phasePerToken;
  const chunk = lmHeadChunk(T, c.vocabSize);
  // tokenLogprobsBackward: fp32 logits [T, chunk] + dlogits [T, chunk] in the hidden dtype (bf16). The fused
  // LM-head backward instead keeps one token chunk's fp32 logits [Tc, V] + bf16 dlogits [Tc, V] (within the same
  // 1.5 GiB budget, but the whole budget from Tc tokens on: more than the vocabulary chunks below 16k tokens); its
  // dHidden f32 [T, H] is the same one, made in the forward.
  const tokenChunk = fusedLmHead ? lmHeadTokenChunk(c.vocabSize) : 0;
  const headChunkBytes = fusedLmHead ? lmHeadChunkBytes(Math.min(T, tokenChunk), c.vocabSize, c.vocabSize) : lmHeadChunkBytes(T, chunk, c.vocabSize);
  const headPeak = T * (storedPerToken + t.final + t.headBackward) + headChunkBytes;
  const layerPeak = T * layerPeakPerToken;
  return {
    tokens: T,
    recompute,
    keepAttention: keep,
    storedBytes: T * storedPerToken,
    keptAttentionBytes: T * L * kept,
    layerBackwardPeakBytes: layerPeak,
    headBackwardPeakBytes: headPeak,
    logprobChunk: chunk,
    logprobChunkBytes: headChunkBytes,
    fusedLmHead,
    lmHeadTokenChunk: tokenChunk,
    peakBytes: Math.max(layerPeak, headPeak),
  };
}

/** Peak activation bytes of a no-grad forward (old and reference log-probs) over `tokens` tokens. */
export function forwardActivations(c: GptOssConfig, tokens: number, moeRowPadding: number): number {
  const t = activationTerms(c, moeRowPadding);
  const T = tokens;
  // Inside one layer: its output y bf16 [T,H] beside everything layerForward makes (the saved set, x included)
  // and the router logits f32 [T,E]; freed when the next layer starts.
  const layer = T * (t.layerSavedDense + t.layerSavedMoe + 2 * c.hiddenSize + 4 * c.numExperts);
  // The head: hf bf16 [T,H], the fp32 logits chunk, outputs f32 [T] x3.
  const head = T * (2 * c.hiddenSize + 3 * 4) + T * lmHeadChunk(T, c.vocabSize) * 4;
  return Math.max(layer, head);
}

// ---- KV cache --------------------------------------------------------------------------------------------------

/** KV-cache bytes on one GPU of a tensor-parallel engine (K and V bf16; the kv heads split over tp ranks). */
export interface KvLayout {
  /** Full-attention layers: every position, 2 (K,V) · ceil(Hkv/tp) · D · 2 B per token per layer, summed. */
  fullBytesPerToken: number;
  /** Sliding layers: only the last `window` positions of a sequence, per token of that window, summed. */
  slidingBytesPerToken: number;
  window: number;
}

export function kvLayout(c: GptOssConfig, tp: number): KvLayout {
  const perLayer = 2 * Math.ceil(c.numKvHeads / tp) * c.headDim * 2;
  const sliding = c.layerTypes.filter((t) => t === 'sliding_attention').length;
  const full = c.numLayers - sliding;
  return { fullBytesPerToken: full * perLayer, slidingBytesPerToken: sliding * perLayer, window: c.slidingWindow };
}

/** KV bytes of one sequence of `tokens` tokens: full layers hold all of them, sliding layers min(window, tokens). */
export function kvBytesPerSequence(kv: KvLayout, tokens: number): number {
  return kv.fullBytesPerToken * tokens + kv.slidingBytesPerToken * Math.min(kv.window, tokens);
}

// ---- the plan --------------------------------------------------------------------------------------------------

/** Assumptions that are not properties of the model or the config (each documented where it is used). */
export interface PlanAssumptions {
  /** CUDA context and module images with lazy loading (~0.6 GB on an H100 with CUDA 12/13). */
  cudaContextBytes: number;
  /** cuBLAS/cuBLASLt workspaces: the compute stream's and 4 GEMM lanes', 32 MiB each (native/cuda/gemm_cublas.cc). */
  cublasBytes: number;
  /** NCCL communicator buffers on one GPU of a single node (channels x peers x NCCL_BUFFSIZE); 0 when N = 1. */
  ncclBytes: number;
  /** Caching-allocator slack on the transient allocations (2 MiB rounding, a cached block may serve a request up to
   *  half its size, fragmentation between micro-batches of different lengths), as a fraction of them. */
  allocatorSlack: number;
  /** Routed MoE rows per token-expert assignment at most: the CUDA batched path pads each expert range to a
   *  multiple of 64 rows and is used only while that adds at most 50% rows (native/cuda/moe.cu batched_slabs). */
  moeRowPadding: number;
}

export const DEFAULT_ASSUMPTIONS: PlanAssumptions = {
  cudaContextBytes: 0.6e9,
  cublasBytes: 5 * 32 * 2 ** 20,
  ncclBytes: 0.75e9,
  allocatorSlack: 0.1,
  moeRowPadding: 1.5,
};

/** Where the KL reference model lives: sharded bf16 on the GPUs, sharded bf16 in host memory, or absent. */
export type RefPlacement = 'gpu' | 'host' | 'none';

/** Everything the planner needs; planInputFromConfig derives it from a training config. */
export interface PlanInput {
  model: GptOssConfig;
  /** A name for the table (preset, directory or hub id). */
  modelName: string;
  /** Ranks (GPUs) the trainer is sharded over. */
  gpus: number;
  /** Memory of one GPU, bytes. */
  gpuMemoryBytes: number;
  /** Host memory of one node, bytes (optional: checked when given). */
  hostMemoryBytes?: number;
  /** Ranks per node (default: all gpus on one node). */
  gpusPerNode?: number;
  /** Tokens of the largest training micro-batch. */
  microBatchTokens: number;
  /** Tokens of the largest no-grad forward micro-batch (old and reference log-probs). */
  forwardMicroBatchTokens: number;
  /** Per-layer activation recompute (trainer.gradient_checkpointing). */
  recompute: boolean;
  /** With recompute: each layer's attention output and LSE kept for it (trainer.gradient_checkpointing_keep_attention;
   *  default true, the models' default). */
  keepAttention?: boolean;
  /** The fused LM-head backward (trainer.fused_lm_head_backward, on unless false): token-chunk LM head buffers. */
  fusedLmHead?: boolean;
  /** fp32 masters and AdamW moments in host memory (trainer.policy.fsdp_config.cpu_offload). */
  cpuOffload: boolean;
  ref: RefPlacement;
  /** A colocated engine shares the GPUs (trainer.placement.colocate_all). */
  colocateAll: boolean;
  /** Colocated: masters and moments move to host while the engine generates (optimizer_config.offload_after_step). */
  offloadOptimizerWhileGenerating: boolean;
  /** LoRA training (trainer.policy.model.lora.rank > 0): planned by planLoraTraining. */
  lora?: { rank: number; targets: readonly LoraTarget[] };
  engine: {
    tensorParallel: number;
    engines: number;
    /** Fraction of a GPU the process may fill while generating (trainer state kept + engine). */
    gpuMemoryUtilization: number;
    maxNumSeqs: number;
    maxNumBatchedTokens: number;
    /** Longest sequence: prompt + generated tokens. */
    sequenceTokens: number;
    /** Sequences one engine is given per step (prompts x samples / engines). */
    rolloutSequences: number;
  };
  assumptions?: Partial<PlanAssumptions>;
}

export interface PlanRow {
  key: string;
  label: string;
  bytes: number;
  /** How the number is computed, in words and symbols. */
  formula: string;
  /** The key of the row whose bytes already include this one (a breakdown line: not added to the total). */
  partOf?: string;
}

/** The bytes of a phase: its rows' sum, breakdown lines (partOf) left out. */
function sumRows(rows: readonly PlanRow[]): number {
  return rows.reduce((s, r) => (r.partOf ? s : s + r.bytes), 0);
}

/**
 * The breakdown lines of the activations row: the kept attention (recompute + keepAttention; stored from the
 * forward through the last layer's and the LM head's backward, so in both peaks) and the LM head's chunk buffers
 * (in the LM head backward's peak only).
 */
function activationPartRows(c: GptOssConfig, act: TrainingActivations): PlanRow[] {
  const rows: PlanRow[] = [];
  const T = fmtInt(act.tokens);
  if (act.keepAttention) {
    rows.push({
      key: 'keptAttention',
      label: `kept attention (${c.numLayers} layers)`,
      bytes: act.keptAttentionBytes,
      formula: `${c.numLayers} x ${T} tok x (2 B x Hq·D ${c.numHeads * c.headDim} + 4 B x Hq ${c.numHeads}): output + LSE, forward to the layer's backward`,
      partOf: 'activations',
    });
  }
  if (act.fusedLmHead) {
    const tc = fmtInt(Math.min(act.tokens, act.lmHeadTokenChunk));
    rows.push({
      key: 'lmHeadChunk',
      label: `LM head token-chunk buffers (${tc} tokens, fused backward)`,
      bytes: act.logprobChunkBytes,
      formula: `${tc} tok x ${fmtInt(c.vocabSize)} x (4 + 2) B (fp32 logits + bf16 dlogits) in the forward's LM head backward (peak ${formatGB(act.headBackwardPeakBytes)})`,
      partOf: 'activations',
    });
    return rows;
  }
  rows.push({
    key: 'lmHeadChunk',
    label: `LM head chunk buffers (chunk ${fmtInt(act.logprobChunk)})`,
    bytes: act.logprobChunkBytes,
    formula: `${T} tok x ${fmtInt(act.logprobChunk)} x (4 + 2) B (fp32 logits + bf16 dlogits) in the LM head backward (peak ${formatGB(act.headBackwardPeakBytes)})`,
    partOf: 'activations',
  });
  return rows;
}

export interface PhasePlan {
  rows: PlanRow[];
  totalBytes: number;
  /** The bytes this phase may use: M (training) or gpu_memory_utilization x M (generation). */
  limitBytes: number;
}

export interface GeneratePlan extends PhasePlan {
  /** Everything but the KV pool. */
  usedBytes: number;
  kvPoolBytes: number;
  kv: KvLayout;
  /** KV tokens that fit, counted in full-length sequences (sliding layers' windows included). */
  kvTokens: number;
  /** Sequences of sequenceTokens that fit at once. */
  fullSequences: number;
}

export interface MemoryPlan {
  input: Omit<PlanInput, 'model' | 'assumptions'>;
  assumptions: PlanAssumptions;
  params: {
    total: number;
    embedding: number;
    layer: number;
    layers: number;
    head: number;
    /** Σ over units of ceil(P_unit / N): what each rank owns (padding included). */
    perRank: number;
    /** The largest unit (what one gather or one unsharded gradient holds), padded to a multiple of N. */
    largestUnit: number;
    largestUnitName: string;
  };
  activations: { withRecompute: TrainingActivations; withoutRecompute: TrainingActivations; forwardBytes: number };
  train: PhasePlan;
  /** One GPU while the engine generates: colocated, shared with the trainer's kept state; else the engine's own. */
  generate: GeneratePlan;
  /** Pinned host memory per rank, the larger of the two phases. */
  host: { rows: PlanRow[]; totalBytes: number };
  fits: boolean;
  /** One line per overflow, with what overflows and by how much. */
  overflows: string[];
  /** Facts worth knowing that do not make the plan fail. */
  notes: string[];
  /** The LoRA form (planLoraTraining): the adapters planned. */
  lora?: { rank: number; targets: string[]; adapterParams: number };
}

const GB = 1e9;
export const formatGB = (b: number): string => (b / GB).toFixed(2);
const fmtB = (n: number): string => (n >= 1e9 ? `${(n / 1e9).toFixed(2)}B` : n >= 1e6 ? `${(n / 1e6).toFixed(1)}M` : n.toLocaleString('en-US'));
const fmtInt = (n: number): string => Math.floor(n).toLocaleString('en-US');


/** The plan input of a training config for a model on `gpus` GPUs of `gpuMemoryBytes` each. */
export function planInputFromConfig(
  model: GptOssConfig,
  config: Config,
  target: { gpus: number; gpuMemoryBytes: number; hostMemoryBytes?: number; modelName?: string; microBatchTokens?: number },
): PlanInput {
  const t = config.trainer;
  const g = config.generator;
  // The longest sequence a micro-batch can hold: the prompt limit plus the generation limit; a multi-turn episode's
  // whole conversation (generator.max_input_length when set, else max_turns turns; injected tool results are short
  // next to a turn and not counted).
  const oneTurn = t.max_prompt_length + g.sampling_params.max_generate_length;
  const seq = g.max_turns > 1 ? (g.max_input_length ?? t.max_prompt_length + g.max_turns * g.sampling_params.max_generate_length) : oneTurn;
  const engines = g.num_inference_engines;
  return {
    model,
    modelName: target.modelName ?? t.policy.model.path,
    gpus: target.gpus,
    gpuMemoryBytes: target.gpuMemoryBytes,
    hostMemoryBytes: target.hostMemoryBytes,
    gpusPerNode: Math.ceil(target.gpus / t.placement.policy_num_nodes),
    // A micro-batch packs micro_train_batch_size_per_gpu sequences of up to `seq` tokens.
    microBatchTokens: target.microBatchTokens ?? t.micro_train_batch_size_per_gpu * seq,
    forwardMicroBatchTokens: t.micro_forward_batch_size_per_gpu * seq,
    recompute: t.gradient_checkpointing,
    keepAttention: t.gradient_checkpointing_keep_attention,
    fusedLmHead: t.fused_lm_head_backward !== false, // 'auto': every library policy has it
    cpuOffload: t.policy.fsdp_config.cpu_offload,
    // The reference shares the policy's GPUs when colocated with it, else waits in host memory between uses.
    ref: t.algorithm.use_kl_loss ? (t.placement.colocate_policy_ref ? 'gpu' : 'host') : 'none',
    colocateAll: t.placement.colocate_all,
    offloadOptimizerWhileGenerating: t.policy.optimizer_config.offload_after_step,
    lora: t.policy.model.lora.rank > 0 ? { rank: t.policy.model.lora.rank, targets: t.policy.model.lora.target_modules } : undefined,
    engine: {
      tensorParallel: g.inference_engine_tensor_parallel_size,
      engines,
      gpuMemoryUtilization: g.gpu_memory_utilization,
      maxNumSeqs: g.max_num_seqs,
      maxNumBatchedTokens: g.max_num_batched_tokens,
      sequenceTokens: seq,
      rolloutSequences: Math.ceil((t.train_batch_size * g.n_samples_per_prompt) / engines),
    },
  };
}

/** The plan of a training config: planMemory(planInputFromConfig(...)). The one call a training CLI makes. */
export function planFromConfig(
  model: GptOssConfig,
  config: Config,
  target: { gpus: number; gpuMemoryBytes: number; hostMemoryBytes?: number; modelName?: string; microBatchTokens?: number },
): MemoryPlan {
  return planMemory(planInputFromConfig(model, config, target));
}

export function planMemory(input: PlanInput): MemoryPlan {
  if (input.lora) return planLoraTraining(input, input.lora);
  const a: PlanAssumptions = { ...DEFAULT_ASSUMPTIONS, ...input.assumptions };
  const c = input.model;
  const N = input.gpus;
  const M = input.gpuMemoryBytes;
  if (!(Number.isInteger(N) && N >= 1)) throw new Error(`memory plan: gpus must be a positive integer, got ${N}`);
  if (!(M > 0)) throw new Error(`memory plan: GPU memory must be positive, got ${M}`);
  if (!(Number.isInteger(input.microBatchTokens) && input.microBatchTokens >= 1)) {
    throw new Error(`memory plan: micro-batch tokens must be a positive integer, got ${input.microBatchTokens}`);
  }
  const units = paramUnits(c);
  const layer = units.layers[0] ?? 0;
  const unitList: [string, number][] = [
    ['embedding', units.embedding],
    ...units.layers.map((p, i): [string, number] => [`layer ${i}`, p]),
    ['head', units.head],
  ];
  // S = Σ_u ceil(P_u / N): parameters each rank owns (the flat unit buffers are padded to multiples of N).
  const S = unitList.reduce((s, [, p]) => s + shardSize(p, N), 0);
  const [largestName, largestP] = unitList.reduce((m, u) => (u[1] > m[1] ? u : m));
  // The largest unit padded to a multiple of N: the size of one gather / one unsharded gradient buffer.
  const U = shardSize(largestP, N) * N;
  const sharded = N > 1;

  const keepAttention = input.keepAttention ?? true;
  const withRecompute = trainingActivations(c, input.microBatchTokens, true, a.moeRowPadding, keepAttention, input.fusedLmHead ?? false);
  const withoutRecompute = trainingActivations(c, input.microBatchTokens, false, a.moeRowPadding, false, input.fusedLmHead ?? false);
  const act = input.recompute ? withRecompute : withoutRecompute;
  const fwdAct = forwardActivations(c, input.forwardMicroBatchTokens, a.moeRowPadding);

  const overheadBytes = a.cudaContextBytes + a.cublasBytes + (sharded ? a.ncclBytes : 0);
  const overheadFormula = `CUDA context ${formatGB(a.cudaContextBytes)} + cuBLAS workspaces ${formatGB(a.cublasBytes)}${sharded ? ` + NCCL buffers ${formatGB(a.ncclBytes)}` : ''} (assumed)`;

  // ---- training phase (per GPU) ----
  const train: PlanRow[] = [];
  const sOf = `S = Σ ceil(P_unit/${N}) = ${fmtB(S)}`;
  train.push({ key: 'weights', label: 'bf16 weight shard', bytes: 2 * S, formula: `2 B x ${sOf}` });
  if (!input.cpuOffload) {
    train.push({ key: 'masters', label: 'fp32 master shard', bytes: 4 * S, formula: '4 B x S' });
    train.push({ key: 'moments', label: 'AdamW moments (m, v)', bytes: 8 * S, formula: '2 x 4 B x S' });
  }
  train.push({ key: 'grads', label: 'fp32 gradient shard', bytes: 4 * S, formula: '4 B x S' });
  if (input.ref === 'gpu') train.push({ key: 'ref', label: 'KL reference (bf16 shard)', bytes: 2 * S, formula: '2 B x S (colocate_policy_ref)' });
  if (sharded) {
    train.push({
      key: 'gathered',
      label: 'gathered bf16 units',
      bytes: 2 * 2 * U,
      formula: `2 (in use + prefetched) x 2 B x ${fmtB(U)} (${largestName})`,
    });
    train.push({
      key: 'unitGrads',
      label: 'unsharded fp32 unit gradients',
      bytes: 2 * 4 * U,
      formula: `2 (backward + reduce-scatter) x 4 B x ${fmtB(U)}`,
    });
  }
  const trainActBytes = Math.max(act.peakBytes, fwdAct);
  train.push({
    key: 'activations',
    label: `activations (${fmtInt(input.microBatchTokens)} tokens)`,
    bytes: trainActBytes,
    formula:
      fwdAct > act.peakBytes
        ? `no-grad forward of ${fmtInt(input.forwardMicroBatchTokens)} tokens (larger than the training micro-batch's ${formatGB(act.peakBytes)})`
        : `recompute ${input.recompute ? 'on' : 'off'}: stored ${formatGB(act.storedBytes)}, peak in ${
            act.layerBackwardPeakBytes >= act.headBackwardPeakBytes ? "the last layer's backward" : act.fusedLmHead ? `the forward's LM head backward (chunks of ${fmtInt(act.lmHeadTokenChunk)} tokens)` : `the LM head backward (chunks of ${fmtInt(act.logprobChunk)} vocab rows)`
          }`,
  });
  train.push(...activationPartRows(c, act));
  train.push({ key: 'overhead', label: 'CUDA context, cuBLAS, NCCL', bytes: overheadBytes, formula: overheadFormula });
  const transient = (sharded ? 2 * 2 * U + 2 * 4 * U : 0) + trainActBytes;
  train.push({
    key: 'slack',
    label: 'allocator slack',
    // Whole bytes, as every other row: the phase totals are then exact integer sums.
    bytes: Math.ceil(a.allocatorSlack * transient),
    formula: `${a.allocatorSlack} x transient (${formatGB(transient)})`,
  });
  const trainTotal = sumRows(train);
  const notes: string[] = [];
  const overflows: string[] = [];
  if (trainTotal > M) {
    const hint: string[] = [];
    if (!input.cpuOffload) hint.push('trainer.policy.fsdp_config.cpu_offload=true');
    if (!input.recompute && withRecompute.peakBytes < act.peakBytes) hint.push('trainer.gradient_checkpointing=true');
    if (act.keepAttention) hint.push('trainer.gradient_checkpointing_keep_attention=false');
    hint.push('more GPUs', 'a smaller micro-batch');
    overflows.push(
      `training: ${formatGB(trainTotal)} GB per GPU > ${formatGB(M)} GB (${biggest(train)}); try ${hint.join(', ')}`,
    );
  }

  // ---- host (per rank) ----
  const hostTrain: PlanRow[] = [];
  if (input.cpuOffload) {
    // AdamW runs on the host (ShardedPolicy.optimizerStep): the gradient shards come down and the bf16 shards go
    // up through two pinned staging slots of the largest unit's shard (f32 gradient + bf16 weights); no GPU memory.
    const slot = shardSize(largestP, N);
    hostTrain.push({ key: 'masters', label: 'fp32 master shard', bytes: 4 * S, formula: '4 B x S (cpu_offload)' });
    hostTrain.push({ key: 'moments', label: 'AdamW moments (m, v)', bytes: 8 * S, formula: '8 B x S (cpu_offload)' });
    hostTrain.push({ key: 'offloadStaging', label: 'optimizer staging slots', bytes: 2 * 6 * slot, formula: `2 x (4 + 2) B x ${fmtB(slot)} (largest unit's shard; cpu_offload)` });
  }
  if (input.ref === 'host') hostTrain.push({ key: 'ref', label: 'KL reference (bf16 shard)', bytes: 2 * S, formula: '2 B x S (colocate_policy_ref=false)' });

  // ---- generation (per GPU) ----
  const hostGen: PlanRow[] = [...hostTrain]; // + what the trainer moves to host while the engine generates
  const e = input.engine;
  // While the engine generates: colocated, the trainer state it keeps shares the GPU; else the engine's GPUs are
  // its own (planned the same way, with nothing of the trainer's).
  const kept: PlanRow[] = [];
  if (input.colocateAll) {
    kept.push({ key: 'weights', label: 'trainer bf16 weight shard', bytes: 2 * S, formula: '2 B x S (kept)' });
    if (input.ref === 'gpu') kept.push({ key: 'ref', label: 'KL reference (bf16 shard)', bytes: 2 * S, formula: '2 B x S (kept)' });
    if (!input.cpuOffload) {
      if (input.offloadOptimizerWhileGenerating) {
        hostGen.push({ key: 'optimizerWhileGenerating', label: 'masters + moments while generating', bytes: 12 * S, formula: '12 B x S (offload_after_step)' });
      } else {
        kept.push({ key: 'optimizer', label: 'trainer masters + moments', bytes: 12 * S, formula: '(4 + 8) B x S (kept: offload_after_step=false)' });
      }
    }
    if (e.engines * e.tensorParallel !== N) {
      notes.push(`colocate_all: ${e.engines} engines x TP ${e.tensorParallel} = ${e.engines * e.tensorParallel} GPUs, but the trainer is planned on ${N}`);
    }
  } else {
    notes.push(`not colocated (colocate_all=false): the engines' own GPUs are planned as ${formatGB(M)} GB each, with no trainer state`);
  }
  const generate = engineMemoryPlan(c, e, M, kept, { ...a, ncclBytes: (input.colocateAll && sharded) || e.tensorParallel > 1 ? a.ncclBytes : 0 });
  const phase = input.colocateAll ? 'colocated generation' : 'engine GPU';
  if (generate.usedBytes > generate.limitBytes) {
    overflows.push(
      `${phase}: ${input.colocateAll ? 'trainer state kept + engine need' : 'the engine needs'} ${formatGB(generate.usedBytes)} GB > gpu_memory_utilization ${e.gpuMemoryUtilization} x ${formatGB(M)} GB = ${formatGB(generate.limitBytes)} GB before any KV cache (${biggest(generate.rows.filter((r) => r.key !== 'kvPool'))})`,
    );
  } else if (generate.fullSequences < 1) {
    overflows.push(
      `${phase}: the ${formatGB(generate.kvPoolBytes)} GB left for the KV cache holds no sequence of ${fmtInt(e.sequenceTokens)} tokens (needs ${formatGB(kvBytesPerSequence(generate.kv, e.sequenceTokens))} GB each)`,
    );
  } else if (generate.fullSequences < Math.min(e.rolloutSequences, e.maxNumSeqs)) {
    notes.push(
      `the KV cache holds ${fmtInt(generate.fullSequences)} full-length sequences at once, fewer than the ${fmtInt(Math.min(e.rolloutSequences, e.maxNumSeqs))} an engine is given per step: generation runs in waves`,
    );
  }
  const hostTrainBytes = sumRows(hostTrain);
  const hostGenBytes = sumRows(hostGen);
  const host = hostGenBytes > hostTrainBytes ? { rows: hostGen, totalBytes: hostGenBytes } : { rows: hostTrain, totalBytes: hostTrainBytes };

  if (input.hostMemoryBytes !== undefined) {
    const perNode = input.gpusPerNode ?? N;
    if (host.totalBytes * perNode > input.hostMemoryBytes) {
      overflows.push(`host: ${perNode} ranks x ${formatGB(host.totalBytes)} GB pinned = ${formatGB(host.totalBytes * perNode)} GB > ${formatGB(input.hostMemoryBytes)} GB of host memory`);
    }
  }
  const { model: _m, assumptions: _a, ...rest } = input;
  return {
    input: rest,
    assumptions: a,
    params: {
      total: units.total,
      embedding: units.embedding,
      layer,
      layers: c.numLayers,
      head: units.head,
      perRank: S,
      largestUnit: U,
      largestUnitName: largestName,
    },
    activations: { withRecompute, withoutRecompute, forwardBytes: fwdAct },
    train: { rows: train, totalBytes: trainTotal, limitBytes: M },
    generate,
    host,
    fits: overflows.length === 0,
    overflows,
    notes,
  };
}

/**
 * One GPU of an inference engine while it generates: the rows `kept` there by others (a colocated trainer's
 * state), the engine's tensor-parallel slice of the weights, its working buffers and the CUDA overheads; what is
 * left of gpu_memory_utilization x M is the paged KV pool. The engine sizes its pool from `kvPoolBytes`.
 */
export function engineMemoryPlan(
  c: GptOssConfig,
  e: PlanInput['engine'],
  gpuMemoryBytes: number,
  kept: readonly PlanRow[] = [],
  assumptions: Partial<PlanAssumptions> = {},
  /** The engine runs the trainer's own weights (a LoRA run: one copy of the base, counted in `kept`). */
  sharedWeights = false,
): GeneratePlan {
  const a: PlanAssumptions = { ...DEFAULT_ASSUMPTIONS, ...assumptions };
  const tp = e.tensorParallel;
  const rows: PlanRow[] = [...kept];
  // The engine's slice (src/model/tensor-parallel.ts): norms and routers replicated, everything else split over tp
  // ranks (heads, experts' intermediate, the vocabulary rows of the embedding and the LM head).
  const lp = layerParams(c);
  const units = paramUnits(c);
  const total = units.total;
  const replicated = c.numLayers * (lp.norms + lp.router) + c.hiddenSize;
  const perGpu = replicated + Math.ceil((total - replicated) / tp);
  if (sharedWeights) rows.push({ key: 'engineWeights', label: 'engine weights', bytes: 0, formula: "the trainer's base (one copy, shared in the process)" });
  else rows.push({ key: 'engineWeights', label: `engine weights (TP ${tp} slice)`, bytes: 2 * perGpu, formula: `2 B x (replicated ${fmtB(replicated)} + ${fmtB(total - replicated)}/${tp})` });
  // Working buffers: one layer's forward over a prefill chunk of max_num_batched_tokens (the TP slice), and the
  // decode step's logits. One device: f32 [max_num_seqs, V] plus the sampler's fp32 copy. TP: the rank's f32 slice
  // [max_num_seqs, V/tp], plus, at worst (every row with top-k/top-p), the rows gathered [tp, S, V/tp] and joined [S, V].
  const H = c.hiddenSize;
  const qd = c.numHeads * c.headDim;
  const kvd = c.numKvHeads * c.headDim;
  const I = c.intermediateSize;
  const prefillPerToken =
    6 * 2 * H + // x, a1, o, h, a2, y: bf16 [H]
    2 * 2 * Math.ceil((qd + 2 * kvd) / tp) + // the fused qkv output and its roped q/k/v copies
    2 * Math.ceil(qd / tp) + 4 * Math.ceil(c.numHeads / tp) + // attention output, lse
    4 * c.numExperts + // router logits f32
    c.topK * a.moeRowPadding * (2 * Math.ceil((2 * I) / tp) + 2 * Math.ceil(I / tp) + 2 * H + 2 * H); // gu, h, yp, xp
  const prefill = e.maxNumBatchedTokens * prefillPerToken;
  const logits = e.maxNumSeqs * 4 * (2 * c.vocabSize + (tp > 1 ? c.vocabSize / tp : 0));
  rows.push({
    key: 'engineWorkspace',
    label: 'engine working buffers',
    bytes: prefill + logits,
    formula: `prefill ${fmtInt(e.maxNumBatchedTokens)} tok x ${fmtInt(prefillPerToken)} B + ${tp > 1 ? `(2 + 1/${tp})` : '2'} x 4 B x ${fmtInt(e.maxNumSeqs)} seqs x V`,
  });
  const overhead = a.cudaContextBytes + a.cublasBytes + a.ncclBytes;
  rows.push({ key: 'overhead', label: 'CUDA context, cuBLAS, NCCL', bytes: overhead, formula: `${formatGB(a.cudaContextBytes)} + ${formatGB(a.cublasBytes)} + ${formatGB(a.ncclBytes)} (assumed; one process)` });
  const limit = e.gpuMemoryUtilization * gpuMemoryBytes;
  const used = sumRows(rows);
  const pool = Math.max(0, limit - used);
  const kv = kvLayout(c, tp);
  const perSeq = kvBytesPerSequence(kv, e.sequenceTokens);
  rows.push({
    key: 'kvPool',
    label: 'KV cache pool',
    bytes: pool,
    formula: `${e.gpuMemoryUtilization} x M - the above; ${fmtInt(kv.fullBytesPerToken)} B/token (full layers) + ${fmtInt(kv.slidingBytesPerToken)} B x ${kv.window} positions/seq (sliding)`,
  });
  return {
    rows,
    usedBytes: used,
    totalBytes: used + pool,
    limitBytes: limit,
    kvPoolBytes: pool,
    kv,
    // Tokens of KV in full-length sequences: each token carries its share of the sliding layers' window.
    kvTokens: Math.floor((pool / perSeq) * e.sequenceTokens),
    fullSequences: Math.floor(pool / perSeq),
  };
}

/** Adapter parameters of a LoRA spec on a config (every layer's, plus lm_head's and embed_tokens' once; shapes of src/model/lora.ts). */
export function loraParams(c: GptOssConfig, rank: number, targets: readonly LoraTarget[]): number {
  let n = 0;
  for (const t of targets) {
    const sh = loraShapes(c, t, rank);
    n += (sh.A.reduce((x, y) => x * y, 1) + sh.B.reduce((x, y) => x * y, 1)) * (MODEL_TARGETS.includes(t) ? 1 : c.numLayers);
  }
  return n;
}

/**
 * LoRA GRPO on one GPU (the single-process trainer with its colocated engine). Training rows: the frozen bf16 base
 * (2 B/param, the only copy: the engine and the KL reference use it too), the f32 adapters (their own masters),
 * AdamW's moments and the adapter gradients (4 + 8 + 4 B per adapter parameter), the activations of one micro-batch
 * (as the full trainer's: the frozen-base backward keeps the same activations and temporaries, minus the weight
 * gradients, plus the adapters' [T, r] products), overheads and slack. Generation rows: the base and the adapters
 * with their moments kept (gradients are set to none after the step), the engine's buffers, the KV pool.
 */
export function planLoraTraining(input: PlanInput, lora: { rank: number; targets: readonly LoraTarget[] }): MemoryPlan {
  const a: PlanAssumptions = { ...DEFAULT_ASSUMPTIONS, ...input.assumptions };
  const c = input.model;
  const M = input.gpuMemoryBytes;
  const N = input.gpus;
  if (!(M > 0)) throw new Error(`memory plan: GPU memory must be positive, got ${M}`);
  const units = paramUnits(c);
  const P = units.total;
  const A = loraParams(c, lora.rank, lora.targets);
  const overflows: string[] = [];
  const notes: string[] = [];
  if (N !== 1) overflows.push(`LoRA: trainer.policy.model.lora runs on one GPU (the single-process trainer); planned on ${N} GPUs (use --gpus 1)`);
  const unknown = lora.targets.filter((t) => !LORA_TARGETS.includes(t));
  if (unknown.length) throw new Error(`memory plan: unknown LoRA targets ${unknown.join(', ')}`);
  const experts = lora.targets.filter((t) => t === 'gate_up_proj' || t === 'down_proj');
  if (experts.length) {
    notes.push(`adapters on the experts (${experts.join(', ')}) run the MoE's per-expert cuBLAS path at every batch size (its grouped decode kernels have no adapter epilogue): slower generation than attention-only adapters`);
  }
  if (input.cpuOffload) notes.push('trainer.policy.fsdp_config.cpu_offload has nothing to offload in a LoRA run (the adapters\' optimizer state is small)');
  const withRecompute = trainingActivations(c, input.microBatchTokens, true, a.moeRowPadding, input.keepAttention ?? true, input.fusedLmHead ?? false);
  const withoutRecompute = trainingActivations(c, input.microBatchTokens, false, a.moeRowPadding, false, input.fusedLmHead ?? false);
  const act = input.recompute ? withRecompute : withoutRecompute;
  // The adapters' products in the backward: per linear target u = x·Aᵀ and dU [T, r] f32 (one target at a time).
  const adapterAct = input.microBatchTokens * 2 * 4 * lora.rank;
  const fwdAct = forwardActivations(c, input.forwardMicroBatchTokens, a.moeRowPadding);
  const trainActBytes = Math.max(act.peakBytes + adapterAct, fwdAct);
  // An lm_head adapter runs the fused LM head on the merged bf16(W + scale·B·A) [V, H], made per call, and its
  // backward takes the merged head's f32 [V, H] gradient (dA, dB come from it): 2 + 4 B per head entry at the
  // head's backward. Generation adds it in factor form (GptOssModel.logits: [N, r] products only).
  const VH = c.vocabSize * c.hiddenSize;
  const headAdapter = lora.targets.includes('lm_head');
  const train: PlanRow[] = [
    { key: 'weights', label: 'bf16 base (frozen, shared)', bytes: 2 * P, formula: `2 B x ${fmtB(P)} params (trainer, engine and KL reference)` },
    { key: 'adapters', label: 'f32 adapters (their masters)', bytes: 4 * A, formula: `4 B x ${fmtB(A)} adapter params (rank ${lora.rank}: ${lora.targets.join(', ')})` },
    { key: 'moments', label: 'AdamW moments (m, v)', bytes: 8 * A, formula: '2 x 4 B x adapter params' },
    { key: 'grads', label: 'f32 adapter gradients', bytes: 4 * A, formula: '4 B x adapter params (no base gradients)' },
    {
      key: 'activations',
      label: `activations (${fmtInt(input.microBatchTokens)} tokens)`,
      bytes: trainActBytes,
      formula:
        fwdAct > act.peakBytes + adapterAct
          ? `no-grad forward of ${fmtInt(input.forwardMicroBatchTokens)} tokens`
          : `recompute ${input.recompute ? 'on' : 'off'}: stored ${formatGB(act.storedBytes)}, peak in ${act.layerBackwardPeakBytes >= act.headBackwardPeakBytes ? "the last layer's backward" : 'the LM head backward'} + adapter products ${formatGB(adapterAct)}`,
    },
    ...activationPartRows(c, act),
    ...(headAdapter
      ? [{ key: 'lm_head_adapter', label: 'lm_head adapter: merged head + its gradient', bytes: 6 * VH, formula: `(2 + 4) B x V x H (${fmtB(VH)}): bf16 merged head and its f32 gradient in the LM head backward` }]
      : []),
    { key: 'overhead', label: 'CUDA context, cuBLAS', bytes: a.cudaContextBytes + a.cublasBytes, formula: `CUDA context ${formatGB(a.cudaContextBytes)} + cuBLAS workspaces ${formatGB(a.cublasBytes)} (assumed)` },
    { key: 'slack', label: 'allocator slack', bytes: Math.ceil(a.allocatorSlack * trainActBytes), formula: `${a.allocatorSlack} x transient (${formatGB(trainActBytes)})` },
  ];
  if (headAdapter) notes.push(`the lm_head adapter runs the trainer's fused LM head on a merged bf16 head made per forward (${formatGB(2 * VH)} GB; one [V, r] x [r, H] GEMM each); generation adds it in factor form`);
  if (input.ref !== 'none') notes.push('the KL reference is the base with the adapters off: no second copy of the weights');
  const trainTotal = sumRows(train);
  if (trainTotal > M) {
    const hint = [
      ...(!input.recompute && withRecompute.peakBytes < act.peakBytes ? ['trainer.gradient_checkpointing=true'] : []),
      ...(act.keepAttention ? ['trainer.gradient_checkpointing_keep_attention=false'] : []),
      'a smaller micro-batch (trainer.micro_train_batch_size_per_gpu)'];
    overflows.push(`training: ${formatGB(trainTotal)} GB > ${formatGB(M)} GB (${biggest(train)}); try ${hint.join(', ')}`);
  }
  const e = input.engine;
  if (e.tensorParallel !== 1 || e.engines !== 1) overflows.push(`LoRA: one engine of TP 1 on the trainer's GPU (got ${e.engines} engines x TP ${e.tensorParallel})`);
  const kept: PlanRow[] = [
    { key: 'weights', label: 'bf16 base (shared with the engine)', bytes: 2 * P, formula: '2 B x params (kept)' },
    { key: 'adapters', label: 'adapters + moments', bytes: 12 * A, formula: '(4 + 8) B x adapter params (kept; gradients set to none)' },
  ];
  const generate = engineMemoryPlan(c, { ...e, tensorParallel: 1 }, M, kept, { ...a, ncclBytes: 0 }, true);
  if (generate.usedBytes > generate.limitBytes) {
    overflows.push(`colocated generation: the base, the adapters and the engine need ${formatGB(generate.usedBytes)} GB > gpu_memory_utilization ${e.gpuMemoryUtilization} x ${formatGB(M)} GB = ${formatGB(generate.limitBytes)} GB before any KV cache`);
  } else if (generate.fullSequences < 1) {
    overflows.push(`colocated generation: the ${formatGB(generate.kvPoolBytes)} GB left for the KV cache holds no sequence of ${fmtInt(e.sequenceTokens)} tokens (needs ${formatGB(kvBytesPerSequence(generate.kv, e.sequenceTokens))} GB each)`);
  } else if (generate.fullSequences < Math.min(e.rolloutSequences, e.maxNumSeqs)) {
    notes.push(`the KV cache holds ${fmtInt(generate.fullSequences)} full-length sequences at once, fewer than the ${fmtInt(Math.min(e.rolloutSequences, e.maxNumSeqs))} the engine is given per step: generation runs in waves`);
  }
  const { model: _m, assumptions: _a, ...rest } = input;
  return {
    input: rest,
    assumptions: a,
    params: { total: P, embedding: units.embedding, layer: units.layers[0] ?? 0, layers: c.numLayers, head: units.head, perRank: P, largestUnit: P, largestUnitName: 'the whole base (one GPU)' },
    activations: { withRecompute, withoutRecompute, forwardBytes: fwdAct },
    train: { rows: train, totalBytes: trainTotal, limitBytes: M },
    generate,
    host: { rows: [], totalBytes: 0 },
    fits: overflows.length === 0,
    overflows,
    notes,
    lora: { rank: lora.rank, targets: [...lora.targets], adapterParams: A },
  };
}

/** The three largest rows as "label 12.34 GB" (what an overflow message names). */
function biggest(rows: PlanRow[]): string {
  return rows
    .filter((r) => !r.partOf)
    .sort((x, y) => y.bytes - x.bytes)
    .slice(0, 3)
    .map((r) => `${r.label} ${formatGB(r.bytes)} GB`)
    .join(', ');
}

// ---- output ----------------------------------------------------------------------------------------------------

/** The human table: per-GPU rows of each phase with their formulas, the host memory, the verdict. */
export function formatPlan(p: MemoryPlan): string {
  const i = p.input;
  const out: string[] = [];
  const pr = p.params;
  out.push(
    `memory plan: ${i.modelName} (${fmtB(pr.total)} parameters: embedding ${fmtB(pr.embedding)}, ${pr.layers} layers x ${fmtB(pr.layer)}, head ${fmtB(pr.head)}) on ${i.gpus} GPU${i.gpus > 1 ? 's' : ''} x ${formatGB(i.gpuMemoryBytes)} GB`,
  );
  if (p.lora) out.push(`LoRA: rank ${p.lora.rank} on ${p.lora.targets.join(', ')}: ${fmtB(p.lora.adapterParams)} trainable parameters on a frozen bf16 base`);
  out.push(
    `micro-batch ${fmtInt(i.microBatchTokens)} tokens (no-grad ${fmtInt(i.forwardMicroBatchTokens)}), recompute ${i.recompute ? ((i.keepAttention ?? true) ? 'on (attention kept)' : 'on') : 'off'}, cpu_offload ${i.cpuOffload ? 'on' : 'off'}, KL reference ${i.ref === 'none' ? 'none' : `on ${i.ref}`}, colocate_all ${i.colocateAll}`,
  );
  // A breakdown line (partOf: included in the row above it) is indented and marked, and not added to the total.
  const labelOf = (r: PlanRow): string => (r.partOf ? `  incl. ${r.label}` : r.label);
  const w = Math.max(34, ...p.train.rows.map((r) => labelOf(r).length + 2), ...p.generate.rows.map((r) => r.label.length + 2));
  const line = (label: string, gb: string, formula = ''): string => `  ${label.padEnd(w)}${gb.padStart(9)}   ${formula}`.trimEnd();
  out.push('');
  out.push(line('per GPU', 'GB', 'formula'));
  out.push('training (peak of a step)');
  for (const r of p.train.rows) out.push(line(labelOf(r), formatGB(r.bytes), r.formula));
  out.push(line('total', formatGB(p.train.totalBytes), `of ${formatGB(p.train.limitBytes)} GB: ${p.train.totalBytes <= p.train.limitBytes ? 'fits' : 'DOES NOT FIT'}`));
  const other = i.recompute ? p.activations.withoutRecompute : p.activations.withRecompute;
  out.push(`  (activations with recompute ${i.recompute ? 'off' : 'on'} would be ${formatGB(other.peakBytes)} GB)`);
  {
    const g = p.generate;
    out.push(
      `${i.colocateAll ? 'colocated generation' : 'engine GPU (not colocated)'} (gpu_memory_utilization ${i.engine.gpuMemoryUtilization} x M = ${formatGB(g.limitBytes)} GB)`,
    );
    for (const r of g.rows) out.push(line(r.label, formatGB(r.bytes), r.formula));
    out.push(
      `  KV cache: ${fmtInt(g.kvTokens)} tokens, ${fmtInt(g.fullSequences)} sequences of ${fmtInt(i.engine.sequenceTokens)} tokens at once (an engine gets ${fmtInt(i.engine.rolloutSequences)} per step)`,
    );
  }
  out.push('host memory per rank (pinned)');
  if (p.host.rows.length === 0) out.push(line('none', formatGB(0)));
  for (const r of p.host.rows) out.push(line(r.label, formatGB(r.bytes), r.formula));
  if (p.host.rows.length) out.push(line('total', formatGB(p.host.totalBytes)));
  for (const n of p.notes) out.push(`note: ${n}`);
  out.push(p.fits ? 'verdict: fits' : `verdict: does not fit\n${p.overflows.map((o) => `  - ${o}`).join('\n')}`);
  return out.join('\n');
}

/** The plan as plain JSON (bytes as numbers; the model config left out, its name kept). */
export function planToJson(p: MemoryPlan): Record<string, unknown> {
  return JSON.parse(JSON.stringify(p)) as Record<string, unknown>;
}

/** One line saying why the plan does not fit (empty when it fits). */
export function planReason(p: MemoryPlan): string {
  return p.overflows.join('; ');
}
