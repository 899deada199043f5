// local-tp-group.ts: the ranks of a tensor-parallel group simulated in one process, for tests. Each rank's shard
// runs as its own async task; allReduce waits until every rank has called its all-reduce of the same round, then
// gives each the sum, reduced exactly as the CPU collectives' hub does (reduceBuffers: fp64 in rank order,
// rounded to the dtype once), so the numerics are those of the multi-process run.
import type { TensorParallelGroup } from '../../src/model/layer.ts';
import type { Tensor } from '../../src/tensor.ts';
import { reduceBuffers } from '../../src/distributed/tcp-group.ts';

export function localTensorParallelGroups(size: number): TensorParallelGroup[] {
  const rounds = new Map<number, { tensors: (Tensor | undefined)[]; arrived: number; done: () => void; wait: Promise<void> }>();
  const next = new Array<number>(size).fill(0);
  return Array.from({ length: size }, (_, rank) => ({
    rank,
    size,
    async allReduce(t: Tensor): Promise<void> {
      const round = next[rank]!++;
      let r = rounds.get(round);
      if (!r) {
        let done!: () => void;
        const wait = new Promise<void>((res) => (done = res));
        r = { tensors: new Array<Tensor | undefined>(size), arrived: 0, done, wait };
        rounds.set(round, r);
      }
      r.tensors[rank] = t;
      if (++r.arrived === size) {
        const ts = r.tensors as Tensor[];
        const first = ts[0]!;
        for (const x of ts) {
          if (x.dtype !== first.dtype || x.numel !== first.numel) throw new Error(`allReduce round ${round}: ranks disagree (${ts.join(' / ')})`);
        }
        const sum = reduceBuffers(first.dtype, 'sum', ts.map((x) => new Uint8Array(x.toBuffer())));
        for (const x of ts) x.copyFrom(sum);
        rounds.delete(round);
        r.done();
      }
      await r.wait;
    },
  }));
}
