// distributed-run.ts: one training run over N processes, colocated (trainer.placement.colocate_all=true): every rank
// holds a ShardedPolicy shard (sharded-policy.ts) and its part of the inference engines: E engines of tp T, E x T = N,
// engine e on ranks e*T .. e*T+T-1:
//   T = 1   each rank a whole engine over its own full bf16 copy of the model (engine e = rank e)
//   T > 1   each rank a TensorParallelModel slice (tensor-parallel.ts) over its engine's sub-group of the process
//           group (its own collectives and command channel: Collectives.subGroup / GroupChannel.subGroup, so the E
//           engines step independently); the engine's first rank runs the Engine over a TensorParallelModelRunner,
//           the others serve its steps (tensor-parallel-runner.ts). E = 1 uses the whole group.
// Rank 0 runs the GRPO loop (grpo.ts, run.ts) unchanged, over two stand-ins:
//   DriverPolicy (a Policy)     every call becomes a command that rank 0 broadcasts to all ranks and then runs on
//                               its own shard; the other ranks run the same command from serve(). Batches go out
//                               whole; each rank takes its share (shardSequences, by tokens) and the log-probs come
//                               back with one all-gather, so rank 0 sees the whole micro-batch's output as before.
//   PoolGenerator (a Generator) rank 0 numbers the requests as the one-engine generator does (requestsFor: the
//                               seeds follow the request index), gives engine e a contiguous block of them, every
//                               engine generates its block, the completions are all-gathered back in request order.
// Weight sync (updateWeights): unit by unit, the bf16 weights are all-gathered (as the forward does) and each rank
// copies what its engine needs (every parameter for tp 1, its TP slice for tp N) into its engine's model
// (ShardedPolicy.syncWeights): at most one unit beyond the shards.
//
// Commands travel as JSON over the group's host channel (TcpGroup.broadcastBytes from rank 0) and run one at a time
// in the order rank 0 issued them, so every rank meets the same collectives in the same order; the synchronous
// Policy methods (zeroGrad, optimizerStep, release) are queued without waiting. A rank that dies breaks the group:
// rank 0's pending command fails naming the phase and that rank, and the launcher ends the job.
import type { Config } from '../config/schema.ts';
import { ConfigError, engineLayoutProblems, trainingWorldSize } from '../config/load.ts';
import { initDistributed, type DistContext } from '../distributed/launch.ts';
import { NcclCollectives, type Collectives } from '../distributed/collectives.ts';
import type { GroupChannel } from '../distributed/tcp-group.ts';
import { childLogger } from '../log/logger.ts';
import { completionsOf, engineOptionsFromConfig, LocalGenerator, requestsFor } from '../inference/local-generator.ts';
import { Engine, type EngineOptions, type GenerateRequest, type GenerateResponse } from '../inference/engine.ts';
import { serveTensorParallelRank, storeSlice, TensorParallelModelRunner } from '../inference/tensor-parallel-runner.ts';
import { TensorParallelModel } from '../model/tensor-parallel.ts';
import type { GptOssModel } from '../model/index.ts';
import { setupRun, type RunPieces } from './setup.ts';
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
  SequenceBatch,
  TrainForward,
} from './policy.ts';

const log = childLogger('dist');

/** The engine layout of a run, as the metrics rows record it. */
export interface EngineLayout {
  worldSize: number;
  numEngines: number;
  tensorParallelSize: number;
}

export function engineLayoutOf(c: Config): EngineLayout {
  return { worldSize: trainingWorldSize(c), numEngines: c.generator.num_inference_engines, tensorParallelSize: c.generator.inference_engine_tensor_parallel_size };
}

/**
 * Throws a ConfigError when a run over several processes cannot be what the config asks (before any start): the
 * engine layout against the processes or the model's heads, or a separate reference model (the KL reference is the
 * policy's frozen sharded copy; a trainer.ref.model.path would be loaded and then not used).
 */
export function assertEngineLayout(c: Config, model?: { numHeads: number; numKvHeads: number }): void {
  const bad = engineLayoutProblems(c, model);
  if (trainingWorldSize(c) > 1 && c.trainer.ref.model.path && c.trainer.algorithm.use_kl_loss) {
    bad.push(`trainer.ref.model.path=${c.trainer.ref.model.path}: a separate reference model is not supported over several processes yet (the KL reference is the initial policy's frozen sharded copy; unset it)`);
  }
  if (bad.length) throw new ConfigError(`the engine layout does not fit:\n${bad.map((b) => `  - ${b}`).join('\n')}`);
}

