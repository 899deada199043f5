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
import { TensorParallelModel } from '../model/tensor-parallel.ts';
import type { LayerHost } from '../model/layer.ts';
import { disposeAll } from '../model/tensor-helpers.ts';
import { embeddingForward } from '../ops/embedding.ts';
import { cast } from '../ops/elementwise.ts';
import { sampleRows, type SampleRowsParams } from '../ops/sampling.ts';
import { PagedKvCache, kvSpaces, type PagedStepMeta } from './paged-kv-cache.ts';
import { DecodeGraphs, type DecodeGraphStats, type LaunchedDecode } from './cuda-graphs.ts';

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

/** The device tensors of one step (LocalModelRunner.upload): the metadata of PagedKvCache and the sampling inputs. */
export interface StepTensors {
  /** i32 [N]. */
  ids: Tensor;
  /** i32 [N]. */
  positions: Tensor;
  meta: PagedStepMeta;
  /** i32 [S]: the sampled rows, or null when every row is sampled in order (decode-only steps). */
  sampleIdx: Tensor | null;
  /** Per sampled row (see SampleRowsParams). */
  params: SampleRowsParams;
}

export function disposeStepTensors(t: StepTensors): void {
  disposeAll(t.ids, t.positions, ...t.meta.slots, ...t.meta.blockTables, t.meta.contextLens, t.meta.queryStarts, t.sampleIdx ?? undefined, ...Object.values(t.params));
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
  /**
   * Optional (runners with CUDA graphs, LocalModelRunner): launches a decode-only step without waiting for it, or
   * returns null when the step is not one it launches that way (the engine then calls execute). `feed`: the step
   * launched just before, with the same rows in the same order, whose sampled tokens are this step's input tokens
   * (step.tokens are placeholders then). waitDecode reads a launched step's outputs.
   */
  launchDecode?(step: StepInput, feed: LaunchedDecode | null): LaunchedDecode | null;
  waitDecode?(launched: LaunchedDecode): StepOutput;
  /** Copies new weights into the model's parameters (same names and shapes; the KV cache is the engine's to reset). */
  updateWeights(weights: WeightUpdate): void | Promise<void>;
  dispose(): void;
}

/** The one-device runner over a GptOssModel (the model stays the caller's: dispose() frees only the KV pools). */
export class LocalModelRunner implements ModelRunner {
  readonly config: GptOssConfig;
  readonly device: string;
  private readonly cache: PagedKvCache;
  /**
   * Instrumentation (bench/decode-profile.ts): afterUpload runs once a step's host->device uploads are done and
   * before its first layer is enqueued (a device-side spin there lets the host enqueue the whole step ahead).
   */
  readonly hooks: { afterUpload?: (s: StepInput) => void } = {};
  private graphs: DecodeGraphs | null = null;

  constructor(readonly model: GptOssModel) {
    this.config = model.config;
    this.device = model.device;
    const c = model.config;
    this.cache = new PagedKvCache(kvSpaces(c), c.numKvHeads, c.headDim, model.device);
  }

  kvBytesPerBlock(blockSize: number): number[] {
    return this.cache.bytesPerBlock(blockSize);
  }

  // Graphs hold the addresses of the KV pools and the weights: moving either destroys them (recaptured on demand).
  allocateKvCache(numBlocks: readonly number[], blockSize: number): void {
    this.graphs?.reset();
    this.cache.allocate(numBlocks, blockSize);
  }

  freeKvCache(): void {
    this.graphs?.reset();
    this.cache.free();
  }

  pageWeights(out: boolean): void {
    this.graphs?.reset();
    // q/k/v are row views of a layer's fused buffer: paging one pages the storage (a repeat is a no-op).
    for (const t of this.model.weights.params.values()) {
      if (out) t.pageOut();
      else t.pageIn();
    }
    if (out && this.device !== 'cpu') emptyCache(this.device); // to the driver: another process may want it too
  }

  /**
   * Decode steps from CUDA graphs (engine option enforceEager: false; cuda-graphs.ts). `spaces` KV spaces; maxBatch:
   * the engine's maxNumSeqs. On the CPU the same padded, static-buffer path runs eagerly. Not for a tensor-parallel
   * shard (its layers are NCCL collectives driven from JS); steps with LoRA adapters run eagerly (the MoE's adapter
   * path reads the routing on the host).
   */
  enableGraphs(spaces: number, maxBatch: number): void {
    if ((this.model as LayerHost).tp !== undefined) throw new Error('LocalModelRunner.enableGraphs: CUDA graphs are not supported on a tensor-parallel shard');
    this.graphs?.dispose();
    this.graphs = new DecodeGraphs(this, spaces, maxBatch);
  }

  /** The graphs' counters (null when graphs are off). */
  graphStats(): DecodeGraphStats | null {
    return this.graphs?.stats() ?? null;
  }

  launchDecode(s: StepInput, feed: LaunchedDecode | null): LaunchedDecode | null {
    return this.graphs && !this.model.lora ? this.graphs.launch(s, feed) : null;
  }

  waitDecode(launched: LaunchedDecode): StepOutput {
    if (!this.graphs) throw new Error('LocalModelRunner.waitDecode: no graphs (a launched step outlived enableGraphs / dispose)');
    return this.graphs.wait(launched);
  }

