// collectives.ts: the `Collectives` interface every distributed component talks to, the argument checks both
// backends share (so they fail with the same messages), and the NCCL backend.
//
// Two backends implement it:
//   - NcclCollectives (here): tensors on this rank's GPU; every call only enqueues NCCL work on the device's
//     compute stream (ordered against compute, no host sync), so the returned promise resolves at once. Gathers
//     and reduce-scatters may go to the device's comm stream instead (CollectiveOptions.stream).
//     Reading a result back (toFloat32) or synchronize() waits for it.
//   - CpuCollectives (cpu-collectives.ts): any tensor (staged through host memory), moved over TCP through the
//     hub; the promise resolves when the result is in place. Meant for CI and small host-side traffic.
import { native, type NcclComm } from '../native.ts';
import type { StreamName, Tensor } from '../tensor.ts';
import type { GroupChannel } from './tcp-group.ts';

export type ReduceOp = 'sum' | 'avg' | 'max' | 'min';
export const REDUCE_OPS: readonly ReduceOp[] = ['sum', 'avg', 'max', 'min'];

/** One half of a point-to-point exchange (see Collectives.sendRecv). */
export interface P2POp {
  op: 'send' | 'recv';
  tensor: Tensor;
  peer: number;
}

/** Where a gather or reduce-scatter runs (see Collectives.allGather). */
export interface CollectiveOptions {
  /**
   * NCCL: the device stream the collective is enqueued on. 'compute' (default): ordered with every op. 'comm': the
   * device's communication stream, beside compute; the caller orders it with StreamEvents (the inputs' producer
   * recorded on 'compute' and waited on by 'comm' first, the outputs' consumers waiting for an event recorded on
   * 'comm' after it) and keeps its buffers alive until compute has waited. The CPU backend's collectives have
   * completed when their promise resolves, which satisfies either.
   */
  stream?: StreamName;
}

export interface Collectives {
  readonly backend: 'nccl' | 'cpu';
  readonly rank: number;
  readonly worldSize: number;
  /** In place: tensor <- reduce over ranks of tensor. Same dtype and shape on every rank. */
  allReduce(tensor: Tensor, op?: ReduceOp): Promise<void>;
  /** out [worldSize * n] <- concat over ranks (in rank order) of input [n] (element counts; any shapes). */
  allGather(out: Tensor, input: Tensor, opts?: CollectiveOptions): Promise<void>;
  /** out [n] <- chunk `rank` of the reduction over ranks of input [worldSize * n]. */
  reduceScatter(out: Tensor, input: Tensor, op?: ReduceOp, opts?: CollectiveOptions): Promise<void>;
  /** In place: tensor <- root's tensor. */
  broadcast(tensor: Tensor, root: number): Promise<void>;
  /** Sends tensor to peer (which posts a matching recv of the same dtype and element count). */
  send(tensor: Tensor, peer: number): Promise<void>;
  /** Receives into tensor from peer. */
  recv(tensor: Tensor, peer: number): Promise<void>;
  /** Several sends and receives at once, so that two ranks may exchange without deadlock. */
  sendRecv(ops: readonly P2POp[]): Promise<void>;
  /** Returns once every rank has called barrier() and this rank's queued collectives have completed. */
  barrier(): Promise<void>;
  /** Waits for this rank's queued collectives (NCCL: the device stream), surfacing asynchronous errors. */
  synchronize(): Promise<void>;
  /**
   * The collectives of the sub-group of `ranks` (this group's numbering, ascending; this rank among them), e.g. the
   * ranks of one tensor-parallel engine. Called by its members only (collective over them); ranks and roots of the
   * result are in the sub-group's numbering (sub-rank i = ranks[i]). Its collectives run independently of the other
   * sub-groups'. Destroy it (its members) before the group.
   */
  subGroup(ranks: readonly number[]): Promise<Collectives>;
  /** Collective: every rank calls it last. */
  destroy(): Promise<void>;
}

// ---- argument checks shared by both backends --------------------------------------------------------------
function desc(t: Tensor): string {
  return t.toString();
}

export function checkReduceOp(what: string, op: string): asserts op is ReduceOp {
  if (!(REDUCE_OPS as readonly string[]).includes(op)) {
    throw new Error(`${what}: unknown reduction '${op}' (expected sum, avg, max or min)`);
  }
}

export function checkRank(what: string, name: string, r: number, worldSize: number, self?: number): void {
  if (!Number.isInteger(r) || r < 0 || r >= worldSize) {
    throw new Error(`${what}: ${name} ${r} is not a rank in [0, ${worldSize})`);
  }
  if (self !== undefined && r === self) throw new Error(`${what}: ${name} ${r} is this rank itself`);
}

export function checkAllGather(worldSize: number, out: Tensor, input: Tensor): void {
  if (out.dtype !== input.dtype) {
    throw new Error(`allGather: out is ${desc(out)} but input is ${desc(input)} (dtypes differ)`);
  }
  if (out.numel !== worldSize * input.numel) {
    throw new Error(
      `allGather: out is ${desc(out)} and input is ${desc(input)}; with ${worldSize} ranks out must hold ` +
        `${worldSize} x ${input.numel} = ${worldSize * input.numel} elements`,
    );
  }
}

export function checkReduceScatter(worldSize: number, out: Tensor, input: Tensor): void {
  if (out.dtype !== input.dtype) {
    throw new Error(`reduceScatter: out is ${desc(out)} but input is ${desc(input)} (dtypes differ)`);
  }
  if (input.numel !== worldSize * out.numel) {
    throw new Error(
      `reduceScatter: input is ${desc(input)} and out is ${desc(out)}; with ${worldSize} ranks input must hold ` +
        `${worldSize} x ${out.numel} = ${worldSize * out.numel} elements`,
    );
  }
}

