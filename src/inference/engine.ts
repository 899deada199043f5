// engine.ts: the inference engine: requests in, samples out, over a paged KV cache with continuous batching.
//
// generate(requests) queues each request's n samples as sequences (scheduler.ts) and resolves when all of them
// end; requests from later calls join the running batch at the next step. Each step is planned on the host
// (Scheduler.schedule), run by the ModelRunner (model-runner.ts: the seam a tensor-parallel runner plugs into) and
// booked (Scheduler.complete). Sampling is per sequence: sample k of a request draws with seed (request seed + k)
// and counter = tokens it has generated, so its tokens do not depend on the rest of the batch, on preemption, or
// on whether its prompt's blocks came from the prefix cache.
//
// A bad request (empty prompt or one that leaves no room under maxModelLen, a token outside the vocabulary,
// n < 1, maxNewTokens < 1, sampling values out of range, a sequence the pool can never hold) gets an error result
// of its own; the others run on. A step that throws fails only the sequences in that step (their blocks freed).
import { execFileSync } from 'node:child_process';
import { memoryStats } from '../tensor.ts';
import { loadModel } from '../model/index.ts';
import { GptOssModel } from '../model/gptoss.ts';
import { engineMemoryPlan } from '../trainer/memory-plan.ts';
import { BlockManager } from './block-manager.ts';
import { kvSpaces } from './paged-kv-cache.ts';
import { LocalModelRunner, type ModelRunner, type StepInput, type WeightUpdate } from './model-runner.ts';
import type { DecodeGraphStats, LaunchedDecode } from './cuda-graphs.ts';
import { Scheduler, Sequence, type FinishReason, type KvSpace, type ScheduledChunk } from './scheduler.ts';

export interface GenerateRequest {
  /** Token ids (at least one). */
  prompt: readonly number[];
  /** Samples of this prompt (default 1); they share the prompt's KV blocks. */
  n?: number;
  maxNewTokens: number;
  /** 0 = greedy (default 1). */
  temperature?: number;
  /** (0, 1]; default 1 (off). */
  topP?: number;
  /** <= 0 or undefined: off. */
  topK?: number;
  /** Sample k uses seed + k (mod 2^32). Default: random. */
  seed?: number;
  /** A sample ends after it draws one of these (included in its tokens). Default: the model's eos ids. */
  stopTokens?: readonly number[];
}

export interface GeneratedSample {
  /** New tokens (with the stop token when one ended the sample). */
  tokens: number[];
  /** log p of each token under the sampling distribution (temperature, top-k, top-p; greedy: the plain softmax). */
  logprobs: number[];
  /** stop: a stop token; length: maxNewTokens or maxModelLen; abort: the engine was disposed; error: see `error`. */
  finishReason: FinishReason;
  error?: string;
}

export interface GenerateResponse {
  samples: GeneratedSample[];
}

export interface GenerateCallOptions {
  /** Called after each new token of any sample (streaming). */
  onToken?: (e: { request: number; sample: number; token: number; logprob: number }) => void;
}

export interface EngineOptions {
  /** Device of a model loaded from a source (default: the model's own / the default device). */
  device?: string;
  /** Ranks of one engine (default 1); > 1: createTensorParallelEngine (tensor-parallel-runner.ts) makes the engine. */
  tensorParallelSize?: number;
  /** Tokens per KV block (default 16). */
  blockSize?: number;
  /**
   * KV blocks in the full-attention layers' pool; default: sized from gpuMemoryUtilization (CUDA) or maxNumSeqs
   * full sequences (CPU).
   */
  numBlocks?: number;
  /**
   * KV blocks in the sliding-window layers' pool (they keep only the blocks of their window); default: what
   * maxNumSeqs decoding sequences and one step of maxNumBatchedTokens prefill need, at most numBlocks.
   */
  numSlidingBlocks?: number;
  /** Fraction of the GPU's memory the process may fill, weights included (generator.gpu_memory_utilization; default 0.8). */
  gpuMemoryUtilization?: number;
  /** Query rows per step (generator.max_num_batched_tokens; default 8192). */
  maxNumBatchedTokens?: number;
  /** Running sequences at most (generator.max_num_seqs; default 256). */
  maxNumSeqs?: number;
  /** Longest sequence, prompt + generated (default: the model's max positions). */
  maxModelLen?: number;
  /** Keep freed prompt blocks for later requests (generator.enable_prefix_caching; default true). */
  enablePrefixCaching?: boolean;
  /**
   * true (default): every step launches its kernels from JS. false: decode-only steps replay CUDA graphs, padded to
   * a bucket of 1, 2, 4, ..., 512 sequences (cuda-graphs.ts); prefill and mixed steps stay eager. One-device engines
   * only; on the CPU the graph path runs eagerly over the same padded static buffers. (generator.enforce_eager stays
   * refused as false in configs until the GPU tests of test/gpu/cuda-graphs.test.ts have passed.)
   */
  enforceEager?: boolean;
}

