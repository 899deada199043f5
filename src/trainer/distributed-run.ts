// distributed-run.ts: one training run over N processes, in one of two placements:
//   colocated (trainer.placement.colocate_all=true)  every rank holds a ShardedPolicy shard (sharded-policy.ts) and
//       its part of the inference engines: E engines of tp T, E x T = N, engine e on ranks e*T .. e*T+T-1;
//   not colocated (false)  trainer ranks 0..P-1 hold the shards (over their own sub-group), the E engines run on
//       ranks P.. after them (engine e on P+e*T ..), and the weight sync is a bucketed broadcast from trainer rank 0
//       to the engine ranks (BucketSender / receiveBuckets over the sub-group {0, engine ranks}).
// An engine's part on its ranks:
//   T = 1   each rank a whole engine over its own bf16 model (engine e = rank e), read from the model's source
//   T > 1   each rank a TensorParallelModel slice (tensor-parallel.ts; only the slice is read) over its engine's sub-group of the process
//           group (its own collectives and command channel: Collectives.subGroup / GroupChannel.subGroup, so the E
//           engines step independently); the engine's first rank runs the Engine over a TensorParallelModelRunner,
//           the others serve its steps (tensor-parallel-runner.ts). E = 1 uses the whole group.
// Rank 0 runs the GRPO loop (grpo.ts, run.ts) unchanged, over two stand-ins:
//   DriverPolicy (a Policy)     every call becomes a command that rank 0 broadcasts to all ranks and then runs on
//                               its own shard; the other trainer ranks run the same command from serve() (engine-only
//                               ranks skip it). Batches go out whole; each trainer rank takes its share
//                               (shardSequences, by tokens) and the log-probs come back with one all-gather over the
//                               trainer ranks, so rank 0 sees the whole micro-batch's output as before. With the
//                               fused LM-head backward the forward also carries the loss inputs (LossGradientFn.source);
//                               each rank rebuilds the loss gradient for its rows (lossRows) and the backward takes none.
//   PoolGenerator (a Generator) rank 0 numbers the requests as the one-engine generator does (requestsFor: the
//                               seeds follow the request index), gives engine e a contiguous block of them, every
//                               engine generates its block, the completions are all-gathered back in request order.
// Weight sync (updateWeights): unit by unit, the bf16 weights are all-gathered (as the forward does) and, colocated,
// each rank copies what its engine needs (every parameter for tp 1, its TP slice for tp T) into its engine's model
// (ShardedPolicy.syncWeights): at most one unit beyond the shards; not colocated, rank 0 broadcasts them in buckets.
// Per-step resources (the 'resources' command): every rank's device peak and its engine's preemptions.
// Hangs: each command sets the rank's phase (DistContext.setPhase), which the hub's and NCCL watchdog's timeout
// messages (trainer.nccl_timeout_s) name.
//
// Commands travel as MessagePack over the group's host channel (GroupChannel.broadcastObject from rank 0: token
// batches and f32 rows as raw typed-array bytes; log-prob rows and completions come back the same way) and run one at a time
// in the order rank 0 issued them, so every rank meets the same collectives in the same order; the synchronous
// Policy methods (zeroGrad, optimizerStep, release) are queued without waiting. A rank that dies breaks the group:
// rank 0's pending command fails naming the phase and that rank, and the launcher ends the job.
import type { Config } from '../config/schema.ts';
import { ConfigError, engineLayoutProblems, processCount, trainingWorldSize } from '../config/load.ts';
import { initDistributed, type DistContext } from '../distributed/launch.ts';
import { NcclCollectives, type Collectives } from '../distributed/collectives.ts';
import type { GroupChannel } from '../distributed/tcp-group.ts';
import { childLogger } from '../log/logger.ts';
import { completionsOf, engineOptionsFromConfig, LocalGenerator, requestsFor } from '../inference/local-generator.ts';
import { Engine, type EngineOptions, type GenerateRequest, type GenerateResponse } from '../inference/engine.ts';
import { serveTensorParallelRank, storeSlice, TensorParallelModelRunner } from '../inference/tensor-parallel-runner.ts';
import { TensorParallelModel } from '../model/tensor-parallel.ts';
import { GptOssModel } from '../model/index.ts';
import { weightsFromSource } from '../model/param-source.ts';
import { openRunSource, trainingModelOptions, type RunPieces } from './setup.ts';
import { ShardedPolicy, shardSequences } from './sharded-policy.ts';
import type {
  Completion,
  GradClipResult,
  Generator,
  LogprobModel,
  LogprobOptions,
  LogprobOutput,
  OptimizerHyper,
  Policy,
  SamplingParams,
  ResourceSample,
  SequenceBatch,
  TokenLossSource,
  TrainForward,
  TrainForwardOptions,
} from './policy.ts';
import { lossRows, policyTokenGradient } from '../rl/loss.ts';
import { memoryStats, resetPeakMemory, setBatchInvariant, Tensor } from '../tensor.ts';

const log = childLogger('dist');

