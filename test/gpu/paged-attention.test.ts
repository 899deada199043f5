// Paged attention on CUDA: against the CPU op (fp32 math on the same bf16 inputs, the truth here) with the
// FlashAttention-style bound (error <= 2x that of a plain BF16 implementation + a small floor), over decode batches
// (64 sequences x contexts up to 4k), the split-KV path (few sequences, long contexts), mixed steps (decodes,
// prefill chunks, skipped sequences), long prefills, GQA 1/4/8, head_dim 64 and 128, windows, sinks f32/bf16/none.
// Block-table entries a sequence must not read (past its context, before its window) hold out-of-range ids, so a
// kernel that reads them faults. GPU machine only.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, cudaDeviceCount, roundBf16, roundBf16Scalar, CudaEvent } from '../../src/tensor.ts';
import { pagedAttention } from '../../src/ops/paged-attention.ts';
import { attentionDecode } from '../../src/ops/attention.ts';
import { randn, rng } from '../helpers/random.ts';
import { maxAbsDiff } from '../helpers/numeric.ts';

const skip = cudaDeviceCount() === 0 ? 'no CUDA device (GPU machine only)' : false;
const G = 'cuda:0';
const NEVER_READ = 1 << 30;  // a block id far outside every pool

interface Case {
  Hq: number;
  Hkv: number;
  D: number;
  blockSize: number;
  numBlocks: number;
  window: number;
  sinks: 'f32' | 'bf16' | 'none';
  seqs: { ctx: number; qlen: number }[];
}

interface Data {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  sinks: Float32Array;
  table: Int32Array;  // [B, maxBlocks]
  maxBlocks: number;
  N: number;
}

/** bf16-exact random inputs; blocks drawn with replacement (sequences may share blocks, as shared prompts do). */
function makeData(c: Case, seed: number): Data {
  const r = rng(seed);
  const maxBlocks = Math.max(...c.seqs.map((s) => Math.ceil(s.ctx / c.blockSize))) + 2;
  const table = new Int32Array(c.seqs.length * maxBlocks).fill(NEVER_READ);
  c.seqs.forEach((s, b) => {
    if (s.qlen === 0) return;  // a skipped sequence reads nothing: its whole row stays out of range
    const firstKey = c.window > 0 ? Math.max(0, s.ctx - s.qlen - c.window + 1) : 0;
    for (let j = Math.floor(firstKey / c.blockSize); j * c.blockSize < s.ctx; j++) table[b * maxBlocks + j] = Math.floor(r() * c.numBlocks);
  });
  const N = c.seqs.reduce((a, s) => a + s.qlen, 0);
  const pool = c.numBlocks * c.blockSize * c.Hkv * c.D;
  const sinks = c.sinks === 'none' ? new Float32Array(c.Hq).fill(-Infinity) : roundBf16(randn(c.Hq, seed + 4));
  return {
    q: roundBf16(randn(N * c.Hq * c.D, seed + 1, 1.5)),
    k: roundBf16(randn(pool, seed + 2, 1.5)),
    v: roundBf16(randn(pool, seed + 3)),
    sinks,
    table,
    maxBlocks,
    N,
  };
}

function run(dev: string, c: Case, d: Data): Float32Array {
  const bf = (a: Float32Array, shape: number[]) => Tensor.from(a, shape, { device: dev, dtype: 'bf16' });
  const B = c.seqs.length;
  const qs = new Int32Array(B + 1);
  c.seqs.forEach((s, b) => (qs[b + 1] = qs[b]! + s.qlen));
  const poolShape = [c.numBlocks, c.blockSize, c.Hkv, c.D];
  const out = pagedAttention(
    bf(d.q, [d.N, c.Hq, c.D]),
    bf(d.k, poolShape),
    bf(d.v, poolShape),
    {
      blockTables: Tensor.from(d.table, [B, d.maxBlocks], { device: dev }),
      contextLens: Tensor.from(Int32Array.from(c.seqs.map((s) => s.ctx)), [B], { device: dev }),
      queryStarts: Tensor.from(qs, [B + 1], { device: dev }),
    },
    { window: c.window, sinks: Tensor.from(d.sinks, [c.Hq], { device: dev, dtype: c.sinks === 'bf16' ? 'bf16' : 'f32' }) },
  );
  assert.deepEqual(out.shape, [d.N, c.Hq, c.D]);
  return out.toFloat32();
}

const rb = roundBf16Scalar;