export interface EngineStats {
  steps: number;
  prefillTokens: number;
  decodeTokens: number;
  preemptions: number;
  /** Prompt blocks found in the prefix cache / looked up. */
  prefixCacheHitRate: number;
  numBlocks: number;
  /** 0 for a model without sliding-window layers. */
  numSlidingBlocks: number;
  blockSize: number;
  /** Blocks held by queued or running sequences now, over both pools (0 when idle). */
  heldBlocks: number;
  /** Decode graphs' counters (enforceEager false), else null. */
  graphs: DecodeGraphStats | null;
  /** Decode steps launched before the step before them was read back (see Engine, "Running a step ahead"). */
  stepsAhead: number;
  /** Rows of those steps dropped because their sequence ended in the step before. */
  rowsDropped: number;
}

/** What generate() waits on for one request. */
interface PendingRequest {
  samples: (GeneratedSample | null)[];
  left: number;
  resolve: () => void;
  onToken?: GenerateCallOptions['onToken'];
  index: number;
}

/** Creates an engine over a model source (path or hub id), a loaded model (kept the caller's) or a runner. */
export async function createEngine(source: string | GptOssModel | ModelRunner, opts: EngineOptions = {}): Promise<Engine> {
  const tp = opts.tensorParallelSize ?? 1;
  const isRunner = typeof source === 'object' && !(source instanceof GptOssModel);
  if (tp !== 1 && !isRunner) {
    throw new Error(
      `createEngine: tensorParallelSize ${tp} needs the ranks of a launched group: call createTensorParallelEngine(source, initDistributed's context, options) on every rank`,
    );
  }
  if (typeof source === 'string') {
    const model = await loadModel(source, { device: opts.device });
    return new Engine(new LocalModelRunner(model), opts, () => model.dispose());
  }
  if (source instanceof GptOssModel) {
    if (opts.device && opts.device !== source.device) throw new Error(`createEngine: the model is on ${source.device}, options ask for ${opts.device}`);
    return new Engine(new LocalModelRunner(source), opts);
  }
  return new Engine(source, opts);
}

export class Engine {
  readonly blockSize: number;
  readonly maxModelLen: number;
  /** The KV spaces (kvSpaces(config) order: full-attention layers first, then sliding-window layers). */
  private readonly spaces: KvSpace[];
  private readonly scheduler: Scheduler;
  /** sequence -> (its request, sample index, its prompt's key in promptGroups). */
  private readonly owner = new Map<Sequence, { request: PendingRequest; sample: number; promptKey: string }>();
  /**
   * Prompt -> sharing group and its live sequences: the sequences of equal prompts (a request's n samples, and
   * equal prompts of other requests) form one group, which the scheduler prefills once. An entry goes with its
   * last sequence.
   */
  private readonly promptGroups = new Map<string, { group: number; live: number }>();
  private nextGroup = 0;
  private nextSeq = 0;
  private loop: Promise<void> | null = null;
  /** The decode step launched ahead of the one being completed (see step(), "Running a step ahead"). */
  private ahead: { chunks: ScheduledChunk[]; launched: LaunchedDecode } | null = null;
  private readonly aheadStats = { steps: 0, rowsDropped: 0 };
  private asleep = false;
  /** sleep({ weights: true }) paged the model's weights out. */
  private weightsOut = false;
  /** The pool sizes the memory free now allows (per KV space); throws when one has no block. */
  private readonly sizePool: (where: string) => number[];
  /** Whether wake() sizes the pool again (auto-sized on a GPU: numBlocks not given). */
  private readonly resizeOnWake: boolean;
  private readonly enablePrefixCaching: boolean;
  private disposed = false;