/** The process and engine layout of a run, as the metrics rows record it. */
export interface EngineLayout {
  /** Processes: the trainer ranks, plus the engines' own when not colocated. */
  worldSize: number;
  /** Trainer ranks (0 .. trainerRanks-1). */
  trainerRanks: number;
  numEngines: number;
  tensorParallelSize: number;
  /** true: every rank holds a trainer shard and its engine slice; false: engines on ranks trainerRanks.. (after). */
  colocated: boolean;
}

export function engineLayoutOf(c: Config): EngineLayout {
  return {
    worldSize: processCount(c),
    trainerRanks: trainingWorldSize(c),
    numEngines: c.generator.num_inference_engines,
    tensorParallelSize: c.generator.inference_engine_tensor_parallel_size,
    colocated: c.trainer.placement.colocate_all,
  };
}

/** bf16 bytes per weight-sync broadcast when engines are not colocated (a parameter larger travels alone). */
export const SYNC_BUCKET_BYTES = 256 * 2 ** 20;

/**
 * Throws a ConfigError when a run over several processes cannot be what the config asks (before any start): the
 * engine layout against the processes or the model's heads, or a separate reference model (the KL reference is the
 * policy's frozen sharded copy; a trainer.ref.model.path would be loaded and then not used).
 */
export function assertEngineLayout(c: Config, model?: { numHeads: number; numKvHeads: number }): void {
  const bad = engineLayoutProblems(c, model);
  if (processCount(c) > 1 && c.trainer.ref.model.path && c.trainer.algorithm.use_kl_loss) {
    bad.push(`trainer.ref.model.path=${c.trainer.ref.model.path}: a separate reference model is not supported over several processes yet (the KL reference is the initial policy's frozen sharded copy; unset it)`);
  }
  if (bad.length) throw new ConfigError(`the engine layout does not fit:\n${bad.map((b) => `  - ${b}`).join('\n')}`);
}

// ---- commands ------------------------------------------------------------------------------------------------------
// Commands travel as MessagePack (packValue): token sequences as Int32Array and f32 rows as Float32Array, i.e. as
// their raw bytes (exact, NaN-safe), the rest compactly.
type WireBatch = { sequences: Int32Array[]; promptLens: number[] };
type Command =
  // loss: the fused LM-head backward's loss inputs (LossGradientFn.source); each rank takes its sequences' rows.
  | { op: 'forward'; id: number; batch: WireBatch; opts: LogprobOptions; loss?: TokenLossSource }
  // d absent: after a forward with loss (the LM head's backward ran in it).
  | { op: 'backward'; id: number; d?: Float32Array[] }
  | { op: 'release'; id: number }
  | { op: 'logprobs'; model: number; batch: WireBatch; opts: LogprobOptions }
  | { op: 'zeroGrad' }
  | { op: 'clip'; maxNorm: number }
  | { op: 'optimizerStep'; h: OptimizerHyper; step: number }
  | { op: 'resetOptimizer' }
  | { op: 'frozenCopy'; id: number }
  | { op: 'disposeFrozen'; id: number }
  | { op: 'save'; dir: string }
  | { op: 'load'; dir: string }
  | { op: 'generate'; requests: GenerateRequest[] }
  | { op: 'syncWeights' }
  | { op: 'resources' }
  | { op: 'exit' };

/** What a command gives back on rank 0 (the other ranks discard it). */
type Reply = LogprobOutput | GradClipResult | Completion[] | ResourceSample | undefined;

function toWire(b: SequenceBatch): WireBatch {
  return { sequences: b.sequences, promptLens: Array.from(b.promptLens) };
}

/** Which sequences of a batch each rank computes: balanced by tokens (shardSequences), every rank in every call. */
function splitOf(b: WireBatch, worldSize: number): number[][] {
  return shardSequences(b.sequences.map((s) => s.length), worldSize);
}

function subBatch(b: WireBatch, idx: readonly number[]): SequenceBatch {
  return { sequences: idx.map((i) => b.sequences[i]!), promptLens: idx.map((i) => b.promptLens[i]!) };
}

/** Every trainer rank's per-sequence f32 rows back in batch order (one all-gather over the trainer ranks, binary). */
async function gatherRows(group: GroupChannel, split: number[][], rows: Float32Array[] | undefined, n: number): Promise<Float32Array[] | undefined> {
  const all = await group.allGatherObject<Float32Array[] | null>(rows ?? null);
  if (!rows) return undefined;
  const out: Float32Array[] = new Array(n);
  split.forEach((idx, r) => idx.forEach((i, k) => (out[i] = all[r]![k]!)));
  return out;
}

/** A response's samples as they travel: tokens Int32Array, sampler log-probs Float32Array (what completionsOf keeps). */
type WireResponse = { samples: { tokens: Int32Array; logprobs: Float32Array; finishReason: GenerateResponse['samples'][number]['finishReason']; error?: string }[] };

