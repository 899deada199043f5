// Paged attention on the CPU backend: against a float64 TypeScript reference and against the dense attention op
// on the same data laid out contiguously (random block tables, mixed query lengths including 0 and 1, contexts
// longer than the sliding window, GQA, sinks, head_dim 8 and 64, f32 and bf16), plus every metadata error.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor } from '../../src/tensor.ts';
import { attentionForward, packedCuSeqlens } from '../../src/ops/attention.ts';
import { pagedAttention } from '../../src/ops/paged-attention.ts';
import { randn } from '../helpers/random.ts';
import { maxAbsDiff } from '../helpers/numeric.ts';
import { rng } from '../helpers/random.ts';

const dev = 'cpu';

interface PagedCase {
  Hq: number;
  Hkv: number;
  D: number;
  numBlocks: number;
  blockSize: number;
  /** Per sequence: cached tokens (this step's included) and this step's query rows. */
  seqs: { ctx: number; qlen: number }[];
  window: number;
  sinks: number[] | null;
  scale: number;
}

interface PagedData {
  q: Float32Array;  // [N, Hq, D]
  kPool: Float32Array;  // [numBlocks, blockSize, Hkv, D]
  vPool: Float32Array;
  /** Per sequence, its blocks in order (a random, disjoint draw from the pool). */
  tables: number[][];
  maxBlocks: number;
  N: number;
}

/** Random pools and a random block assignment: sequences get disjoint random blocks, unused table entries -1. */
function makeData(c: PagedCase, seed: number): PagedData {
  const r = rng(seed);
  const free = Array.from({ length: c.numBlocks }, (_, i) => i);
  for (let i = free.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [free[i], free[j]] = [free[j]!, free[i]!];
  }
  const tables = c.seqs.map((s) => free.splice(0, Math.ceil(s.ctx / c.blockSize)));
  const maxBlocks = Math.max(1, ...tables.map((t) => t.length)) + 1;  // one spare column: never read
  const N = c.seqs.reduce((a, s) => a + s.qlen, 0);
  const poolSize = c.numBlocks * c.blockSize * c.Hkv * c.D;
  return {
    q: randn(N * c.Hq * c.D, seed + 1),
    kPool: randn(poolSize, seed + 2),
    vPool: randn(poolSize, seed + 3),
    tables,
    maxBlocks,
    N,
  };
}

function metaTensors(c: PagedCase, d: PagedData) {
  const bt = new Int32Array(c.seqs.length * d.maxBlocks).fill(-1);
  d.tables.forEach((t, b) => bt.set(t, b * d.maxBlocks));
  const qs = new Int32Array(c.seqs.length + 1);
  c.seqs.forEach((s, b) => (qs[b + 1] = qs[b]! + s.qlen));
  return {
    blockTables: Tensor.from(bt, [c.seqs.length, d.maxBlocks], { device: dev }),
    contextLens: Tensor.from(Int32Array.from(c.seqs.map((s) => s.ctx)), [c.seqs.length], { device: dev }),
    queryStarts: Tensor.from(qs, [c.seqs.length + 1], { device: dev }),
  };
}

/** float64 reference straight from the definition (values as the op sees them: `round` applies bf16 storage). */
function reference(c: PagedCase, d: PagedData, round: (x: Float32Array) => Float32Array): Float64Array {
  const q = round(d.q), K = round(d.kPool), V = round(d.vPool);
  const { Hq, Hkv, D, blockSize } = c;
  const G = Hq / Hkv;
  const out = new Float64Array(d.N * Hq * D);
  let n = 0;
  c.seqs.forEach((s, b) => {
    for (let r = 0; r < s.qlen; r++, n++) {
      const pos = s.ctx - s.qlen + r;
      const lo = c.window > 0 ? Math.max(0, pos - c.window + 1) : 0;
      for (let h = 0; h < Hq; h++) {
        const kvh = Math.floor(h / G);
        const rowOf = (j: number) => d.tables[b]![Math.floor(j / blockSize)]! * blockSize + (j % blockSize);
        const scores: number[] = [];
        for (let j = lo; j <= pos; j++) {
          let dot = 0;
          for (let x = 0; x < D; x++) dot += q[(n * Hq + h) * D + x]! * K[(rowOf(j) * Hkv + kvh) * D + x]!;
          scores.push(dot * c.scale);
        }
        const sink = c.sinks ? c.sinks[h]! : -Infinity;
        const mx = Math.max(sink, ...scores);
        let sum = Math.exp(sink - mx);
        const acc = new Float64Array(D);
        for (let j = lo; j <= pos; j++) {
          const p = Math.exp(scores[j - lo]! - mx);
          sum += p;
          for (let x = 0; x < D; x++) acc[x] += p * V[(rowOf(j) * Hkv + kvh) * D + x]!;
        }
        for (let x = 0; x < D; x++) out[(n * Hq + h) * D + x] = acc[x]! / sum;
      }
    }
  });
  return out;
}

