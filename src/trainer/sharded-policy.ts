// sharded-policy.ts: the fully sharded data-parallel Policy (ZeRO-3 style) over N ranks, one process per device,
// started by the launcher (src/distributed/launch.ts) and talking through a Collectives backend (NCCL on GPUs, the
// CPU backend in CI).
//
// The model is cut into units: the embedding, each decoder layer, and the final norm + LM head. Each unit's
// parameters are laid out back to back in one flat buffer of `numel` elements, padded to `padded` (a multiple of
// N); rank r owns elements [r*shard, (r+1)*shard) where shard = padded / N. Per unit and rank:
//   bf16 compute shard [shard]        all-gathered into the full bf16 unit [padded] just before use, freed after
//   fp32 master shard [shard]         made from the bf16 shard at the first optimizer step (as GptOssPolicy does)
//   fp32 AdamW moments m, v [shard]
//   fp32 gradient shard [shard]       the reduce-scatter (sum) of each micro-batch's full fp32 unit gradient
// A training step on every rank: forward (gather unit u+1 is issued before unit u computes; unit u's gathered
// weights are freed when it is done), backward in reverse (each unit gathered again, its layer recomputed under
// `recompute`, its full fp32 gradient reduce-scattered as soon as its backward is done), the global grad norm
// from one all-reduce of the shards' sums of squares, AdamW on the shards (the existing optimizer op, which also
// rewrites the bf16 compute shard from the updated master). With the fused LM-head backward (forward's
// lossGradient) the head unit's forward also runs the LM head's backward per token chunk (tokenChunkedLmHead) into
// the head unit's gradient buffer, kept until backward adds the final norm's gradient and reduce-scatters it.
//
// Every method that moves data between ranks is collective: every rank calls it, in the same order, with its own
// part of the batch (possibly no sequences: the rank still takes part in the gathers and reduce-scatters). The
// helpers shardSequences / rankMicroBatches split a mini-batch so that every rank runs the same number of
// micro-batches. Loss normalisers must be the global mini-batch's (as grpo.ts's updatePolicy computes them from
// the whole mini-batch); then the sum over ranks of the gradients equals the single-process gradient.
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { StreamEvent, Tensor, synchronize, type StreamName } from '../tensor.ts';
import type { Collectives } from '../distributed/collectives.ts';
import {
  Checkpoint,
  DecoderLayer,
  disposeBatch,
  disposeLayerSaved,
  layerPrefix,
  layerWeights,
  packSequences,
  paramSpecs,
  qkvRows,
  ropeTables,
  saveCheckpoint,
  tensorToSave,
  toHfConfig,
  type ForwardState,
  type GptOssConfig,
  type GptOssWeights,
  type KeptAttention,
  type LayerHost,
  type LayerSaved,
  type LayerWeights,
  type PackedBatch,
  type RopeTables,
  type TensorToSave,
} from '../model/index.ts';
import { accumulateGrad, disposeAll } from '../model/tensor-helpers.ts';
import { checkpointSource, weightsSource, type ParamSource } from '../model/param-source.ts';
import { childLogger } from '../log/logger.ts';
import { embeddingBackward, embeddingForward } from '../ops/embedding.ts';
import { rmsnormBackward, rmsnormForward } from '../ops/rmsnorm.ts';
import { tokenChunkedLmHead, tokenLogprobs as lmHeadLogprobs, tokenLogprobsBackward } from '../ops/logprob.ts';
import { addInPlace, cast, fill } from '../ops/elementwise.ts';
import { adamwStep, clipFactor, scaleGradsInPlace, sumOfSquaresInto } from '../ops/optim.ts';
import type { GradClipResult, LogprobModel, LogprobOptions, LogprobOutput, OptimizerHyper, Policy, SequenceBatch, TrainForward, TrainForwardOptions } from './policy.ts';
import { packedLossGradient } from './gptoss-policy.ts';

const log = childLogger('fsdp');

// ---- layout ------------------------------------------------------------------------------------------------------
/** One parameter's place in its unit's flat buffer. */
export interface UnitEntry {
  /** Checkpoint name. */
  name: string;
  shape: number[];
  /** Element offset in the flat unit buffer. */
  offset: number;
  numel: number;
}

/** A sharding unit: the parameters gathered together. */
export interface ShardUnit {
  kind: 'embedding' | 'layer' | 'head';
  /** Decoder layer index (kind 'layer'). */
  layer: number;
  /** A short name for messages and checkpoint keys: embedding, layer.<i>, head. */
  key: string;
  entries: UnitEntry[];
  /** Parameters in the unit. */
  numel: number;
  /** Elements of the flat buffer the entries span: numel plus the alignment gaps between entries. */
  span: number;
  /** span rounded up to a multiple of the world size. */
  padded: number;
  /** padded / worldSize: elements per rank. */
  shard: number;
}

/**
 * A decoder layer's parameters in flat order. q/k/v weights are adjacent (q rows, k rows, v rows) and so are their
 * biases, so the fused qkvW [Hq*D + 2*Hkv*D, H] and qkvB the layer's GEMM takes are plain views of the flat buffer.
 */
const LAYER_ORDER = [
  'input_layernorm.weight',
  'self_attn.q_proj.weight',
  'self_attn.k_proj.weight',
  'self_attn.v_proj.weight',
  'self_attn.q_proj.bias',
  'self_attn.k_proj.bias',
  'self_attn.v_proj.bias',
  'self_attn.o_proj.weight',
  'self_attn.o_proj.bias',
  'self_attn.sinks',
  'post_attention_layernorm.weight',
  'mlp.router.weight',
  'mlp.router.bias',
  'mlp.experts.gate_up_proj',
  'mlp.experts.gate_up_proj_bias',
  'mlp.experts.down_proj',
  'mlp.experts.down_proj_bias',
] as const;

/** Element alignment of each entry in a unit's flat buffer: 8 elements = 16 bytes of bf16 (32 of the fp32 masters). */
const ENTRY_ALIGN = 8;

/** The units of a config sharded over worldSize ranks: embedding, layers 0..L-1, head (final norm + LM head). */
export function shardLayout(c: GptOssConfig, worldSize: number): ShardUnit[] {
  if (!Number.isInteger(worldSize) || worldSize < 1) throw new Error(`shardLayout: world size ${worldSize} is not a positive integer`);
  if (c.tieWordEmbeddings) throw new Error('ShardedPolicy: tied word embeddings are not supported (the LM head would be the embedding unit, gathered twice)');
  const shapes = new Map(paramSpecs(c).map((s) => [s.name, s.shape]));
  const unit = (kind: ShardUnit['kind'], layer: number, key: string, names: string[]): ShardUnit => {
    let off = 0;
    let numelSum = 0;
    const entries = names.map((name) => {
      const shape = shapes.get(name)!;
      const numel = shape.reduce((a, b) => a * b, 1);
      // Every tensor view of the gathered bf16 unit starts on a 16-byte boundary (CUDA kernels load 16-byte
      // vectors), except k/v, which must follow q without a gap so the fused q/k/v weight and bias stay views.
      if (!/\.(k|v)_proj\./.test(name)) off = Math.ceil(off / ENTRY_ALIGN) * ENTRY_ALIGN;
      const e = { name, shape, offset: off, numel };
      off += numel;
      numelSum += numel;
      return e;
    });
    const padded = Math.ceil(off / worldSize) * worldSize;
    return { kind, layer, key, entries, numel: numelSum, span: off, padded, shard: padded / worldSize };
  };
  const units = [unit('embedding', -1, 'embedding', ['model.embed_tokens.weight'])];
  for (let l = 0; l < c.numLayers; l++) units.push(unit('layer', l, `layer.${l}`, LAYER_ORDER.map((n) => `${layerPrefix(l)}.${n}`)));
  units.push(unit('head', -1, 'head', ['model.norm.weight', 'lm_head.weight']));
  return units;
}

// ---- splitting a mini-batch over ranks -------------------------------------------------------------------------------
/**
 * Assigns sequences (by their token counts) to ranks so that the ranks' token totals are balanced: longest first,
 * each to the rank with the fewest tokens so far (ties: the lower rank). Returns per rank the sequence indices in
 * ascending order. Deterministic, so every rank computes the same split without communicating.
 */
export function shardSequences(tokenCounts: readonly number[], worldSize: number): number[][] {
  if (!Number.isInteger(worldSize) || worldSize < 1) throw new Error(`shardSequences: world size ${worldSize} is not a positive integer`);
  const order = tokenCounts.map((n, i) => ({ n, i })).sort((a, b) => b.n - a.n || a.i - b.i);
  const load = new Array<number>(worldSize).fill(0);
  const out: number[][] = Array.from({ length: worldSize }, () => []);
  for (const { n, i } of order) {
    let best = 0;
    for (let r = 1; r < worldSize; r++) if (load[r]! < load[best]!) best = r;
    load[best]! += n;
    out[best]!.push(i);
  }
  for (const o of out) o.sort((a, b) => a - b);
  return out;
}