  async execute(s: StepInput): Promise<StepOutput> {
    if (this.graphs && !this.model.lora) {
      const r = this.graphs.run(s);
      if (r) return r;
    }
    const out = await this.run(s);
    if (!out) throw new Error(`LocalModelRunner.execute: rank ${(this.model as TensorParallelModel).tp.rank} of a tensor-parallel model gets no tokens (rank 0 samples)`);
    return out;
  }

  /**
   * One step, eagerly. On a tensor-parallel shard (a TensorParallelModel) the whole step is a collective that every
   * rank runs (DecoderLayer.stepParallel per layer, then the vocabulary-parallel head: TensorParallelModel.
   * sampleParallel); rank 0 gets the tokens, the other ranks null.
   */
  async run(s: StepInput): Promise<StepOutput | null> {
    const t = this.upload(s);
    try {
      this.hooks.afterUpload?.(s);
      const x = await this.layers(t);
      if (!(this.model instanceof TensorParallelModel)) {
        const r = this.head(x, t);
        const out = { tokens: r.tokens.toInt32(), logprobs: r.logprobs.toFloat32() };
        disposeAll(r.tokens, r.logprobs);
        return out;
      }
      const rows = this.sampledRows(x, t);
      try {
        return await this.model.sampleParallel(rows, t.params, s);
      } finally {
        rows.dispose();
      }
    } finally {
      disposeStepTensors(t);
    }
  }

  /**
   * Every device tensor a step reads, uploaded at its start: the metadata and the sampling parameters (each upload
   * waits for the copy, so none may come after the first layer's launch: the host would wait for the device there).
   */
  upload(s: StepInput): StepTensors {
    const dev = this.device;
    const N = s.tokens.length;
    const B = s.contextLens.length;
    const S = s.sampleRows.length;
    const i32 = (a: Int32Array, shape: number[]): Tensor => Tensor.from(a, shape, { device: dev });
    const f32 = (a: Float32Array): Tensor => Tensor.from(a, [a.length], { device: dev, dtype: 'f32' });
    // Hidden rows of the sampled rows: all of them, in order, when every row is sampled (all decodes): no gather.
    const allRows = S === N && s.sampleRows.every((r, i) => r === i);
    return {
      ids: i32(s.tokens, [N]),
      positions: i32(s.positions, [N]),
      meta: {
        slots: s.slots.map((a) => i32(a, [N])),
        blockTables: s.blockTables.map((a) => i32(a, [B, s.maxBlocksPerSeq])),
        contextLens: i32(s.contextLens, [B]),
        queryStarts: i32(s.queryStarts, [B + 1]),
      },
      sampleIdx: allRows ? null : i32(s.sampleRows, [S]),
      params: {
        temperature: f32(s.temperature),
        topP: f32(s.topP),
        topK: i32(s.topK, [S]),
        seeds: i32(s.seeds, [S]),
        counters: i32(s.counters, [S]),
      },
    };
  }

  /**
   * A step on the device from its uploaded tensors: layers, final norm + LM head of the sampled rows, per-row
   * sampling. No host read or upload inside (what a CUDA graph captures: cuda-graphs.ts). tokens i32 [S], logprobs
   * f32 [S], the caller's.
   */
  deviceStep(t: StepTensors): { tokens: Tensor; logprobs: Tensor } {
    if ((this.model as LayerHost).tp !== undefined) throw new Error('LocalModelRunner.deviceStep: the layers of a tensor-parallel shard are collectives (execute() runs them)');
    return this.head(this.layersSync(t), t);
  }

  /** The sampled rows of x (bf16 [N, H], taken over) -> bf16 [S, H]. */
  private sampledRows(x: Tensor, t: StepTensors): Tensor {
    if (!t.sampleIdx) return x;
    const rows = embeddingForward(x, t.sampleIdx, { checked: false }); // engine-built row ids: no wait for the device
    x.dispose();
    return rows;
  }

  /** Final norm, LM head and per-row sampling of the sampled rows of x (bf16 [N, H], taken over). */
  private head(x: Tensor, t: StepTensors): { tokens: Tensor; logprobs: Tensor } {
    const rows = this.sampledRows(x, t);
    const logits = this.model.logits(rows);
    rows.dispose();
    const r = sampleRows(logits, t.params);
    logits.dispose();
    return r;
  }

  private layersSync(t: StepTensors): Tensor {
    const model = this.model;
    let x = model.embed(t.ids, { checked: false }); // ids validated by the engine: no wait for the device
    this.cache.setStep(t.meta);
    try {
      for (let l = 0; l < this.config.numLayers; l++) {
        const y = model.layers[l]!.step(x, t.positions, this.cache.layers[l]!);
        x.dispose();
        x = y;
      }
    } catch (e) {
      x.dispose();
      throw e;
    } finally {
      this.cache.setStep(null);
    }
    return x;
  }

  private async layers(t: StepTensors): Promise<Tensor> {
    const model = this.model;
    if (!(model instanceof TensorParallelModel)) return this.layersSync(t);
    let x = await model.embedParallel(t.ids); // ids validated by the engine (no wait for the device)
    this.cache.setStep(t.meta);
    try {
      for (let l = 0; l < this.config.numLayers; l++) {
        const y = await model.layers[l]!.stepParallel(x, t.positions, this.cache.layers[l]!);
        x.dispose();
        x = y;
      }
    } catch (e) {
      x.dispose();
      throw e;
    } finally {
      this.cache.setStep(null);
    }
    return x;
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
    this.graphs?.dispose();
    this.graphs = null;
    this.cache.dispose();
  }
}