/** A plain BF16 implementation: scores rounded to bf16, softmax in fp32, P rounded to bf16, output rounded. */
function plainBf16(c: Case, d: Data): Float32Array {
  const { Hq, Hkv, D, blockSize } = c;
  const Gq = Hq / Hkv, scale = 1 / Math.sqrt(D);
  const out = new Float32Array(d.N * Hq * D);
  const acc = new Float64Array(D);
  let n = 0;
  c.seqs.forEach((s, b) => {
    for (let r = 0; r < s.qlen; r++, n++) {
      const pos = s.ctx - s.qlen + r;
      const lo = c.window > 0 ? Math.max(0, pos - c.window + 1) : 0;
      const rows = new Int32Array(pos - lo + 1);
      for (let j = lo; j <= pos; j++) rows[j - lo] = d.table[b * d.maxBlocks + Math.floor(j / blockSize)]! * blockSize + (j % blockSize);
      for (let h = 0; h < Hq; h++) {
        const kvh = Math.floor(h / Gq), qo = (n * Hq + h) * D;
        const sc = new Float32Array(rows.length);
        let mx = d.sinks[h]!;
        for (let j = 0; j < rows.length; j++) {
          const ko = (rows[j]! * Hkv + kvh) * D;
          let dot = 0;
          for (let x = 0; x < D; x++) dot += d.q[qo + x]! * d.k[ko + x]!;
          sc[j] = rb(rb(dot) * scale);
          mx = Math.max(mx, sc[j]!);
        }
        let sum = Math.exp(d.sinks[h]! - mx);
        for (let j = 0; j < rows.length; j++) sum += Math.exp(sc[j]! - mx);
        acc.fill(0);
        for (let j = 0; j < rows.length; j++) {
          const p = rb(Math.exp(sc[j]! - mx) / sum), vo = (rows[j]! * Hkv + kvh) * D;
          for (let x = 0; x < D; x++) acc[x] += p * d.v[vo + x]!;
        }
        for (let x = 0; x < D; x++) out[qo + x] = rb(acc[x]!);
      }
    }
  });
  return out;
}

function ctxs(n: number, seed: number, max: number): number[] {
  const r = rng(seed);
  return Array.from({ length: n }, (_, i) => (i % 8 === 0 ? max : 1 + Math.floor(r() * max)));
}

const cases: [string, Case][] = [];
for (const window of [0, 128]) {
  cases.push(
    [
      `decode batch: 64 sequences x contexts up to 4096, Hq 64 / Hkv 8 / D 64, block 16, window ${window}`,
      { Hq: 64, Hkv: 8, D: 64, blockSize: 16, numBlocks: 1024, window, sinks: 'f32', seqs: ctxs(64, 1, 4096).map((ctx) => ({ ctx, qlen: 1 })) },
    ],
    [
      // A table of 15 blocks (240 keys) is under kMinSplitKeys (paged_attention.cu): one CTA per kv head.
      `batch 1, short context (the engine's decode step, unsplit): context 200, Hq 64 / Hkv 8 / D 64, block 16, window ${window}`,
      { Hq: 64, Hkv: 8, D: 64, blockSize: 16, numBlocks: 64, window, sinks: 'bf16', seqs: [{ ctx: 200, qlen: 1 }] },
    ],
    [
      `split-KV at batch 1 (merged by the last split): context 1500, Hq 64 / Hkv 8 / D 64, block 16, window ${window}`,
      { Hq: 64, Hkv: 8, D: 64, blockSize: 16, numBlocks: 128, window, sinks: 'bf16', seqs: [{ ctx: 1500, qlen: 1 }] },
    ],
    [
      `split-KV: 3 sequences (contexts 4000 / 1 / 2500), Hq 64 / Hkv 8 / D 64, block 32, window ${window}`,
      { Hq: 64, Hkv: 8, D: 64, blockSize: 32, numBlocks: 300, window, sinks: 'bf16', seqs: [{ ctx: 4000, qlen: 1 }, { ctx: 1, qlen: 1 }, { ctx: 2500, qlen: 1 }] },
    ],
  );
}
for (const window of [0, 37, 128]) {
  const seqs = [{ ctx: 300, qlen: 1 }, { ctx: 700, qlen: 200 }, { ctx: 150, qlen: 150 }, { ctx: 50, qlen: 0 }, { ctx: 1, qlen: 1 }, { ctx: 129, qlen: 2 }, { ctx: 66, qlen: 17 }];
  cases.push(
    [`mixed step (decodes, prefill chunks, a skipped sequence), GQA 4, D 64, block 32, window ${window}`, { Hq: 8, Hkv: 2, D: 64, blockSize: 32, numBlocks: 64, window, sinks: 'f32', seqs }],
    [`mixed step, GQA 1, D 64, block 16, no sinks, window ${window}`, { Hq: 4, Hkv: 4, D: 64, blockSize: 16, numBlocks: 128, window, sinks: 'none', seqs }],
    [`mixed step, GQA 8, D 128, block 64, window ${window}`, { Hq: 8, Hkv: 1, D: 128, blockSize: 64, numBlocks: 32, window, sinks: 'f32', seqs }],
  );
}
for (const window of [0, 128]) {
  cases.push(
    [`long prefill (one split): 2100 tokens, Hq 16 / Hkv 4 / D 128, block 16, window ${window}`, { Hq: 16, Hkv: 4, D: 128, blockSize: 16, numBlocks: 160, window, sinks: 'f32', seqs: [{ ctx: 2100, qlen: 2100 }] }],
    [`long prefill chunk after a cached prefix: 1024 of 3000 tokens, Hq 16 / Hkv 2 / D 64, window ${window}`, { Hq: 16, Hkv: 2, D: 64, blockSize: 16, numBlocks: 256, window, sinks: 'bf16', seqs: [{ ctx: 3000, qlen: 1024 }, { ctx: 900, qlen: 1 }] }],
  );
}

