// tensor-parallel-runner.ts: one engine over the `tp` ranks of a launched group (one process per GPU, or CPU
// processes with the CPU collectives in CI).
//
// Rank 0 runs the Engine (scheduler, block manager, sampling) over a TensorParallelModelRunner; ranks 1..tp-1 run
// serveTensorParallelRank. Each command of rank 0's runner is broadcast to the others over the group's host
// channel (TcpGroup.broadcastBytes) before rank 0 runs it too:
//   allocate (blocks per KV space) / free     the KV pools: every rank holds the same block ids for its kv heads
//   step (the StepInput's arrays)             every rank runs the step: the vocabulary-parallel embedding (one
//                                             all-reduce), the layers (DecoderLayer.stepParallel: two all-reduces
//                                             each), its LM-head slice and the sampler's summaries (one all-gather;
//                                             rows with top-k/top-p gather their logits); rank 0 gets the tokens
//   update (parameter names)                  then one tensor broadcast per name (the Collectives: NCCL on GPUs);
//                                             each rank keeps its slice (shardParameter)
//   dispose                                   the other ranks leave serveTensorParallelRank
// Commands are sequenced: the ranks run the same steps in the same order. A step that fails on rank 0 leaves the
// ranks out of step (the others may wait in an all-reduce), so the runner refuses further work after a failure;
// a failing rank > 0 exits, and the launcher takes the group down.
import { Tensor } from '../tensor.ts';
import type { Collectives } from '../distributed/collectives.ts';
import type { GroupChannel } from '../distributed/tcp-group.ts';
import type { GptOssConfig } from '../model/config.ts';
import { GptOssWeights, paramSpecs } from '../model/weights.ts';
import type { ParamSource } from '../model/param-source.ts';
import { shardParameter, TensorParallelModel } from '../model/tensor-parallel.ts';
import { cast } from '../ops/elementwise.ts';
import { childLogger } from '../log/logger.ts';
import { Engine, type EngineOptions } from './engine.ts';
import { LocalModelRunner, type ModelRunner, type StepInput, type StepOutput, type WeightUpdate } from './model-runner.ts';

const log = childLogger('tensor-parallel');

/** The host channel rank 0 sends commands on (the launched group's TcpGroup, or the engine's sub-group of it). */
export type CommandChannel = Pick<GroupChannel, 'rank' | 'worldSize' | 'broadcastBytes'>;

type Command =
  | { op: 'allocate'; numBlocks: number[]; blockSize: number }
  | { op: 'free' }
  | { op: 'page'; out: boolean }
  | { op: 'step'; step: StepInput }
  | { op: 'update'; names: string[] }
  | { op: 'dispose' };

// ---- the wire form of a command: [u32 header bytes][JSON header][pad to 4][the step's arrays, 4-byte elements] ----
/** The StepInput's arrays in wire order; slots and blockTables hold one array per KV space. */
const STEP_ARRAYS = ['tokens', 'positions', 'slots', 'queryStarts', 'contextLens', 'blockTables', 'sampleRows', 'temperature', 'topP', 'topK', 'seeds', 'counters'] as const;
type StepArrayName = (typeof STEP_ARRAYS)[number];
const PER_SPACE = new Set<StepArrayName>(['slots', 'blockTables']);
const F32_ARRAYS = new Set<StepArrayName>(['temperature', 'topP']);

function encodeCommand(c: Command): Uint8Array {
  const arrays: (Int32Array | Float32Array)[] = [];
  let header: object = c;
  if (c.op === 'step') {
    for (const k of STEP_ARRAYS) {
      const v = c.step[k];
      if (Array.isArray(v)) arrays.push(...v);
      else arrays.push(v as Int32Array | Float32Array);
    }
    header = { op: 'step', maxBlocksPerSeq: c.step.maxBlocksPerSeq, spaces: c.step.slots.length, lengths: arrays.map((a) => a.length) };
  }
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const start = 4 + Math.ceil(json.length / 4) * 4;
  const out = new Uint8Array(start + arrays.reduce((a, x) => a + x.byteLength, 0));
  new DataView(out.buffer).setUint32(0, json.length, true);
  out.set(json, 4);
  let o = start;
  for (const a of arrays) {
    out.set(new Uint8Array(a.buffer, a.byteOffset, a.byteLength), o);
    o += a.byteLength;
  }
  return out;
}

