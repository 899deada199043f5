// Parameter sources (src/model/param-source.ts) and the builders that read only what a rank keeps
// (ShardedPolicy.fromSource, TensorParallelModel.fromSource, Checkpoint.loadRange), as a distributed run's ranks use
// them (distributed-run.ts): the seeded random source gives GptOssWeights.random's values tensor by tensor and slice
// by slice; a sharded rank's shards are the same whether cut from whole weights, read from a checkpoint's byte
// ranges or drawn from the random source; and building a rank's shard or TP slice never holds the whole model
// (the host allocator's peak, memoryStats('cpu'), stays at what the rank keeps plus one tensor or one slice).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Checkpoint, GptOssWeights, paramSpecs, presetConfig } from '../../src/model/index.ts';
import { checkpointSource, randomSource, weightsSource } from '../../src/model/param-source.ts';
import { TensorParallelModel } from '../../src/model/tensor-parallel.ts';
import { ShardedPolicy, shardLayout } from '../../src/trainer/sharded-policy.ts';
import type { Collectives } from '../../src/distributed/collectives.ts';
import { memoryStats, resetPeakMemory, type Tensor } from '../../src/tensor.ts';

const CFG = presetConfig('gpt-oss-tiny-256', { numLayers: 3 });
const INIT = { seed: 5, std: 0.02 };

/**
 * Building a shard or a TP slice takes no collective: only the rank and world size are read (and save()'s
 * barriers, which have nothing to wait for here), so one process can build any rank's part.
 */
function rankOf(rank: number, worldSize: number): Collectives {
  return { rank, worldSize, barrier: async () => {}, allReduce: async () => {} } as unknown as Collectives;
}

const bits = (t: Tensor): Uint16Array => new Uint16Array(t.toBuffer());

/** A rank's bf16 shards as save() writes them (rank-NNNNN/bf16.<unit>), by unit key. */
async function shardsOf(p: ShardedPolicy, dir: string): Promise<Map<string, Uint16Array>> {
  await p.save(dir);
  const rd = readdirSync(dir).find((f) => f.startsWith('rank-'))!;
  const ck = Checkpoint.open(join(dir, rd));
  const out = new Map<string, Uint16Array>();
  for (const u of p.units) {
    const t = ck.load(`bf16.${u.key}`, { device: 'cpu', dtype: 'bf16' });
    out.set(u.key, bits(t));
    t.dispose();
  }
  ck.close();
  return out;
}

test('the random source gives GptOssWeights.random, whole and by element range', () => {
  const w = GptOssWeights.random(CFG, 'cpu', INIT);
  const src = randomSource(CFG, INIT);
  for (const s of paramSpecs(CFG)) {
    const a = src.full(s.name, 'cpu');
    assert.deepEqual(bits(a), bits(w.params.get(s.name)!), s.name);
    a.dispose();
    const n = s.shape.reduce((x, y) => x * y, 1);
    const lo = Math.floor(n / 3);
    const hi = Math.max(lo, n - 1);
    const r = src.range(s.name, lo, hi, 'cpu');
    assert.deepEqual(bits(r), bits(w.params.get(s.name)!).subarray(lo, hi), `${s.name} [${lo}, ${hi})`);
    r.dispose();
  }
  w.dispose();
});

test('Checkpoint.loadRange reads exactly elements [lo, hi) and refuses a range outside the tensor', () => {
  const dir = mkdtempSync(join(tmpdir(), 'param-source-'));
  const w = GptOssWeights.random(CFG, 'cpu', INIT);
  w.save(dir, { maxShardBytes: 64 * 1024 });
  const ck = Checkpoint.open(dir);
  const name = 'model.layers.1.mlp.experts.gate_up_proj';
  const all = bits(w.params.get(name)!);
  // Small chunks: several positioned reads per range.
  const r = ck.loadRange(name, 1001, 9000, { device: 'cpu', dtype: 'bf16', chunkBytes: 1024 });
  assert.deepEqual(bits(r), all.subarray(1001, 9000));
  r.dispose();
  assert.throws(() => ck.loadRange(name, 5, all.length + 1, { device: 'cpu' }), /range \[5, \d+\) of tensor 'model\.layers\.1\.mlp\.experts\.gate_up_proj' is outside its \d+ elements/);
  ck.close();
  w.dispose();
});