// ---- commands ------------------------------------------------------------------------------------------------------
type WireBatch = { sequences: number[][]; promptLens: number[] };
type Command =
  | { op: 'forward'; id: number; batch: WireBatch; opts: LogprobOptions }
  | { op: 'backward'; id: number; d: string[] }
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
  | { op: 'exit' };

/** What a command gives back on rank 0 (the other ranks discard it). */
type Reply = LogprobOutput | GradClipResult | Completion[] | undefined;

function toWire(b: SequenceBatch): WireBatch {
  return { sequences: b.sequences.map((s) => Array.from(s)), promptLens: Array.from(b.promptLens) };
}

/** Which sequences of a batch each rank computes: balanced by tokens (shardSequences), every rank in every call. */
function splitOf(b: WireBatch, worldSize: number): number[][] {
  return shardSequences(b.sequences.map((s) => s.length), worldSize);
}

function subBatch(b: WireBatch, idx: readonly number[]): SequenceBatch {
  return { sequences: idx.map((i) => Int32Array.from(b.sequences[i]!)), promptLens: idx.map((i) => b.promptLens[i]!) };
}

/** f32 rows travel as base64 of their bytes: exact, and NaN/Infinity survive (JSON numbers would turn them to null). */
function f32ToWire(a: Float32Array): string {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64');
}

function f32FromWire(s: string): Float32Array {
  const b = Buffer.from(s, 'base64');
  const out = new Float32Array(b.byteLength / 4);
  new Uint8Array(out.buffer).set(b);
  return out;
}

/** Every rank's per-sequence rows back in batch order (one all-gather). */
async function gatherRows(dist: DistContext, split: number[][], rows: Float32Array[] | undefined, n: number): Promise<Float32Array[] | undefined> {
  const all = await dist.group.allGatherObject(rows ? rows.map(f32ToWire) : null);
  if (!rows) return undefined;
  const out: Float32Array[] = new Array(n);
  split.forEach((idx, r) => idx.forEach((i, k) => (out[i] = f32FromWire(all[r]![k]!))));
  return out;
}

/** One rank's side of the run: its shard, its engine, the forwards and frozen copies still open. */
class RankWorker {
  /** Sequences this rank's engine preempted (KV pool full), over the run. */
  preemptions = 0;
  private readonly forwards = new Map<number, { fwd: TrainForward; idx: number[] }>();
  private readonly frozen = new Map<number, LogprobModel>();

  constructor(
    readonly dist: DistContext,
    readonly policy: ShardedPolicy,
    /** The engine's weights: the whole model (tp 1; `engine` runs on it) or this rank's slice (tp T). */
    readonly engineModel: { kind: 'whole'; model: GptOssModel; engine: LocalGenerator } | SliceEngine,
    readonly layout: EngineLayout,
  ) {}

  /** Labels this rank's work for the hang messages (the hub's, and the NCCL watchdog's of every communicator). */
  setPhase(phase: string): void {
    this.dist.setPhase(phase);
    const em = this.engineModel;
    if (em.kind === 'slice' && em.own && em.collectives instanceof NcclCollectives) em.collectives.setPhase(phase);
  }

