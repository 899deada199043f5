// tensor-parallel.ts: one GPT-OSS model split over `tp` ranks (one process per GPU, or CPU processes in CI),
// for generation.
//
// Rank r of tp holds (Hq, Hkv, D, I: the full model's query heads, kv heads, head_dim, expert intermediate size):
//   q_proj rows of query heads r·Hq/tp .. (r+1)·Hq/tp-1, k_proj/v_proj rows of kv heads r·Hkv/tp .. (Hkv % tp = 0,
//     so each rank's query heads read only its own kv heads: GQA stays local); sinks of its query heads;
//   o_proj columns of its query heads (row-parallel: its output [T, H] is a partial sum);
//   every expert's intermediate slice r·I/tp .. (r+1)·I/tp-1: gate_up columns 2·r·I/tp .. (the interleaved
//     gate/up PAIRS of the slice are contiguous columns), gate_up bias the same columns, down_proj rows of the slice
//     (the MoE output is a partial sum over the slices; routing is unchanged because the router is replicated);
//   o_proj bias and expert down bias on rank 0 only (zeros elsewhere) so that the sum over ranks counts them once;
//   the embedding and the LM head vocabulary-parallel: rows r·Vr .. (r+1)·Vr-1 of each, Vr = ceil(V/tp) (the last
//     rank's slice padded with zero rows when tp does not divide V: e.g. a task's compact vocabulary);
//   replicated: norms and routers.
// The local shapes are a GptOssConfig with Hq/tp, Hkv/tp, I/tp and Vr, so every op, the weights class and the KV
// cache work unchanged on a shard. DecoderLayer.outputAndMoeParallel adds the all-reduces (after o_proj and after
// the MoE, before each residual continues).
//
// Vocabulary-parallel embedding: each rank looks up the ids of its slice (zero rows for the others) and one
// all-reduce of [N, H] sums them: exactly the full lookup (every row is one rank's value plus zeros).
// Vocabulary-parallel LM head: each rank computes the logits of its slice [S, Vr]; no [S, V] logits travel for the
// rows GRPO samples (greedy, or temperature with top-k/top-p off): each rank summarises its slice per row (max,
// normaliser, Gumbel-max winner with its whole-vocabulary id: ops/sampling.ts sampleParts), one all-gather of those
// summaries (32 bytes per row and chunk) and the combine give the one-device sampler's token (max and argmax are
// exact) and its log-prob up to summation order. Rows with a top-k/top-p threshold gather their logit slices
// (all-gather [tp, St, Vr], then concatColumns drops the padding) and rank 0 samples them whole.
//
// Tensor parallelism is for inference: the training forward/backward of a shard would be wrong (no reductions),
// so GptOssModel.forward and the single-device layer paths refuse to run on one (see DecoderLayer).
import { join } from 'node:path';
import { defaultDevice } from '../native.ts';
import { Tensor } from '../tensor.ts';
import type { Collectives } from '../distributed/collectives.ts';
import { readConfigFile, type GptOssConfig } from './config.ts';
import { Checkpoint } from './safetensors.ts';
import { resolveModelSource } from './hub.ts';
import { GptOssWeights, paramSpecs } from './weights.ts';
import { GptOssModel, type ForwardOptions, type ForwardResult, type ModelOptions } from './gptoss.ts';
import type { TensorParallelGroup } from './layer.ts';
import { embeddingForward, embeddingForwardSlice } from '../ops/embedding.ts';
import { concatColumns } from '../ops/elementwise.ts';
import { combineSampleParts, rowSplits, sampleParts, sampleRows, type SampleRowsParams } from '../ops/sampling.ts';
import type { PackedBatch } from './batch.ts';
import { disposeAll } from './tensor-helpers.ts';
import { checkpointSource, type ParamSource } from './param-source.ts';

/**
 * The shapes one rank holds: Hq/tp query heads, Hkv/tp kv heads, I/tp of every expert's intermediate dimension,
 * Vr = ceil(V/tp) vocabulary rows of the embedding and the LM head (the last rank's padded with zero rows).
 */