function runPaged(c: PagedCase, d: PagedData, dtype: 'f32' | 'bf16'): Float32Array {
  const t = (a: Float32Array, shape: number[]) => Tensor.from(a, shape, { device: dev, dtype });
  const pool = [c.numBlocks, c.blockSize, c.Hkv, c.D];
  const sinks = Tensor.from(c.sinks ?? new Array(c.Hq).fill(-Infinity), [c.Hq], { device: dev });
  const out = pagedAttention(t(d.q, [d.N, c.Hq, c.D]), t(d.kPool, pool), t(d.vPool, pool), metaTensors(c, d), {
    window: c.window,
    sinks,
    scale: c.scale,
  });
  assert.deepEqual(out.shape, [d.N, c.Hq, c.D]);
  assert.equal(out.dtype, dtype);
  return out.toFloat32();
}

const identity = (x: Float32Array) => x;
const toBf16 = (x: Float32Array) => Tensor.from(x, [x.length], { device: dev, dtype: 'bf16' }).toFloat32();

const cases: [string, PagedCase][] = [
  [
    'mixed decode / prefill chunks / skipped sequences, GQA 2, sinks, window 5',
    {
      Hq: 4, Hkv: 2, D: 8, numBlocks: 24, blockSize: 4,
      seqs: [{ ctx: 1, qlen: 1 }, { ctx: 13, qlen: 1 }, { ctx: 9, qlen: 9 }, { ctx: 7, qlen: 0 }, { ctx: 17, qlen: 6 }, { ctx: 4, qlen: 2 }],
      window: 5, sinks: [0.4, -1.1, 2.0, 0.0], scale: 0.35,
    },
  ],
  [
    'full causal, GQA 3, no sinks, block size 1',
    {
      Hq: 6, Hkv: 2, D: 8, numBlocks: 40, blockSize: 1,
      seqs: [{ ctx: 11, qlen: 11 }, { ctx: 20, qlen: 1 }, { ctx: 6, qlen: 3 }],
      window: 0, sinks: null, scale: 0.3,
    },
  ],
  [
    'head_dim 64, contexts past a window of 16, GQA 4, sinks',
    {
      Hq: 8, Hkv: 2, D: 64, numBlocks: 20, blockSize: 8,
      seqs: [{ ctx: 40, qlen: 1 }, { ctx: 35, qlen: 12 }, { ctx: 17, qlen: 17 }, { ctx: 0, qlen: 0 }],
      window: 16, sinks: [0.1, 0.5, -0.3, 1.5, 0, -2, 0.7, 0.2], scale: 0.125,
    },
  ],
];

for (const [name, c] of cases) {
  test(`pagedAttention matches the float64 reference: ${name}`, () => {
    const d = makeData(c, 100 + c.D + c.seqs.length);
    const e32 = maxAbsDiff(runPaged(c, d, 'f32'), reference(c, d, identity));
    assert.ok(e32 < 1e-5, `f32 error ${e32}`);
    // bf16 storage: the reference sees the same rounded inputs; the output is rounded once (|out| <= max |v| ~ 4).
    const e16 = maxAbsDiff(runPaged(c, d, 'bf16'), reference(c, d, toBf16));
    assert.ok(e16 < 2e-2, `bf16 error ${e16}`);
  });
}

test('pagedAttention equals the dense attention op on the same tokens laid out contiguously', () => {
  const c = cases[0]![1];
  for (const window of [0, 5]) {
    const cw = { ...c, window };
    const d = makeData(cw, 7);
    const { Hq, Hkv, D, blockSize } = cw;
    // Dense layout: every sequence's whole context packed; the query rows of this step are the last qlen
    // positions, earlier positions get random queries whose outputs are not compared.
    const live = cw.seqs.filter((s) => s.ctx > 0);
    const T = live.reduce((a, s) => a + s.ctx, 0);
    const qd = randn(T * Hq * D, 99), kd = new Float32Array(T * Hkv * D), vd = new Float32Array(T * Hkv * D);
    const pick: [number, number][] = [];  // [paged row, dense row]
    let t0 = 0, n = 0;
    cw.seqs.forEach((s, b) => {
      for (let j = 0; j < s.ctx; j++) {
        const row = d.tables[b]![Math.floor(j / blockSize)]! * blockSize + (j % blockSize);
        kd.set(d.kPool.subarray(row * Hkv * D, (row + 1) * Hkv * D), (t0 + j) * Hkv * D);
        vd.set(d.vPool.subarray(row * Hkv * D, (row + 1) * Hkv * D), (t0 + j) * Hkv * D);
      }
      for (let r = 0; r < s.qlen; r++, n++) {
        const dense = t0 + s.ctx - s.qlen + r;
        qd.set(d.q.subarray(n * Hq * D, (n + 1) * Hq * D), dense * Hq * D);
        pick.push([n, dense]);
      }
      t0 += s.ctx;
    });
    const f32 = (a: Float32Array, shape: number[]) => Tensor.from(a, shape, { device: dev });
    const { cuSeqlens, maxSeqlen } = packedCuSeqlens(live.map((s) => s.ctx), dev);
    const sinks = f32(Float32Array.from(cw.sinks!), [Hq]);
    const dense = attentionForward(f32(qd, [T, Hq, D]), f32(kd, [T, Hkv, D]), f32(vd, [T, Hkv, D]), {
      cuSeqlens, maxSeqlen, window, sinks, scale: cw.scale,
    }).out.toFloat32();
    const paged = runPaged(cw, d, 'f32');
    let err = 0;
    for (const [p, q] of pick)
      for (let x = 0; x < Hq * D; x++) err = Math.max(err, Math.abs(paged[p * Hq * D + x]! - dense[q * Hq * D + x]!));
    assert.ok(err < 1e-6, `window ${window}: paged vs dense ${err}`);
  }
});