/**
 * Per rank, its sequences cut into micro-batches of at most `micro` sequences, padded with empty micro-batches so
 * every rank runs the same number (forward/backward are collective: a rank without sequences still takes part).
 */
export function rankMicroBatches(perRank: readonly (readonly number[])[], micro: number): number[][][] {
  if (!Number.isInteger(micro) || micro < 1) throw new Error(`rankMicroBatches: micro-batch size ${micro} is not a positive integer`);
  const cut = perRank.map((idx) => {
    const mbs: number[][] = [];
    for (let i = 0; i < idx.length; i += micro) mbs.push(idx.slice(i, i + micro));
    return mbs;
  });
  const n = Math.max(1, ...cut.map((m) => m.length));
  for (const m of cut) while (m.length < n) m.push([]);
  return cut;
}

// ---- gathered units ------------------------------------------------------------------------------------------------
/** A unit's full bf16 weights on this rank (after the all-gather) with views per parameter. */
interface Gathered {
  unit: ShardUnit;
  full: Tensor;
  views: Map<string, Tensor>;
  /** The layer's typed view (kind 'layer'). */
  layer?: LayerWeights;
  /** The fused q/k/v views of a layer (kind 'layer'; freed with the unit). */
  fused: Tensor[];
  /** One rank with a host shard: the device copy `full` views (freed with the unit). */
  staged: Tensor | null;
}

/** Views of a flat unit buffer (bf16 weights or f32 gradients) per checkpoint name, shaped as the parameter. */
function entryViews(unit: ShardUnit, flat: Tensor): Map<string, Tensor> {
  const m = new Map<string, Tensor>();
  for (const e of unit.entries) {
    const s = flat.slice(e.offset, e.offset + e.numel);
    m.set(e.name, s.view(e.shape));
    s.dispose();
  }
  return m;
}

function layerWeightsOf(c: GptOssConfig, unit: ShardUnit, full: Tensor, views: Map<string, Tensor>): { lw: LayerWeights; extra: Tensor[] } {
  const p = layerPrefix(unit.layer);
  const rows = qkvRows(c).reduce((a, b) => a + b, 0);
  const at = (n: string, len: number, shape: number[]): Tensor => {
    const e = unit.entries.find((x) => x.name === `${p}.${n}`)!;
    const s = full.slice(e.offset, e.offset + len);
    const v = s.view(shape);
    s.dispose();
    return v;
  };
  const qkvW = at('self_attn.q_proj.weight', rows * c.hiddenSize, [rows, c.hiddenSize]);
  const qkvB = at('self_attn.q_proj.bias', rows, [rows]);
  const lw = layerWeights(views, unit.layer, { w: qkvW, b: qkvB });
  return { lw, extra: [qkvW, qkvB] };
}

/**
 * The per-layer host the DecoderLayers read their weights from: `layers[l]` is set while layer l's unit is
 * gathered and cleared when it is freed. DecoderLayer reads only `weights.layers[index]` (plus config, device, rope
 * and deterministic), so this stands in for a GptOssWeights that never holds the whole model.
 */
class ShardHost {
  readonly layers: (LayerWeights | undefined)[];
  readonly asLayerHost: LayerHost;
  constructor(config: GptOssConfig, device: string, rope: RopeTables, deterministic: boolean) {
    this.layers = new Array(config.numLayers).fill(undefined);
    const weights = { layers: this.layers } as unknown as GptOssWeights;
    this.asLayerHost = { config, device, rope, deterministic, weights };
  }
}

// ---- the shards and the collective passes shared by the policy and its frozen copy --------------------------------
export interface ShardedModelOptions {
  /** Re-run each layer's forward in backward instead of keeping its activations (default true: the 20b default). */
  recompute?: boolean;
  /** With recompute: keep each layer's attention output and LSE for the recompute (default true; see
   *  ModelOptions.keepAttention). */
  keepAttention?: boolean;
  /** Vocabulary rows per LM-head chunk (default: lmHeadChunk(T, V) of src/ops/logprob.ts, as the planner counts). */
  lmHeadChunk?: number;
  /** Bitwise-reproducible attention backward (see ModelOptions.deterministic). */
  deterministic?: boolean;
  /**
   * Keep the fp32 masters and AdamW moments in pinned host memory and run AdamW there (trainer.policy.fsdp_config.
   * cpu_offload): each step copies the gradient shards to the host and the updated bf16 shards back, asynchronously
   * through two pinned staging slots so the copies overlap the host's AdamW (optimizerStep). The same AdamW
   * arithmetic as on the device (native/cpu/optim.h), so the weights are bitwise those of the default. On a CPU
   * device it changes nothing. Default false.
   */
  cpuOffload?: boolean;
  /**
   * Move the fp32 masters and AdamW moments [shard] per unit to pinned host memory at the end of every optimizer
   * step and back to the device at the next training forward (or optimizer step), so the generation phase between
   * them (a colocated engine sharing the GPU) has that memory (trainer.policy.optimizer_config.offload_after_step);
   * load() leaves a resumed state there too.
   * Exact copies: training is bitwise the same as without. With cpuOffload the state is on the host anyway (nothing
   * moves); on a CPU device the move is a host-to-host copy. Default false.
   */
  offloadAfterStep?: boolean;
  /**
   * The KL reference (frozenCopy) keeps its bf16 shards in host memory and copies each to the device just before
   * its gather (trainer.placement.colocate_policy_ref=false). On a CPU device it changes nothing. Default false.
   */
  referenceOnHost?: boolean;
  /**
   * Benchmarks: time the collectives (stats()). Each gather and reduce-scatter then drains the device before and
   * after it and runs without prefetch, so the split is exact but the step is slower than without. Default false.
   */
  timing?: boolean;
  /**
   * Overlap communication with compute (default true): the next unit's all-gather is issued one unit ahead on the
   * device's comm stream (it runs while the current unit computes) and each reduce-scatter runs there while the
   * next unit's backward computes; StreamEvents order them against the compute stream. false: no look-ahead,
   * every collective on the compute stream in program order. The results are bitwise the same either way.
   */
  prefetch?: boolean;
  /**
   * One rank: gather and reduce-scatter through the collectives anyway (each a copy) instead of using the shard in
   * place, so the overlap machinery runs, and can be tested and measured, on one GPU. Default false.
   */
  collectivesAtOne?: boolean;
  /**
   * Measure the exposed (not overlapped) communication time, stats().exposedGatherMs / exposedReduceScatterMs:
   * on a GPU, timing events on the compute stream around each wait for a comm-stream collective (how long compute
   * stalled); on the CPU, where compute and collectives cannot overlap, the wall time of each await. Default false.
   */
  exposedTiming?: boolean;
}

/** Milliseconds of communication (ShardedPolicy.stats()). */
export interface ShardedStats {
  /** Timing mode: the gathers' and reduce-scatters' own time (device drained around each). */
  gatherMs: number;
  reduceScatterMs: number;
  /** exposedTiming: how long compute waited for them (with prefetch, what the overlap did not hide). */
  exposedGatherMs: number;
  exposedReduceScatterMs: number;
}

type ModelOpts = Required<Pick<ShardedModelOptions, 'recompute' | 'keepAttention' | 'deterministic' | 'timing' | 'prefetch' | 'collectivesAtOne' | 'exposedTiming'>> & { lmHeadChunk?: number };

/**
 * A unit's full fp32 gradient buffer f32 [padded]: the gradient shard itself (inPlace: one rank, collectivesAtOne
 * off) or a new one, zeroed except, with freshExperts, a layer's expert weight matrices, which the layer's backward
 * then writes instead of adding into (LayerBackwardOptions.freshExpertGrads).
 */
interface GradBuffer {
  flat: Tensor;
  inPlace: boolean;
  freshExperts: boolean;
}

/**
 * A fresh gradient buffer's zeroing for a unit whose expert matrices the layer's backward writes (not adds into):
 * flat f32 [unit.padded] is zeroed everywhere but a layer unit's mlp.experts.gate_up_proj and down_proj ranges (the
 * other parameters, which the backward adds into, the alignment gaps and the padding, which the reduce-scatter sums).
 * Returns false, zeroing all of it, for a unit without both matrices (the embedding, the head).
 */
