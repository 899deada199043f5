// cpu-collectives.ts: the Collectives interface over TCP among processes (see tcp-group.ts), so multi-process
// code runs and is tested without GPUs. Tensors may live on any device: they are staged through host memory
// (toBuffer / copyFrom), which makes this backend correct everywhere and fast nowhere; NCCL is the fast path.
// Every call resolves once its result is in place.
import type { Tensor } from '../tensor.ts';
import {
  checkAllGather,
  checkRank,
  checkReduceOp,
  checkReduceScatter,
  type CollectiveOptions,
  type Collectives,
  type P2POp,
  type ReduceOp,
} from './collectives.ts';
import type { GroupChannel } from './tcp-group.ts';

function bytes(t: Tensor): Uint8Array {
  return new Uint8Array(t.toBuffer());
}

export class CpuCollectives implements Collectives {
  readonly backend = 'cpu' as const;

  constructor(readonly group: GroupChannel) {}

  get rank(): number {
    return this.group.rank;
  }
  get worldSize(): number {
    return this.group.worldSize;
  }

  async allReduce(tensor: Tensor, op: ReduceOp = 'sum'): Promise<void> {
    checkReduceOp('allReduce', op);
    const f = await this.group.collective({ op: 'allReduce', dtype: tensor.dtype, shape: tensor.shape, reduce: op }, bytes(tensor));
    tensor.copyFrom(f.payload);
  }

  // opts.stream: these complete before their promise resolves, which orders them against any stream.
  async allGather(out: Tensor, input: Tensor, _opts?: CollectiveOptions): Promise<void> {
    checkAllGather(this.worldSize, out, input);
    const f = await this.group.collective({ op: 'allGather', dtype: input.dtype, shape: input.shape }, bytes(input));
    out.copyFrom(f.payload);
  }

  async reduceScatter(out: Tensor, input: Tensor, op: ReduceOp = 'sum', _opts?: CollectiveOptions): Promise<void> {
    checkReduceOp('reduceScatter', op);
    checkReduceScatter(this.worldSize, out, input);
    const f = await this.group.collective(
      { op: 'reduceScatter', dtype: input.dtype, shape: input.shape, reduce: op },
      bytes(input),
    );
    out.copyFrom(f.payload);
  }

  async broadcast(tensor: Tensor, root: number): Promise<void> {
    checkRank('broadcast', 'root', root, this.worldSize);
    // Every rank sends its shape (so a mismatch is caught); only the root's bytes travel.
    const f = await this.group.collective(
      { op: 'broadcast', dtype: tensor.dtype, shape: tensor.shape, root },
      this.rank === root ? bytes(tensor) : undefined,
    );
    if (this.rank !== root) tensor.copyFrom(f.payload);
  }

  async send(tensor: Tensor, peer: number): Promise<void> {
    checkRank('send', 'peer', peer, this.worldSize, this.rank);
    this.group.sendTo(peer, { dtype: tensor.dtype, shape: tensor.shape }, bytes(tensor));
  }

  async recv(tensor: Tensor, peer: number): Promise<void> {
    checkRank('recv', 'peer', peer, this.worldSize, this.rank);
    const f = await this.group.recvFrom(peer);
    const shape = (f.header.shape as number[]) ?? [];
    const numel = shape.reduce((a, b) => a * b, 1);
    if (f.header.dtype !== tensor.dtype || numel !== tensor.numel) {
      throw new Error(
        `recv: rank ${peer} sent ${String(f.header.dtype)}[${shape.join(', ')}] but rank ${this.rank} receives into ${tensor.toString()}`,
      );
    }
    tensor.copyFrom(f.payload);
  }

  async sendRecv(ops: readonly P2POp[]): Promise<void> {
    // Sends are eager here, so posting them all first can never deadlock.
    for (const o of ops) if (o.op === 'send') await this.send(o.tensor, o.peer);
    await Promise.all(ops.filter((o) => o.op === 'recv').map((o) => this.recv(o.tensor, o.peer)));
  }

  async barrier(): Promise<void> {
    await this.group.barrier();
  }

  async synchronize(): Promise<void> {
    // Every call already completed when its promise resolved.
  }

  async subGroup(ranks: readonly number[]): Promise<Collectives> {
    return new CpuCollectives(this.group.subGroup(ranks));
  }

  /** The world's: leaves the group; a sub-group's: a barrier among its members. */
  async destroy(): Promise<void> {
    await this.group.destroy();
  }
}
