// model-runner.ts: the seam between the engine (scheduling, host bookkeeping) and the model (device work).
//
// The engine plans a step on the host (which tokens, where their k/v go, which rows are sampled with which
// parameters) and hands it to a ModelRunner as plain arrays (StepInput): embed -> every layer over the paged KV
// cache -> final norm + LM head for the sampled rows -> per-row sampling. The runner returns the sampled tokens and
// their log-probs. Plain arrays are what a tensor-parallel runner broadcasts from rank 0 to the other ranks; a
// TP runner implements the same interface (its ranks each hold a PagedKvCache of their kv heads) and the engine
// does not change. LocalModelRunner is the one-device runner over a GptOssModel.
import { emptyCache, Tensor } from '../tensor.ts';
import type { GptOssConfig } from '../model/config.ts';
import type { GptOssModel } from '../model/gptoss.ts';
import type { LayerHost } from '../model/layer.ts';
import { disposeAll } from '../model/tensor-helpers.ts';
import { embeddingForward } from '../ops/embedding.ts';
import { cast } from '../ops/elementwise.ts';
import { sampleRows } from '../ops/sampling.ts';
import { PagedKvCache, kvSpaces } from './paged-kv-cache.ts';

/** One engine step as host arrays. N query rows over B sequences; S of the rows are sampled. */
export interface StepInput {
  /** i32 [N]: the token of each query row. */
  tokens: Int32Array;
  /** i32 [N]: its position in its sequence. */
  positions: Int32Array;
  /** Per KV space (kvSpaces order), i32 [N]: each row's slot (block * blockSize + offset) in that space's pool. */
  slots: Int32Array[];
  /** i32 [B+1]: sequence b's rows are queryStarts[b] .. queryStarts[b+1]-1. */
  queryStarts: Int32Array;
  /** i32 [B]: tokens cached for sequence b after this step. */
  contextLens: Int32Array;
  /** Per KV space, i32 [B * maxBlocksPerSeq]: row-major block tables (unused or released entries 0, never read). */
  blockTables: Int32Array[];
  maxBlocksPerSeq: number;
  /** i32 [S]: the rows whose next token is sampled (each a sequence's last row), in the order results come back. */
  sampleRows: Int32Array;
  /** Per sampled row: temperature (0 = greedy), top-p, top-k (0 = off), seed (u32 bits), counter (tokens generated so far). */
  temperature: Float32Array;
  topP: Float32Array;
  topK: Int32Array;
  seeds: Int32Array;
  counters: Int32Array;
}

/** Per sampled row: the token and its log-prob under the sampling distribution. */
export interface StepOutput {
  tokens: Int32Array;
  logprobs: Float32Array;
}

/** New weights by checkpoint name: a map of tensors (whole, or the runner's shard), or one name at a time. */
export type WeightUpdate = ReadonlyMap<string, Tensor> | Iterable<[string, Tensor]>;

export interface ModelRunner {
  /** The model's configuration (whole model: vocabulary, layers, stop tokens, model length). */
  readonly config: GptOssConfig;
  /** Where the runner's (rank 0's) tensors live. */
  readonly device: string;
  /** Per KV space (kvSpaces(config) order): bytes one block takes on each device of the runner (its layers' k and v). */
  kvBytesPerBlock(blockSize: number): number[];
  /** Allocates the KV pools, numBlocks[i] blocks for space i; the engine calls it before the first step and on wake(). */
  allocateKvCache(numBlocks: readonly number[], blockSize: number): void;
  /** Frees the KV pools (sleep). */
  freeKvCache(): void;
  /**
   * Pages the model's weights out to host memory and gives their device memory back (out = true: a sleep that
   * releases the weights), or back onto the device (wake). The weights keep their tensors, so a model shared with
   * a trainer sees them again after the page-in; while out, any op on them fails naming the tensor.
   */
  pageWeights(out: boolean): void;
  /** Runs one step (a collective over the ranks of a tensor-parallel runner, hence asynchronous). */
  execute(step: StepInput): Promise<StepOutput>;
  /** Copies new weights into the model's parameters (same names and shapes; the KV cache is the engine's to reset). */
  updateWeights(weights: WeightUpdate): void | Promise<void>;
  dispose(): void;
}

/** The one-device runner over a GptOssModel (the model stays the caller's: dispose() frees only the KV pools). */
export class LocalModelRunner implements ModelRunner {
  readonly config: GptOssConfig;
  readonly device: string;
  private readonly cache: PagedKvCache;

  constructor(readonly model: GptOssModel) {
    this.config = model.config;
    this.device = model.device;
    const c = model.config;
    this.cache = new PagedKvCache(kvSpaces(c), c.numKvHeads, c.headDim, model.device);
  }