export function tensorParallelConfig(config: GptOssConfig, tp: number): GptOssConfig {
  if (!Number.isInteger(tp) || tp < 1) throw new Error(`tensor parallelism: tp must be a positive integer, got ${tp}`);
  const bad: string[] = [];
  if (config.numKvHeads % tp !== 0) bad.push(`${config.numKvHeads} kv heads`);
  if (config.numHeads % tp !== 0) bad.push(`${config.numHeads} query heads`);
  if (config.intermediateSize % tp !== 0) bad.push(`expert intermediate size ${config.intermediateSize}`);
  if (bad.length) throw new Error(`tensor parallelism: tp=${tp} does not divide the model's ${bad.join(', ')}`);
  const vr = Math.ceil(config.vocabSize / tp);
  if ((tp - 1) * vr >= config.vocabSize) {
    throw new Error(`tensor parallelism: a vocabulary of ${config.vocabSize} leaves rank ${tp - 1} of tp=${tp} no rows (slices of ${vr})`);
  }
  return {
    ...config,
    numHeads: config.numHeads / tp,
    numKvHeads: config.numKvHeads / tp,
    intermediateSize: config.intermediateSize / tp,
    vocabSize: vr,
  };
}

/**
 * How rank `rank` of `tp` takes a parameter from the full tensor: all of it, a range [start, start+length) along
 * dimension `dim` (held in `size` >= length rows there, the rest zeros: the padded last slice of an uneven
 * vocabulary split), or (biases added after a partial sum) all of it on rank 0 and zeros elsewhere.
 */
export type ShardRule = { kind: 'replicated' } | { kind: 'range'; dim: number; start: number; length: number; size: number } | { kind: 'rank0' };

/** The rule for one parameter (checkpoint name) of the full config `config`. */
export function shardRule(config: GptOssConfig, name: string, rank: number, tp: number): ShardRule {
  const local = tensorParallelConfig(config, tp);
  if (!Number.isInteger(rank) || rank < 0 || rank >= tp) throw new Error(`tensor parallelism: rank ${rank} is not in [0, ${tp})`);
  const range = (dim: number, length: number): ShardRule => ({ kind: 'range', dim, start: rank * length, length, size: length });
  if (name === 'model.embed_tokens.weight' || name === 'lm_head.weight') {
    // [V, H]: rows rank·Vr .., the last rank's cut at V and padded to Vr
    const vr = local.vocabSize;
    return { kind: 'range', dim: 0, start: rank * vr, length: Math.min(vr, config.vocabSize - rank * vr), size: vr };
  }
  const m = /^model\.layers\.\d+\.(.+)$/.exec(name);
  if (!m) return { kind: 'replicated' }; // the final norm
  const D = config.headDim;
  const q = local.numHeads * D;
  const kv = local.numKvHeads * D;
  const I = local.intermediateSize;
  switch (m[1]) {
    case 'self_attn.q_proj.weight':
    case 'self_attn.q_proj.bias':
      return range(0, q);
    case 'self_attn.k_proj.weight':
    case 'self_attn.k_proj.bias':
    case 'self_attn.v_proj.weight':
    case 'self_attn.v_proj.bias':
      return range(0, kv);
    case 'self_attn.sinks':
      return range(0, local.numHeads);
    case 'self_attn.o_proj.weight': // [H, Hq*D]: the columns of this rank's heads
      return range(1, q);
    case 'mlp.experts.gate_up_proj': // [E, H, 2I], gate/up interleaved: pairs i0..i1 are columns 2·i0..2·i1
      return range(2, 2 * I);
    case 'mlp.experts.gate_up_proj_bias': // [E, 2I]
      return range(1, 2 * I);
    case 'mlp.experts.down_proj': // [E, I, H]
      return range(1, I);
    case 'self_attn.o_proj.bias':
    case 'mlp.experts.down_proj_bias':
      return { kind: 'rank0' };
    default: // norms, router
      return { kind: 'replicated' };
  }
}

/**
 * src's slice [start, start+length) along `dim`, as a fresh contiguous tensor on `device` with `padTo` (>= length)
 * entries along `dim`, the ones past `length` zeros. One row copy per index of the dimensions before `dim` (one
 * copy in all for dim 0), on whichever devices src and the result live.
 */
function narrow(src: Tensor, dim: number, start: number, length: number, device: string, padTo = length): Tensor {
  const shape = src.shape;
  const outer = shape.slice(0, dim).reduce((a, b) => a * b, 1);
  const size = shape[dim]!;
  const inner = shape.slice(dim + 1).reduce((a, b) => a * b, 1);
  const outShape = shape.map((d, i) => (i === dim ? padTo : d));
  const out = padTo > length ? Tensor.zeros(outShape, { dtype: src.dtype, device }) : Tensor.empty(outShape, { dtype: src.dtype, device });
  const s2 = src.view([outer * size, inner]);
  const d2 = out.view([outer * padTo, inner]);
  try {
    for (let o = 0; o < outer; o++) {
      const s = s2.slice(o * size + start, o * size + start + length);
      const d = d2.slice(o * padTo, o * padTo + length);
      d.copyFrom(s);
      disposeAll(s, d);
    }
  } finally {
    disposeAll(s2, d2);
  }
  return out;
}