  constructor(
    readonly runner: ModelRunner,
    opts: EngineOptions = {},
    private readonly onDispose?: () => void,
  ) {
    const c = runner.config;
    this.blockSize = opts.blockSize ?? 16;
    this.maxModelLen = opts.maxModelLen ?? c.maxPositions;
    const maxNumSeqs = opts.maxNumSeqs ?? 256;
    const maxNumBatchedTokens = opts.maxNumBatchedTokens ?? 8192;
    for (const [k, v] of Object.entries({ blockSize: this.blockSize, maxModelLen: this.maxModelLen, maxNumSeqs, maxNumBatchedTokens })) {
      if (!Number.isInteger(v) || v < 1) throw new Error(`createEngine: ${k} must be a positive integer, got ${v}`);
    }
    const util = opts.gpuMemoryUtilization ?? 0.8;
    if (!(util > 0 && util <= 1)) throw new Error(`createEngine: gpuMemoryUtilization must be in (0, 1], got ${util}`);
    const tp = opts.tensorParallelSize ?? 1;
    const layout = kvSpaces(c);
    // Sized from the memory free now, and again at every wake() unless numBlocks fixes it: a colocated trainer
    // holds more after its first optimizer step (AdamW moments) than when the engine was made.
    this.sizePool = (where: string): number[] => {
      const sizes = poolSizes(runner, layout, opts, { tp, blockSize: this.blockSize, util, maxNumSeqs, maxNumBatchedTokens, maxModelLen: this.maxModelLen });
      sizes.forEach((n, i) => {
        if (!Number.isInteger(n) || n < 1) {
          const which = layout[i]!.window > 0 ? 'sliding-window pool (numSlidingBlocks' : 'KV pool (numBlocks';
          const held = runner.device === 'cpu' ? '' : `; ${(memoryStats(runner.device).allocated / 2 ** 30).toFixed(1)} GiB are held on ${runner.device}`;
          throw new Error(`${where}: the ${which}, or what gpuMemoryUtilization ${util} leaves${held}) has ${n} blocks: need at least 1`);
        }
      });
      return sizes;
    };
    this.resizeOnWake = opts.numBlocks === undefined && runner.device !== 'cpu';
    const sizes = this.sizePool('createEngine');
    this.enablePrefixCaching = opts.enablePrefixCaching ?? true;
    this.spaces = layout.map((sp, i) => ({
      window: sp.window,
      blocks: new BlockManager({ numBlocks: sizes[i]!, blockSize: this.blockSize, enablePrefixCaching: this.enablePrefixCaching }),
    }));
    this.scheduler = new Scheduler(this.spaces, { maxNumSeqs, maxNumBatchedTokens, maxModelLen: this.maxModelLen });
    runner.allocateKvCache(sizes, this.blockSize);
    if (opts.enforceEager === false) {
      if (!(runner instanceof LocalModelRunner)) {
        throw new Error('createEngine: enforceEager false (CUDA graphs) needs the one-device runner; a tensor-parallel engine runs eagerly');
      }
      runner.enableGraphs(layout.length, maxNumSeqs);
    }
  }

  /** Blocks of the full-attention layers' pool (the only pool of a model without sliding layers). */
  get numBlocks(): number {
    return (this.spaces.find((sp) => sp.window === 0) ?? this.spaces[0]!).blocks.numBlocks;
  }

  /** Blocks of the sliding-window layers' pool (0 without sliding layers). */
  get numSlidingBlocks(): number {
    return this.spaces.find((sp) => sp.window > 0)?.blocks.numBlocks ?? 0;
  }

  get config() {
    return this.runner.config;
  }

