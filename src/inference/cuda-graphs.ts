// cuda-graphs.ts: decode steps replayed from CUDA graphs (engine option enforceEager: false).
//
// A decode-only step of B sequences (one query row each, every row sampled: N = S = B) runs padded to a bucket
// (GRAPH_BUCKETS: the smallest >= B) over static input buffers, and its kernels are launched as one graph instead of
// ~20 launches a layer from JS. A graph is keyed by (bucket, block-table width): the width is the step's
// maxBlocksPerSeq rounded up to a power of two (at least 16), so a graph's launch shapes never depend on the host
// (paged attention's split count comes from the width, the MoE at N = bucket·topK < 128·E rows stays on its
// device-planned decode/grouped kernels: plan_expert_gemms reads no host offsets there; larger buckets are not
// captured: largestGraphBucket) while the step's block
// tables upload only B x width entries (a width fixed at maxModelLen / blockSize would upload 8,192 per sequence at
// gpt-oss's 131k length).
//
// Static inputs of one graph (device, fixed addresses): i32 [ids | positions | slots per space | block tables per
// space | contextLens | queryStarts | topK | seeds | counters] and f32 [temperature | topP], each segment padded to
// 16 bytes; filled before each replay by two asynchronous copies from pinned host staging buffers, two sets used in
// turn (launch n uses set n % 2: a step is filled while the one before may still be in flight, and the one before
// that has been read back, so its set is free). Padding rows (b >= B): token 0 at
// position 0, slot -1 (scatterRows skips it: no KV written), a context of 1 token read from block 0 of each pool
// (always allocated, finite: zeroed at allocation or written since), greedy sampling; their outputs are dropped.
//
// Capture: the first step of a key fills the static inputs, runs the step eagerly over them (cuBLAS algorithms,
// kernel attributes and the allocator's blocks get set up outside the capture; the step's KV writes are repeated by
// the replay with the same values), then captures LocalModelRunner.deviceStep (layers, LM head, sampling: no upload
// or host read) with the device's allocations served from one private pool shared by the engine's graphs (they
// never run concurrently: one stream), and replays it. The sampled tokens and log-probs are the graph's static
// outputs, copied to pinned host memory behind each replay (an event marks the copy) and read when the caller waits.
// launch / wait let the engine run a step ahead (engine.ts, "Running a step ahead"): it launches step N + 1 before
// reading step N, N + 1's input tokens copied on the device from N's outputs. Graphs hold the addresses of the weights and KV pools: freeKvCache,
// allocateKvCache and pageWeights destroy them and release the pool (reset), and the next decode step captures
// again. Memory: the pool holds about one decode step's working set at the largest bucket captured (at 512
// sequences of gpt-oss-20b mostly the f32 logits, 512 x 201,088 x 4 B = 412 MB), beside the ordinary cache's.
//
// On the CPU the same code runs with the static buffers in host memory and a "replay" that calls deviceStep
// eagerly over them (no capture): the padding and the static layout are tested by the CPU engine tests.
import { native, deviceIndex } from '../native.ts';
import type { NativeEvent } from '../native-ops.ts';
import { Tensor, synchronize, batchInvariant } from '../tensor.ts';
import { disposeAll } from '../model/tensor-helpers.ts';
import type { LocalModelRunner, StepInput, StepOutput, StepTensors } from './model-runner.ts';

/** Decode batch sizes with a graph of their own; a step of B sequences runs at the smallest bucket >= B. */
export const GRAPH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512] as const;

/**
 * Routed rows (N = tokens x topK) from which the MoE forward plans its cuBLAS strategies, which read the routing's
 * offsets on the host (native/cuda/moe.cu: kCublasRowsPerExpert = 128 rows per expert, N >= 128·E): a captured step
 * must stay below, so buckets with bucket·topK >= 128·E run eagerly.
 */
export function moeHostReadRows(numExperts: number): number {
  return 128 * numExperts;
}

/** The largest bucket a model's decode steps may be captured at (0: none), at most the bucket of maxBatch. */
export function largestGraphBucket(numExperts: number, topK: number, maxBatch: number): number {
  const cap = graphBucket(Math.min(maxBatch, GRAPH_BUCKETS[GRAPH_BUCKETS.length - 1]!))!;
  return GRAPH_BUCKETS.filter((b) => b <= cap && b * topK < moeHostReadRows(numExperts)).reduce((a, b) => Math.max(a, b), 0);
}