export function zeroAroundExpertMatrices(unit: ShardUnit, flat: Tensor): boolean {
  const experts = unit.kind === 'layer' ? unit.entries.filter((e) => /\.mlp\.experts\.(gate_up_proj|down_proj)$/.test(e.name)).sort((a, b) => a.offset - b.offset) : [];
  const keep = experts.length === 2 ? experts : [];
  let at = 0;
  for (const e of [...keep, { offset: unit.padded, numel: 0 }]) {
    if (e.offset > at) {
      const gap = flat.slice(at, e.offset);
      fill(gap, 0);
      gap.dispose();
    }
    at = e.offset + e.numel;
  }
  return keep.length === 2;
}

/**
 * What a sharded forward keeps for backward: the single-process model's state, freed by disposeState. After a
 * fused forward (lossGradient): dHidden f32 [T, H] and headGrad, the head unit's gradient buffer that already holds
 * the LM head's gradient (backward adds the final norm's and reduce-scatters it as usual).
 */
type ShardedState = Omit<ForwardState, 'dispose'> & { headGrad?: GradBuffer };

/** The fused LM-head backward of a sharded forward (ShardedModel.forward). */
interface ShardedLossGradient {
  /** dLoss/dlogp of the rank's packed tokens t0 .. t0 + logprobs.length - 1 (GptOssModel's LossGradient.grad). */
  grad: (t0: number, logprobs: Float32Array) => Float32Array;
  /** Unit u's gradient shard so far (null: none yet), as backward's `accumulated`. */
  accumulated: (u: number) => Tensor | null;
}

function disposeState(s: ShardedState): void {
  for (const x of s.saved) {
    if (!x) continue;
    disposeLayerSaved(x);
    x.x.dispose();
  }
  for (const t of s.inputs) disposeAll(t);
  for (const a of s.attention) if (a) disposeAll(a.attn, a.lse);
  disposeAll(s.xL, s.hf, s.rstdf, s.lse, s.dHidden);
  if (s.headGrad && !s.headGrad.inPlace) s.headGrad.flat.dispose();
  disposeBatch(s.batch);
}

class ShardedModel {
  readonly units: ShardUnit[];
  readonly layers: DecoderLayer[];
  /** Milliseconds of communication (timing / exposedTiming modes; see ShardedStats). */
  readonly stats: ShardedStats = { gatherMs: 0, reduceScatterMs: 0, exposedGatherMs: 0, exposedReduceScatterMs: 0 };
  /** exposedTiming on a GPU: event pairs around compute's waits, read (synchronizing) by resolveStats(). */
  private exposedEvents: { from: StreamEvent; to: StreamEvent; key: 'exposedGatherMs' | 'exposedReduceScatterMs' }[] = [];
  private readonly host: ShardHost;
  private readonly rope: RopeTables;
  /** One rank using its shard in place (no collectives; see collectivesAtOne). */
  readonly direct: boolean;
  /** Collectives on the comm stream, gathers one unit ahead (prefetch and not timing). */
  readonly overlap: boolean;

  constructor(
    readonly config: GptOssConfig,
    readonly comm: Collectives,
    readonly device: string,
    /** Per unit: this rank's bf16 compute shard [shard]. */
    readonly bf16: Tensor[],
    readonly opts: ModelOpts,
  ) {
    this.direct = comm.worldSize === 1 && !opts.collectivesAtOne;
    this.overlap = opts.prefetch && !opts.timing;
    this.units = shardLayout(config, comm.worldSize);
    this.rope = ropeTables(config, device);
    this.host = new ShardHost(config, device, this.rope, opts.deterministic);
    this.layers = Array.from({ length: config.numLayers }, (_, l) => new DecoderLayer(this.host.asLayerHost, l));
  }

  get rank(): number {
    return this.comm.rank;
  }

  /**
   * Issues the all-gather of unit u's bf16 weights and resolves to them. Called one unit ahead of use (prefetch):
   * the gather goes to the comm stream after an event that covers the compute queued so far (the units before
   * the current one, which may still read the buffer `full` reuses), so it runs while the current unit computes;
   * when the caller next yields, the compute stream is made to wait for it (after the current unit's work).
   */
  async gather(u: number): Promise<Gathered> {
    const unit = this.units[u]!;
    const shard = this.bf16[u]!;
    // Shards kept in host memory (the KL reference with referenceOnHost) are copied to the device first.
    const staged = shard.device === this.device ? null : shard.to(this.device);
    const src = staged ?? shard;
    // One rank: the shard is the whole unit; use it in place (no copy).
    if (this.direct) return this.viewsOf(unit, src.view([unit.padded]), staged);
    const full = Tensor.empty([unit.padded], { dtype: 'bf16', device: this.device });
    try {
      const t0 = this.timeStart();
      const stream = this.toComm();
      const p = this.comm.allGather(full, src, { stream });
      const done = stream === 'comm' ? new StreamEvent(this.device).record('comm') : null;
      await (t0 === null ? this.settle(p, done, 'exposedGatherMs') : this.timeEnd(p, t0, 'gatherMs'));
    } catch (e) {
      full.dispose();
      throw e;
    } finally {
      // Freed only once compute has waited for the gather that read it (settle), so its block is not reused early.
      staged?.dispose();
    }
    return this.viewsOf(unit, full, null);
  }

  /**
   * With overlap: the comm stream waits for the compute queued so far (the collective's input, and every earlier
   * reader of the blocks its buffers reuse), and the collective goes there. Otherwise the compute stream.
   */
  private toComm(): StreamName {
    if (!this.overlap) return 'compute';
    new StreamEvent(this.device).record('compute').wait('comm');
    return 'comm';
  }

  /**
   * Waits for a collective's promise, then (comm stream) makes compute wait for its `done` event. exposedTiming:
   * the wall time of the await on the CPU; on a GPU a timing-event pair around compute's wait.
   */
  private async settle(p: Promise<void>, done: StreamEvent | null, key: 'exposedGatherMs' | 'exposedReduceScatterMs'): Promise<void> {
    const measure = this.opts.exposedTiming;
    const cpu = this.device === 'cpu';
    const t0 = measure && cpu ? performance.now() : 0;
    await p;
    if (measure && cpu) this.stats[key] += performance.now() - t0;
    if (!done) return;
    if (measure && !cpu) {
      const from = new StreamEvent(this.device, true).record();
      done.wait();
      this.exposedEvents.push({ from, to: new StreamEvent(this.device, true).record(), key });
    } else done.wait();
  }

  /** Adds the exposed times measured on the GPU so far into stats (waits for their events). */
  resolveStats(): void {
    for (const { from, to, key } of this.exposedEvents) this.stats[key] += from.elapsedMs(to);
    this.exposedEvents = [];
  }

  private viewsOf(unit: ShardUnit, full: Tensor, staged: Tensor | null): Gathered {
    const views = entryViews(unit, full);
    const g: Gathered = { unit, full, views, fused: [], staged };
    if (unit.kind === 'layer') {
      const { lw, extra } = layerWeightsOf(this.config, unit, full, views);
      g.fused = extra;
      g.layer = lw;
      this.host.layers[unit.layer] = lw;
    }
    return g;
  }

  /** Timing mode (opts.timing): the device is drained before a collective, so its wall time is its own. */
  private timeStart(): number | null {
    if (!this.opts.timing) return null;
    synchronize(this.device);
    return performance.now();
  }

  private async timeEnd(p: Promise<void>, t0: number, key: 'gatherMs' | 'reduceScatterMs'): Promise<void> {
    await p;
    await this.comm.synchronize();
    synchronize(this.device);
    this.stats[key] += performance.now() - t0;
  }

  /** Frees a gathered unit (its views and the full buffer). */
  release(g: Gathered): void {
    if (g.unit.kind === 'layer') this.host.layers[g.unit.layer] = undefined;
    for (const v of g.views.values()) v.dispose();
    for (const v of g.fused) v.dispose();
    g.full.dispose();
    g.staged?.dispose();
  }

  /** Waits for a prefetched gather nobody will use (after an error) and frees it. */
  private drop(p: Promise<Gathered> | null): void {
    p?.then((g) => this.release(g)).catch(() => {});
  }