/**
 * Rank `rank` of `tp`'s part of the full parameter `name` (a fresh tensor on `device`; `full` stays the caller's):
 * what a shard holds of it, e.g. to update a running engine's weights from whole tensors.
 */
export function shardParameter(config: GptOssConfig, name: string, full: Tensor, rank: number, tp: number, device: string): Tensor {
  return shardTensor(full, shardRule(config, name, rank, tp), rank, device);
}

function shardTensor(full: Tensor, rule: ShardRule, rank: number, device: string): Tensor {
  switch (rule.kind) {
    case 'replicated':
      return full.to(device);
    case 'rank0':
      return rank === 0 ? full.to(device) : Tensor.zeros(full.shape, { dtype: full.dtype, device });
    case 'range':
      return narrow(full, rule.dim, rule.start, rule.length, device, rule.size);
  }
}

/**
 * Where the full weights come from: a model's weights (any device), a checkpoint and its config, or a ParamSource
 * (param-source.ts: e.g. seeded random weights, drawn one tensor at a time).
 */
export type TensorParallelSource = GptOssWeights | { checkpoint: Checkpoint; config: GptOssConfig } | ParamSource;

export interface TensorParallelShard {
  /** The full model's config. */
  fullConfig: GptOssConfig;
  /** The shapes this rank holds (tensorParallelConfig). */
  config: GptOssConfig;
  weights: GptOssWeights;
}

/** Host elements per read when a slice is cut from a ParamSource that reads ranges (sliceFromSource). */
const SLICE_READ_ELEMS = 32 << 20;

/**
 * A range rule's slice of parameter `name` [..shape] read from a source whose range() reads only what it is asked
 * (a checkpoint): the tensor as [outer, size, inner] around `dim`, whole rows of `outer` read in chunks of about
 * `chunkElems` elements to the host (for dim 0 only the slice's rows, in chunks too), each chunk narrowed to [rows, length, inner]
 * and copied into the result on `device`. Host memory: one chunk, never the whole tensor.
 */
function sliceFromSource(src: ParamSource, name: string, shape: readonly number[], rule: Extract<ShardRule, { kind: 'range' }>, device: string, chunkElems: number): Tensor {
  const { dim, start, length, size: padTo } = rule;
  const outer = shape.slice(0, dim).reduce((a, b) => a * b, 1);
  const size = shape[dim]!;
  const inner = shape.slice(dim + 1).reduce((a, b) => a * b, 1);
  const outShape = shape.map((d, i) => (i === dim ? padTo : d));
  const out = padTo > length ? Tensor.zeros(outShape, { dtype: 'bf16', device }) : Tensor.empty(outShape, { dtype: 'bf16', device });
  try {
    if (outer === 1) {
      // The slice's rows, read in chunks of whole rows (a vocabulary slice is large: 290 MB at gpt-oss-20b, tp 4).
      const rows = Math.max(1, Math.floor(chunkElems / inner));
      const flat = out.view([padTo, inner]);
      try {
        for (let r0 = 0; r0 < length; r0 += rows) {
          const r1 = Math.min(length, r0 + rows);
          const part = src.range(name, (start + r0) * inner, (start + r1) * inner, device);
          const dst = flat.slice(r0, r1);
          try {
            dst.copyFrom(part);
          } finally {
            disposeAll(dst, part);
          }
        }
      } finally {
        flat.dispose();
      }
      return out;
    }
    const rows = Math.max(1, Math.floor(chunkElems / (size * inner)));
    const out2 = out.view([outer, padTo * inner]);
    try {
      for (let o0 = 0; o0 < outer; o0 += rows) {
        const o1 = Math.min(outer, o0 + rows);
        const host = src.range(name, o0 * size * inner, o1 * size * inner, 'cpu');
        const h3 = host.view([o1 - o0, size, inner]);
        const cut = narrow(h3, 1, start, length, device, padTo);
        const c2 = cut.view([o1 - o0, padTo * inner]);
        const dst = out2.slice(o0, o1);
        try {
          dst.copyFrom(c2);
        } finally {
          disposeAll(dst, c2, cut, h3, host);
        }
      }
    } finally {
      out2.dispose();
    }
  } catch (e) {
    out.dispose();
    throw e;
  }
  return out;
}