function responseToWire(r: GenerateResponse): WireResponse {
  return { samples: r.samples.map((x) => ({ tokens: Int32Array.from(x.tokens), logprobs: Float32Array.from(x.logprobs), finishReason: x.finishReason, ...(x.error !== undefined ? { error: x.error } : {}) })) };
}

/** A trainer rank's part: its ShardedPolicy shard over the trainer ranks, and their host channel. */
interface TrainerPart {
  policy: ShardedPolicy;
  /** The trainer ranks' channel (the group when colocated; ranks 0..P-1 otherwise): log-prob rows travel on it. */
  group: GroupChannel;
  /** Set when `group` and the policy's collectives are a sub-group this run created (closed before the group). */
  own: Collectives | null;
}

/** The weight broadcast from trainer rank 0 to engines on their own ranks (not colocated): rank 0 + every engine rank. */
interface SyncPart {
  collectives: Collectives;
  channel: GroupChannel;
  /** bf16 elements per bucket (the unit of one broadcast). */
  bucketElems: number;
}

/** The engine part on this rank: the whole model (tp 1; `engine` runs on it) or its slice of a tp=T engine. */
type EnginePart = { kind: 'whole'; model: GptOssModel; engine: LocalGenerator } | SliceEngine;

/** One rank's side of the run: its trainer shard and/or engine part, the forwards and frozen copies still open. */
class RankWorker {
  /** Sequences this rank's engine preempted (KV pool full) since the last resources sample. */
  preemptions = 0;
  private readonly forwards = new Map<number, { fwd: TrainForward; idx: number[] }>();
  private readonly frozen = new Map<number, LogprobModel>();

  constructor(
    readonly dist: DistContext,
    /** Null on an engine-only rank (not colocated). */
    readonly trainer: TrainerPart | null,
    /** Null on a trainer-only rank (not colocated). */
    readonly engineModel: EnginePart | null,
    /** Null when colocated (the sync is in-process) and on trainer ranks > 0. */
    readonly sync: SyncPart | null,
    readonly layout: EngineLayout,
  ) {}

  /** Labels this rank's work for the hang messages (the hub's, and the NCCL watchdog's of every communicator). */
  setPhase(phase: string): void {
    this.dist.setPhase(phase);
    for (const c of [this.trainer?.own, this.engineModel?.kind === 'slice' && this.engineModel.own ? this.engineModel.collectives : null, this.sync?.collectives]) {
      if (c instanceof NcclCollectives) c.setPhase(phase);
    }
  }

  private part(what: string): TrainerPart {
    if (!this.trainer) throw new Error(`rank ${this.dist.rank}: ${what} reached an engine-only rank`);
    return this.trainer;
  }

  /** Runs one command on this rank (collective where the command is). Engine-only ranks skip the trainer's. */
  async run(c: Command): Promise<Reply> {
    this.setPhase(PHASE[c.op]);
    if (!this.trainer && TRAINER_ONLY.has(c.op)) return undefined;
    switch (c.op) {
      case 'forward': {
        const t = this.part('forward');
        const split = splitOf(c.batch, t.group.worldSize);
        const idx = split[t.group.rank]!;
        // The fused LM-head backward: this rank's rows of the loss inputs, with the micro-batch's normalisers.
        const lossGradient = c.loss ? policyTokenGradient(lossRows(c.loss.input, idx), c.loss.opts) : undefined;
        const fwd = await t.policy.forward(subBatch(c.batch, idx), { ...c.opts, lossGradient });
        this.forwards.set(c.id, { fwd, idx });
        const n = c.batch.sequences.length;
        const logprobs = (await gatherRows(t.group, split, fwd.logprobs, n))!;
        const entropy = await gatherRows(t.group, split, fwd.entropy, n);
        return { logprobs, entropy };
      }
      case 'backward': {
        const f = this.take(c.id, 'backward');
        const d = c.d;
        await (d ? f.fwd.backward(f.idx.map((i) => d[i]!)) : f.fwd.backward());
        return undefined;
      }
      case 'release':
        this.forwards.get(c.id)?.fwd.release();
        this.forwards.delete(c.id);
        return undefined;
      case 'logprobs': {
        const t = this.part('logprobs');
        const model = c.model === 0 ? t.policy : this.frozen.get(c.model);
        if (!model) throw new Error(`rank ${this.dist.rank}: logprobs of frozen copy ${c.model}, which this rank does not hold`);
        const split = splitOf(c.batch, t.group.worldSize);
        const out = await model.logprobs(subBatch(c.batch, split[t.group.rank]!), c.opts);
        const n = c.batch.sequences.length;
        return { logprobs: (await gatherRows(t.group, split, out.logprobs, n))!, entropy: await gatherRows(t.group, split, out.entropy, n) };
      }
      case 'zeroGrad':
        this.part('zeroGrad').policy.zeroGrad();
        return undefined;
      case 'clip':
        return await this.part('clip').policy.clipGradNorm(c.maxNorm);
      case 'optimizerStep':
        this.part('optimizerStep').policy.optimizerStep(c.h, c.step);
        return undefined;
      case 'resetOptimizer':
        this.part('resetOptimizer').policy.resetOptimizer();
        return undefined;
      case 'frozenCopy':
        this.frozen.set(c.id, await this.part('frozenCopy').policy.frozenCopy());
        return undefined;
      case 'disposeFrozen':
        this.frozen.get(c.id)?.dispose();
        this.frozen.delete(c.id);
        return undefined;
      case 'save':
        await this.part('save').policy.save(c.dir);
        return undefined;
      case 'load':
        await this.part('load').policy.load(c.dir);
        return undefined;
      case 'generate':
        return await this.generate(c.requests);
      case 'syncWeights':
        await this.syncWeights();
        return undefined;
      case 'resources': {
        // This rank's device peak since the last sample (then reset) and its engine's preemptions since then.
        const peak = memoryStats(this.dist.device).peakAllocated;
        resetPeakMemory(this.dist.device);
        const mine = { peak, preemptions: this.preemptions };
        this.preemptions = 0;
        const all = await this.dist.group.allGatherObject(mine);
        return { peakBytes: all.map((x) => x.peak), preemptions: all.reduce((a, x) => a + x.preemptions, 0) };
      }
      case 'exit':
        return undefined;
    }
  }