  /** Runs one command on this rank (collective where the command is). */
  async run(c: Command): Promise<Reply> {
    this.setPhase(PHASE[c.op]);
    const world = this.dist.worldSize;
    const rank = this.dist.rank;
    switch (c.op) {
      case 'forward': {
        const split = splitOf(c.batch, world);
        const idx = split[rank]!;
        const fwd = await this.policy.forward(subBatch(c.batch, idx), c.opts);
        this.forwards.set(c.id, { fwd, idx });
        const n = c.batch.sequences.length;
        const logprobs = (await gatherRows(this.dist, split, fwd.logprobs, n))!;
        const entropy = await gatherRows(this.dist, split, fwd.entropy, n);
        return { logprobs, entropy };
      }
      case 'backward': {
        const f = this.take(c.id, 'backward');
        await f.fwd.backward(f.idx.map((i) => f32FromWire(c.d[i]!)));
        return undefined;
      }
      case 'release':
        this.forwards.get(c.id)?.fwd.release();
        this.forwards.delete(c.id);
        return undefined;
      case 'logprobs': {
        const model = c.model === 0 ? this.policy : this.frozen.get(c.model);
        if (!model) throw new Error(`rank ${rank}: logprobs of frozen copy ${c.model}, which this rank does not hold`);
        const split = splitOf(c.batch, world);
        const out = await model.logprobs(subBatch(c.batch, split[rank]!), c.opts);
        const n = c.batch.sequences.length;
        return { logprobs: (await gatherRows(this.dist, split, out.logprobs, n))!, entropy: await gatherRows(this.dist, split, out.entropy, n) };
      }
      case 'zeroGrad':
        this.policy.zeroGrad();
        return undefined;
      case 'clip':
        return await this.policy.clipGradNorm(c.maxNorm);
      case 'optimizerStep':
        this.policy.optimizerStep(c.h, c.step);
        return undefined;
      case 'resetOptimizer':
        this.policy.resetOptimizer();
        return undefined;
      case 'frozenCopy':
        this.frozen.set(c.id, await this.policy.frozenCopy());
        return undefined;
      case 'disposeFrozen':
        this.frozen.get(c.id)?.dispose();
        this.frozen.delete(c.id);
        return undefined;
      case 'save':
        await this.policy.save(c.dir);
        return undefined;
      case 'load':
        await this.policy.load(c.dir);
        return undefined;
      case 'generate':
        return await this.generate(c.requests);
      case 'syncWeights':
        await this.syncWeights();
        return undefined;
      case 'exit':
        return undefined;
    }
  }

  /**
   * Engine e runs block e of the requests (engineBlocks); the responses are all-gathered over the group in rank
   * order, which is engine order (an engine's serving ranks contribute nothing).
   */
  private async generate(requests: GenerateRequest[]): Promise<Completion[]> {
    const em = this.engineModel;
    let mine: GenerateResponse[] = [];
    if (em.kind === 'slice') {
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
      // One engine: rank 0 has every response already.
      if (this.layout.numEngines === 1) return this.dist.rank === 0 ? completionsOf(mine) : [];
    } else {
      const [lo, hi] = engineBlocks(requests.length, this.layout.numEngines)[this.dist.rank]!;
      const before = em.engine.stats()?.preemptions ?? 0;
      mine = await em.engine.runRequests(requests.slice(lo, hi));
      this.preemptions += (em.engine.stats()?.preemptions ?? 0) - before;
    }
    const all = await this.dist.group.allGatherObject<GenerateResponse[]>(mine);
    return completionsOf(all.flat());
  }

  /** The in-process weight sync: every parameter into this rank's engine model (tp 1), or its slice (tp N). */
  private async syncWeights(): Promise<void> {
    const em = this.engineModel;
    const params = em.model.weights.params;
    await this.policy.syncWeights((name, full) => {
      if (em.kind === 'slice') return storeSlice(em.model, name, full);
      const dst = params.get(name);
      if (!dst) throw new Error(`weight sync: the engine model of rank ${this.dist.rank} has no parameter ${name}`);
      dst.copyFrom(full);
    });
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
    if (this.engineModel.kind === 'whole') this.engineModel.engine.dispose();
    this.engineModel.model.dispose();
    this.policy.dispose();
  }
}

/** A tensor-parallel engine's part on this rank: its slice, and its engine's sub-group (or the group, E = 1). */
interface SliceEngine {
  kind: 'slice';
  model: TensorParallelModel;
  options: EngineOptions;
  /** Which engine this rank belongs to (its ranks: engine*T .. engine*T+T-1). */
  engine: number;
  collectives: Collectives;
  /** The engine's command channel (rank 0 of it runs the Engine). */
  channel: GroupChannel;
  /** True when collectives/channel are a sub-group this run created (closed before the group). */
  own: boolean;
}