function decodeCommand(buf: Uint8Array): Command {
  const jsonLen = new DataView(buf.buffer, buf.byteOffset, buf.byteLength).getUint32(0, true);
  const header = JSON.parse(Buffer.from(buf.buffer, buf.byteOffset + 4, jsonLen).toString('utf8')) as Record<string, unknown>;
  if (header.op !== 'step') return header as Command;
  const lengths = header.lengths as number[];
  const spaces = header.spaces as number;
  // Copied out of the receive buffer (a view into a larger one, not necessarily 4-byte aligned).
  const start = 4 + Math.ceil(jsonLen / 4) * 4;
  const data = new Uint8Array(buf.byteLength - start);
  data.set(buf.subarray(start));
  let o = 0;
  let next = 0;
  const take = (k: StepArrayName): Int32Array | Float32Array => {
    const n = lengths[next++]!;
    const a = F32_ARRAYS.has(k) ? new Float32Array(data.buffer, o, n) : new Int32Array(data.buffer, o, n);
    o += n * 4;
    return a;
  };
  const step: Record<string, unknown> = { maxBlocksPerSeq: header.maxBlocksPerSeq };
  for (const k of STEP_ARRAYS) step[k] = PER_SPACE.has(k) ? Array.from({ length: spaces }, () => take(k)) : take(k);
  return { op: 'step', step: step as unknown as StepInput };
}

// ---- rank 0 -------------------------------------------------------------------------------------------------------
/**
 * The engine's runner on rank 0 of a tensor-parallel group: each call is sent to the other ranks, then run here on
 * this rank's shard (a LocalModelRunner over the TensorParallelModel), whose steps reduce across the ranks.
 */
export class TensorParallelModelRunner implements ModelRunner {
  /** The whole model's config (the shard's local shapes are model.config). */
  readonly config: GptOssConfig;
  readonly device: string;
  private readonly local: LocalModelRunner;
  private failure: string | null = null;
  private disposed = false;

  constructor(
    readonly model: TensorParallelModel,
    private readonly channel: CommandChannel,
    private readonly collectives: Collectives,
  ) {
    if (channel.rank !== 0) throw new Error(`TensorParallelModelRunner: runs on rank 0; this is rank ${channel.rank} (serve with serveTensorParallelRank)`);
    if (channel.worldSize !== model.tp.size) {
      throw new Error(`TensorParallelModelRunner: the group has ${channel.worldSize} ranks but the model is split over ${model.tp.size}`);
    }
    this.config = model.fullConfig;
    this.device = model.device;
    this.local = new LocalModelRunner(model);
  }

  /** Per KV space, bytes one block takes on each rank (its kv heads, the space's layers, k and v). */
  kvBytesPerBlock(blockSize: number): number[] {
    return this.local.kvBytesPerBlock(blockSize);
  }

  allocateKvCache(numBlocks: readonly number[], blockSize: number): void {
    this.post({ op: 'allocate', numBlocks: [...numBlocks], blockSize });
    this.local.allocateKvCache(numBlocks, blockSize);
  }

  freeKvCache(): void {
    this.post({ op: 'free' });
    this.local.freeKvCache();
  }

  pageWeights(out: boolean): void {
    this.post({ op: 'page', out });
    this.local.pageWeights(out);
  }

  async execute(step: StepInput): Promise<StepOutput> {
    this.check('execute');
    // Sent, not awaited: the other ranks start on the step when it reaches them while this rank runs it too (the
    // group's messages and the CPU collectives are FIFO per rank, NCCL orders its own), so the host round trip of the
    // command stays off the step's critical path; a failed send surfaces here all the same.
    const sent = this.send({ op: 'step', step });
    try {
      const out = await this.local.execute(step);
      await sent;
      return out;
    } catch (e) {
      this.failure = (e as Error).message;
      throw e;
    }
  }

  /**
   * Whole tensors by parameter name (this process's, any device and float dtype): each is broadcast to every rank
   * in bf16, which keeps its slice. A tensor-parallel engine cannot take one rank's slice from rank 0.
   */
  async updateWeights(weights: WeightUpdate): Promise<void> {
    this.check('updateWeights');
    const specs = new Map(paramSpecs(this.config).map((s) => [s.name, s.shape]));
    const list = [...weights];
    for (const [name, t] of list) {
      const shape = specs.get(name);
      if (!shape) throw new Error(`updateWeights: the model has no parameter '${name}'`);
      if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
        throw new Error(
          `updateWeights: '${name}' is [${t.shape.join(', ')}]; a tensor-parallel engine takes whole tensors ([${shape.join(', ')}])`,
        );
      }
    }
    try {
      await this.send({ op: 'update', names: list.map(([n]) => n) });
      for (const [name, t] of list) {
        const moved = t.device === this.device ? t : t.to(this.device);
        const full = moved.dtype === 'bf16' ? moved : cast(moved, 'bf16');
        if (moved !== t && moved !== full) moved.dispose();
        try {
          await this.collectives.broadcast(full, 0);
          storeSlice(this.model, name, full);
        } finally {
          if (full !== t) full.dispose();
        }
      }
    } catch (e) {
      this.failure = (e as Error).message;
      throw e;
    }
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    if (!this.failure) this.post({ op: 'dispose' });
    this.local.dispose();
  }

  private check(what: string): void {
    if (this.disposed) throw new Error(`TensorParallelModelRunner.${what}: the runner is disposed`);
    if (this.failure) {
      throw new Error(`TensorParallelModelRunner.${what}: the tensor-parallel ranks are out of step after an earlier failure (${this.failure})`);
    }
  }

  /**
   * Broadcasts a command now: the group's messages go out in call order, so it reaches the other ranks before any
   * collective this rank starts afterwards (the step's all-reduces, and leaving the group). Resolves once every
   * rank has received it.
   */
  private send(c: Command): Promise<void> {
    return this.channel.broadcastBytes(encodeCommand(c), 0).then(() => {});
  }

  /** Sends from a synchronous call; a failure surfaces at the next awaited call (and is logged). */
  private post(c: Command): void {
    this.send(c).catch((e: Error) => {
      this.failure ??= e.message;
      log.error({ op: c.op, err: e.message }, 'tensor-parallel command failed');
    });
  }
}