  /**
   * Engine e runs block e of the requests (engineBlocks); the responses are all-gathered over the group in rank
   * order, which is engine order (an engine's serving ranks and trainer-only ranks contribute nothing).
   */
  private async generate(requests: GenerateRequest[]): Promise<Completion[]> {
    const em = this.engineModel;
    let mine: GenerateResponse[] = [];
    if (em?.kind === 'slice') {
      // One engine over its sub-group: its first rank schedules and samples, the others run its steps on their
      // slices. The engine lives for this call (its KV pool too); its dispose() releases the serving ranks.
      if (em.channel.rank !== 0) {
        await serveTensorParallelRank(em.model, em.channel, em.collectives);
      } else {
        const [lo, hi] = engineBlocks(requests.length, this.layout.numEngines)[em.engine]!;
        const engine = new Engine(new TensorParallelModelRunner(em.model, em.channel, em.collectives), { ...em.options, device: em.model.device, tensorParallelSize: this.layout.tensorParallelSize });
        try {
          if (hi > lo) mine = await engine.generate(requests.slice(lo, hi));
          this.preemptions += engine.stats().preemptions;
        } finally {
          engine.dispose();
        }
      }
      // One engine over every rank (colocated): rank 0 has every response already.
      if (this.layout.numEngines === 1 && this.layout.colocated) return this.dist.rank === 0 ? completionsOf(mine) : [];
    } else if (em) {
      const [lo, hi] = engineBlocks(requests.length, this.layout.numEngines)[engineOf(this.dist.rank, this.layout)]!;
      const before = em.engine.stats()?.preemptions ?? 0;
      mine = await em.engine.runRequests(requests.slice(lo, hi));
      this.preemptions += (em.engine.stats()?.preemptions ?? 0) - before;
    }
    const all = await this.dist.group.allGatherObject<WireResponse[]>(mine.map(responseToWire));
    return completionsOf(all.flat());
  }

  /**
   * Colocated: in process, every gathered parameter into this rank's engine model (tp 1) or its slice (tp T).
   * Not colocated: the trainer ranks gather unit by unit; rank 0 packs the bf16 parameters into buckets and
   * broadcasts each to the engine ranks (SyncPart), which copy them (or their slices) into their engine models.
   */
  private async syncWeights(): Promise<void> {
    const em = this.engineModel;
    if (this.layout.colocated) {
      const params = em!.model.weights.params;
      await this.trainer!.policy.syncWeights((name, full) => {
        if (em!.kind === 'slice') return storeSlice(em!.model, name, full);
        const dst = params.get(name);
        if (!dst) throw new Error(`weight sync: the engine model of rank ${this.dist.rank} has no parameter ${name}`);
        dst.copyFrom(full);
      });
      return;
    }
    if (this.trainer) {
      if (!this.sync) {
        await this.trainer.policy.syncWeights(() => {}); // trainer ranks > 0: their part of each unit's gather
        return;
      }
      const out = new BucketSender(this.sync, this.trainer.policy.device);
      try {
        await this.trainer.policy.syncWeights((name, full) => out.add(name, full));
        await out.finish();
      } finally {
        out.dispose();
      }
      return;
    }
    await receiveBuckets(this.sync!, em!, this.dist.rank);
  }

  private take(id: number, what: string): { fwd: TrainForward; idx: number[] } {
    const f = this.forwards.get(id);
    if (!f) throw new Error(`rank ${this.dist.rank}: ${what} of forward ${id}, which is not open`);
    this.forwards.delete(id);
    return f;
  }

  dispose(): void {
    for (const f of this.forwards.values()) f.fwd.release();
    for (const m of this.frozen.values()) m.dispose();
    if (this.engineModel?.kind === 'whole') this.engineModel.engine.dispose();
    this.engineModel?.model.dispose();
    this.trainer?.policy.dispose();
  }
}