  /**
   * Forward over this rank's packed batch (null: no sequences here; the rank only takes part in the gathers).
   * With train, returns the state backward needs (the batch is taken over by it). With lossGradient (needs train)
   * the head unit runs the LM head token chunk by token chunk with its backward (tokenChunkedLmHead, as
   * GptOssModel's fused path): the LM head's gradient goes into the head unit's gradient buffer (the one backward
   * would make: the shard itself on one rank, else a zeroed full f32 [padded] kept in the state until backward
   * reduce-scatters it) and the state keeps dHidden instead of the log-sum-exp.
   */
  async forward(pb: PackedBatch | null, train: boolean, temperature: number, lossGradient?: ShardedLossGradient): Promise<{ logprobs: Tensor; entropy: Tensor; state?: ShardedState } | null> {
    if (lossGradient && !train) throw new Error('ShardedModel.forward: lossGradient (the fused LM-head backward) needs train: true');
    const c = this.config;
    const L = c.numLayers;
    const saved: (LayerSaved | null)[] = [];
    const inputs: (Tensor | null)[] = [];
    const attention: (KeptAttention | null)[] = [];
    let x: Tensor | null = null;
    const ahead = this.overlap;
    let next: Promise<Gathered> | null = ahead ? this.gather(0) : null;
    try {
      for (let u = 0; u <= L + 1; u++) {
        const g = await (next ?? this.gather(u));
        next = ahead && u + 1 <= L + 1 ? this.gather(u + 1) : null;
        try {
          if (!pb) continue;
          if (g.unit.kind === 'embedding') x = embeddingForward(g.views.get('model.embed_tokens.weight')!, pb.ids);
          else if (g.unit.kind === 'layer') {
            const keep = train && !this.opts.recompute;
            const r = this.layers[g.unit.layer]!.forward(x!, pb, keep, { keepAttention: train && this.opts.recompute && this.opts.keepAttention });
            if (train) {
              saved.push(r.saved);
              inputs.push(this.opts.recompute ? x : null);
              attention.push(r.attention ?? null);
            } else x!.dispose();
            x = r.y;
          } else {
            const { y: hf, rstd: rstdf } = rmsnormForward(x!, g.views.get('model.norm.weight')!, c.rmsNormEps);
            if (lossGradient) {
              const headGrad = this.gradBuffer(u, lossGradient.accumulated);
              const dW = entryViews(g.unit, headGrad.flat);
              let f: ReturnType<typeof tokenChunkedLmHead>;
              try {
                f = tokenChunkedLmHead(hf, g.views.get('lm_head.weight')!, pb.targets, {
                  temperature,
                  chunk: this.opts.lmHeadChunk,
                  grad: lossGradient.grad,
                  dLmHead: dW.get('lm_head.weight')!,
                  who: 'ShardedPolicy.forward',
                });
              } catch (e) {
                // In place, the shard may hold part of the head's gradient: the caller zeroGrad()s (the Policy contract).
                if (!headGrad.inPlace) headGrad.flat.dispose();
                disposeAll(hf, rstdf);
                throw e;
              } finally {
                for (const v of dW.values()) v.dispose();
              }
              const state: ShardedState = { batch: pb, saved, inputs, attention, xL: x!, hf, rstdf, lse: null, dHidden: f.dHidden, headGrad, temperature };
              return { logprobs: f.logprobs, entropy: f.entropy, state };
            }
            const lp = lmHeadLogprobs(hf, g.views.get('lm_head.weight')!, pb.targets, { temperature, chunk: this.opts.lmHeadChunk });
            if (!train) {
              disposeAll(x, hf, rstdf, lp.lse);
              return { logprobs: lp.logprobs, entropy: lp.entropy };
            }
            const state: ShardedState = { batch: pb, saved, inputs, attention, xL: x!, hf, rstdf, lse: lp.lse, temperature };
            return { logprobs: lp.logprobs, entropy: lp.entropy, state };
          }
        } finally {
          this.release(g);
        }
      }
      return null;
    } catch (e) {
      this.drop(next);
      for (const s of saved) {
        if (!s) continue;
        disposeLayerSaved(s);
        s.x.dispose();
      }
      for (const t of inputs) disposeAll(t);
      for (const a of attention) if (a) disposeAll(a.attn, a.lse);
      disposeAll(x);
      throw e;
    }
  }

  /**
   * Backward from dLoss/dLogprob per token (f32 [T]; state null on a rank without sequences). Units in reverse:
   * each is gathered again (the head and the layers; the embedding's backward does not read its weights), its
   * parameter gradients computed into a zeroed full fp32 buffer and reduce-scattered (sum) into `onShard(u, g)`.
   * With overlap the reduce-scatter of unit u runs on the comm stream while unit u-1 computes (and the gather of
   * unit u-2 is issued one unit ahead); all are finished before returning.
   */
  async backward(
    state: ShardedState | null,
    dLogprobs: Tensor | null,
    onShard: (u: number, g: Tensor) => void,
    /** Unit u's gradient shard so far (null: none yet). On one rank the backward accumulates straight into it. */
    accumulated: (u: number) => Tensor | null,
  ): Promise<void> {
    const c = this.config;
    const L = c.numLayers;
    const single = this.direct;
    // With overlap, a reduce-scatter is finished (compute made to wait for it, its input freed, its output handed
    // to onShard) one unit later, once the next unit's backward is queued: on the comm stream it runs beside that
    // backward. Only then may its input's block be reused, so the input is freed there.
    let unfinished: (() => Promise<void>) | null = null;
    const finishPrevious = async (): Promise<void> => {
      const f = unfinished;
      unfinished = null;
      if (f) await f();
    };
    const reduce = async (u: number, flat: Tensor, inPlace: boolean): Promise<void> => {
      // One rank: the full gradient is the shard (nothing to reduce); accumulated in place or handed over.
      if (single) {
        if (!inPlace) onShard(u, flat);
        return;
      }
      const out = Tensor.empty([this.units[u]!.shard], { dtype: 'f32', device: this.device });
      const t0 = this.timeStart();
      let p: Promise<void>;
      let done: StreamEvent | null = null;
      try {
        const stream = this.toComm();
        p = this.comm.reduceScatter(out, flat, 'sum', { stream });
        if (stream === 'comm') done = new StreamEvent(this.device).record('comm');
      } catch (e) {
        disposeAll(flat, out);
        throw e;
      }
      const finish = async (): Promise<void> => {
        try {
          // Timing mode: waited for here, so its time is its own (no overlap with the next unit).
          await (t0 === null ? this.settle(p, done, 'exposedReduceScatterMs') : this.timeEnd(p, t0, 'reduceScatterMs'));
        } catch (e) {
          disposeAll(flat, out);
          throw e;
        }
        flat.dispose();
        onShard(u, out);
      };
      if (!this.overlap) return finish();
      const previous = unfinished;
      unfinished = finish;
      if (previous) await previous();
    };
    // Unit u's gradient buffer and its per-parameter views; the head's is the fused forward's where it made one.
    // A layer's expert gradients are written, not added, into a fresh buffer when this rank runs the backward
    // (state: with no batch the zeroed buffer itself is its contribution to the reduce-scatter).
    const zerosFor = (u: number): { flat: Tensor; inPlace: boolean; freshExperts: boolean; orig: Map<string, Tensor>; grads: Map<string, Tensor> } => {
      let gb: GradBuffer;
      if (u === L + 1 && state?.headGrad) {
        gb = state.headGrad;
        state.headGrad = undefined; // handed to reduce below, not freed by disposeState
      } else gb = this.gradBuffer(u, accumulated, state !== null);
      const orig = entryViews(this.units[u]!, gb.flat);
      return { flat: gb.flat, inPlace: gb.inPlace, freshExperts: gb.freshExperts, orig, grads: new Map(orig) };
    };
    // The ops accumulate into the buffers they are given (the views); should one hand back a fresh tensor instead
    // (or leave a name unset), its values are added into the flat buffer here so nothing is lost.
    const settle = (orig: Map<string, Tensor>, m: Map<string, Tensor>): void => {
      for (const [name, t] of m) {
        const v = orig.get(name)!;
        if (t !== v) {
          addInPlace(v, t);
          t.dispose();
        }
      }
      for (const v of orig.values()) if (!v.disposed) v.dispose();
    };
    const ahead = this.overlap;
    let next: Promise<Gathered> | null = ahead ? this.gather(L + 1) : null;
    let dx: Tensor | null = null;
    try {
      for (let u = L + 1; u >= 1; u--) {
        const g = await (next ?? this.gather(u));
        next = ahead && u - 1 >= 1 ? this.gather(u - 1) : null;
        const { flat, inPlace, freshExperts, orig, grads } = zerosFor(u);
        try {
          if (!state) continue;
          const b = state.batch;
          if (g.unit.kind === 'head' && state.dHidden) {
            // The fused forward ran the LM head's backward (its gradient is in this unit's buffer already).
            const dh = state.dHidden;
            state.dHidden = undefined;
            const nf = rmsnormBackward(dh, state.xL, g.views.get('model.norm.weight')!, state.rstdf);
            dh.dispose();
            accumulateGrad(grads, 'model.norm.weight', nf.dw);
            dx = nf.dx;
          } else if (g.unit.kind === 'head') {
            const head = tokenLogprobsBackward(state.hf, g.views.get('lm_head.weight')!, b.targets, state.lse!, dLogprobs!, {
              temperature: state.temperature,
              chunk: this.opts.lmHeadChunk,
              dLmHead: grads.get('lm_head.weight'),
            });
            accumulateGrad(grads, 'lm_head.weight', head.dLmHead);
            const nf = rmsnormBackward(head.dHidden, state.xL, g.views.get('model.norm.weight')!, state.rstdf);
            head.dHidden.dispose();
            accumulateGrad(grads, 'model.norm.weight', nf.dw);
            dx = nf.dx;
          } else {
            const l = g.unit.layer;
            let s = state.saved[l] ?? null;
            if (!s) {
              const r = this.layers[l]!.forward(state.inputs[l]!, b, true, { attention: state.attention[l] ?? undefined });
              r.y.dispose();
              s = r.saved!;
              state.inputs[l] = null;
              state.attention[l] = null; // taken over by s
            } else state.saved[l] = null;
            const dNext = this.layers[l]!.backward(s, dx!, b, grads, { freshExpertGrads: freshExperts });
            dx!.dispose();
            s.x.dispose();
            dx = dNext;
          }
        } finally {
          this.release(g);
          settle(orig, grads);
          await reduce(u, flat, inPlace);
        }
      }
      // The embedding: dEmb [V, H] = scatter-add of dx over the token ids (no weights needed).
      const { flat, inPlace, orig, grads } = zerosFor(0);
      try {
        if (state) {
          embeddingBackward(dx!, state.batch.ids, c.vocabSize, { into: grads.get('model.embed_tokens.weight')! });
        }
      } finally {
        settle(orig, grads);
        await reduce(0, flat, inPlace);
      }
    } catch (e) {
      this.drop(next);
      throw e;
    } finally {
      disposeAll(dx);
      if (state) disposeState(state);
      // The last reduce-scatter issued (a failure is rethrown).
      await finishPrevious();
    }
  }