/**
 * Rank `rank` of `tp`'s shard of a model, on `device` (default: the source weights' device, else the default
 * device), one parameter at a time (never the model). From a checkpoint folder or a ParamSource that reads ranges
 * (checkpointSource), a sliced parameter is read in chunks of whole rows around its split dimension and cut on the
 * host (dim 0: only its rows): at most `readChunkElems` (default 32M) elements on the host at once; a replicated
 * one (or rank 0's bias) goes straight to the device (ParamSource.full). From a ParamSource that draws whole
 * tensors (randomSource) a sliced tensor is drawn on the host and cut.
 */
export function shardForTensorParallel(source: TensorParallelSource, rank: number, tp: number, opts: { device?: string; readChunkElems?: number } = {}): TensorParallelShard {
  const fromWeights = source instanceof GptOssWeights;
  const fullConfig = source.config;
  const config = tensorParallelConfig(fullConfig, tp);
  const device = opts.device ?? (fromWeights ? source.device : defaultDevice());
  const src: ParamSource | null = fromWeights ? null : 'checkpoint' in source ? checkpointSource(source.config, source.checkpoint) : source;
  const params = new Map<string, Tensor>();
  try {
    for (const spec of paramSpecs(fullConfig)) {
      const rule = shardRule(fullConfig, spec.name, rank, tp);
      if (!src) {
        params.set(spec.name, shardTensor((source as GptOssWeights).params.get(spec.name)!, rule, rank, device));
        continue;
      }
      if (rule.kind === 'range' && src.partial) {
        params.set(spec.name, sliceFromSource(src, spec.name, spec.shape, rule, device, opts.readChunkElems ?? SLICE_READ_ELEMS));
        continue;
      }
      // Whole on this rank (replicated, or rank 0's bias): read straight to the device (a checkpoint streams it in
      // chunks; the random source draws it in chunks), no whole copy on the host.
      if (rule.kind === 'replicated' || (rule.kind === 'rank0' && rank === 0)) {
        params.set(spec.name, src.full(spec.name, device));
        continue;
      }
      if (rule.kind === 'rank0') {
        params.set(spec.name, Tensor.zeros(spec.shape, { dtype: 'bf16', device }));
        continue;
      }
      const full = src.full(spec.name, 'cpu');
      try {
        params.set(spec.name, shardTensor(full, rule, rank, device));
      } finally {
        full.dispose();
      }
    }
  } catch (e) {
    for (const t of params.values()) t.dispose();
    throw e;
  } finally {
    // A source made here over the caller's open checkpoint: the checkpoint stays the caller's.
    if (src && src !== source) src.close();
  }
  return { fullConfig, config, weights: new GptOssWeights(config, device, params) };
}

/** The model's view of a Collectives group spanning the engine's ranks (sum all-reduce, all-gather). */
export function tensorParallelGroup(collectives: Collectives): TensorParallelGroup {
  return {
    rank: collectives.rank,
    size: collectives.worldSize,
    allReduce: (t) => collectives.allReduce(t, 'sum'),
    allGather: (out, input) => collectives.allGather(out, input),
  };
}

/** Host copies of a step's per-row sampling parameters (the engine's StepInput arrays), [S] each. */
export interface HostSampleParams {
  temperature: Float32Array;
  topP: Float32Array;
  topK: Int32Array;
  seeds: Int32Array;
  counters: Int32Array;
}

/**
 * One rank's shard of a GPT-OSS model. It is a GptOssModel over the local shapes (config: Hq/tp, Hkv/tp, I/tp;
 * fullConfig: the model's), so generation code drives it through the same pieces (embed, layers, logits); its
 * layers reduce through DecoderLayer.outputAndMoeParallel, which makes every step a collective: all ranks run the
 * same steps on the same inputs, in the same order.
 */
export class TensorParallelModel extends GptOssModel {
  readonly tp: TensorParallelGroup;
  readonly fullConfig: GptOssConfig;