  /** Generates every request's samples; requests of concurrent calls share the steps. */
  async generate(requests: readonly GenerateRequest[], call: GenerateCallOptions = {}): Promise<GenerateResponse[]> {
    if (this.disposed) throw new Error('Engine.generate: the engine is disposed');
    if (this.asleep) throw new Error('Engine.generate: the engine is asleep (wake() first)');
    const waits: Promise<void>[] = [];
    const results: PendingRequest[] = requests.map((r, index) => {
      const p: PendingRequest = { samples: [], left: 0, resolve: () => {}, onToken: call.onToken, index };
      const err = this.validate(r);
      if (err) {
        p.samples = [{ tokens: [], logprobs: [], finishReason: 'error', error: err }];
        return p;
      }
      const n = r.n ?? 1;
      const key = r.prompt.join(',');
      let entry = this.promptGroups.get(key);
      if (!entry) this.promptGroups.set(key, (entry = { group: this.nextGroup++, live: 0 }));
      entry.live += n;
      const group = entry.group;
      const seed = r.seed ?? Math.floor(Math.random() * 2 ** 32);
      const stop = new Set(r.stopTokens ?? this.config.eosTokenIds);
      const topK = r.topK !== undefined && r.topK > 0 ? r.topK : 0;
      p.samples = new Array<GeneratedSample | null>(n).fill(null);
      p.left = n;
      waits.push(new Promise<void>((res) => (p.resolve = res)));
      for (let k = 0; k < n; k++) {
        const sampling = { temperature: r.temperature ?? 1, topP: r.topP ?? 1, topK, seed: (seed + k) >>> 0 };
        const s = new Sequence(this.nextSeq++, group, r.prompt, sampling, r.maxNewTokens, stop);
        this.owner.set(s, { request: p, sample: k, promptKey: key });
        this.scheduler.add(s);
      }
      return p;
    });
    this.kick();
    await Promise.all(waits);
    return results.map((p) => ({ samples: p.samples.map((s) => s!) }));
  }

  /**
   * Frees the KV pool; with `{ weights: true }` also pages the model's weights out to host memory and gives their
   * device memory back (vLLM's sleep level 1), for a trainer that shares the GPU. Waits for running work first;
   * generate() fails until wake(), and so does updateWeights() while the weights are out. Sleeping again with
   * weights while asleep pages them out then.
   */
  async sleep(opts: { weights?: boolean } = {}): Promise<void> {
    await this.drain();
    if (!this.asleep) {
      for (const sp of this.spaces) sp.blocks.reset();
      this.runner.freeKvCache();
      this.asleep = true;
    }
    if (opts.weights && !this.weightsOut) {
      this.runner.pageWeights(true);
      this.weightsOut = true;
    }
  }

  /**
   * Pages the weights back in (when sleep released them) and allocates the KV pool again, sized anew from the memory
   * free now when the engine sized it itself (a colocated trainer may hold more than at creation: its optimizer
   * state appears after the first step); an error names what is held when not even one block fits.
   */
  async wake(): Promise<void> {
    if (!this.asleep) return;
    if (this.weightsOut) {
      this.runner.pageWeights(false);
      this.weightsOut = false;
    }
    if (this.resizeOnWake) {
      const sizes = this.sizePool('Engine.wake');
      this.spaces.forEach((sp, i) => {
        if (sp.blocks.numBlocks !== sizes[i]) {
          sp.blocks = new BlockManager({ numBlocks: sizes[i]!, blockSize: this.blockSize, enablePrefixCaching: this.enablePrefixCaching });
        }
      });
    }
    this.runner.allocateKvCache(this.spaces.map((sp) => sp.blocks.numBlocks), this.blockSize);
    this.asleep = false;
  }

  /**
   * New weights by parameter name (whole tensors, or this runner's shard for a TP runner) once running work is done;
   * cached prompt blocks are dropped (they hold keys/values of the old weights).
   */
  async updateWeights(weights: WeightUpdate): Promise<void> {
    await this.drain();
    if (this.weightsOut) throw new Error('Engine.updateWeights: the weights are paged out (sleep({ weights: true })); wake() first');
    await this.runner.updateWeights(weights);
    await this.dropCachedPrefixes();
  }

  /**
   * The model's weights or adapters changed in place (e.g. GptOssModel.lora set or trained, src/model/lora.ts):
   * once running work is done, drops the cached prompt blocks, which hold keys/values computed with the old ones.
   */
  async dropCachedPrefixes(): Promise<void> {
    await this.drain();
    for (const sp of this.spaces) sp.blocks.reset();
  }