/** The smallest power of two >= n, at least 16: a graph's block-table width for a step needing n blocks. */
export function blockTableWidth(n: number): number {
  let w = 16;
  while (w < n) w *= 2;
  return w;
}

/** The bucket of a decode step of B sequences, or null when B is past the largest. */
export function graphBucket(B: number): number | null {
  return GRAPH_BUCKETS.find((b) => b >= B) ?? null;
}

/** Whether a step is decode-only (one row per sequence, every row sampled in row order): what graphs replay. */
export function isDecodeStep(s: StepInput): boolean {
  const B = s.contextLens.length;
  if (s.tokens.length !== B || s.sampleRows.length !== B) return false;
  for (let b = 0; b < B; b++) if (s.sampleRows[b] !== b || s.queryStarts[b] !== b) return false;
  return s.queryStarts[B] === B;
}

const pad4 = (n: number): number => Math.ceil(n / 4) * 4; // 16-byte segments

/** Segment offsets (elements) of one graph's static i32 and f32 buffers. */
interface Layout {
  bucket: number;
  width: number;
  spaces: number;
  ids: number;
  positions: number;
  slots: number[];
  tables: number[];
  contextLens: number;
  queryStarts: number;
  topK: number;
  seeds: number;
  counters: number;
  i32Len: number;
  temperature: number;
  topP: number;
  f32Len: number;
}

function layout(bucket: number, width: number, spaces: number): Layout {
  let o = 0;
  const take = (n: number): number => {
    const at = o;
    o += pad4(n);
    return at;
  };
  const ids = take(bucket);
  const positions = take(bucket);
  const slots = Array.from({ length: spaces }, () => take(bucket));
  const tables = Array.from({ length: spaces }, () => take(bucket * width));
  const contextLens = take(bucket);
  const queryStarts = take(bucket + 1);
  const topK = take(bucket);
  const seeds = take(bucket);
  const counters = take(bucket);
  const i32Len = o;
  o = 0;
  const temperature = take(bucket);
  const topP = take(bucket);
  return { bucket, width, spaces, ids, positions, slots, tables, contextLens, queryStarts, topK, seeds, counters, i32Len, temperature, topP, f32Len: o };
}

/** One captured decode shape: static inputs, staging, the graph and its outputs. */
export class DecodeGraph {
  readonly i32: Tensor;
  readonly f32: Tensor;
  /**
   * Pinned staging (CUDA), two pairs used in turn (launch slot 0 / 1): with the engine running a step ahead, the
   * next step is filled while the previous step's upload may still wait on the stream.
   */
  private readonly stage: { i32: Tensor; f32: Tensor }[];
  /** Pinned copies of the sampled tokens and log-probs (CUDA), one pair per launch slot, read after its event. */
  readonly readback: { tokens: Tensor; logprobs: Tensor }[];
  readonly hostI32: Int32Array;
  readonly hostF32: Float32Array;
  readonly inputs: StepTensors;
  /** Graph id (CUDA) once captured; 0 on the CPU. */
  graph = 0;
  /** The captured step's outputs (CUDA: written by every replay). */
  out: { tokens: Tensor; logprobs: Tensor } | null = null;
  private readonly views: Tensor[] = [];

  constructor(
    readonly L: Layout,
    readonly device: string,
  ) {
    const cpu = device === 'cpu';
    this.i32 = Tensor.zeros([L.i32Len], { dtype: 'i32', device });
    this.f32 = Tensor.zeros([L.f32Len], { dtype: 'f32', device });
    const pinned = { device: 'cpu', pinned: true } as const;
    this.stage = cpu ? [] : [0, 1].map(() => ({ i32: Tensor.zeros([L.i32Len], { dtype: 'i32', ...pinned }), f32: Tensor.zeros([L.f32Len], { dtype: 'f32', ...pinned }) }));
    this.readback = cpu ? [] : [0, 1].map(() => ({ tokens: Tensor.zeros([L.bucket], { dtype: 'i32', ...pinned }), logprobs: Tensor.zeros([L.bucket], { dtype: 'f32', ...pinned }) }));
    this.hostI32 = new Int32Array(L.i32Len);
    this.hostF32 = new Float32Array(L.f32Len);
    const B = L.bucket;
    const seg = (t: Tensor, at: number, shape: number[]): Tensor => {
      const n = shape.reduce((a, b) => a * b, 1);
      const s = t.slice(at, at + n);
      const v = s.view(shape);
      s.dispose();
      this.views.push(v);
      return v;
    };
    this.inputs = {
      ids: seg(this.i32, L.ids, [B]),
      positions: seg(this.i32, L.positions, [B]),
      meta: {
        slots: L.slots.map((at) => seg(this.i32, at, [B])),
        blockTables: L.tables.map((at) => seg(this.i32, at, [B, L.width])),
        contextLens: seg(this.i32, L.contextLens, [B]),
        queryStarts: seg(this.i32, L.queryStarts, [B + 1]),
      },
      sampleIdx: null,
      params: {
        temperature: seg(this.f32, L.temperature, [B]),
        topP: seg(this.f32, L.topP, [B]),
        topK: seg(this.i32, L.topK, [B]),
        seeds: seg(this.i32, L.seeds, [B]),
        counters: seg(this.i32, L.counters, [B]),
      },
    };
  }