for (const [name, c] of cases) {
  test(`cuda pagedAttention vs cpu: ${name}`, { skip, timeout: 600000 }, () => {
    const d = makeData(c, name.length * 7 + c.D);
    const gpu = run(G, c, d);
    const cpu = run('cpu', c, d);
    const plain = plainBf16(c, d);
    const eg = maxAbsDiff(gpu, cpu), ep = maxAbsDiff(plain, cpu);
    console.log(`${name}: cuda err ${eg.toExponential(2)}, plain bf16 err ${ep.toExponential(2)}`);
    assert.ok(gpu.every(Number.isFinite), 'finite output');
    assert.ok(eg <= 2 * ep + 1e-3, `cuda error ${eg} > 2 x plain ${ep} + 1e-3`);
  });
}

test('cuda pagedAttention: an empty step, and repeated calls give identical results', { skip }, () => {
  const c: Case = { Hq: 8, Hkv: 2, D: 64, blockSize: 16, numBlocks: 16, window: 0, sinks: 'f32', seqs: [{ ctx: 40, qlen: 0 }] };
  assert.equal(run(G, c, makeData(c, 1)).length, 0);
  const c2: Case = { ...c, seqs: [{ ctx: 100, qlen: 30 }, { ctx: 7, qlen: 1 }] };
  const d2 = makeData(c2, 2);
  assert.deepEqual(run(G, c2, d2), run(G, c2, d2));
  // Split launches merge in their last CTA, through per-(tile, kv head) tickets that wrap back to 0: calls in a
  // row (different split counts, then the first again) keep giving the same bits.
  const split: Case = { Hq: 64, Hkv: 8, D: 64, blockSize: 16, numBlocks: 300, window: 0, sinks: 'f32', seqs: [{ ctx: 3000, qlen: 1 }, { ctx: 90, qlen: 1 }] };
  const one: Case = { ...split, seqs: [{ ctx: 700, qlen: 1 }] };
  const ds = makeData(split, 3), d1 = makeData(one, 4);
  const first = run(G, split, ds), first1 = run(G, one, d1);
  for (let i = 0; i < 3; i++) {
    assert.deepEqual(run(G, split, ds), first);
    assert.deepEqual(run(G, one, d1), first1);
  }
});

test('cuda pagedAttention refuses f32 inputs and head_dim 32 with the shapes', { skip }, () => {
  const meta = {
    blockTables: Tensor.from(Int32Array.of(0), [1, 1], { device: G }),
    contextLens: Tensor.from(Int32Array.of(1), [1], { device: G }),
    queryStarts: Tensor.from(Int32Array.of(0, 1), [2], { device: G }),
  };
  const sinks = Tensor.zeros([2], { device: G });
  const q = Tensor.zeros([1, 2, 64], { device: G });
  const pool = Tensor.zeros([1, 4, 1, 64], { device: G });
  assert.throws(() => pagedAttention(q, pool, pool, meta, { window: 0, sinks }), /pagedAttention: the CUDA backend needs bf16 q and pools, got f32\[1, 2, 64\]/);
  const q32 = Tensor.zeros([1, 2, 32], { device: G, dtype: 'bf16' });
  const pool32 = Tensor.zeros([1, 4, 1, 32], { device: G, dtype: 'bf16' });
  assert.throws(() => pagedAttention(q32, pool32, pool32, meta, { window: 0, sinks }), /head_dim 64 or 128, got bf16\[1, 2, 32\]/);
});

