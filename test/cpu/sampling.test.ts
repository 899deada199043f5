// CPU sampler: exact tokens against a TypeScript re-implementation of the method (same hash, same thresholds),
// greedy ties, top-k / top-p sets, the empirical distribution, determinism per seed/step, bad inputs; the per-row
// sampler (sampleRows): row independence, equality with `sample` per row, bf16 logits, bad inputs; the vocabulary-
// parallel sampler (sampleParts per slice + combineSampleParts) against sampleRows over the whole rows.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor } from '../../src/tensor.ts';
import { combineSampleParts, rowSplits, sample, sampleParts, sampleRows } from '../../src/ops/sampling.ts';
import { uniformSym } from '../helpers/random.ts';
import { sampleBySlices, samplingRowTensors, type SamplingRow } from '../helpers/sampling-rows.ts';

const dev = 'cpu';
const M64 = (1n << 64n) - 1n;

function splitmix64(x: bigint): bigint {
  x = (x + 0x9e3779b97f4a7c15n) & M64;
  x = ((x ^ (x >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
  x = ((x ^ (x >> 27n)) * 0x94d049bb133111ebn) & M64;
  return x ^ (x >> 31n);
}
function rowKey(seed: number, step: number, row: number): bigint {
  return splitmix64(splitmix64(splitmix64(BigInt(seed)) ^ BigInt(step)) ^ ((BigInt(row) * 0xd6e8feb86659fd93n) & M64));
}
function gumbel(key: bigint, j: number): number {
  const h = splitmix64(key ^ ((BigInt(j) * 0xd1b54a32d192ed03n) & M64));
  const u = (Number(h >> 11n) + 0.5) / 9007199254740992;
  return -Math.log(-Math.log(u));
}

/** Reference of native/cpu/sampling.h with sorting instead of the bitwise searches. */
function refSample(row: Float32Array, o: { temperature: number; topK?: number; topP?: number; seed: number; step?: number }, b: number): { token: number; logprob: number; allowed: Set<number> } {
  const V = row.length;
  if (o.temperature === 0) {
    let best = 0;
    for (let j = 1; j < V; j++) if (row[j]! > row[best]!) best = j;
    let s = 0;
    for (let j = 0; j < V; j++) s += Math.exp(row[j]! - row[best]!);
    return { token: best, logprob: -Math.log(s), allowed: new Set([best]) };
  }
  const z = new Float32Array(V);
  for (let j = 0; j < V; j++) z[j] = Math.fround(row[j]! / o.temperature);
  const mx = Math.max(...z);
  const sorted = [...z].sort((x, y) => y - x);
  let tau = -Infinity;
  if (o.topK && o.topK < V) tau = sorted[o.topK - 1]!;
  if (o.topP !== undefined && o.topP < 1) {
    const cand = sorted.filter((x) => x >= tau);
    const e = cand.map((x) => Math.exp(x - mx));
    const total = e.reduce((a, c) => a + c, 0);
    // smallest value whose cumulative mass of all entries >= it reaches p·total (ties kept)
    let cum = 0;
    for (let i = 0; i < cand.length; i++) {
      cum += e[i]!;
      if (i + 1 < cand.length && cand[i + 1] === cand[i]) continue;
      if (cum >= o.topP * total) {
        tau = Math.max(tau, cand[i]!);
        break;
      }
    }
  }
  const key = rowKey(o.seed, o.step ?? 0, b);
  let best = -1, bestScore = -Infinity, s = 0;
  const allowed = new Set<number>();
  for (let j = 0; j < V; j++) {
    if (z[j]! < tau) continue;
    allowed.add(j);
    s += Math.exp(z[j]! - mx);
    const sc = z[j]! + gumbel(key, j);
    if (best < 0 || sc > bestScore) (best = j), (bestScore = sc);
  }
  return { token: best, logprob: z[best]! - mx - Math.log(s), allowed };
}

test('sample draws exactly the reference tokens (temperature, top-k, top-p, seeds, steps)', () => {
  for (const [B, V] of [[1, 1], [7, 113], [5, 257], [3, 1000]] as [number, number][]) {
    const l = uniformSym(B * V, B * 1000 + V, 3);
    const t = Tensor.from(l, [B, V], { device: dev });
    for (const o of [
      { temperature: 0, seed: 0 },
      { temperature: 1, seed: 1 },
      { temperature: 0.5, seed: 2, step: 9 },
      { temperature: 1.2, topK: 5, seed: 3 },
      { temperature: 1, topP: 0.8, seed: 4, step: 1 },
      { temperature: 0.9, topK: 30, topP: 0.6, seed: 2 ** 45 + 17, step: 77 },
      { temperature: 1, topK: 1, seed: 5 },
      { temperature: 1, topP: 1e-6, seed: 6 },
    ]) {
      const r = sample(t, o);
      const tok = r.tokens.toInt32(), lp = r.logprobs.toFloat32();
      for (let b = 0; b < B; b++) {
        const ref = refSample(l.subarray(b * V, (b + 1) * V), o, b);
        assert.equal(tok[b], ref.token, `B${B} V${V} row ${b} ${JSON.stringify(o)}`);
        assert.ok(Math.abs(lp[b]! - ref.logprob) < 1e-5, `logprob ${lp[b]} vs ${ref.logprob}`);
      }
    }
  }
});

test('sample: greedy ties go to the lowest id; top-k keeps threshold ties', () => {
  const l = Tensor.from([1, 3, 3, 2, 3, 0], [1, 6], { device: dev });
  assert.equal(sample(l, { temperature: 0, seed: 0 }).tokens.toInt32()[0], 1);
  const seen = new Set<number>();
  for (let step = 0; step < 200; step++) seen.add(sample(l, { temperature: 1, topK: 1, seed: 1, step }).tokens.toInt32()[0]!);
  assert.deepEqual([...seen].sort(), [1, 2, 4]);
  const lp = sample(l, { temperature: 1, topK: 1, seed: 1 }).logprobs.toFloat32()[0]!;
  assert.ok(Math.abs(lp - Math.log(1 / 3)) < 1e-6);
});

test('sample: the empirical distribution follows softmax(z / T) restricted by top-p', () => {
  const logits = [2, 1, 0.5, 0, -1];
  const B = 20000;
  const l = new Float32Array(B * 5);
  for (let b = 0; b < B; b++) l.set(logits, b * 5);
  const t = Tensor.from(l, [B, 5], { device: dev });
  const check = (opts: { temperature: number; topP?: number }, probs: number[]) => {
    const tok = sample(t, { ...opts, seed: 123 }).tokens.toInt32();
    const cnt = new Array(5).fill(0);
    for (const x of tok) cnt[x]++;
    for (let j = 0; j < 5; j++) {
      const sd = Math.sqrt((B * probs[j]! * (1 - probs[j]!)) || 1);
      assert.ok(Math.abs(cnt[j] - B * probs[j]!) < 5 * sd, `${JSON.stringify(opts)} token ${j}: ${cnt[j]} vs ${B * probs[j]!}`);
    }
  };
  const soft = (T: number, keep: number) => {
    const e = logits.map((x, i) => (i < keep ? Math.exp(x / T) : 0));
    const s = e.reduce((a, b) => a + b, 0);
    return e.map((x) => x / s);
  };
  check({ temperature: 1 }, soft(1, 5));
  check({ temperature: 0.5 }, soft(0.5, 5));
  // p(0..2) at T=1: 0.574, 0.211, 0.128 -> 0.7 needs the top 2 entries.
  check({ temperature: 1, topP: 0.7 }, soft(1, 2));
});

test('sample is deterministic per (seed, step) and changes with them', () => {
  const l = Tensor.from(uniformSym(8 * 500, 5, 2), [8, 500], { device: dev });
  const a = [...sample(l, { temperature: 1, seed: 42, step: 3 }).tokens.toInt32()];
  assert.deepEqual([...sample(l, { temperature: 1, seed: 42, step: 3 }).tokens.toInt32()], a);
  assert.notDeepEqual([...sample(l, { temperature: 1, seed: 42, step: 4 }).tokens.toInt32()], a);
  assert.notDeepEqual([...sample(l, { temperature: 1, seed: 43, step: 3 }).tokens.toInt32()], a);
});

test('sample rejects bad inputs', () => {
  const l = Tensor.zeros([2, 5], { device: dev });
  assert.throws(() => sample(Tensor.zeros([2, 5], { dtype: 'bf16', device: dev }), { temperature: 1, seed: 0 }), /logits must be f32 \[B, V\] with V > 0, got bf16\[2, 5\]/);
  assert.throws(() => sample(l, { temperature: -1, seed: 0 }), /temperature must be >= 0/);
  assert.throws(() => sample(l, { temperature: 1, topP: 0, seed: 0 }), /topP must be in \(0, 1\]/);
  assert.throws(() => sample(l, { temperature: 1, topK: -2, seed: 0 }), /topK must be >= 0/);
  assert.throws(() => sample(l, { temperature: 1, seed: -1 }), /seed and step must be non-negative/);
  assert.throws(() => sample(l, { temperature: 1, seed: 0.5 }), /seed must be an integer/);
});

// ---- sampleRows: per-row parameters and noise keys ----

const rowsTensors = (rows: readonly SamplingRow[]) => samplingRowTensors(rows, dev);

/** A mix of greedy, plain, top-k, top-p and combined rows with distinct seeds and counters. */
function mixedRows(B: number): SamplingRow[] {
  const kinds = [
    { temperature: 0, topP: 1, topK: 0 },
    { temperature: 1, topP: 1, topK: 0 },
    { temperature: 0.7, topP: 0.9, topK: 0 },
    { temperature: 1.3, topP: 1, topK: 7 },
    { temperature: 0.9, topP: 0.6, topK: 30 },
  ];
  return Array.from({ length: B }, (_, b) => ({ ...kinds[b % kinds.length]!, seed: 1000 + 37 * b, counter: (b * 13) % 50 }));
}

test('sampleRows: each row draws the reference token of its own (seed, counter), whatever its batch row', () => {
  const B = 11, V = 301;
  const l = uniformSym(B * V, 77, 3);
  const rows = mixedRows(B);
  const r = sampleRows(Tensor.from(l, [B, V], { device: dev }), rowsTensors(rows));
  const tok = r.tokens.toInt32(), lp = r.logprobs.toFloat32();
  for (let b = 0; b < B; b++) {
    const o = rows[b]!;
    // The row key is the one `sample` gives row 0 for seed = seed_b, step = counter_b.
    const ref = refSample(l.subarray(b * V, (b + 1) * V), { ...o, step: o.counter }, 0);
    assert.equal(tok[b], ref.token, `row ${b} ${JSON.stringify(o)}`);
    assert.ok(Math.abs(lp[b]! - ref.logprob) < 1e-5, `row ${b} logprob ${lp[b]} vs ${ref.logprob}`);
    const alone = sample(Tensor.from(l.subarray(b * V, (b + 1) * V), [1, V], { device: dev }), { ...o, step: o.counter });
    assert.equal(tok[b], alone.tokens.toInt32()[0], `row ${b} vs sample() alone`);
    assert.equal(lp[b], alone.logprobs.toFloat32()[0], `row ${b} logprob vs sample() alone`);
  }
});

test('sampleRows: permuting the rows permutes the results', () => {
  const B = 16, V = 97;
  const l = uniformSym(B * V, 5, 2);
  const rows = mixedRows(B);
  const base = sampleRows(Tensor.from(l, [B, V], { device: dev }), rowsTensors(rows));
  const tok = base.tokens.toInt32(), lp = base.logprobs.toFloat32();
  const perm = Array.from({ length: B }, (_, i) => (i * 5 + 3) % B);  // 5 is coprime with 16
  const lp2 = new Float32Array(B * V);
  perm.forEach((src, dst) => lp2.set(l.subarray(src * V, (src + 1) * V), dst * V));
  const r = sampleRows(Tensor.from(lp2, [B, V], { device: dev }), rowsTensors(perm.map((i) => rows[i]!)));
  const tok2 = r.tokens.toInt32(), lpr2 = r.logprobs.toFloat32();
  perm.forEach((src, dst) => {
    assert.equal(tok2[dst], tok[src], `row ${src} moved to ${dst}`);
    assert.equal(lpr2[dst], lp[src]);
  });
  // A subset of the rows (what a batch looks like after some sequences finished) draws the same tokens.
  const sub = [2, 9, 14];
  const ls = new Float32Array(sub.length * V);
  sub.forEach((src, dst) => ls.set(l.subarray(src * V, (src + 1) * V), dst * V));
  const rs = sampleRows(Tensor.from(ls, [sub.length, V], { device: dev }), rowsTensors(sub.map((i) => rows[i]!)));
  assert.deepEqual([...rs.tokens.toInt32()], sub.map((i) => tok[i]));
});

test('sampleRows: n samples of one prompt with seeds s..s+n-1 equal n separate one-row calls', () => {
  const n = 6, V = 200;
  const row = uniformSym(V, 9, 1.5);
  const l = new Float32Array(n * V);
  for (let k = 0; k < n; k++) l.set(row, k * V);
  const rows = Array.from({ length: n }, (_, k) => ({ temperature: 1, topP: 0.95, topK: 50, seed: 4242 + k, counter: 3 }));
  const together = sampleRows(Tensor.from(l, [n, V], { device: dev }), rowsTensors(rows)).tokens.toInt32();
  for (let k = 0; k < n; k++) {
    const one = sampleRows(Tensor.from(row, [1, V], { device: dev }), rowsTensors([rows[k]!])).tokens.toInt32()[0];
    assert.equal(together[k], one, `sample ${k}`);
  }
  assert.ok(new Set(together).size > 1, 'different seeds draw different tokens from a flat distribution');
});

test('sampleRows: bf16 logits draw as the f32 logits of the same values; seeds use all 32 bits', () => {
  const B = 6, V = 129;
  const l = uniformSym(B * V, 31, 2, true);
  const rows = mixedRows(B).map((r, b) => ({ ...r, seed: b % 2 ? 2 ** 32 - 1 - b : 2 ** 31 + b }));
  const a = sampleRows(Tensor.from(l, [B, V], { device: dev, dtype: 'bf16' }), rowsTensors(rows));
  const f = sampleRows(Tensor.from(l, [B, V], { device: dev }), rowsTensors(rows));
  assert.deepEqual([...a.tokens.toInt32()], [...f.tokens.toInt32()]);
  assert.deepEqual([...a.logprobs.toFloat32()], [...f.logprobs.toFloat32()]);
  for (let b = 0; b < B; b++) {
    const ref = refSample(l.subarray(b * V, (b + 1) * V), { ...rows[b]!, step: rows[b]!.counter }, 0);
    assert.equal(f.tokens.toInt32()[b], ref.token, `row ${b} (seed ${rows[b]!.seed})`);
  }
});

test('sampleRows rejects bad inputs, naming the row', () => {
  const B = 3, V = 5;
  const l = Tensor.zeros([B, V], { device: dev });
  const good = mixedRows(B);
  const bad = (i: number, patch: Partial<SamplingRow>) => rowsTensors(good.map((r, b) => (b === i ? { ...r, ...patch } : r)));
  assert.throws(() => sampleRows(l, bad(1, { temperature: -0.5 })), /sampleRows: temperature\[1\] must be >= 0, got -0.5/);
  assert.throws(() => sampleRows(l, bad(2, { topP: 0 })), /sampleRows: topP\[2\] must be in \(0, 1\], got 0/);
  assert.throws(() => sampleRows(l, bad(0, { topP: 1.5 })), /topP\[0\] must be in \(0, 1\]/);
  assert.throws(() => sampleRows(l, bad(0, { topK: -1 })), /sampleRows: topK\[0\] must be >= 0/);
  assert.throws(() => sampleRows(l, bad(1, { counter: -3 })), /sampleRows: counters\[1\] must be >= 0, got -3/);
  const p = rowsTensors(good);
  assert.throws(() => sampleRows(Tensor.zeros([B, V], { device: dev, dtype: 'i32' }), p), /sampleRows: logits must be f32 or bf16 \[B, V\]/);
  assert.throws(() => sampleRows(Tensor.zeros([B, 0], { device: dev }), p), /logits must be f32 or bf16 \[B, V\] with V > 0/);
  assert.throws(() => sampleRows(l, { ...p, topK: Tensor.zeros([B], { device: dev }) }), /sampleRows: topK must be i32/);
  assert.throws(() => sampleRows(l, { ...p, seeds: Tensor.zeros([B + 1], { device: dev, dtype: 'i32' }) }), /sampleRows: seeds must have shape \[3\]/);
  assert.throws(() => sampleRows(l, { ...p, temperature: Tensor.zeros([B], { device: dev, dtype: 'bf16' }) }), /sampleRows: temperature must be f32/);
  // The kernel-layout knob is CUDA's; the CPU refuses it rather than ignore it (and refuses unknown layouts).
  assert.throws(() => sampleRows(l, p, { strategy: 'split' }), /sampleRows: strategy 'split' chooses a CUDA kernel layout; the logits are on the CPU/);
  assert.throws(() => sampleRows(l, p, { strategy: 'blocks' as 'split' }), /sampleRows: strategy must be 'auto', 'single' or 'split', got 'blocks'/);
  assert.equal(sampleRows(l, p, { strategy: 'auto' }).tokens.shape[0], B);
});

test('vocabulary-parallel sampling: slice summaries combined draw sampleRows\' tokens (tp 1-5, 8, uneven slices padded; f32 and bf16)', () => {
  const B = 12, V = 256;
  for (const dtype of ['f32', 'bf16'] as const) {
    const l = uniformSym(B * V, 41, 3, dtype === 'bf16');
    const rows = mixedRows(B).map((r, b) => ({ ...r, topK: b % 5 === 3 ? V : r.topK })); // top-k >= V is off
    const whole = sampleRows(Tensor.from(l, [B, V], { device: dev, dtype }), rowsTensors(rows));
    const tok = whole.tokens.toInt32(), lp = whole.logprobs.toFloat32();
    for (const tp of [1, 2, 3, 4, 5, 8]) { // 3 and 5: uneven slices, the last one padded
      const got = sampleBySlices(l, B, V, tp, rows, { device: dev, dtype });
      rows.forEach((o, b) => {
        if (rowSplits(o.temperature, o.topP, o.topK, V)) {
          assert.equal(got.tokens[b], tok[b], `${dtype} tp ${tp} row ${b} ${JSON.stringify(o)}`);
          assert.ok(Math.abs(got.logprobs[b]! - lp[b]!) < 1e-6, `${dtype} tp ${tp} row ${b}: ${got.logprobs[b]} vs ${lp[b]}`);
        } else {
          assert.equal(got.tokens[b], -1, `tp ${tp} row ${b} needs a threshold: left to the gathered logits`);
          assert.ok(Number.isNaN(got.logprobs[b]!));
        }
      });
    }
  }
});

test('vocabulary-parallel sampling: ties across slices go to the lowest id; an all -inf row gives NaN as sampleRows does', () => {
  const V = 16;
  // Row 0: greedy, the max 2.5 at ids 13 (slice 3 of 4) and 6 (slice 1): 6 wins. Row 1: temperature 1 over equal
  // logits (the noise decides). Row 2: every logit -inf.
  const l = new Float32Array(3 * V).fill(0);
  l[13] = 2.5;
  l[6] = 2.5;
  l.fill(-Infinity, 2 * V, 3 * V);
  const rows: SamplingRow[] = [
    { temperature: 0, topP: 1, topK: 0, seed: 1, counter: 0 },
    { temperature: 1, topP: 1, topK: 0, seed: 77, counter: 5 },
    { temperature: 0, topP: 1, topK: 0, seed: 3, counter: 0 },
  ];
  const whole = sampleRows(Tensor.from(l, [3, V], { device: dev }), rowsTensors(rows));
  const got = sampleBySlices(l, 3, V, 4, rows, { device: dev });
  assert.deepEqual([...got.tokens], [...whole.tokens.toInt32()]);
  assert.equal(got.tokens[0], 6);
  assert.ok(Number.isNaN(got.logprobs[2]!) && Number.isNaN(whole.logprobs.toFloat32()[2]!));
  assert.ok(Math.abs(got.logprobs[1]! + Math.log(V)) < 1e-6, 'uniform row: log-prob -log V');
});

test('sampleParts / combineSampleParts reject bad inputs, naming the argument or the row', () => {
  const S = 2, W = 8, V = 32;
  const rows = mixedRows(S);
  const p = rowsTensors(rows);
  const l = Tensor.zeros([S, W], { device: dev });
  assert.throws(() => sampleParts(l, p, { vocabStart: 32, vocabSize: V }), /sampleParts: the slice's first id 32 must lie in the vocabulary \[0, 32\)/);
  assert.throws(() => sampleParts(l, p, { vocabStart: -1, vocabSize: V }), /must lie in the vocabulary/);
  assert.throws(() => sampleParts(Tensor.zeros([S, W], { device: dev, dtype: 'i32' }), p, { vocabStart: 0, vocabSize: V }), /sampleParts: logits must be f32 or bf16 \[S, W\]/);
  assert.throws(() => sampleParts(l, { ...p, counters: Tensor.zeros([S + 1], { device: dev, dtype: 'i32' }) }, { vocabStart: 0, vocabSize: V }), /sampleParts: counters must have shape \[2\]/);
  const bad = rowsTensors(rows.map((r, b) => (b === 1 ? { ...r, topP: 2 } : r)));
  assert.throws(() => sampleParts(l, bad, { vocabStart: 0, vocabSize: V }), /sampleParts: topP\[1\] must be in \(0, 1\], got 2/);
  const parts = sampleParts(l, p, { vocabStart: 0, vocabSize: V });
  assert.deepEqual(parts.shape, [S, 32]);
  assert.throws(() => combineSampleParts(parts, p, V), /sampleCombine: parts must be u8 \[R, S, C \* 32\]/);
  assert.throws(() => combineSampleParts(Tensor.zeros([1, S, 31], { device: dev, dtype: 'u8' }), p, V), /parts must be u8 \[R, S, C \* 32\]/);
  assert.throws(() => combineSampleParts(parts.view([1, S, 32]), p, 0), /sampleCombine: vocabSize must be positive/);
  assert.throws(() => combineSampleParts(Tensor.zeros([1, S + 1, 32], { device: dev, dtype: 'u8' }), p, V), /sampleCombine: temperature must have shape \[3\]/);
});
