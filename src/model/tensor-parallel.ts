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
//   replicated: norms, router, the embedding and the LM head.
// The local shapes are a GptOssConfig with Hq/tp, Hkv/tp and I/tp, so every op, the weights class and the KV
// cache work unchanged on a shard. DecoderLayer.outputAndMoeParallel adds the all-reduces (after o_proj and after
// the MoE, before each residual continues).
//
// Why the embedding and LM head are replicated, not vocab-parallel: every rank needs the full hidden rows after the
// embedding (a vocab-parallel embedding costs one more all-reduce per step), and the sampler (top-p/top-k over
// the whole vocabulary, per-row seeds) runs on rank 0 over full-vocabulary logits, so rank 0 computes the LM head
// alone: no [B, V] logits travel between ranks and no distributed top-p is needed. The cost is the LM head GEMM on
// one rank (at gpt-oss-20b, batch 512: ~0.6 TFLOP, about a millisecond on an H100, against tens of milliseconds
// per decode step) and 1.16 GB of LM head memory on every rank (the other ranks hold it unused).
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
import type { PackedBatch } from './batch.ts';
import { disposeAll } from './tensor-helpers.ts';
import { checkpointSource, type ParamSource } from './param-source.ts';

/** The shapes one rank holds: Hq/tp query heads, Hkv/tp kv heads, I/tp of every expert's intermediate dimension. */
export function tensorParallelConfig(config: GptOssConfig, tp: number): GptOssConfig {
  if (!Number.isInteger(tp) || tp < 1) throw new Error(`tensor parallelism: tp must be a positive integer, got ${tp}`);
  const bad: string[] = [];
  if (config.numKvHeads % tp !== 0) bad.push(`${config.numKvHeads} kv heads`);
  if (config.numHeads % tp !== 0) bad.push(`${config.numHeads} query heads`);
  if (config.intermediateSize % tp !== 0) bad.push(`expert intermediate size ${config.intermediateSize}`);
  if (bad.length) throw new Error(`tensor parallelism: tp=${tp} does not divide the model's ${bad.join(', ')}`);
  return {
    ...config,
    numHeads: config.numHeads / tp,
    numKvHeads: config.numKvHeads / tp,
    intermediateSize: config.intermediateSize / tp,
  };
}

/**
 * How rank `rank` of `tp` takes a parameter from the full tensor: all of it, a range [start, start+length) along
 * dimension `dim`, or (biases added after a partial sum) all of it on rank 0 and zeros elsewhere.
 */
export type ShardRule = { kind: 'replicated' } | { kind: 'range'; dim: number; start: number; length: number } | { kind: 'rank0' };

/** The rule for one parameter (checkpoint name) of the full config `config`. */
export function shardRule(config: GptOssConfig, name: string, rank: number, tp: number): ShardRule {
  const local = tensorParallelConfig(config, tp);
  if (!Number.isInteger(rank) || rank < 0 || rank >= tp) throw new Error(`tensor parallelism: rank ${rank} is not in [0, ${tp})`);
  const m = /^model\.layers\.\d+\.(.+)$/.exec(name);
  if (!m) return { kind: 'replicated' }; // embedding, final norm, LM head
  const D = config.headDim;
  const q = local.numHeads * D;
  const kv = local.numKvHeads * D;
  const I = local.intermediateSize;
  const range = (dim: number, length: number): ShardRule => ({ kind: 'range', dim, start: rank * length, length });
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
 * src's slice [start, start+length) along `dim`, as a fresh contiguous tensor on `device`. One row copy per index
 * of the dimensions before `dim` (one copy in all for dim 0), on whichever devices src and the result live.
 */
function narrow(src: Tensor, dim: number, start: number, length: number, device: string): Tensor {
  const shape = src.shape;
  const outer = shape.slice(0, dim).reduce((a, b) => a * b, 1);
  const size = shape[dim]!;
  const inner = shape.slice(dim + 1).reduce((a, b) => a * b, 1);
  const out = Tensor.empty(shape.map((d, i) => (i === dim ? length : d)), { dtype: src.dtype, device });
  const s2 = src.view([outer * size, inner]);
  const d2 = out.view([outer * length, inner]);
  try {
    for (let o = 0; o < outer; o++) {
      const s = s2.slice(o * size + start, o * size + start + length);
      const d = d2.slice(o * length, (o + 1) * length);
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
      return narrow(full, rule.dim, rule.start, rule.length, device);
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
 * `chunkElems` elements to the host (for dim 0 only the slice's rows), each chunk narrowed to [rows, length, inner]
 * and copied into the result on `device`. Host memory: one chunk, never the whole tensor.
 */
function sliceFromSource(src: ParamSource, name: string, shape: readonly number[], rule: Extract<ShardRule, { kind: 'range' }>, device: string, chunkElems: number): Tensor {
  const { dim, start, length } = rule;
  const outer = shape.slice(0, dim).reduce((a, b) => a * b, 1);
  const size = shape[dim]!;
  const inner = shape.slice(dim + 1).reduce((a, b) => a * b, 1);
  const out = Tensor.empty(shape.map((d, i) => (i === dim ? length : d)), { dtype: 'bf16', device });
  try {
    if (outer === 1) {
      const part = src.range(name, start * inner, (start + length) * inner, device);
      const flat = out.view([length * inner]);
      flat.copyFrom(part);
      disposeAll(part, flat);
      return out;
    }
    const rows = Math.max(1, Math.floor(chunkElems / (size * inner)));
    const out2 = out.view([outer, length * inner]);
    try {
      for (let o0 = 0; o0 < outer; o0 += rows) {
        const o1 = Math.min(outer, o0 + rows);
        const host = src.range(name, o0 * size * inner, o1 * size * inner, 'cpu');
        const h3 = host.view([o1 - o0, size, inner]);
        const cut = narrow(h3, 1, start, length, device);
        const c2 = cut.view([o1 - o0, length * inner]);
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

/** The layers' view of a Collectives group spanning the engine's ranks (sum all-reduce). */
export function tensorParallelGroup(collectives: Collectives): TensorParallelGroup {
  return {
    rank: collectives.rank,
    size: collectives.worldSize,
    allReduce: (t) => collectives.allReduce(t, 'sum'),
  };
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

  override forward(_b: PackedBatch, _opts?: ForwardOptions): ForwardResult {
    throw new Error(
      `TensorParallelModel: forward/backward (training) do not run on a tensor-parallel shard (rank ${this.tp.rank} of ` +
        `${this.tp.size}); use forwardHidden / the inference engine`,
    );
  }

  /**
   * The layers over a packed batch without a KV cache (every rank, collectively): the final residual stream bf16
   * [T, H], the same on every rank. logits() of it (on any rank) gives the full-vocabulary logits.
   */
  async forwardHidden(b: PackedBatch): Promise<Tensor> {
    let x = this.embed(b.ids);
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