// Timings only (no assertion): gpt-oss-20b's attention shape (Hq 64, Hkv 8, D 64), block 16, blocks scattered
// over the pool. Decode: ms per call and GB/s of the K/V bytes the rows need, beside the dense-cache decode op on
// the same lengths; prefill: one 2048-token chunk, TFLOP/s by 4·D per allowed (query, key) pair per head.
test('cuda pagedAttention timings (printed)', { skip, timeout: 600000 }, () => {
  const Hq = 64, Hkv = 8, D = 64, bs = 16;
  const time = (fn: () => void, reps: number): number => {
    fn();
    const e0 = new CudaEvent(G, true).record();
    for (let i = 0; i < reps; i++) fn();
    const e1 = new CudaEvent(G, true).record();
    e1.synchronize();
    return e0.elapsedMs(e1) / reps;
  };
  const scattered = (B: number, blocksPerSeq: number, numBlocks: number): Int32Array => {
    const r = rng(B * 131 + blocksPerSeq);
    const t = new Int32Array(B * blocksPerSeq);
    for (let i = 0; i < t.length; i++) t[i] = Math.floor(r() * numBlocks);
    return t;
  };
  for (const [B, ctx] of [[1, 4096], [64, 4096], [256, 2048], [512, 1024]] as const) {
    const blocksPerSeq = ctx / bs, numBlocks = B * blocksPerSeq;
    const pool = Tensor.zeros([numBlocks, bs, Hkv, D], { device: G, dtype: 'bf16' });
    const q = Tensor.zeros([B, Hq, D], { device: G, dtype: 'bf16' });
    const sinks = Tensor.zeros([Hq], { device: G });
    const meta = {
      blockTables: Tensor.from(scattered(B, blocksPerSeq, numBlocks), [B, blocksPerSeq], { device: G }),
      contextLens: Tensor.from(new Int32Array(B).fill(ctx), [B], { device: G }),
      queryStarts: Tensor.from(Int32Array.from({ length: B + 1 }, (_, i) => i), [B + 1], { device: G }),
    };
    const dense = Tensor.zeros([B, ctx, Hkv, D], { device: G, dtype: 'bf16' });
    for (const window of [0, 128]) {
      const ms = time(() => pagedAttention(q, pool, pool, meta, { window, sinks }).dispose(), 20);
      const msDense = time(() => attentionDecode(q, dense, dense, { seqLens: meta.contextLens, window, sinks }).dispose(), 20);
      const keys = window > 0 ? Math.min(window, ctx) : ctx;
      const gbs = (B * keys * Hkv * D * 2 * 2) / (ms * 1e6);
      console.log(`paged decode B${B} ctx${ctx} W${window}: ${ms.toFixed(3)} ms (${gbs.toFixed(0)} GB/s of K/V), dense attentionDecode ${msDense.toFixed(3)} ms`);
    }
    for (const t of [pool, q, sinks, dense, meta.blockTables, meta.contextLens, meta.queryStarts]) t.dispose();
  }
  const S = 2048, numBlocks = S / bs;
  const pool = Tensor.zeros([numBlocks, bs, Hkv, D], { device: G, dtype: 'bf16' });
  const q = Tensor.zeros([S, Hq, D], { device: G, dtype: 'bf16' });
  const sinks = Tensor.zeros([Hq], { device: G });
  const meta = {
    blockTables: Tensor.from(scattered(1, numBlocks, numBlocks), [1, numBlocks], { device: G }),
    contextLens: Tensor.from(Int32Array.of(S), [1], { device: G }),
    queryStarts: Tensor.from(Int32Array.of(0, S), [2], { device: G }),
  };
  for (const window of [0, 128]) {
    const ms = time(() => pagedAttention(q, pool, pool, meta, { window, sinks }).dispose(), 10);
    let pairs = 0;
    for (let i = 0; i < S; i++) pairs += window > 0 ? Math.min(window, i + 1) : i + 1;
    console.log(`paged prefill ${S} tokens W${window}: ${ms.toFixed(3)} ms (${((pairs * Hq * 4 * D) / (ms * 1e9)).toFixed(1)} TFLOP/s)`);
  }
});