  /**
   * Unit u's full fp32 gradient buffer for a backward (or a fused forward's LM head): on one rank without
   * collectives the shard accumulated so far (written in place), else a new f32 [padded], zeroed (with freshExperts,
   * a layer's: all but its expert matrices, which the backward writes).
   */
  private gradBuffer(u: number, accumulated: (u: number) => Tensor | null, freshExperts = false): GradBuffer {
    const acc = this.direct ? accumulated(u) : null;
    if (acc) return { flat: acc, inPlace: true, freshExperts: false };
    const unit = this.units[u]!;
    if (!freshExperts || unit.kind !== 'layer') return { flat: Tensor.zeros([unit.padded], { dtype: 'f32', device: this.device }), inPlace: false, freshExperts: false };
    const flat = Tensor.empty([unit.padded], { dtype: 'f32', device: this.device });
    return { flat, inPlace: false, freshExperts: zeroAroundExpertMatrices(unit, flat) };
  }

  dispose(): void {
    for (const t of this.bf16) if (!t.disposed) t.dispose();
    this.rope.invFreq.dispose();
  }
}

// ---- batches --------------------------------------------------------------------------------------------------------
function checkBatch(b: SequenceBatch, who: string): void {
  if (b.sequences.length !== b.promptLens.length) throw new Error(`${who}: ${b.sequences.length} sequences but ${b.promptLens.length} prompt lengths`);
  b.sequences.forEach((s, i) => {
    const p = b.promptLens[i]!;
    if (p < 1 || p > s.length) throw new Error(`${who}: sequence ${i} has ${s.length} tokens and prompt length ${p} (need 1 <= prompt <= length)`);
  });
}

function pack(b: SequenceBatch, device: string): PackedBatch | null {
  return b.sequences.length ? packSequences(b.sequences.map((s) => Array.from(s)), device) : null;
}

/** Each sequence's response values out of a packed [T] array (position t holds the value for token t+1). */
function responseSlices(all: Float32Array, offsets: number[], b: SequenceBatch): Float32Array[] {
  return b.sequences.map((s, i) => all.slice(offsets[i]! + b.promptLens[i]! - 1, offsets[i]! + s.length - 1));
}

async function shardedLogprobs(m: ShardedModel, batch: SequenceBatch, opts: LogprobOptions = {}): Promise<LogprobOutput> {
  checkBatch(batch, 'logprobs');
  const pb = pack(batch, m.device);
  try {
    const r = await m.forward(pb, false, opts.temperature ?? 1);
    if (!r || !pb) return { logprobs: [], entropy: opts.entropy ? [] : undefined };
    const lp = r.logprobs.toFloat32();
    const en = opts.entropy ? r.entropy.toFloat32() : undefined;
    disposeAll(r.logprobs, r.entropy);
    return { logprobs: responseSlices(lp, pb.offsets, batch), entropy: en ? responseSlices(en, pb.offsets, batch) : undefined };
  } finally {
    if (pb) disposeBatch(pb);
  }
}

/** The frozen sharded copy (the KL reference): its own bf16 shards, gathered per unit like the policy's. */
export class ShardedFrozen implements LogprobModel {
  constructor(private readonly model: ShardedModel) {}
  get device(): string {
    return this.model.device;
  }
  /** Collective: every rank calls it with its own sequences (possibly none). */
  logprobs(batch: SequenceBatch, opts?: LogprobOptions): Promise<LogprobOutput> {
    return shardedLogprobs(this.model, batch, opts);
  }
  dispose(): void {
    this.model.dispose();
  }
}

// ---- the policy -------------------------------------------------------------------------------------------------
interface OptShard {
  master: Tensor;
  m: Tensor;
  v: Tensor;
}

/**
 * One of the offload path's two staging slots (pinned host memory sized to the largest unit's shard): the gradient
 * shard copied down (f32) and the updated bf16 shard going up, with the events that say when each copy is done.
 */
interface StagingSlot {
  g: Tensor;
  b: Tensor;
  gReady: StreamEvent;
  bDone: StreamEvent;
  /** bDone has been recorded (an upload from this slot may still be reading b). */
  uploading: boolean;
}

function makeStaging(units: readonly ShardUnit[], device: string): StagingSlot[] {
  const n = Math.max(...units.map((u) => u.shard));
  return [0, 1].map(() => ({
    g: Tensor.empty([n], { dtype: 'f32', device: 'cpu', pinned: true }),
    b: Tensor.empty([n], { dtype: 'bf16', device: 'cpu', pinned: true }),
    gReady: new StreamEvent(device),
    bDone: new StreamEvent(device),
    uploading: false,
  }));
}

/** A copy of t in pinned host memory (the offloaded masters and moments). */
function pinnedCopy(t: Tensor): Tensor {
  return Tensor.empty(t.shape, { dtype: t.dtype, device: 'cpu', pinned: true }).copyFrom(t);
}

/** The manifest a sharded save writes (fsdp.json), read back by load(). */
export interface ShardedManifest {
  format: 'gptoss-fsdp';
  version: 1;
  worldSize: number;
  optimizerSteps: number;
  hasOptimizer: boolean;
  units: { key: string; numel: number; span?: number; padded: number }[];
  config: Record<string, unknown>;
}

export const SHARDED_MANIFEST = 'fsdp.json';
const rankDirName = (r: number): string => `rank-${String(r).padStart(5, '0')}`;

export class ShardedPolicy implements Policy {
  private readonly model: ShardedModel;
  /** Per unit: the fp32 gradient shard, or null after zeroGrad() until a backward writes it. */
  private grads: (Tensor | null)[] | null = null;
  /**
   * The clip factor clipGradNorm recorded (1: none): the effective gradient shards are grads x gradScale. AdamW
   * applies it on the fly (on the device, or on the host with cpuOffload); zeroGrad resets it; a backward or
   * clipGradNorm after it applies it to the shards first.
   */
  private gradScale = 1;
  private opt: OptShard[] | null = null;
  /** The offload path's staging slots (cpuOffload on a GPU; made at the first optimizer step). */
  private staging: StagingSlot[] | null = null;
  /** Optimizer steps taken (saved). */
  optimizerSteps = 0;
  /** Where the masters and moments live: 'cpu' with cpuOffload, else the compute device. */
  readonly optDevice: string;

  /** frozenCopy() keeps the reference's shards in host memory (ShardedModelOptions.referenceOnHost). */
  readonly referenceOnHost: boolean;
  /** ShardedModelOptions.offloadAfterStep. */
  readonly offloadAfterStep: boolean;
  /** The masters and moments are in pinned host memory between steps (offloadOptimizer), not on optDevice. */
  private optOnHost = false;

  private constructor(model: ShardedModel, opts: ShardedModelOptions) {
    this.model = model;
    this.optDevice = opts.cpuOffload ? 'cpu' : model.device;
    this.referenceOnHost = opts.referenceOnHost ?? false;
    this.offloadAfterStep = opts.offloadAfterStep ?? false;
  }

