// CPU sampler: exact tokens against a TypeScript re-implementation of the method (same hash, same thresholds),
// greedy ties, top-k / top-p sets, the empirical distribution, determinism per seed/step, bad inputs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor } from '../../src/tensor.ts';
import { sample } from '../../src/ops/sampling.ts';
import { uniformSym } from '../helpers/random.ts';

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