  constructor(shard: TensorParallelShard, tp: TensorParallelGroup, opts: ModelOptions = {}) {
    super(shard.weights, opts);
    const expect = tensorParallelConfig(shard.fullConfig, tp.size);
    if (shard.config.numHeads !== expect.numHeads || shard.config.intermediateSize !== expect.intermediateSize) {
      throw new Error(`TensorParallelModel: the shard was cut for another tp than the group's ${tp.size}`);
    }
    this.tp = tp;
    this.fullConfig = shard.fullConfig;
  }

  /** This rank's shard of a checkpoint directory or hub id (each rank reads the checkpoint and keeps its slices). */
  static async load(source: string, collectives: Collectives, opts: { device?: string } & ModelOptions = {}): Promise<TensorParallelModel> {
    // Rank 0 resolves the source first (a hub id downloads, where a network exists); the others then find it cached.
    let dir = collectives.rank === 0 ? await resolveModelSource(source, {}) : '';
    await collectives.barrier();
    if (collectives.rank !== 0) dir = await resolveModelSource(source, {});
    const config = readConfigFile(join(dir, 'config.json'));
    const ck = Checkpoint.open(dir);
    try {
      const shard = shardForTensorParallel({ checkpoint: ck, config }, collectives.rank, collectives.worldSize, { device: opts.device });
      return new TensorParallelModel(shard, tensorParallelGroup(collectives), opts);
    } finally {
      ck.close();
    }
  }

  /** This rank's shard from a parameter source, one tensor at a time (a colocated engine rank: only its slices). */
  static fromSource(src: ParamSource, collectives: Collectives, opts: { device?: string; readChunkElems?: number } & ModelOptions = {}): TensorParallelModel {
    const shard = shardForTensorParallel(src, collectives.rank, collectives.worldSize, { device: opts.device, readChunkElems: opts.readChunkElems });
    return new TensorParallelModel(shard, tensorParallelGroup(collectives), opts);
  }

  /** This rank's shard of full weights held in this process (tests, a trainer's gathered weights). */
  static fromWeights(full: GptOssWeights, collectives: Collectives, opts: { device?: string } & ModelOptions = {}): TensorParallelModel {
    const shard = shardForTensorParallel(full, collectives.rank, collectives.worldSize, { device: opts.device });
    return new TensorParallelModel(shard, tensorParallelGroup(collectives), opts);
  }

  /** The first vocabulary id of this rank's embedding and LM-head rows. */
  get vocabStart(): number {
    return this.tp.rank * this.config.vocabSize;
  }

  /**
   * Vocabulary-parallel embedding (collective): each rank looks up the ids of its rows (zeros for the others) and an
   * all-reduce sums them. ids i32 [N] (checked against the whole vocabulary by the caller) -> bf16 [N, H], the same
   * bits on every rank as the one-device lookup.
   */
  async embedParallel(ids: Tensor): Promise<Tensor> {
    const x = embeddingForwardSlice(this.weights.embedding, ids, this.vocabStart);
    try {
      await this.tp.allReduce(x);
    } catch (e) {
      x.dispose();
      throw e;
    }
    return x;
  }

  override embed(_ids: Tensor): Tensor {
    throw new Error(`TensorParallelModel: the embedding is split by vocabulary over ${this.tp.size} ranks; embedParallel (a collective) looks ids up`);
  }

  override logits(_x: Tensor): Tensor {
    throw new Error(
      `TensorParallelModel: the LM head is split by vocabulary over ${this.tp.size} ranks; use logitsSlice (this rank's ` +
        `columns), gatherLogits or sampleParallel (collectives)`,
    );
  }

  /** Final norm + this rank's LM-head rows: x bf16 [N, H] -> f32 [N, Vr], vocabulary ids vocabStart .. (columns past V: padding). */
  logitsSlice(x: Tensor): Tensor {
    return super.logits(x);
  }

  /** The whole-vocabulary logits f32 [N, V] on every rank (collective: an all-gather of the slices; tests, tools). */
  async gatherLogits(x: Tensor): Promise<Tensor> {
    const part = this.logitsSlice(x);
    try {
      return await this.gatherColumns(part);
    } finally {
      part.dispose();
    }
  }

  /** part [N, Vr] of every rank -> [N, V] in vocabulary order, the last slice's padding dropped (collective). */
  private async gatherColumns(part: Tensor): Promise<Tensor> {
    const [N, W] = part.shape as [number, number];
    const all = Tensor.empty([this.tp.size, N, W], { dtype: part.dtype, device: part.device });
    try {
      await this.tp.allGather(all, part);
      return concatColumns(all, this.fullConfig.vocabSize);
    } finally {
      all.dispose();
    }
  }