/** Copies this rank's slice of the whole bf16 parameter `full` into the model's parameter. */
/** Copies this rank's slice of a whole parameter (bf16, the model's full shape) into its shard. */
export function storeSlice(model: TensorParallelModel, name: string, full: Tensor): void {
  const dst = model.weights.params.get(name)!;
  const part = shardParameter(model.fullConfig, name, full, model.tp.rank, model.tp.size, model.device);
  dst.copyFrom(part);
  part.dispose();
}

// ---- ranks 1..tp-1 ------------------------------------------------------------------------------------------------
/**
 * Runs rank 0's commands on this rank's shard until rank 0 disposes its runner (then frees the KV pools and
 * returns; the model stays the caller's). A failure throws: this rank can no longer follow, so the caller should
 * exit (the launcher then takes the group down).
 */
export async function serveTensorParallelRank(model: TensorParallelModel, channel: CommandChannel, collectives: Collectives): Promise<void> {
  if (channel.rank === 0) throw new Error('serveTensorParallelRank: rank 0 runs the engine (TensorParallelModelRunner)');
  const local = new LocalModelRunner(model);
  const specs = new Map(paramSpecs(model.fullConfig).map((s) => [s.name, s.shape]));
  try {
    for (;;) {
      const c = decodeCommand(await channel.broadcastBytes(null, 0));
      switch (c.op) {
        case 'allocate':
          local.allocateKvCache(c.numBlocks, c.blockSize);
          break;
        case 'free':
          local.freeKvCache();
          break;
        case 'page':
          local.pageWeights(c.out);
          break;
        case 'step':
          await local.run(c.step); // the layers and the vocabulary-parallel head; rank 0 samples
          break;
        case 'update':
          for (const name of c.names) {
            const full = Tensor.empty(specs.get(name)!, { dtype: 'bf16', device: model.device });
            try {
              await collectives.broadcast(full, 0);
              storeSlice(model, name, full);
            } finally {
              full.dispose();
            }
          }
          break;
        case 'dispose':
          return;
      }
    }
  } finally {
    local.dispose();
  }
}

// ---- the engine over a group ----------------------------------------------------------------------------------------
/** What a rank of a launched group brings (initDistributed's DistContext has all of it). */
export interface TensorParallelContext {
  rank: number;
  worldSize: number;
  /** This rank's device ('cuda:N' or 'cpu'). */
  device: string;
  collectives: Collectives;
  group: CommandChannel;
}

/**
 * One engine over every rank of the group (tp = the group's size). Every rank calls it. Rank 0 gets the Engine
 * (generate, sleep/wake, updateWeights; dispose() releases the other ranks). On the other ranks the promise
 * resolves with null once rank 0 has disposed the engine. `source`: a checkpoint directory or hub id (each rank reads
 * its slices), whole weights held by every rank (each cuts its slices), or a ParamSource (e.g. randomSource: each
 * rank draws or reads only what its slices need, one parameter at a time).
 */
export async function createTensorParallelEngine(source: string | GptOssWeights | ParamSource, dist: TensorParallelContext, opts: EngineOptions = {}): Promise<Engine | null> {
  const tp = dist.worldSize;
  if (opts.tensorParallelSize !== undefined && opts.tensorParallelSize !== tp) {
    throw new Error(`createTensorParallelEngine: tensorParallelSize ${opts.tensorParallelSize} but the group has ${tp} ranks (one engine spans the group)`);
  }
  const device = opts.device ?? dist.device;
  const model =
    typeof source === 'string'
      ? await TensorParallelModel.load(source, dist.collectives, { device })
      : source instanceof GptOssWeights
        ? TensorParallelModel.fromWeights(source, dist.collectives, { device })
        : TensorParallelModel.fromSource(source, dist.collectives, { device });
  if (dist.rank !== 0) {
    try {
      await serveTensorParallelRank(model, dist.group, dist.collectives);
    } finally {
      model.dispose();
    }
    return null;
  }
  const runner = new TensorParallelModelRunner(model, dist.group, dist.collectives);
  return new Engine(runner, { ...opts, device, tensorParallelSize: tp }, () => model.dispose());
}