  stats(): EngineStats {
    const s = this.scheduler.stats;
    return {
      steps: s.steps,
      prefillTokens: s.prefillTokens,
      decodeTokens: s.decodeTokens,
      preemptions: s.preemptions,
      prefixCacheHitRate: s.prefixLookups ? s.prefixHits / s.prefixLookups : 0,
      numBlocks: this.numBlocks,
      numSlidingBlocks: this.numSlidingBlocks,
      blockSize: this.blockSize,
      heldBlocks: this.scheduler.heldBlocks,
      graphs: this.runner instanceof LocalModelRunner ? this.runner.graphStats() : null,
      stepsAhead: this.aheadStats.steps,
      rowsDropped: this.aheadStats.rowsDropped,
    };
  }

  /** Ends every sequence with finishReason 'abort' and frees the pool (and the model, when the engine loaded it). */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const s of [...this.scheduler.running, ...this.scheduler.waiting]) this.finish(s, 'abort');
    this.dropAhead();
    this.runner.dispose();
    this.onDispose?.();
  }

  // ---- internals --------------------------------------------------------------------------------------------------
  private validate(r: GenerateRequest): string | null {
    const c = this.config;
    const V = c.vocabSize;
    const n = r.n ?? 1;
    if (!Number.isInteger(n) || n < 1) return `n must be an integer >= 1, got ${n}`;
    if (!Number.isInteger(r.maxNewTokens) || r.maxNewTokens < 1) return `maxNewTokens must be an integer >= 1, got ${r.maxNewTokens}`;
    if (!Array.isArray(r.prompt) && !ArrayBuffer.isView(r.prompt)) return 'prompt must be an array of token ids';
    if (r.prompt.length < 1) return 'prompt is empty';
    if (r.prompt.length >= this.maxModelLen) {
      return `prompt has ${r.prompt.length} tokens; the model length is ${this.maxModelLen} (room for at least one new token needed)`;
    }
    const bad = r.prompt.findIndex((t) => !Number.isInteger(t) || t < 0 || t >= V);
    if (bad >= 0) return `prompt token ${bad} is ${r.prompt[bad]}, outside the vocabulary [0, ${V})`;
    const t = r.temperature ?? 1;
    if (!(t >= 0 && Number.isFinite(t))) return `temperature must be >= 0, got ${t}`;
    const p = r.topP ?? 1;
    if (!(p > 0 && p <= 1)) return `topP must be in (0, 1], got ${p}`;
    if (r.topK !== undefined && !Number.isInteger(r.topK)) return `topK must be an integer, got ${r.topK}`;
    if (r.seed !== undefined && !(Number.isInteger(r.seed) && r.seed >= 0)) return `seed must be a non-negative integer, got ${r.seed}`;
    const st = (r.stopTokens ?? []).findIndex((x) => !Number.isInteger(x));
    if (st >= 0) return `stopTokens[${st}] is not a token id: ${r.stopTokens![st]}`;
    const longest = Math.min(r.prompt.length + r.maxNewTokens, this.maxModelLen);
    for (const sp of this.spaces) {
      // A sliding space holds the window's blocks (plus the one a step grows into), chunks shrink to fit.
      const blocks = Math.ceil(longest / this.blockSize);
      const need = sp.window > 0 ? Math.min(blocks, Math.ceil(sp.window / this.blockSize) + 1) : blocks;
      if (need > sp.blocks.numBlocks) {
        const pool = sp.window > 0 ? 'sliding-window pool' : 'pool';
        return `a sequence of ${longest} tokens needs ${need} KV blocks of ${this.blockSize} tokens; the ${pool} has ${sp.blocks.numBlocks}`;
      }
    }
    return null;
  }

  /** Starts the step loop if it is not running. */
  private kick(): void {
    if (this.loop || this.scheduler.idle) return;
    this.loop = (async () => {
      try {
        while ((!this.scheduler.idle || this.ahead) && !this.disposed) {
          await this.step();
          // Let other generate() calls enqueue between steps (they join at the next one).
          await new Promise<void>((r) => setImmediate(r));
        }
      } finally {
        this.loop = null;
      }
    })();
  }

  /** Resolves when no sequence is queued or running. */
  private async drain(): Promise<void> {
    while (this.loop) await this.loop;
  }

  // Running a step ahead. When a decode-only step runs from a CUDA graph (runner.launchDecode), the engine does not
  // wait for it before planning the next: if the next step is known already (Scheduler.planAhead: the same
  // sequences, none joining or ending by length), it is launched at once, its input tokens copied on the device from
  // this step's sampled ones, and only then does the host wait for this step, complete it and run the callbacks, while
  // the GPU runs the next. A sequence that this step ends (a stop token, an abort) drops its row of the step ahead.
  // The tokens are those of one step at a time: the same ids, positions, slots, seeds and counters reach the same
  // graph.
  private async step(): Promise<void> {
    let chunks: ScheduledChunk[];
    let launched: LaunchedDecode | null = null;
    if (this.ahead) {
      ({ chunks, launched } = this.ahead);
      this.ahead = null;
    } else {
      chunks = this.scheduler.schedule();
      if (chunks.length === 0) {
        // Validation guarantees the queue head fits an empty pool; reaching here is a scheduler bug.
        const head = this.scheduler.waiting[0];
        if (head) this.finish(head, 'error', 'the engine could not schedule this sequence (internal error)');
        return;
      }
    }
    let out: { tokens: Int32Array; logprobs: Float32Array };
    try {
      const input = launched ? null : this.stepInput(chunks);
      if (input && this.runner.launchDecode) launched = this.runner.launchDecode(input, null);
      if (launched) {
        const next = this.scheduler.planAhead(chunks);
        if (next) {
          const ahead = this.runner.launchDecode!(this.stepInput(next, true), launched);
          if (!ahead) throw new Error('the step planned ahead did not launch from a graph (internal error)');
          this.ahead = { chunks: next, launched: ahead };
          this.aheadStats.steps++;
        }
        out = this.runner.waitDecode!(launched);
      } else {
        out = await this.runner.execute(input!);
      }
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      for (const c of chunks) if (!c.seq.finishReason) this.finish(c.seq, 'error', `engine step failed: ${msg}`);
      this.dropAhead();
      return;
    }
    // Rows of sequences that ended while this step was in flight (it was planned ahead) are dropped.
    const keep = chunks.map((c) => !c.seq.finishReason);
    this.aheadStats.rowsDropped += keep.filter((x) => !x).length;
    const live = chunks.filter((_, i) => keep[i]);
    const sampled: { token: number; logprob: number }[] = [];
    let k = 0;
    chunks.forEach((c, i) => {
      if (!c.sample) return;
      if (keep[i]) sampled.push({ token: out.tokens[k]!, logprob: out.logprobs[k]! });
      k++;
    });
    const sampledSeqs = live.filter((c) => c.sample).map((c) => c.seq);
    const finished = this.scheduler.complete(live, sampled);
    sampledSeqs.forEach((s, i) => {
      const o = this.owner.get(s);
      if (!o) return; // ended by an earlier callback of this step (the engine disposed from onToken)
      o.request.onToken?.({ request: o.request.index, sample: o.sample, token: sampled[i]!.token, logprob: sampled[i]!.logprob });
    });
    for (const s of finished) this.deliver(s);
    // Every sequence of the step ahead ended here: nothing of it is needed.
    if (this.ahead?.chunks.every((c) => c.seq.finishReason)) this.dropAhead();
  }

  /** Waits for the step launched ahead and drops it (its sequences ended or failed). */
  private dropAhead(): void {
    const a = this.ahead;
    this.ahead = null;
    if (!a) return;
    this.aheadStats.rowsDropped += a.chunks.length;
    try {
      this.runner.waitDecode!(a.launched);
    } catch {
      // Its sequences have ended already; a failure of the dropped step has nothing left to fail.
    }
  }

  /**
   * The runner's arrays for a planned step (see StepInput). ahead: the step is planned before the step now running
   * completes (Scheduler.planAhead): its input tokens are placeholders (the runner copies the running step's sampled
   * tokens in) and each sequence's sampling counter counts the token that step appends.
   */
  private stepInput(chunks: readonly ScheduledChunk[], ahead = false): StepInput {
    const bs = this.blockSize;
    const N = chunks.reduce((a, c) => a + c.count, 0);
    const B = chunks.length;
    const maxBlocks = Math.max(...chunks.map((c) => Math.ceil((c.start + c.count) / bs)));
    const tokens = new Int32Array(N), positions = new Int32Array(N);
    const slots = this.spaces.map(() => new Int32Array(N));
    const blockTables = this.spaces.map(() => new Int32Array(B * maxBlocks));
    const queryStarts = new Int32Array(B + 1), contextLens = new Int32Array(B);
    const S = chunks.filter((c) => c.sample).length;
    const sampleRows = new Int32Array(S), temperature = new Float32Array(S), topP = new Float32Array(S);
    const topK = new Int32Array(S), seeds = new Int32Array(S), counters = new Int32Array(S);
    let row = 0;
    let k = 0;
    chunks.forEach((c, b) => {
      const s = c.seq;
      queryStarts[b] = row;
      const used = Math.ceil((c.start + c.count) / bs);
      s.tables.forEach((t, i) => {
        const table = blockTables[i]!;
        // Released entries (before a sliding window) are never read: 0 keeps the table in range.
        for (let j = 0; j < used; j++) table[b * maxBlocks + j] = Math.max(0, t.blocks[j]!);
        for (let p = c.start, r = row; p < c.start + c.count; p++, r++) slots[i]![r] = t.blocks[Math.floor(p / bs)]! * bs + (p % bs);
      });
      for (let p = c.start; p < c.start + c.count; p++, row++) {
        tokens[row] = ahead ? 0 : s.tokens[p]!;
        positions[row] = p;
      }
      contextLens[b] = c.start + c.count;
      if (c.sample) {
        sampleRows[k] = row - 1;
        temperature[k] = s.sampling.temperature;
        topP[k] = s.sampling.topP;
        topK[k] = s.sampling.topK;
        seeds[k] = s.sampling.seed | 0;
        counters[k] = s.generated.length + (ahead ? 1 : 0);
        k++;
      }
    });
    queryStarts[B] = row;
    return { tokens, positions, slots, queryStarts, contextLens, blockTables, maxBlocksPerSeq: maxBlocks, sampleRows, temperature, topP, topK, seeds, counters };
  }

  /** Ends s with `reason` (leaving the scheduler) and delivers it. */
  private finish(s: Sequence, reason: FinishReason, error?: string): void {
    this.scheduler.remove(s);
    s.finishReason = reason;
    this.deliver(s, error);
  }

  private deliver(s: Sequence, error?: string): void {
    const o = this.owner.get(s);
    if (!o) return;
    this.owner.delete(s);
    const g = this.promptGroups.get(o.promptKey)!;
    if (--g.live === 0) this.promptGroups.delete(o.promptKey);
    const p = o.request;
    const sample: GeneratedSample = { tokens: s.generated, logprobs: s.logprobs, finishReason: s.finishReason ?? 'abort' };
    if (error) sample.error = error;
    p.samples[o.sample] = sample;
    if (--p.left === 0) p.resolve();
  }
}