/** Commands only trainer ranks run (an engine-only rank skips them; none has a collective over the whole group). */
const TRAINER_ONLY = new Set<Command['op']>(['forward', 'backward', 'release', 'logprobs', 'zeroGrad', 'clip', 'optimizerStep', 'resetOptimizer', 'frozenCopy', 'disposeFrozen', 'save', 'load']);

/** The engine a rank serves: colocated, rank / tp; not colocated, (rank - trainer ranks) / tp (-1 for a trainer rank). */
export function engineOf(rank: number, l: EngineLayout): number {
  const r = l.colocated ? rank : rank - l.trainerRanks;
  return r < 0 ? -1 : Math.floor(r / l.tensorParallelSize);
}

/**
 * Weight sync's header of one bucket: the parameters it holds in order, each [name, shape]; `done` ends the sync.
 * Travels on the sync channel before the bucket's tensor broadcast, so the engine ranks need no copy of the layout.
 */
type BucketHeader = { done: true } | { done?: false; params: [string, number[]][]; numel: number };

/** Trainer rank 0's side: packs gathered bf16 parameters into a bucket and broadcasts it when the next one does not fit. */
class BucketSender {
  private bucket: Tensor | null = null;
  private params: [string, number[]][] = [];
  private used = 0;

  constructor(
    private readonly sync: SyncPart,
    private readonly device: string,
  ) {}

  async add(name: string, full: Tensor): Promise<void> {
    const n = full.numel;
    if (this.used > 0 && this.used + n > this.sync.bucketElems) await this.flush();
    // A parameter larger than a bucket travels alone in a bucket of its size.
    const size = Math.max(this.sync.bucketElems, n);
    if (!this.bucket || this.bucket.numel < size) {
      this.bucket?.dispose();
      this.bucket = Tensor.empty([size], { dtype: 'bf16', device: this.device });
    }
    const dst = this.bucket.slice(this.used, this.used + n);
    dst.copyFrom(full);
    dst.dispose();
    this.params.push([name, full.shape]);
    this.used += n;
  }

  async finish(): Promise<void> {
    if (this.used > 0) await this.flush();
    await this.sync.channel.broadcastObject<BucketHeader>({ done: true }, 0);
  }

  private async flush(): Promise<void> {
    const header: BucketHeader = { params: this.params, numel: this.used };
    await this.sync.channel.broadcastObject(header, 0);
    const part = this.bucket!.slice(0, this.used);
    try {
      await this.sync.collectives.broadcast(part, 0);
      // NCCL enqueues the broadcast: the bucket is refilled only after it has gone out.
      await this.sync.collectives.synchronize();
    } finally {
      part.dispose();
    }
    this.params = [];
    this.used = 0;
  }

  dispose(): void {
    this.bucket?.dispose();
    this.bucket = null;
  }
}

/** An engine rank's side: receives every bucket and copies each parameter (or its TP slice) into its engine model. */
async function receiveBuckets(sync: SyncPart, em: EnginePart, rank: number): Promise<void> {
  const params = em.model.weights.params;
  for (;;) {
    const h = await sync.channel.broadcastObject<BucketHeader>(null, 0);
    if (h.done) return;
    const bucket = Tensor.empty([h.numel], { dtype: 'bf16', device: em.model.device });
    try {
      await sync.collectives.broadcast(bucket, 0);
      let off = 0;
      for (const [name, shape] of h.params) {
        const n = shape.reduce((a, b) => a * b, 1);
        const flat = bucket.slice(off, off + n);
        const full = flat.view(shape);
        flat.dispose();
        off += n;
        try {
          if (em.kind === 'slice') storeSlice(em.model, name, full);
          else {
            const dst = params.get(name);
            if (!dst) throw new Error(`weight sync: the engine model of rank ${rank} has no parameter ${name}`);
            dst.copyFrom(full);
          }
        } finally {
          full.dispose();
        }
      }
    } finally {
      bucket.dispose();
    }
  }
}

/** A tensor-parallel engine's part on this rank: its slice, and its engine's sub-group (or the group, E = 1). */
interface SliceEngine {
  kind: 'slice';
  model: TensorParallelModel;
  options: EngineOptions;
  /** Which engine this rank belongs to. */
  engine: number;
  collectives: Collectives;
  /** The engine's command channel (rank 0 of it runs the Engine). */
  channel: GroupChannel;
  /** True when collectives/channel are a sub-group this run created (closed before the group). */
  own: boolean;
}

/** The ranks of engine e: e*T .. e*T+T-1, after the trainer ranks when not colocated. */
export function engineRanks(engine: number, l: EngineLayout): number[] {
  const first = (l.colocated ? 0 : l.trainerRanks) + engine * l.tensorParallelSize;
  return Array.from({ length: l.tensorParallelSize }, (_, i) => first + i);
}