/** The ranks of engine e of T ranks each: e*T .. e*T+T-1. */
export function engineRanks(engine: number, tp: number): number[] {
  return Array.from({ length: tp }, (_, i) => engine * tp + i);
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
      const sent = this.worker.dist.group.broadcastBytes(Buffer.from(JSON.stringify(c), 'utf8'), 0);
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

  /** Each call's sequences are split over every rank (so the loops hand it N x the per-GPU micro-batch). */
  get dataParallelSize(): number {
    return this.d.worker.dist.worldSize;
  }

  get device(): string {
    return this.d.worker.policy.device;
  }

  async forward(batch: SequenceBatch, opts: LogprobOptions = {}): Promise<TrainForward> {
    const id = this.d.id();
    const out = await this.d.call<LogprobOutput>({ op: 'forward', id, batch: toWire(batch), opts });
    let consumed = false;
    return {
      logprobs: out.logprobs,
      entropy: out.entropy,
      backward: async (dl: Float32Array[]) => {
        if (consumed) throw new Error('TrainForward.backward: already consumed');
        if (dl.length !== batch.sequences.length) throw new Error(`backward: ${dl.length} gradient rows for ${batch.sequences.length} sequences`);
        consumed = true;
        await this.d.call({ op: 'backward', id, d: dl.map(f32ToWire) });
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
    return this.d.worker.policy.numParameters();
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
  /** Ranks > 0: runs rank 0's commands until it closes the run. onCommand sees each (tests inject faults there). */
  serve(onCommand?: (op: Command['op'], index: number) => void): Promise<void>;
  /** Rank 0: ends the others' serve(); every rank: frees its shard and engine and leaves the group. */
  close(): Promise<void>;
}

/**
 * Joins the launcher's group and builds this rank's part: the model (every rank builds the same weights: the same
 * seed or checkpoint), its ShardedPolicy shard, its tp=1 engine over the model. Collective.
 */
export async function setupDistributedRun(c: Config): Promise<DistributedRun> {
  const layout = engineLayoutOf(c);
  if (!c.trainer.placement.colocate_all) throw new ConfigError('trainer.placement.colocate_all=false: engines on their own processes are not built yet (use true)');
  assertEngineLayout(c);
  const dist = await initDistributed({ backend: c.trainer.device === 'cpu' ? 'cpu' : 'auto', collectiveTimeoutMs: c.trainer.nccl_timeout_s * 1000 });
  if (dist.worldSize !== layout.worldSize) {
    await dist.destroy().catch(() => {});
    throw new ConfigError(`the launcher started ${dist.worldSize} processes but the config asks for ${layout.worldSize} (trainer.placement.policy_num_nodes x policy_num_gpus_per_node)`);
  }
  // Each rank trains and generates on its own device (the launcher's cuda:<local rank>, or cpu).
  const base = await setupRun({ ...c, trainer: { ...c.trainer, device: dist.device } });
  assertEngineLayout(c, base.model.config);
  const policy = ShardedPolicy.fromWeights(base.model.weights, dist.collectives, {
    recompute: c.trainer.gradient_checkpointing,
    deterministic: c.trainer.deterministic,
  });
  const options = engineOptionsFromConfig(c.generator);
  // tp N: the engine's slice is cut from the same weights. The full copy setupRun built stays as the run's `model`
  // (its config and vocabulary checks); it is not the engine's and is not synced.
  let engineModel: RankWorker['engineModel'];
  const tp = layout.tensorParallelSize;
  if (tp === 1) {
    engineModel = { kind: 'whole', model: base.model, engine: new LocalGenerator(base.model, options) };
  } else {
    // Engine e on ranks e*T .. e*T+T-1: with several engines each gets its own sub-group (collectives, channel).
    const engine = Math.floor(dist.rank / tp);
    const own = layout.numEngines > 1;
    const ranks = engineRanks(engine, tp);
    const collectives = own ? await dist.collectives.subGroup(ranks) : dist.collectives;
    const channel = own ? dist.group.subGroup(ranks) : dist.group;
    const model = TensorParallelModel.fromWeights(base.model.weights, collectives, { device: dist.device, deterministic: c.trainer.deterministic });
    engineModel = { kind: 'slice', model, options, engine, collectives, channel, own };
  }
  const worker = new RankWorker(dist, policy, engineModel, layout);
  const driver = dist.rank === 0 ? new Driver(worker) : null;
  log.info({ rank: dist.rank, world: dist.worldSize, backend: dist.backend, engines: layout.numEngines, tp: layout.tensorParallelSize }, 'rank ready');
  let closed = false;
  return {
    dist,
    layout,
    pieces: driver ? { ...base, policy: new DriverPolicy(driver), generator: new PoolGenerator(driver), ref: undefined } : null,
    async serve(onCommand) {
      if (dist.rank === 0) throw new Error('serve: rank 0 drives the run');
      for (let i = 0; ; i++) {
        const c = JSON.parse((await dist.group.broadcastBytes(null, 0)).toString('utf8')) as Command;
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
      if (engineModel.kind === 'slice') {
        base.model.dispose();
        if (engineModel.own) await engineModel.collectives.destroy();
      }
      await dist.destroy();
    },
  };
}