  kvBytesPerBlock(blockSize: number): number[] {
    return this.cache.bytesPerBlock(blockSize);
  }

  allocateKvCache(numBlocks: readonly number[], blockSize: number): void {
    this.cache.allocate(numBlocks, blockSize);
  }

  freeKvCache(): void {
    this.cache.free();
  }

  pageWeights(out: boolean): void {
    // q/k/v are row views of a layer's fused buffer: paging one pages the storage (a repeat is a no-op).
    for (const t of this.model.weights.params.values()) {
      if (out) t.pageOut();
      else t.pageIn();
    }
    if (out && this.device !== 'cpu') emptyCache(this.device); // to the driver: another process may want it too
  }

  async execute(s: StepInput): Promise<StepOutput> {
    return this.sample(await this.hidden(s), s);
  }

  /**
   * The layers over a step's rows: the final residual stream bf16 [N, H]. On a tensor-parallel shard (a
   * TensorParallelModel: model.tp set) each layer is a collective (DecoderLayer.stepParallel): every rank runs it.
   */
  async hidden(s: StepInput): Promise<Tensor> {
    const dev = this.device;
    const N = s.tokens.length;
    const B = s.contextLens.length;
    const i32 = (a: Int32Array, shape: number[]): Tensor => Tensor.from(a, shape, { device: dev });
    const ids = i32(s.tokens, [N]);
    const positions = i32(s.positions, [N]);
    const meta = {
      slots: s.slots.map((a) => i32(a, [N])),
      blockTables: s.blockTables.map((a) => i32(a, [B, s.maxBlocksPerSeq])),
      contextLens: i32(s.contextLens, [B]),
      queryStarts: i32(s.queryStarts, [B + 1]),
    };
    const model = this.model;
    const parallel = (model as LayerHost).tp !== undefined;
    let x = model.embed(ids);
    this.cache.setStep(meta);
    try {
      for (let l = 0; l < this.config.numLayers; l++) {
        const layer = model.layers[l]!;
        const cache = this.cache.layers[l]!;
        const y = parallel ? await layer.stepParallel(x, positions, cache) : layer.step(x, positions, cache);
        x.dispose();
        x = y;
      }
    } catch (e) {
      x.dispose();
      throw e;
    } finally {
      this.cache.setStep(null);
      disposeAll(ids, positions, ...meta.slots, ...meta.blockTables, meta.contextLens, meta.queryStarts);
    }
    return x;
  }

  /** Final norm, LM head and per-row sampling of the step's sampled rows of x (bf16 [N, H], taken over). */
  private sample(x: Tensor, s: StepInput): StepOutput {
    const dev = this.device;
    const N = s.tokens.length;
    const S = s.sampleRows.length;
    const i32 = (a: Int32Array, shape: number[]): Tensor => Tensor.from(a, shape, { device: dev });
    const f32 = (a: Float32Array): Tensor => Tensor.from(a, [a.length], { device: dev, dtype: 'f32' });
    // Hidden rows of the sampled rows, bf16 [S, H]: the whole step when every row is sampled (all decodes).
    let rows = x;
    if (!(S === N && s.sampleRows.every((r, i) => r === i))) {
      const idx = i32(s.sampleRows, [S]);
      rows = embeddingForward(x, idx);
      disposeAll(idx, x);
    }
    const logits = this.model.logits(rows);
    rows.dispose();
    const params = {
      temperature: f32(s.temperature),
      topP: f32(s.topP),
      topK: i32(s.topK, [S]),
      seeds: i32(s.seeds, [S]),
      counters: i32(s.counters, [S]),
    };
    const r = sampleRows(logits, params);
    disposeAll(logits, ...Object.values(params));
    const out = { tokens: r.tokens.toInt32(), logprobs: r.logprobs.toFloat32() };
    disposeAll(r.tokens, r.logprobs);
    return out;
  }

  updateWeights(weights: WeightUpdate): void {
    const params = this.model.weights.params;
    for (const [name, src] of weights) {
      const dst = params.get(name);
      if (!dst) throw new Error(`updateWeights: the model has no parameter '${name}'`);
      if (dst.shape.length !== src.shape.length || dst.shape.some((d, i) => d !== src.shape[i])) {
        throw new Error(`updateWeights: '${name}' is [${src.shape.join(', ')}], the model's is [${dst.shape.join(', ')}]`);
      }
      if (src.dtype === dst.dtype) dst.copyFrom(src);
      else {
        const moved = src.device === dst.device ? src : src.to(dst.device);
        const c = cast(moved, dst.dtype);
        dst.copyFrom(c);
        c.dispose();
        if (moved !== src) moved.dispose();
      }
    }
  }

  dispose(): void {
    this.cache.dispose();
  }
}
