// local-tp-group.ts: the ranks of a tensor-parallel group simulated in one process, for tests. Each rank's shard
// runs as its own async task; a collective waits until every rank has called the same round (each rank's calls are
// numbered in order), then completes for all: allReduce gives each the sum, reduced exactly as the CPU collectives'
// hub does (reduceBuffers: fp64 in rank order, rounded to the dtype once), so the numerics are those of the
// multi-process run; allGather gives each the inputs concatenated in rank order.
import type { TensorParallelGroup } from '../../src/model/layer.ts';
import type { Tensor } from '../../src/tensor.ts';
import { reduceBuffers } from '../../src/distributed/tcp-group.ts';

interface Round {
  op: 'allReduce' | 'allGather';
  inputs: (Tensor | undefined)[];
  outs: (Tensor | undefined)[];
  arrived: number;
  done: () => void;
  wait: Promise<void>;
}

export function localTensorParallelGroups(size: number): TensorParallelGroup[] {
  const rounds = new Map<number, Round>();
  const next = new Array<number>(size).fill(0);
  const join = async (rank: number, op: Round['op'], input: Tensor, out: Tensor): Promise<void> => {
    const round = next[rank]!++;
    let r = rounds.get(round);
    if (!r) {
      let done!: () => void;
      const wait = new Promise<void>((res) => (done = res));
      r = { op, inputs: new Array<Tensor | undefined>(size), outs: new Array<Tensor | undefined>(size), arrived: 0, done, wait };
      rounds.set(round, r);
    }
    if (r.op !== op) throw new Error(`round ${round}: rank ${rank} calls ${op} where another rank called ${r.op}`);
    r.inputs[rank] = input;
    r.outs[rank] = out;
    if (++r.arrived === size) {
      const ins = r.inputs as Tensor[];
      const first = ins[0]!;
      for (const x of ins) {
        if (x.dtype !== first.dtype || x.numel !== first.numel) throw new Error(`${op} round ${round}: ranks disagree (${ins.join(' / ')})`);
      }
      const bufs = ins.map((x) => new Uint8Array(x.toBuffer()));
      let result: Uint8Array;
      if (op === 'allReduce') result = reduceBuffers(first.dtype, 'sum', bufs);
      else {
        result = new Uint8Array(bufs.reduce((a, b) => a + b.length, 0));
        bufs.reduce((o, b) => (result.set(b, o), o + b.length), 0);
      }
      for (const o of r.outs as Tensor[]) o.copyFrom(result);
      rounds.delete(round);
      r.done();
    }
    await r.wait;
  };
  return Array.from({ length: size }, (_, rank) => ({
    rank,
    size,
    allReduce: (t: Tensor) => join(rank, 'allReduce', t, t),
    allGather: (out: Tensor, input: Tensor) => join(rank, 'allGather', input, out),
  }));
}