test('a rank\'s shards are the same from whole weights, from a checkpoint\'s byte ranges and from the random source', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'param-source-'));
  const hf = join(dir, 'hf');
  const w = GptOssWeights.random(CFG, 'cpu', INIT);
  w.save(hf, { maxShardBytes: 64 * 1024 });
  for (const [rank, world] of [[0, 1], [1, 3], [2, 3]] as const) {
    const a = ShardedPolicy.fromWeights(w, rankOf(rank, world));
    const b = ShardedPolicy.fromCheckpoint(CFG, hf, 'cpu', rankOf(rank, world));
    const rs = randomSource(CFG, INIT);
    const c = ShardedPolicy.fromSource(rs, 'cpu', rankOf(rank, world));
    rs.close();
    const sa = await shardsOf(a, join(dir, `a-${rank}-${world}`));
    assert.deepEqual(await shardsOf(b, join(dir, `b-${rank}-${world}`)), sa, `rank ${rank} of ${world}: checkpoint`);
    assert.deepEqual(await shardsOf(c, join(dir, `c-${rank}-${world}`)), sa, `rank ${rank} of ${world}: random source`);
    for (const p of [a, b, c]) p.dispose();
  }
  // TP slices: the random source's, and the checkpoint's read in chunks of whole rows (small chunks: several per
  // tensor), equal the slices of the whole weights.
  for (const rank of [0, 1]) {
    const a = TensorParallelModel.fromWeights(w, rankOf(rank, 2));
    const rs = randomSource(CFG, INIT);
    const b = TensorParallelModel.fromSource(rs, rankOf(rank, 2));
    rs.close();
    const cs = checkpointSource(CFG, hf);
    const c = TensorParallelModel.fromSource(cs, rankOf(rank, 2), { readChunkElems: 1000 });
    cs.close();
    for (const [name, t] of a.weights.params) {
      assert.deepEqual(bits(b.weights.params.get(name)!), bits(t), `tp rank ${rank}: ${name} (random source)`);
      assert.deepEqual(bits(c.weights.params.get(name)!), bits(t), `tp rank ${rank}: ${name} (checkpoint)`);
    }
    a.dispose();
    b.dispose();
    c.dispose();
  }
  w.dispose();
  // A vocabulary tp does not divide (250 over tp 2 is even; a compact 77-token one is not): the last rank's
  // embedding and LM head slices padded with zero rows, the same from every source.
  const odd = { ...CFG, vocabSize: 77 };
  const wo = GptOssWeights.random(odd, 'cpu', INIT);
  const ho = join(dir, 'hf-odd');
  wo.save(ho, { maxShardBytes: 64 * 1024 });
  for (const rank of [0, 1]) {
    const a = TensorParallelModel.fromWeights(wo, rankOf(rank, 2));
    const cs = checkpointSource(odd, ho);
    const c = TensorParallelModel.fromSource(cs, rankOf(rank, 2), { readChunkElems: 1000 });
    cs.close();
    for (const [name, t] of a.weights.params) assert.deepEqual(bits(c.weights.params.get(name)!), bits(t), `odd vocabulary, tp rank ${rank}: ${name}`);
    const head = a.weights.params.get('lm_head.weight')!;
    assert.deepEqual(head.shape, [39, odd.hiddenSize]);
    const full = wo.params.get('lm_head.weight')!.toFloat32();
    const H = odd.hiddenSize;
    const want = new Float32Array(39 * H);
    want.set(full.subarray(rank * 39 * H, Math.min(77, (rank + 1) * 39) * H));
    assert.deepEqual(head.toFloat32(), want, `rank ${rank}: rows ${rank * 39}.. then zeros`);
    a.dispose();
    c.dispose();
  }
  wo.dispose();
});

test('building a rank\'s shard or TP slice never holds the whole model (host allocator peak)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'param-source-'));
  const cfg = presetConfig('gpt-oss-tiny-256', { numLayers: 6 });
  const w = GptOssWeights.random(cfg, 'cpu', INIT);
  w.save(dir, { maxShardBytes: 256 * 1024 });
  const modelBytes = 2 * w.numParameters();
  const largest = Math.max(...paramSpecs(cfg).map((s) => 2 * s.shape.reduce((a, b) => a * b, 1)));
  w.dispose();
  const world = 4;
  const units = shardLayout(cfg, world);
  const shardBytes = units.reduce((a, u) => a + 2 * u.shard, 0);
  // One entry's part of one shard at most beside the shards (the part read, before its copy into the shard).
  const slice = Math.max(...units.map((u) => 2 * Math.min(u.shard, Math.max(...u.entries.map((e) => e.numel)))));
  const peakOf = (build: () => { dispose(): void }): number => {
    const before = memoryStats('cpu').allocated;
    resetPeakMemory('cpu');
    const p = build();
    const peak = memoryStats('cpu').peakAllocated - before;
    p.dispose();
    return peak;
  };
  const src = checkpointSource(cfg, dir);
  try {
    const sharded = peakOf(() => ShardedPolicy.fromSource(src, 'cpu', rankOf(1, world)));
    assert.ok(sharded <= shardBytes + slice, `sharded rank 1 of ${world}: peak ${sharded} B > its shards ${shardBytes} B + one slice ${slice} B`);
    assert.ok(sharded < modelBytes / 2, `sharded rank 1 of ${world}: peak ${sharded} B, the model is ${modelBytes} B`);
    // A tp=2 slice: half the model's weights (and the replicated ones, read straight into place) plus, for the
    // sliced ones, one chunk of whole rows on the host and its cut: a few small chunks here.
    const chunk = 4096;
    const tp = peakOf(() => TensorParallelModel.fromSource(src, rankOf(1, 2), { readChunkElems: chunk }));
    const kept = (() => {
      const m = TensorParallelModel.fromSource(src, rankOf(1, 2));
      const n = 2 * m.weights.numParameters();
      m.dispose();
      return n;
    })();
    assert.ok(kept < 0.75 * modelBytes, `tp slice keeps ${kept} B of ${modelBytes} B`);
    // A chunk is whole rows of the [outer, size, inner] view around the split dimension: at most max(chunk, one row)
    // elements, a row being at most a tensor's dims after the first multiplied (down_proj [E, I, H]: I x H), plus its
    // cut (half of it), in bf16.
    const row = Math.max(...paramSpecs(cfg).map((s) => s.shape.slice(1).reduce((a, b) => a * b, 1)));
    const transient = 2 * 1.5 * Math.max(chunk, row);
    assert.ok(tp <= kept + transient, `tp rank 1 of 2: peak ${tp} B > its slice ${kept} B + one chunk and its cut ${transient} B`);
    assert.ok(transient < largest, 'the bound is below one whole tensor');
  } finally {
    src.close();
  }
  // The in-memory source copies one parameter (or slice) at a time too.
  const w2 = GptOssWeights.random(cfg, 'cpu', INIT);
  const ws = weightsSource(w2);
  const fromMem = peakOf(() => ShardedPolicy.fromSource(ws, 'cpu', rankOf(3, world)));
  assert.ok(fromMem <= shardBytes + slice, `from weights: peak ${fromMem} B`);
  w2.dispose();
});