  /**
   * Final norm, LM head and sampling of hidden rows x bf16 [S, H] (collective: every rank calls it with the same
   * rows and parameters). Rows without a top-k/top-p threshold: each rank summarises its logit slice (sampleParts),
   * one all-gather of the summaries, and the combine draws the one-device sampler's token. Rows with one: their
   * logit slices are all-gathered as whole rows and sampled by sampleRows. `params` on the device, `host` the same
   * values on the host (which rows need a threshold). Rank 0 gets the tokens i32 [S] and log-probs f32 [S]; the
   * other ranks null.
   */
  async sampleParallel(x: Tensor, params: SampleRowsParams, host: HostSampleParams): Promise<{ tokens: Int32Array; logprobs: Float32Array } | null> {
    const V = this.fullConfig.vocabSize;
    const owned: Tensor[] = [];
    try {
      const lg = this.logitsSlice(x); // f32 [S, V/tp]
      owned.push(lg);
      const parts = sampleParts(lg, params, { vocabStart: this.vocabStart, vocabSize: V }); // u8 [S, C·32]
      owned.push(parts);
      const [S, X] = parts.shape as [number, number];
      const gathered = Tensor.empty([this.tp.size, S, X], { dtype: 'u8', device: parts.device });
      owned.push(gathered);
      await this.tp.allGather(gathered, parts);
      const thr: number[] = [];
      for (let b = 0; b < S; b++) if (!rowSplits(host.temperature[b]!, host.topP[b]!, host.topK[b]!, V)) thr.push(b);
      let whole: Tensor | null = null;
      if (thr.length > 0) {
        const idx = Tensor.from(Int32Array.from(thr), [thr.length], { device: lg.device });
        owned.push(idx);
        const rows = embeddingForward(lg, idx, { checked: false }); // f32 [St, V/tp]
        owned.push(rows);
        whole = await this.gatherColumns(rows); // f32 [St, V]
        owned.push(whole);
      }
      if (this.tp.rank !== 0) return null;
      const r = combineSampleParts(gathered, params, V);
      owned.push(r.tokens, r.logprobs);
      const tokens = r.tokens.toInt32();
      const logprobs = r.logprobs.toFloat32();
      if (whole) {
        const dev = lg.device;
        const f32 = (a: Float32Array): Tensor => Tensor.from(Float32Array.from(thr, (b) => a[b]!), [thr.length], { device: dev });
        const i32 = (a: Int32Array): Tensor => Tensor.from(Int32Array.from(thr, (b) => a[b]!), [thr.length], { device: dev });
        const sub: SampleRowsParams = { temperature: f32(host.temperature), topP: f32(host.topP), topK: i32(host.topK), seeds: i32(host.seeds), counters: i32(host.counters) };
        owned.push(...Object.values(sub));
        const t = sampleRows(whole, sub);
        owned.push(t.tokens, t.logprobs);
        const tt = t.tokens.toInt32();
        const tl = t.logprobs.toFloat32();
        thr.forEach((b, i) => {
          tokens[b] = tt[i]!;
          logprobs[b] = tl[i]!;
        });
      }
      return { tokens, logprobs };
    } finally {
      disposeAll(...owned);
    }
  }

  override forward(_b: PackedBatch, _opts?: ForwardOptions): ForwardResult {
    throw new Error(
      `TensorParallelModel: forward/backward (training) do not run on a tensor-parallel shard (rank ${this.tp.rank} of ` +
        `${this.tp.size}); use forwardHidden / the inference engine`,
    );
  }

  /**
   * The layers over a packed batch without a KV cache (every rank, collectively): the final residual stream bf16
   * [T, H], the same on every rank. gatherLogits of it (collective) gives the full-vocabulary logits.
   */
  async forwardHidden(b: PackedBatch): Promise<Tensor> {
    let x = await this.embedParallel(b.ids);
    try {
      for (const layer of this.layers) {
        const { a1, rstd1, qr, kr, v } = layer.attentionInputs(x, b.positions);
        disposeAll(a1, rstd1);
        const { out, lse } = layer.attention(qr, kr, v, b);
        disposeAll(qr, kr, v, lse);
        const y = await layer.outputAndMoeParallel(x, out);
        x.dispose();
        x = y;
      }
    } catch (e) {
      x.dispose();
      throw e;
    }
    return x;
  }
}