// ---- NCCL -----------------------------------------------------------------------------------------------------
export interface NcclOptions {
  /** Milliseconds synchronize()/barrier() wait for the device before failing (default 10 min; <= 0: forever). */
  timeoutMs?: number;
  /**
   * Milliseconds any enqueued collective may take before the native watchdog (a thread polling the stream's events
   * and ncclCommGetAsyncError) aborts the communicator and ends the process with a message naming the rank, the
   * collective and the phase (trainer.nccl_timeout_s; default 0: no watchdog).
   */
  watchdogMs?: number;
}

export class NcclCollectives implements Collectives {
  readonly backend = 'nccl' as const;
  private comm: NcclComm | undefined;
  private readonly timeoutMs: number;

  private constructor(
    readonly rank: number,
    readonly worldSize: number,
    /** This rank's GPU ('cuda:N'). */
    readonly device: string,
    comm: NcclComm,
    /** The TCP group (or sub-group) used for the rendezvous and the host-side barrier. */
    readonly group: GroupChannel,
    private readonly opts: NcclOptions,
  ) {
    this.comm = comm;
    this.timeoutMs = opts.timeoutMs ?? 600_000;
  }

  /**
   * Collective over the group: rank 0 makes the NCCL unique id, the group broadcasts it over TCP, every rank
   * creates its communicator on cuda:`deviceIndex` (blocking until all have joined).
   */
  static async create(group: GroupChannel, deviceIndex: number, opts: NcclOptions = {}): Promise<NcclCollectives> {
    const ops = native().ops;
    if (!native().features.nccl) ops.ncclGetUniqueId(); // throws the "built without NCCL" error
    const id: Buffer | null = group.rank === 0 ? ops.ncclGetUniqueId() : null;
    const shared = await group.broadcastBytes(id, 0);
    const comm = ops.ncclCommInitRank(shared, group.worldSize, group.rank, deviceIndex, opts.watchdogMs ?? 0);
    return new NcclCollectives(group.rank, group.worldSize, `cuda:${deviceIndex}`, comm, group, opts);
  }

  /**
   * A sub-group's communicator: its own NCCL unique id (made by its first member, sent over the sub-group's TCP
   * channel) and ncclCommInitRank among its members only, so the other sub-groups need not take part.
   */
  async subGroup(ranks: readonly number[]): Promise<Collectives> {
    this.handle('subGroup');
    return NcclCollectives.create(this.group.subGroup(ranks), Number(this.device.slice('cuda:'.length)), this.opts);
  }

  /** Labels the work this rank enqueues next (named by the watchdog when a collective hangs). */
  setPhase(phase: string): void {
    if (this.comm) native().ops.ncclSetPhase(this.comm, phase);
  }

  static version(): string {
    return native().ops.ncclVersion();
  }

  private handle(what: string): NcclComm {
    if (!this.comm) throw new Error(`${what}: the NCCL communicator of rank ${this.rank} was destroyed`);
    return this.comm;
  }

  async allReduce(tensor: Tensor, op: ReduceOp = 'sum'): Promise<void> {
    checkReduceOp('allReduce', op);
    native().ops.ncclAllReduce(this.handle('allReduce'), tensor.native, tensor.native, op);
  }

  async allGather(out: Tensor, input: Tensor, opts: CollectiveOptions = {}): Promise<void> {
    checkAllGather(this.worldSize, out, input);
    native().ops.ncclAllGather(this.handle('allGather'), input.native, out.native, opts.stream ?? 'compute');
  }

  async reduceScatter(out: Tensor, input: Tensor, op: ReduceOp = 'sum', opts: CollectiveOptions = {}): Promise<void> {
    checkReduceOp('reduceScatter', op);
    checkReduceScatter(this.worldSize, out, input);
    native().ops.ncclReduceScatter(this.handle('reduceScatter'), input.native, out.native, op, opts.stream ?? 'compute');
  }

  async broadcast(tensor: Tensor, root: number): Promise<void> {
    checkRank('broadcast', 'root', root, this.worldSize);
    native().ops.ncclBroadcast(this.handle('broadcast'), tensor.native, tensor.native, root);
  }

  async send(tensor: Tensor, peer: number): Promise<void> {
    return this.sendRecv([{ op: 'send', tensor, peer }]);
  }

  async recv(tensor: Tensor, peer: number): Promise<void> {
    return this.sendRecv([{ op: 'recv', tensor, peer }]);
  }

  async sendRecv(ops: readonly P2POp[]): Promise<void> {
    for (const o of ops) checkRank(`sendRecv (${o.op})`, 'peer', o.peer, this.worldSize, this.rank);
    if (ops.length === 0) return;
    const kinds = ops.map((o) => (o.op === 'send' ? 's' : 'r')).join('');
    native().ops.ncclSendRecv(this.handle('sendRecv'), kinds, ops.map((o) => o.peer), ...ops.map((o) => o.tensor.native));
  }

  async synchronize(): Promise<void> {
    native().ops.ncclSynchronize(this.handle('synchronize'), this.timeoutMs);
  }

  async barrier(): Promise<void> {
    await this.synchronize();
    await this.group.barrier();
  }

  /** Polls NCCL's asynchronous error state (throws if a peer or the network failed). */
  checkAsyncError(): void {
    native().ops.ncclCheckAsync(this.handle('checkAsyncError'));
  }

  /** Frees the communicator at once without waiting for peers (after a failure). */
  abort(): void {
    if (this.comm) native().ops.ncclCommAbort(this.comm);
    this.comm = undefined;
  }

  async destroy(): Promise<void> {
    if (!this.comm) return;
    await this.barrier();
    native().ops.ncclCommDestroy(this.comm);
    this.comm = undefined;
  }
}