  /** True while offloadOptimizer() has the masters and moments in host memory (until the next training forward or step). */
  get optimizerOnHost(): boolean {
    return this.optOnHost;
  }

  /**
   * Moves the fp32 masters and moments (3 x f32 [shard] per unit) to pinned host memory and frees their device
   * memory (the copies wait for the device's pending work). Nothing to do before the first step, twice, or with
   * cpuOffload (they already live on the host).
   */
  offloadOptimizer(): void {
    if (!this.opt || this.optOnHost || this.optDevice !== this.device) return;
    this.opt = this.opt.map((s) => {
      const o = { master: pinnedCopy(s.master), m: pinnedCopy(s.m), v: pinnedCopy(s.v) };
      disposeAll(s.master, s.m, s.v);
      return o;
    });
    this.optOnHost = true;
  }

  /** Brings offloaded masters and moments back to optDevice (exact copies). A no-op unless offloadOptimizer() moved them. */
  reloadOptimizer(): void {
    if (!this.opt || !this.optOnHost) return;
    const od = this.optDevice;
    this.opt = this.opt.map((s) => {
      const o = { master: s.master.to(od), m: s.m.to(od), v: s.v.to(od) };
      disposeAll(s.master, s.m, s.v);
      return o;
    });
    this.optOnHost = false;
  }

  /**
   * Builds this rank's shards from full weights (every rank passes the same weights; the caller keeps and disposes
   * them). Collective only in that every rank must call it.
   */
  static fromWeights(weights: GptOssWeights, comm: Collectives, opts: ShardedModelOptions = {}): ShardedPolicy {
    return ShardedPolicy.fromSource(weightsSource(weights), weights.device, comm, opts);
  }

  /** Builds this rank's shards from a Hugging Face folder, reading only this rank's byte ranges (never the whole model). */
  static fromCheckpoint(config: GptOssConfig, dir: string, device: string, comm: Collectives, opts: ShardedModelOptions = {}): ShardedPolicy {
    const src = checkpointSource(config, dir);
    try {
      return ShardedPolicy.fromSource(src, device, comm, opts);
    } finally {
      src.close();
    }
  }

  /**
   * Builds this rank's shards from a parameter source (a checkpoint, seeded random weights, weights in memory),
   * unit by unit: for each entry of a unit the part inside this rank's [rank*shard, (rank+1)*shard) is read
   * (src.range) straight into the bf16 shard [shard]. The rank never holds more of the model than its shards and
   * one entry's slice (the source is the caller's to close).
   */
  static fromSource(src: ParamSource, device: string, comm: Collectives, opts: ShardedModelOptions = {}): ShardedPolicy {
    const config = src.config;
    const units = shardLayout(config, comm.worldSize);
    const shards: Tensor[] = [];
    try {
      for (const unit of units) {
        const shard = Tensor.zeros([unit.shard], { dtype: 'bf16', device });
        shards.push(shard);
        const lo = comm.rank * unit.shard;
        const hi = lo + unit.shard;
        for (const e of unit.entries) {
          const a = Math.max(lo, e.offset);
          const b = Math.min(hi, e.offset + e.numel);
          if (a >= b) continue;
          const part = src.range(e.name, a - e.offset, b - e.offset, device);
          const dst = shard.slice(a - lo, b - lo);
          dst.copyFrom(part);
          disposeAll(part, dst);
        }
      }
    } catch (e) {
      disposeAll(...shards);
      throw e;
    }
    const model = new ShardedModel(config, comm, device, shards, {
      recompute: opts.recompute ?? true,
      keepAttention: opts.keepAttention ?? true,
      deterministic: opts.deterministic ?? false,
      timing: opts.timing ?? false,
      prefetch: opts.prefetch ?? true,
      collectivesAtOne: opts.collectivesAtOne ?? false,
      exposedTiming: opts.exposedTiming ?? false,
      lmHeadChunk: opts.lmHeadChunk,
    });
    return new ShardedPolicy(model, opts);
  }

  get device(): string {
    return this.model.device;
  }
  get rank(): number {
    return this.model.comm.rank;
  }
  get worldSize(): number {
    return this.model.comm.worldSize;
  }
  get units(): readonly ShardUnit[] {
    return this.model.units;
  }

  /** Collective. */
  logprobs(batch: SequenceBatch, opts?: LogprobOptions): Promise<LogprobOutput> {
    return shardedLogprobs(this.model, batch, opts);
  }

  /** forward() takes lossGradient (the fused LM-head backward in the head unit; ShardedModel.forward). */
  readonly fusedLmHeadBackward = true;

  /**
   * Collective: every rank calls forward (and then backward or release) with its own micro-batch, possibly empty.
   * opts.lossGradient (the fused LM-head backward): as GptOssPolicy's, over this rank's micro-batch (its `seq` is
   * the index into `batch`, normalised by the global mini-batch's counts); every rank passes one or none alike.
   */
  async forward(batch: SequenceBatch, opts: TrainForwardOptions = {}): Promise<TrainForward> {
    checkBatch(batch, 'forward');
    // The training phase begins: the state offloaded after the last step comes back (offloadAfterStep).
    this.reloadOptimizer();
    const fused = opts.lossGradient !== undefined;
    // The fused forward writes the LM head's gradient: the shards' list must exist, with any pending clip factor
    // applied first (as backward does); backward refuses if zeroGrad() replaced it in between.
    if (fused) {
      if (!this.grads) this.grads = this.model.units.map(() => null);
      this.applyGradScale();
    }
    const gradsAtForward = this.grads;
    const pb = pack(batch, this.device);
    let r: Awaited<ReturnType<ShardedModel['forward']>>;
    try {
      const lg = fused && pb ? { grad: packedLossGradient(opts.lossGradient!, pb.offsets, batch), accumulated: (u: number) => gradsAtForward![u] ?? null } : undefined;
      r = await this.model.forward(pb, true, opts.temperature ?? 1, lg);
    } catch (e) {
      if (pb) disposeBatch(pb);
      throw e;
    }
    let state = r?.state ?? null;
    let lp: Float32Array[] = [];
    let en: Float32Array[] | undefined = opts.entropy ? [] : undefined;
    if (r && pb) {
      lp = responseSlices(r.logprobs.toFloat32(), pb.offsets, batch);
      if (en) en = responseSlices(r.entropy.toFloat32(), pb.offsets, batch);
      disposeAll(r.logprobs, r.entropy);
    }
    let consumed = false;
    return {
      logprobs: lp,
      entropy: en,
      backward: async (d?: Float32Array[]) => {
        if (consumed) throw new Error('TrainForward.backward: already consumed');
        if (fused) {
          if (d !== undefined) throw new Error('TrainForward.backward: this forward took lossGradient (the LM head backward ran in it): call backward() without dLogprobs');
          if (this.grads !== gradsAtForward) {
            consumed = true;
            if (state) disposeState(state);
            state = null;
            throw new Error('TrainForward.backward: zeroGrad() ran between this forward (lossGradient) and its backward: the LM head gradient taken in the forward is gone');
          }
        } else {
          if (!d) throw new Error('TrainForward.backward: dLogprobs missing (only a forward with lossGradient takes none)');
          if (d.length !== batch.sequences.length) throw new Error(`backward: ${d.length} gradient rows for ${batch.sequences.length} sequences`);
        }
        consumed = true;
        let dt: Tensor | null = null;
        if (pb && d) {
          const full = new Float32Array(pb.numTokens);
          batch.sequences.forEach((s, i) => {
            const n = s.length - batch.promptLens[i]!;
            if (d[i]!.length !== n) throw new Error(`backward: sequence ${i} has ${n} response tokens but ${d[i]!.length} gradients`);
            full.set(d[i]!, pb.offsets[i]! + batch.promptLens[i]! - 1);
          });
          dt = Tensor.from(full, [pb.numTokens], { device: this.device, dtype: 'f32' });
        }
        const st = state;
        state = null;
        try {
          if (!this.grads) this.grads = this.model.units.map(() => null);
          this.applyGradScale(); // new gradients add onto the clipped ones, as after torch's clip_grad_norm_
          const grads = this.grads;
          await this.model.backward(
            st,
            dt,
            (u, g) => {
              const have = grads[u];
              if (have) {
                addInPlace(have, g);
                g.dispose();
              } else grads[u] = g;
            },
            (u) => grads[u] ?? null,
          );
        } finally {
          disposeAll(dt);
        }
      },
      release: () => {
        // Not collective: the ranks that release skip their backward; every rank must then release (a NaN loss is
        // detected from global values, so all ranks agree).
        if (consumed) return;
        consumed = true;
        if (state) disposeState(state);
        state = null;
      },
    };
  }