/** [lo, hi) request indices of each engine: contiguous blocks, the first `n % engines` one longer. */
export function engineBlocks(n: number, engines: number): [number, number][] {
  const base = Math.floor(n / engines);
  const extra = n % engines;
  const out: [number, number][] = [];
  let lo = 0;
  for (let e = 0; e < engines; e++) {
    const hi = lo + base + (e < extra ? 1 : 0);
    out.push([lo, hi]);
    lo = hi;
  }
  return out;
}

/** The GRPO phase each command belongs to (for the message when one fails). */
const PHASE: Record<Command['op'], string> = {
  forward: 'train',
  backward: 'train',
  release: 'train',
  zeroGrad: 'train',
  clip: 'train',
  optimizerStep: 'train',
  resetOptimizer: 'train',
  logprobs: 'log-probs',
  frozenCopy: 'reference copy',
  disposeFrozen: 'reference copy',
  save: 'checkpoint',
  load: 'checkpoint',
  generate: 'generate',
  syncWeights: 'weight sync',
  resources: 'metrics',
  exit: 'shutdown',
};

/**
 * Rank 0's channel: broadcasts a command, then runs it here too. Commands run one at a time in the order they were
 * issued (a queue): every rank must meet the same collectives in the same order, so two calls in flight at once
 * (e.g. concurrent generate() calls) must not interleave theirs.
 */
class Driver {
  /** The last queued command (settled: failures are reported to its caller). */
  private tail: Promise<unknown> = Promise.resolve();
  /** The first posted command that failed (every later command then fails with it). */
  private failure: Error | null = null;
  private nextId = 1;

  constructor(readonly worker: RankWorker) {}

  id(): number {
    return this.nextId++;
  }

  private enqueue<R extends Reply>(c: Command): Promise<R> {
    const run = async (): Promise<R> => {
      if (this.failure) throw this.failure;
      const sent = this.worker.dist.group.broadcastObject(c, 0);
      sent.catch(() => {}); // awaited just below, with the local run
      const [, r] = await Promise.all([sent, this.worker.run(c)]);
      this.worker.setPhase('the GRPO loop between commands');
      return r as R;
    };
    const p = this.tail.then(run);
    this.tail = p.catch(() => {});
    return p;
  }

  /** Runs a command on every rank; resolves with rank 0's result. A failure names the phase and the cause. */
  async call<R extends Reply>(c: Command): Promise<R> {
    try {
      return await this.enqueue<R>(c);
    } catch (e) {
      // Named by phase: a rank lost mid-run shows up here as "process group aborted: rank R ...".
      const err = new Error(`${PHASE[c.op]} phase (${c.op}) failed: ${(e as Error).message}`);
      err.stack = `Error: ${err.message}\n${(e as Error).stack?.split('\n').slice(1).join('\n') ?? ''}`;
      throw err;
    }
  }

  /** For the synchronous Policy methods (zeroGrad, optimizerStep, release): queued, not awaited. */
  post(c: Command): void {
    this.enqueue(c).catch((e: unknown) => {
      this.failure ??= e as Error;
    });
  }
}

/** Rank 0's Policy: the sharded policy of every rank, driven from the GRPO loop. */
export class DriverPolicy implements Policy {
  constructor(private readonly d: Driver) {}

  /** Each call's sequences are split over the trainer ranks (so the loops hand it P x the per-GPU micro-batch). */
  get dataParallelSize(): number {
    return this.d.worker.layout.trainerRanks;
  }

  get device(): string {
    return this.d.worker.trainer!.policy.device;
  }

  /**
   * forward() takes lossGradient (the fused LM-head backward) when it carries its loss inputs as data
   * (LossGradientFn.source, as policyTokenGradient makes it) with the mini-batch's normalisers: they go to every
   * trainer rank with the batch, and each rank rebuilds the function for its own sequences (lossRows).
   */
  readonly fusedLmHeadBackward = true;

  async forward(batch: SequenceBatch, opts: TrainForwardOptions = {}): Promise<TrainForward> {
    const { lossGradient, ...rest } = opts;
    const loss = lossGradient?.source;
    if (lossGradient) {
      if (!loss) throw new Error('DriverPolicy.forward: lossGradient must carry its loss inputs (LossGradientFn.source, as policyTokenGradient makes it): the ranks rebuild it from them');
      if (!loss.opts.norm) throw new Error('DriverPolicy.forward: lossGradient\'s loss options need norm (the mini-batch\'s counts): each rank computes only its share of the sequences');
      if (loss.input.oldLogprobs.length !== batch.sequences.length) {
        throw new Error(`DriverPolicy.forward: lossGradient has ${loss.input.oldLogprobs.length} loss rows for ${batch.sequences.length} sequences`);
      }
    }
    const fused = lossGradient !== undefined;
    const id = this.d.id();
    const out = await this.d.call<LogprobOutput>({ op: 'forward', id, batch: toWire(batch), opts: rest, loss });
    let consumed = false;
    return {
      logprobs: out.logprobs,
      entropy: out.entropy,
      backward: async (dl?: Float32Array[]) => {
        if (consumed) throw new Error('TrainForward.backward: already consumed');
        if (fused) {
          if (dl !== undefined) throw new Error('TrainForward.backward: this forward took lossGradient (the LM head backward ran in it): call backward() without dLogprobs');
          consumed = true;
          await this.d.call({ op: 'backward', id });
          return;
        }
        if (!dl) throw new Error('TrainForward.backward: dLogprobs missing (only a forward with lossGradient takes none)');
        if (dl.length !== batch.sequences.length) throw new Error(`backward: ${dl.length} gradient rows for ${batch.sequences.length} sequences`);
        consumed = true;
        await this.d.call({ op: 'backward', id, d: dl });
      },
      release: () => {
        if (consumed) return;
        consumed = true;
        this.d.post({ op: 'release', id });
      },
    };
  }