/** The auto-sized CUDA pool holds at most this many times what maxNumSeqs sequences of maxModelLen tokens fill. */
const POOL_SEQ_FACTOR = 2;

/**
 * Blocks of each KV space's pool. The sliding-window pool (unless numSlidingBlocks): what maxNumSeqs decoding
 * sequences (their window plus the block they grow into) and one step of maxNumBatchedTokens prefill need, at most
 * the full pool's count. The full pool (unless numBlocks): on CUDA, what gpuMemoryUtilization x the device's memory
 * leaves after what the process has allocated now (weights), the engine's working buffers and CUDA overheads as the
 * memory planner counts them (engineMemoryPlan) and the sliding pool, at most POOL_SEQ_FACTOR x maxNumSeqs
 * sequences of maxModelLen tokens; on the CPU, maxNumSeqs sequences of min(maxModelLen, 4096) tokens, at most 256 MiB.
 */
function poolSizes(
  runner: ModelRunner,
  layout: readonly { window: number }[],
  opts: EngineOptions,
  o: { tp: number; blockSize: number; util: number; maxNumSeqs: number; maxNumBatchedTokens: number; maxModelLen: number },
): number[] {
  const bytes = runner.kvBytesPerBlock(o.blockSize);
  const bs = o.blockSize;
  const slidingDefault = (window: number): number => Math.ceil(o.maxNumBatchedTokens / bs) + o.maxNumSeqs * (Math.ceil(window / bs) + 1);
  let full = opts.numBlocks;
  if (full === undefined) {
    const fullBytes = layout.reduce((a, sp, i) => a + (sp.window === 0 ? bytes[i]! : 0), 0) || bytes[0]!;
    if (runner.device === 'cpu') {
      const tokens = o.maxNumSeqs * Math.min(o.maxModelLen, 4096);
      full = Math.max(1, Math.min(Math.ceil(tokens / bs), Math.floor(2 ** 28 / fullBytes)));
    } else {
      const total = deviceMemoryBytes(runner.device);
      const plan = engineMemoryPlan(
        runner.config,
        { tensorParallel: o.tp, engines: 1, gpuMemoryUtilization: o.util, maxNumSeqs: o.maxNumSeqs, maxNumBatchedTokens: o.maxNumBatchedTokens, sequenceTokens: o.maxModelLen, rolloutSequences: o.maxNumSeqs },
        total,
        [],
        o.tp === 1 ? { ncclBytes: 0 } : {}, // one device: no NCCL communicator
      );
      const extra = plan.rows.filter((r) => r.key === 'engineWorkspace' || r.key === 'overhead').reduce((a, r) => a + r.bytes, 0);
      // Allocated, not reserved: cached free blocks (e.g. left by weight initialisation) are reused or released.
      const held = memoryStats(runner.device).allocated;
      const slidingBytes = layout.reduce((a, sp, i) => a + (sp.window > 0 ? (opts.numSlidingBlocks ?? slidingDefault(sp.window)) * bytes[i]! : 0), 0);
      full = Math.floor((o.util * total - held - extra - slidingBytes) / fullBytes);
      // A small model on a large GPU would otherwise get millions of blocks: every wake() zeroes the whole pool and
      // builds its block lists, at each GRPO step (measured on an H100 with the GPU recipe's tiny model: the rollout
      // phase took 8x the old static path's time), though the running set can never hold more than maxNumSeqs
      // sequences of maxModelLen tokens. As many blocks again stay for cached prefixes.
      full = Math.min(full, POOL_SEQ_FACTOR * o.maxNumSeqs * Math.ceil(o.maxModelLen / bs));
    }
  }
  return layout.map((sp) => (sp.window === 0 ? full! : (opts.numSlidingBlocks ?? Math.min(full!, slidingDefault(sp.window)))));
}