  zeroGrad(): void {
    if (this.grads) for (const g of this.grads) disposeAll(g);
    this.grads = null;
    this.gradScale = 1;
  }

  /** Rewrites this rank's gradient shards as their effective values (grads x gradScale) when a clip factor is pending. */
  private applyGradScale(): void {
    if (this.gradScale === 1) return;
    if (this.grads) scaleGradsInPlace(this.grads.filter((g): g is Tensor => g !== null), this.gradScale);
    this.gradScale = 1;
  }

  /**
   * Collective: the global L2 norm over every rank's gradient shards (each rank's Σ g² in fp32, one all-reduce of
   * that single value), then the same clip decision as the single-process policy (clipFactor): the factor is
   * recorded for optimizerStep's AdamW, the shards are not rewritten.
   */
  async clipGradNorm(maxNorm: number): Promise<GradClipResult> {
    this.applyGradScale(); // a second clip measures the clipped gradients, as a second clip_grad_norm_ would
    const acc = Tensor.zeros([1], { dtype: 'f32', device: this.device });
    let norm: number;
    try {
      const mine = (this.grads ?? []).filter((g): g is Tensor => g !== null);
      sumOfSquaresInto(mine, acc);
      if (this.model.comm.worldSize > 1) await this.model.comm.allReduce(acc, 'sum');
      norm = Math.sqrt(acc.item());
    } finally {
      acc.dispose();
    }
    if (!this.grads) return { norm, finite: true, clipped: false };
    const { finite, clipped, scale } = clipFactor(norm, maxNorm);
    this.gradScale = scale;
    return { norm, finite, clipped };
  }

  /**
   * AdamW on this rank's shards (no communication): masters, moments and the bf16 compute shards are updated.
   * With cpuOffload on a GPU (masters and moments in pinned host memory), a pipeline over the units through two
   * pinned staging slots: unit u+1's gradient shard is copied to the host (asynchronously, on the compute stream)
   * while the host runs AdamW on unit u, whose updated bf16 shard then goes back asynchronously. The host waits
   * only for the copy it needs next; the next forward is ordered after the uploads by the stream.
   */
  optimizerStep(h: OptimizerHyper, step: number): void {
    if (!this.grads) throw new Error('optimizerStep: no gradients (run forward + backward first)');
    this.reloadOptimizer();
    this.stepOn(this.grads, h, step);
    if (this.offloadAfterStep) this.offloadOptimizer();
  }

  /** AdamW over every unit's shard (optimizerStep's body), the state where optDevice says. */
  private stepOn(grads: (Tensor | null)[], h: OptimizerHyper, step: number): void {
    const dev = this.device;
    const od = this.optDevice;
    const offload = od !== dev;
    if (!this.opt) {
      this.opt = this.model.bf16.map((b) => {
        const m32 = cast(b, 'f32');
        const master = offload ? pinnedCopy(m32) : m32;
        if (master !== m32) m32.dispose();
        return { master, m: Tensor.zeros(b.shape, { dtype: 'f32', device: od, pinned: offload }), v: Tensor.zeros(b.shape, { dtype: 'f32', device: od, pinned: offload }) };
      });
    }
    const units = this.model.units;
    const gradOf = (u: number): Tensor => (grads[u] ??= Tensor.zeros(this.opt![u]!.master.shape, { dtype: 'f32', device: dev }));
    if (!offload) {
      units.forEach((_, u) => {
        const s = this.opt![u]!;
        adamwStep({ master: s.master, grad: gradOf(u), m: s.m, v: s.v, bf16: this.model.bf16[u]! }, { ...h, step, gradScale: this.gradScale });
      });
      this.optimizerSteps = step;
      return;
    }
    const slots = (this.staging ??= makeStaging(units, dev));
    const download = (u: number): void => {
      const slot = slots[u % 2]!;
      const dst = slot.g.slice(0, units[u]!.shard);
      dst.copyFromAsync(gradOf(u));
      dst.dispose();
      slot.gReady.record();
    };
    download(0);
    for (let u = 0; u < units.length; u++) {
      if (u + 1 < units.length) download(u + 1);
      const slot = slots[u % 2]!;
      const s = this.opt[u]!;
      const n = units[u]!.shard;
      const gh = slot.g.slice(0, n);
      const bh = slot.b.slice(0, n);
      try {
        slot.gReady.synchronize(); // unit u's gradient shard is on the host
        if (slot.uploading) slot.bDone.synchronize(); // unit u-2's upload from this slot has read it
        adamwStep({ master: s.master, grad: gh, m: s.m, v: s.v, bf16: bh }, { ...h, step, gradScale: this.gradScale }); // the raw shard, scaled here
        this.model.bf16[u]!.copyFromAsync(bh);
        slot.bDone.record();
        slot.uploading = true;
      } finally {
        disposeAll(gh, bh);
      }
    }
    this.optimizerSteps = step;
  }

  resetOptimizer(): void {
    if (this.opt) for (const s of this.opt) disposeAll(s.master, s.m, s.v);
    this.opt = null;
    this.optOnHost = false;
    if (this.staging) {
      synchronize(this.device); // no copy may still be reading or writing a slot
      for (const s of this.staging) disposeAll(s.g, s.b);
    }
    this.staging = null;
    this.optimizerSteps = 0;
  }

  /**
   * A frozen sharded copy of the current weights (the KL reference; its shards are this rank's only), on the
   * device or, with referenceOnHost, in host memory between uses.
   */
  async frozenCopy(): Promise<LogprobModel> {
    const m = this.model;
    const where = this.referenceOnHost ? 'cpu' : m.device;
    return new ShardedFrozen(new ShardedModel(m.config, m.comm, m.device, m.bf16.map((t) => t.to(where)), m.opts));
  }

  /**
   * Collective: every rank writes its shard (bf16 compute weights, and the fp32 masters and moments once the
   * optimizer has stepped) into `<dir>/rank-NNNNN/` (written to a temporary folder, then renamed); after a barrier
   * rank 0 writes the manifest fsdp.json (temporary file, then rename). dir must be on a filesystem every rank sees.
   */
  async save(dir: string): Promise<void> {
    const { rank, worldSize } = this.model.comm;
    mkdirSync(dir, { recursive: true });
    const final = join(dir, rankDirName(rank));
    const tmp = `${final}.tmp-${process.pid}`;
    rmSync(tmp, { recursive: true, force: true });
    mkdirSync(tmp);
    const tensors: TensorToSave[] = [];
    this.model.units.forEach((unit, u) => {
      tensors.push(tensorToSave(`bf16.${unit.key}`, this.model.bf16[u]!));
      const o = this.opt?.[u];
      if (o) tensors.push(tensorToSave(`master.${unit.key}`, o.master), tensorToSave(`m.${unit.key}`, o.m), tensorToSave(`v.${unit.key}`, o.v));
    });
    saveCheckpoint(tmp, tensors, { extraFiles: { 'rank.json': JSON.stringify({ rank, worldSize, optimizerSteps: this.optimizerSteps }) + '\n' } });
    rmSync(final, { recursive: true, force: true });
    renameSync(tmp, final);
    await this.model.comm.barrier();
    if (rank === 0) {
      const manifest: ShardedManifest = {
        format: 'gptoss-fsdp',
        version: 1,
        worldSize,
        optimizerSteps: this.optimizerSteps,
        hasOptimizer: this.opt !== null,
        units: this.model.units.map((u) => ({ key: u.key, numel: u.numel, span: u.span, padded: u.padded })),
        config: toHfConfig(this.model.config),
      };
      const mt = join(dir, `${SHARDED_MANIFEST}.tmp-${process.pid}`);
      writeFileSync(mt, JSON.stringify(manifest, null, 2) + '\n');
      renameSync(mt, join(dir, SHARDED_MANIFEST));
    }
    await this.model.comm.barrier();
  }