  logprobs(batch: SequenceBatch, opts: LogprobOptions = {}): Promise<LogprobOutput> {
    return this.d.call<LogprobOutput>({ op: 'logprobs', model: 0, batch: toWire(batch), opts });
  }

  zeroGrad(): void {
    this.d.post({ op: 'zeroGrad' });
  }

  clipGradNorm(maxNorm: number): Promise<GradClipResult> {
    return this.d.call<GradClipResult>({ op: 'clip', maxNorm });
  }

  optimizerStep(h: OptimizerHyper, step: number): void {
    this.d.post({ op: 'optimizerStep', h, step });
  }

  resetOptimizer(): void {
    this.d.post({ op: 'resetOptimizer' });
  }

  async frozenCopy(): Promise<LogprobModel> {
    const id = this.d.id();
    await this.d.call({ op: 'frozenCopy', id });
    const d = this.d;
    return {
      device: this.device,
      logprobs: (batch: SequenceBatch, opts: LogprobOptions = {}) => d.call<LogprobOutput>({ op: 'logprobs', model: id, batch: toWire(batch), opts }),
      dispose: () => d.post({ op: 'disposeFrozen', id }),
    };
  }

  async save(dir: string): Promise<void> {
    await this.d.call({ op: 'save', dir });
  }

  async load(dir: string): Promise<void> {
    await this.d.call({ op: 'load', dir });
  }

  numParameters(): number {
    return this.d.worker.trainer!.policy.numParameters();
  }

  dispose(): void {
    // The shards live until the run closes (DistributedRun.close).
  }
}

/** Rank 0's Generator: the pool of engines, one per rank (tp=1). */
export class PoolGenerator implements Generator {
  constructor(private readonly d: Driver) {}

  async generate(prompts: Int32Array[], p: SamplingParams, onProgress?: (doneTokens: number) => void): Promise<Completion[]> {
    const out = await this.d.call<Completion[]>({ op: 'generate', requests: requestsFor(prompts, p) });
    onProgress?.(out.reduce((a, c) => a + c.tokens.length, 0));
    return out;
  }

  async updateWeights(): Promise<void> {
    await this.d.call({ op: 'syncWeights' });
  }

  dispose(): void {}
}

export interface DistributedRun {
  dist: DistContext;
  layout: EngineLayout;
  /** Rank 0: the run's pieces with the driver policy and the engine pool (null on the other ranks). */
  pieces: RunPieces | null;
  /** This rank's trainer shard (null on an engine-only rank): e.g. where its optimizer state is between commands. */
  shard: ShardedPolicy | null;
  /** Ranks > 0: runs rank 0's commands until it closes the run. onCommand sees each (tests inject faults there). */
  serve(onCommand?: (op: Command['op'], index: number) => void): Promise<void>;
  /** Rank 0: ends the others' serve(); every rank: frees its shard and engine and leaves the group. */
  close(): Promise<void>;
}

/**
 * Joins the launcher's group and builds this rank's part from the model's source (every rank reads the same
 * checkpoint or seed): its ShardedPolicy shard (only its byte ranges), its engine part (a tp=1 engine's whole model,
 * or its TP slice), never a full model beside them. Collective.
 */