test('pagedAttention: an empty step and a sequence with no query rows', () => {
  const c: PagedCase = { Hq: 2, Hkv: 1, D: 4, numBlocks: 2, blockSize: 2, seqs: [{ ctx: 3, qlen: 0 }], window: 0, sinks: [0, 0], scale: 0.5 };
  const d = makeData(c, 3);
  assert.equal(runPaged(c, d, 'f32').length, 0);
});

test('pagedAttention rejects bad metadata and shapes with a message naming the entry', () => {
  const c = cases[0]![1];
  const d = makeData(c, 11);
  const m = metaTensors(c, d);
  const pool = [c.numBlocks, c.blockSize, c.Hkv, c.D];
  const q = Tensor.from(d.q, [d.N, c.Hq, c.D], { device: dev });
  const k = Tensor.from(d.kPool, pool, { device: dev });
  const v = Tensor.from(d.vPool, pool, { device: dev });
  const sinks = Tensor.from(c.sinks!, [c.Hq], { device: dev });
  const opts = { window: c.window, sinks };
  const i32 = (a: number[], shape: number[]) => Tensor.from(Int32Array.from(a), shape, { device: dev });
  const B = c.seqs.length;
  const ctx = c.seqs.map((s) => s.ctx);
  const qs = [0];
  for (const s of c.seqs) qs.push(qs.at(-1)! + s.qlen);
  const run = (meta: Partial<typeof m>, o: Partial<typeof opts> = {}, qq = q, kk = k) =>
    pagedAttention(qq, kk, v, { ...m, ...meta }, { ...opts, ...o });

  assert.throws(() => run({ queryStarts: i32([...qs.slice(0, -1), qs.at(-1)! - 1], [B + 1]) }), /pagedAttention: queryStarts must run from 0 to the 19 query rows/);
  assert.throws(() => run({ queryStarts: i32([0, 1, 0, ...qs.slice(3)], [B + 1]) }), /queryStarts must be non-decreasing, got queryStarts\[1\] = 1 > queryStarts\[2\] = 0/);
  assert.throws(() => run({ contextLens: i32([0, ...ctx.slice(1)], [B]) }), /contextLens\[0\] = 0 is smaller than its 1 query rows/);
  assert.throws(() => run({ contextLens: i32([...ctx.slice(0, 4), 40, ...ctx.slice(5)], [B]) }), /contextLens\[4\] = 40 does not fit/);
  const bt = m.blockTables.toInt32();
  bt[1 * d.maxBlocks + 2] = c.numBlocks;  // sequence 1 (ctx 13, one decode row) reads its block 2 under window 5
  assert.throws(() => run({ blockTables: i32([...bt], [B, d.maxBlocks]) }), /blockTables\[1\]\[2\] = 24 is not a block of the pool \(24 blocks\)/);
  // The same entry is never read when the window ends before it... block 0 of sequence 1 is outside window 5.
  const bt2 = m.blockTables.toInt32();
  bt2[1 * d.maxBlocks + 0] = -7;
  assert.doesNotThrow(() => run({ blockTables: i32([...bt2], [B, d.maxBlocks]) }));
  assert.throws(() => run({ blockTables: i32([...bt2], [B, d.maxBlocks]) }, { window: 0 }), /blockTables\[1\]\[0\] = -7/);
  assert.throws(() => run({ contextLens: i32(ctx.slice(1), [B - 1]) }), /blockTables must have one row per sequence \(5 contextLens\)/);
  assert.throws(() => run({ queryStarts: i32(qs.slice(1), [B]) }), /pagedAttention: queryStarts/);
  assert.throws(() => run({}, { window: -1 }), /window must be a non-negative integer/);
  assert.throws(() => run({}, {}, q, v.view([c.numBlocks * 2, c.blockSize / 2, c.Hkv, c.D])), /pagedAttention: vPool/);
  assert.throws(() => run({}, {}, Tensor.zeros([d.N, 3, c.D], { device: dev })), /query heads must be a multiple of kv heads/);
  assert.throws(() => run({}, {}, Tensor.zeros([d.N, c.Hq, c.D], { device: dev, dtype: 'bf16' })), /pagedAttention: kPool/);
  assert.throws(() => run({}, { sinks: Tensor.zeros([c.Hq + 1], { device: dev }) }), /pagedAttention: sinks/);
});