  /**
   * Restores what save() wrote, on any number of ranks. The flat unit buffers do not depend on the rank count (only
   * their padding does), so rank r of M reads the elements [r*shard', (r+1)*shard') of each unit (bf16 weights, and
   * the fp32 masters and AdamW moments once saved) from the saved rank files that hold them: saved rank q of N
   * holds [q*shard, (q+1)*shard) of the unit padded for N (fsdp.json's per-unit `padded`). Only those byte ranges
   * are read (Checkpoint.loadRange); elements past the saved padding are padding here too (zeros: they are never
   * a parameter, so their gradients and moments stay zero). On the same N each rank reads its own file whole.
   */
  async load(dir: string): Promise<void> {
    const { rank, worldSize } = this.model.comm;
    const mf = join(dir, SHARDED_MANIFEST);
    if (!existsSync(mf)) throw new Error(`ShardedPolicy.load: ${dir} is not a sharded checkpoint (no ${SHARDED_MANIFEST})`);
    const m = JSON.parse(readFileSync(mf, 'utf8')) as ShardedManifest;
    if (m.format !== 'gptoss-fsdp' || m.version !== 1) throw new Error(`ShardedPolicy.load: ${mf} is not a version-1 gptoss-fsdp manifest`);
    const savedN = m.worldSize;
    if (!Number.isInteger(savedN) || savedN < 1) throw new Error(`ShardedPolicy.load: ${mf}: worldSize ${savedN} is not a positive integer`);
    const units = this.model.units;
    const mismatch = units.findIndex((u, i) => m.units[i]?.key !== u.key || m.units[i]?.numel !== u.numel || (m.units[i]?.span ?? m.units[i]?.numel) !== u.span);
    if (m.units.length !== units.length || mismatch >= 0) {
      throw new Error(`ShardedPolicy.load: ${dir} holds a different model (unit ${units[Math.max(0, mismatch)]?.key} does not match this config)`);
    }
    const badPad = m.units.find((u) => !Number.isInteger(u.padded) || u.padded % savedN !== 0 || u.padded < (u.span ?? u.numel));
    if (badPad) throw new Error(`ShardedPolicy.load: ${mf}: unit ${badPad.key} has padded ${badPad.padded}, not a multiple of the ${savedN} saved ranks covering its elements`);
    if (savedN !== worldSize) log.info({ dir, saved: savedN, ranks: worldSize }, 'resharding a checkpoint saved by another number of ranks');
    // The saved ranks' files, opened as they are first needed (rank r of M reads from at most a few of them).
    const files = new Map<number, Checkpoint>();
    const fileOf = (q: number): Checkpoint => {
      let ck = files.get(q);
      if (!ck) {
        const rd = join(dir, rankDirName(q));
        if (!existsSync(rd)) throw new Error(`ShardedPolicy.load: ${dir} lacks ${rankDirName(q)} (saved by ${savedN} ranks)`);
        ck = Checkpoint.open(rd);
        files.set(q, ck);
      }
      return ck;
    };
    /** This rank's [shard] of unit u's flat `what` buffer (bf16 or f32) on `device`, from the saved ranks' files. */
    const read = (what: 'bf16' | 'master' | 'm' | 'v', u: number, device: string): Tensor => {
      const unit = units[u]!;
      const saved = m.units[u]!.padded / savedN;
      const lo = rank * unit.shard;
      const hi = Math.min(lo + unit.shard, m.units[u]!.padded);
      const out = Tensor.zeros([unit.shard], { dtype: what === 'bf16' ? 'bf16' : 'f32', device });
      try {
        for (let q = Math.floor(lo / saved); q * saved < hi; q++) {
          const a = Math.max(lo, q * saved);
          const b = Math.min(hi, (q + 1) * saved);
          const ck = fileOf(q);
          const name = `${what}.${unit.key}`;
          const n = ck.shapeOf(name)?.reduce((x, y) => x * y, 1);
          if (n !== saved) throw new Error(`ShardedPolicy.load: ${join(dir, rankDirName(q))}: ${name} has ${n ?? 'no'} elements, expected ${saved}`);
          const part = ck.loadRange(name, a - q * saved, b - q * saved, { device, dtype: what === 'bf16' ? 'bf16' : 'f32' });
          const dst = out.slice(a - lo, b - lo);
          dst.copyFrom(part);
          disposeAll(part, dst);
        }
      } catch (e) {
        out.dispose();
        throw e;
      }
      return out;
    };
    const dev = this.device;
    try {
      units.forEach((_, u) => {
        const t = read('bf16', u, dev);
        this.model.bf16[u]!.copyFrom(t);
        t.dispose();
      });
      this.resetOptimizer();
      if (m.hasOptimizer) {
        const offload = this.optDevice !== this.device;
        this.opt = units.map((_, u) => {
          const ld = (k: 'master' | 'm' | 'v'): Tensor => {
            const t = read(k, u, this.optDevice);
            if (!offload) return t;
            const p = pinnedCopy(t);
            t.dispose();
            return p;
          };
          return { master: ld('master'), m: ld('m'), v: ld('v') };
        });
        // A resumed run generates first: with offloadAfterStep the state waits in host memory, as after a step.
        if (this.offloadAfterStep) this.offloadOptimizer();
      }
      this.optimizerSteps = m.optimizerSteps;
    } finally {
      for (const ck of files.values()) ck.close();
    }
    await this.model.comm.barrier();
  }

  /**
   * Collective: writes the current weights as a Hugging Face folder (bf16 sharded safetensors + config.json, the
   * layout loadModel and transformers read) from rank 0. Units are gathered one at a time; rank 0 keeps each
   * parameter's bytes on the host until the write (the whole bf16 model in host memory on rank 0).
   */
  async exportHf(dir: string, opts: { maxShardBytes?: number } = {}): Promise<void> {
    const bytes = new Map<string, { shape: number[]; data: Uint8Array }>();
    for (let u = 0; u < this.model.units.length; u++) {
      const g = await this.model.gather(u);
      try {
        if (this.rank === 0) for (const e of g.unit.entries) bytes.set(e.name, { shape: e.shape, data: new Uint8Array(g.views.get(e.name)!.toBuffer()) });
      } finally {
        this.model.release(g);
      }
    }
    if (this.rank === 0) {
      mkdirSync(dir, { recursive: true });
      const tensors: TensorToSave[] = paramSpecs(this.model.config).map((s) => ({ name: s.name, dtype: 'BF16' as const, shape: s.shape, data: bytes.get(s.name)!.data }));
      saveCheckpoint(dir, tensors, {
        maxShardBytes: opts.maxShardBytes,
        extraFiles: { 'config.json': JSON.stringify(toHfConfig(this.model.config), null, 2) + '\n' },
      });
    }
    await this.model.comm.barrier();
  }

  /**
   * Collective: the fp32 master weights by checkpoint name, gathered to rank 0 (other ranks get null); before the
   * first optimizer step, the bf16 weights widened. For tests and debugging (the whole model in host memory).
   */
  async gatherMasters(): Promise<Map<string, Float32Array> | null> {
    const out = this.rank === 0 ? new Map<string, Float32Array>() : null;
    for (let u = 0; u < this.model.units.length; u++) {
      const unit = this.model.units[u]!;
      const master = this.opt?.[u]!.master;
      // The gather runs on the compute device (NCCL needs device memory; offloaded masters are copied over).
      const mine = !master ? cast(this.model.bf16[u]!, 'f32') : master.device === this.device ? master : master.to(this.device);
      const full = Tensor.empty([unit.padded], { dtype: 'f32', device: this.device });
      try {
        await this.model.comm.allGather(full, mine);
        if (out) {
          const f = full.toFloat32();
          for (const e of unit.entries) out.set(e.name, f.slice(e.offset, e.offset + e.numel));
        }
      } finally {
        full.dispose();
        if (mine !== master) mine.dispose();
      }
    }
    return out;
  }

  /**
   * Collective: the weight sync of the engines. Unit by unit (embedding, each layer, head) the bf16 weights are
   * all-gathered exactly as the forward gathers them, `copy(name, full)` receives each parameter's full bf16 tensor
   * (checkpoint name, HF shape) and takes what its engine needs (colocated: the whole tensor for a tp=1 engine, its
   * slice for a tensor-parallel one; engines on other processes: rank 0 packs it into a broadcast bucket), awaited
   * before the next; then the unit is freed. So at most one unit is ever held beyond the shards.
   */
  async syncWeights(copy: (name: string, full: Tensor) => void | Promise<void>): Promise<void> {
    for (let u = 0; u < this.model.units.length; u++) {
      const g = await this.model.gather(u);
      try {
        // Awaited one by one: a copy may be a broadcast to other processes (engines that are not colocated).
        for (const [name, view] of g.views) await copy(name, view);
      } finally {
        this.model.release(g);
      }
    }
  }

  /** Communication time since the last resetStats() (timing / exposedTiming modes; zeros otherwise). Waits for the device. */
  stats(): ShardedStats {
    this.model.resolveStats();
    return { ...this.model.stats };
  }

  resetStats(): void {
    this.model.resolveStats();
    Object.assign(this.model.stats, { gatherMs: 0, reduceScatterMs: 0, exposedGatherMs: 0, exposedReduceScatterMs: 0 });
  }

  numParameters(): number {
    return this.model.units.reduce((a, u) => a + u.numel, 0);
  }

  dispose(): void {
    this.zeroGrad();
    this.resetOptimizer();
    this.model.dispose();
  }
}