export async function setupDistributedRun(c: Config, opts: { syncBucketBytes?: number } = {}): Promise<DistributedRun> {
  const layout = engineLayoutOf(c);
  assertEngineLayout(c);
  setBatchInvariant(c.trainer.batch_invariant); // every rank: its trainer shard and its engine part alike
  const dist = await initDistributed({ backend: c.trainer.device === 'cpu' ? 'cpu' : 'auto', collectiveTimeoutMs: c.trainer.nccl_timeout_s * 1000 });
  if (dist.worldSize !== layout.worldSize) {
    await dist.destroy().catch(() => {});
    const engines = layout.colocated ? '' : ' + generator.num_inference_engines x inference_engine_tensor_parallel_size (trainer.placement.colocate_all=false)';
    throw new ConfigError(`the launcher started ${dist.worldSize} processes but the config asks for ${layout.worldSize} (trainer.placement.policy_num_nodes x policy_num_gpus_per_node${engines})`);
  }
  // Each rank trains and generates on its own device (the launcher's cuda:<local rank>, or cpu). No rank builds the
  // whole model beside what it keeps: its trainer shard and its engine part are read from the source (checkpoint
  // byte ranges, or the per-tensor seeded random weights) one tensor or slice at a time.
  const base = await openRunSource({ ...c, trainer: { ...c.trainer, device: dist.device } });
  const src = base.source;
  try {
    assertEngineLayout(c, base.config);
  } catch (e) {
    src.close();
    await dist.destroy().catch(() => {});
    throw e;
  }
  const rank = dist.rank;
  const P = layout.trainerRanks;
  const isTrainer = rank < P;
  const engine = engineOf(rank, layout);
  let trainer: TrainerPart | null = null;
  let sync: SyncPart | null = null;
  let engineModel: EnginePart | null = null;
  try {
    // Sub-groups are made in one order on every rank (trainer ranks, weight sync, engines): NCCL's initialisation of
    // each blocks until its members have joined.
    if (isTrainer) {
      const own = layout.colocated ? null : await dist.collectives.subGroup(Array.from({ length: P }, (_, i) => i));
      const policy = ShardedPolicy.fromSource(src, dist.device, own ?? dist.collectives, {
        ...trainingModelOptions(c),
        cpuOffload: c.trainer.policy.fsdp_config.cpu_offload,
        offloadAfterStep: c.trainer.policy.optimizer_config.offload_after_step,
        referenceOnHost: !c.trainer.placement.colocate_policy_ref,
      });
      trainer = { policy, group: own ? dist.group.subGroup(Array.from({ length: P }, (_, i) => i)) : dist.group, own };
    }
    // Not colocated: trainer rank 0 broadcasts the weights to every engine rank in buckets.
    if (!layout.colocated && (rank === 0 || !isTrainer)) {
      const members = [0, ...Array.from({ length: layout.worldSize - P }, (_, i) => P + i)];
      const bucketBytes = opts.syncBucketBytes ?? SYNC_BUCKET_BYTES;
      sync = { collectives: await dist.collectives.subGroup(members), channel: dist.group.subGroup(members), bucketElems: Math.max(1, Math.floor(bucketBytes / 2)) };
    }
    const options = engineOptionsFromConfig(c);
    // tp 1: the engine's whole model (its own weights, synced after every step); tp T: only this rank's TP slice.
    const tp = layout.tensorParallelSize;
    if (engine < 0) {
      // A trainer-only rank: no engine.
    } else if (tp === 1) {
      const model = new GptOssModel(weightsFromSource(src, dist.device), { deterministic: c.trainer.deterministic });
      engineModel = { kind: 'whole', model, engine: new LocalGenerator(model, options) };
    } else {
      // Engine e on its own ranks: a sub-group each (collectives, channel), unless one engine spans every rank.
      const own = !(layout.colocated && layout.numEngines === 1);
      const ranks = engineRanks(engine, layout);
      const collectives = own ? await dist.collectives.subGroup(ranks) : dist.collectives;
      const channel = own ? dist.group.subGroup(ranks) : dist.group;
      const model = TensorParallelModel.fromSource(src, collectives, { device: dist.device, deterministic: c.trainer.deterministic });
      engineModel = { kind: 'slice', model, options, engine, collectives, channel, own };
    }
  } finally {
    src.close();
  }
  const worker = new RankWorker(dist, trainer, engineModel, sync, layout);
  const driver = dist.rank === 0 ? new Driver(worker) : null;
  const role = layout.colocated ? 'trainer + engine' : isTrainer ? 'trainer' : 'engine';
  log.info({ rank: dist.rank, world: dist.worldSize, backend: dist.backend, role, engines: layout.numEngines, tp: layout.tensorParallelSize }, 'rank ready');
  let closed = false;
  return {
    dist,
    layout,
    shard: trainer?.policy ?? null,
    pieces: driver
      ? {
          device: base.device,
          env: base.env,
          vocab: base.vocab,
          config: base.config,
          model: engineModel?.kind === 'whole' ? engineModel.model : null,
          policy: new DriverPolicy(driver),
          generator: new PoolGenerator(driver),
          ref: undefined,
          resources: () => driver.call<ResourceSample>({ op: 'resources' }),
        }
      : null,
    async serve(onCommand) {
      if (dist.rank === 0) throw new Error('serve: rank 0 drives the run');
      for (let i = 0; ; i++) {
        const c = await dist.group.broadcastObject<Command>(null, 0);
        worker.setPhase(PHASE[c.op]);
        onCommand?.(c.op, i);
        if (c.op === 'exit') return;
        await worker.run(c);
        worker.setPhase("waiting for rank 0's next command");
      }
    },
    async close() {
      if (closed) return;
      closed = true;
      if (driver) await driver.call({ op: 'exit' });
      worker.dispose();
      if (engineModel?.kind === 'slice' && engineModel.own) await engineModel.collectives.destroy();
      if (sync) await sync.collectives.destroy();
      if (trainer?.own) await trainer.own.destroy();
      await dist.destroy();
    },
  };
}