  /** Lays out step s (B <= bucket sequences, decode-only) with padding rows, and enqueues its upload (staging `slot`). */
  fill(s: StepInput, slot: number): void {
    const L = this.L;
    const h = this.hostI32;
    const f = this.hostF32;
    const B = s.contextLens.length;
    const P = L.bucket;
    h.set(s.tokens, L.ids);
    h.fill(0, L.ids + B, L.ids + P);
    h.set(s.positions, L.positions);
    h.fill(0, L.positions + B, L.positions + P);
    for (let i = 0; i < L.spaces; i++) {
      h.set(s.slots[i]!, L.slots[i]!);
      h.fill(-1, L.slots[i]! + B, L.slots[i]! + P); // padding rows write no KV
      const t = s.blockTables[i]!;
      const w = s.maxBlocksPerSeq;
      // Rows of the step at stride L.width; entries past what a sequence reads are never read (stale ones stay).
      for (let b = 0; b < B; b++) h.set(t.subarray(b * w, (b + 1) * w), L.tables[i]! + b * L.width);
      for (let b = B; b < P; b++) h[L.tables[i]! + b * L.width] = 0; // padding rows read block 0 only
    }
    h.set(s.contextLens, L.contextLens);
    h.fill(1, L.contextLens + B, L.contextLens + P);
    for (let b = 0; b <= P; b++) h[L.queryStarts + b] = b;
    h.set(s.topK, L.topK);
    h.fill(0, L.topK + B, L.topK + P);
    h.set(s.seeds, L.seeds);
    h.fill(0, L.seeds + B, L.seeds + P);
    h.set(s.counters, L.counters);
    h.fill(0, L.counters + B, L.counters + P);
    f.set(s.temperature, L.temperature);
    f.fill(0, L.temperature + B, L.temperature + P); // greedy
    f.set(s.topP, L.topP);
    f.fill(1, L.topP + B, L.topP + P);
    const st = this.stage[slot];
    if (st) {
      // Pinned staging -> static buffers, asynchronously on the compute stream (ordered before the replay).
      st.i32.copyFrom(h);
      st.f32.copyFrom(f);
      this.i32.copyFromAsync(st.i32);
      this.f32.copyFromAsync(st.f32);
    } else {
      this.i32.copyFrom(h);
      this.f32.copyFrom(f);
    }
  }

  dispose(): void {
    if (this.graph) native().ops.graphDestroy(this.graph);
    this.graph = 0;
    if (this.out) disposeAll(this.out.tokens, this.out.logprobs);
    this.out = null;
    disposeAll(...this.views, this.i32, this.f32, ...this.stage.flatMap((x) => [x.i32, x.f32]), ...this.readback.flatMap((x) => [x.tokens, x.logprobs]));
  }
}

/** Counters of a DecodeGraphs (tests and benches). */
export interface DecodeGraphStats {
  /** Graphs captured since creation (a reset's recaptures count again). */
  captures: number;
  /** Decode steps replayed from a graph (on the CPU: run over the static buffers). */
  replays: number;
  /** Steps that ran eagerly (prefill or mixed steps, batches past the largest bucket). */
  eager: number;
  /** Graphs held now. */
  graphs: number;
  /** Nodes (kernels, copies, memsets) of each held graph by key "bucket x width" (CUDA; 0 on the CPU). */
  nodes: Record<string, number>;
  /**
   * Replays' GPU time, summed (CUDA: events around each graph launch; 0 on the CPU), and the host time of the calls
   * that replayed (filling the inputs, the launch, waiting for and reading the sampled tokens): per replay, their
   * difference is host work the GPU waits for, and the engine's step time beyond the call is the scheduler's.
   */
  replayGpuMs: number;
  replayCallMs: number;
  /** The replays those two sums cover (CUDA: every replay but the capturing ones). */
  timedReplays: number;
}