/**
 * Total memory of a CUDA device in bytes (nvidia-smi; the addon has no query for it), asked once per physical device:
 * it does not change, and wake() sizes the pool at every GRPO step of a colocated run, where a fresh nvidia-smi
 * process (tens of ms) each time would be paid in the rollout phase.
 */
const deviceMemoryCache = new Map<string, number>();
function deviceMemoryBytes(device: string): number {
  const index = Number(device.split(':')[1] ?? 0);
  const visible = process.env.CUDA_VISIBLE_DEVICES?.split(',').map((s) => s.trim());
  const physical = visible && visible[index] !== undefined && visible[index] !== '' ? visible[index] : String(index);
  const cached = deviceMemoryCache.get(physical!);
  if (cached !== undefined) return cached;
  let out: string;
  try {
    out = execFileSync('nvidia-smi', ['--query-gpu=memory.total', '--format=csv,noheader,nounits', '-i', physical!], { encoding: 'utf8' });
  } catch (e) {
    throw new Error(`createEngine: cannot read ${device}'s memory size with nvidia-smi (${(e as Error).message.split('\n')[0]}); pass numBlocks`);
  }
  const mib = Number(out.trim().split('\n')[0]);
  if (!(mib > 0)) throw new Error(`createEngine: nvidia-smi reported '${out.trim()}' as ${device}'s memory; pass numBlocks`);
  deviceMemoryCache.set(physical!, mib * 2 ** 20);
  return mib * 2 ** 20;
}