/** A decode step launched from a graph, its outputs not read yet (DecodeGraphs.launch / wait). */
export class LaunchedDecode {
  constructor(
    readonly graph: DecodeGraph,
    /** The step's sequences (rows before the bucket's padding). */
    readonly rows: number,
    /** The launch slot: which staging, readback copies and events it used. */
    readonly slot: number,
    /** It captured its graph (its time is not a replay's). */
    readonly fresh: boolean,
    /** CPU: the step's outputs, computed at launch. */
    public cpuOut: { tokens: Tensor; logprobs: Tensor } | null,
    /** Host time the launch took. */
    readonly launchMs: number,
  ) {}
}

/** The CUDA graphs of one LocalModelRunner's decode steps (see the file comment). */
export class DecodeGraphs {
  private readonly graphs = new Map<string, DecodeGraph>();
  private pool = 0;
  private readonly counts = { captures: 0, replays: 0, eager: 0, replayGpuMs: 0, replayCallMs: 0, timedReplays: 0 };
  private readonly cpu: boolean;
  /** Per launch slot (CUDA): timing events around the replay and the event after its outputs' copy to the host. */
  private readonly marks: { start: NativeEvent; end: NativeEvent; done: NativeEvent }[];
  /** Launches so far: launch n uses slot n % 2 (staging, readback, events), so two steps can be in flight. */
  private launches = 0;
  /** The largest bucket captured (largestGraphBucket); larger decode steps run eagerly. */
  readonly maxBucket: number;
  /** The batch-invariant mode the graphs were captured in (their kernels are that mode's: setBatchInvariant). */
  private invariant = false;

  constructor(
    private readonly runner: LocalModelRunner,
    private readonly spaces: number,
    /** Largest decode batch the engine runs (maxNumSeqs): buckets above its bucket are never captured. */
    maxBatch: number,
  ) {
    this.cpu = runner.device === 'cpu';
    const dev = deviceIndex(runner.device);
    const ev = (timing: boolean) => native().ops.eventCreate(dev, timing);
    this.marks = this.cpu ? [] : [0, 1].map(() => ({ start: ev(true), end: ev(true), done: ev(false) }));
    const c = runner.config;
    this.maxBucket = largestGraphBucket(c.numExperts, c.topK, maxBatch);
  }

  /** Runs a decode-only step from a graph; null when the step is not one graphs take (the caller runs it eagerly). */
  run(s: StepInput): StepOutput | null {
    const launched = this.launch(s, null);
    if (!launched) {
      this.counts.eager++;
      return null;
    }
    return this.wait(launched);
  }

  /**
   * Launches a decode-only step from its graph without waiting for it (null: not a step graphs take). The sampled
   * tokens and log-probs are copied to pinned host memory behind the replay, before any later launch can overwrite
   * the graph's outputs; wait() reads them. `feed`: the step launched just before, with the same rows, whose sampled
   * tokens are this step's input tokens (the engine running a step ahead: s.tokens are placeholders then); they are
   * copied on the device, after this step's upload and before its replay.
   */
  launch(s: StepInput, feed: LaunchedDecode | null): LaunchedDecode | null {
    const t0 = performance.now();
    const B = s.contextLens.length;
    const bucket = isDecodeStep(s) ? graphBucket(B) : null;
    if (bucket === null || bucket > this.maxBucket) return null;
    if (feed && (feed.rows !== B || feed.graph.L.bucket !== bucket)) {
      throw new Error(`DecodeGraphs.launch: a step fed by the previous one keeps its rows (${B} rows after ${feed.rows})`);
    }
    const invariant = batchInvariant();
    if (invariant !== this.invariant) {
      // Graphs replay the kernels they captured: a mode switch recaptures (between steps; not under a step in flight).
      if (feed) throw new Error('DecodeGraphs.launch: setBatchInvariant changed while a decode step was in flight');
      this.reset();
      this.invariant = invariant;
    }
    const width = blockTableWidth(s.maxBlocksPerSeq);
    const key = `${bucket}x${width}`;
    let g = this.graphs.get(key);
    const fresh = !g;
    if (!g) {
      g = new DecodeGraph(layout(bucket, width, this.spaces), this.runner.device);
      this.graphs.set(key, g);
    }
    const slot = this.launches++ % 2;
    g.fill(s, slot);
    let cpuOut: { tokens: Tensor; logprobs: Tensor } | null = null;
    if (this.cpu) {
      if (feed) g.inputs.ids.copyFrom(feed.cpuOut!.tokens);
      cpuOut = this.runner.deviceStep(g.inputs);
    } else {
      if (feed) g.inputs.ids.copyFromAsync(feed.graph.out!.tokens); // device to device, in stream order
      if (fresh) this.capture(g, key);
      const dev = deviceIndex(this.runner.device);
      const m = this.marks[slot]!;
      native().ops.eventRecord(m.start, dev);
      native().ops.graphLaunch(g.graph, dev);
      native().ops.eventRecord(m.end, dev);
      const rb = g.readback[slot]!;
      rb.tokens.copyFromAsync(g.out!.tokens);
      rb.logprobs.copyFromAsync(g.out!.logprobs);
      native().ops.eventRecord(m.done, dev);
    }
    this.counts.replays++;
    return new LaunchedDecode(g, B, slot, fresh, cpuOut, performance.now() - t0);
  }

  /** Waits for a launched step's outputs (its copy to the host only, not later launches) and reads them. */
  wait(p: LaunchedDecode): StepOutput {
    const t0 = performance.now();
    let tokens: Int32Array, logprobs: Float32Array;
    if (p.cpuOut) {
      tokens = p.cpuOut.tokens.toInt32().slice(0, p.rows);
      logprobs = p.cpuOut.logprobs.toFloat32().slice(0, p.rows);
      disposeAll(p.cpuOut.tokens, p.cpuOut.logprobs);
      p.cpuOut = null;
    } else {
      const m = this.marks[p.slot]!;
      native().ops.eventSynchronize(m.done);
      const rb = p.graph.readback[p.slot]!;
      tokens = rb.tokens.toInt32().slice(0, p.rows);
      logprobs = rb.logprobs.toFloat32().slice(0, p.rows);
      if (!p.fresh) {
        // The replay's end event is complete (the copy after it is). A capturing launch is left out: its eager
        // warm-up and capture are not a replay's cost.
        this.counts.replayGpuMs += native().ops.eventElapsedMs(m.start, m.end);
        this.counts.replayCallMs += p.launchMs + performance.now() - t0;
        this.counts.timedReplays++;
      }
    }
    return { tokens, logprobs };
  }

  /** Warm-up run over the static inputs, then the capture of deviceStep into g (its outputs stay g's). */
  private capture(g: DecodeGraph, key: string): void {
    const dev = deviceIndex(this.runner.device);
    const warm = this.runner.deviceStep(g.inputs);
    disposeAll(warm.tokens, warm.logprobs);
    synchronize(this.runner.device);
    if (!this.pool) this.pool = native().ops.graphPoolCreate(dev);
    native().ops.captureBegin(dev, this.pool);
    try {
      g.out = this.runner.deviceStep(g.inputs);
    } catch (e) {
      native().ops.captureAbort(dev);
      this.graphs.delete(key);
      g.dispose();
      throw new Error(`CUDA graph capture of the decode step (bucket ${g.L.bucket}, block-table width ${g.L.width}) failed: ${(e as Error).message}`);
    }
    try {
      g.graph = native().ops.captureEnd(dev);
    } catch (e) {
      this.graphs.delete(key);
      g.dispose();
      throw e;
    }
    this.counts.captures++;
  }

  stats(): DecodeGraphStats {
    const nodes: Record<string, number> = {};
    for (const [k, g] of this.graphs) nodes[k] = g.graph ? native().ops.graphNodeCount(g.graph) : 0;
    return { ...this.counts, graphs: this.graphs.size, nodes };
  }

  /**
   * Destroys every graph (the weights or KV pools move: sleep, wake) and releases the private pool to the ordinary
   * cache, so a sleep gives its memory back and the engine's pool sizing at wake sees it free; the next decode
   * steps capture again into a new pool.
   */
  reset(): void {
    if (!this.cpu && this.graphs.size) synchronize(this.runner.device);
    for (const g of this.graphs.values()) g.dispose();
    this.graphs.clear();
    if (this.pool) native().ops.graphPoolRelease(deviceIndex(this.runner.device), this.pool);
    this.pool = 0;
  }

  dispose(): void {
    this.reset();
  }
}
