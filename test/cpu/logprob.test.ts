// CPU fused log-prob/entropy over vocabulary chunks against float64 references; backward against the analytic
// float64 gradient and finite differences; chunk sizes that do not divide V; ignored and bad targets; the default
// chunk (lmHeadChunk: what the models use and the memory planner counts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor } from '../../src/tensor.ts';
import { tokenLogprobs, tokenLogprobsBackward, logits, lmHeadChunk, lmHeadChunkBytes, LM_HEAD_CHUNK_BUDGET_BYTES } from '../../src/ops/logprob.ts';
import { refLogprobs } from '../helpers/coreops2-ref.ts';
import { uniformSym, rng } from '../helpers/random.ts';
import { assertClose } from '../helpers/numeric.ts';

const dev = 'cpu';

function targetsFor(T: number, V: number, seed: number, chunk: number): Int32Array {
  const r = rng(seed);
  const t = new Int32Array(T);
  for (let i = 0; i < T; i++) t[i] = Math.floor(r() * V);
  // Put some targets on chunk boundaries and the last entry.
  if (T > 2) {
    t[0] = V - 1;
    t[1] = Math.min(V - 1, chunk);
    t[2] = Math.max(0, Math.min(V - 1, chunk - 1));
  }
  return t;
}

/** Float64 gradients of L = Σ_t dl_t·logprob_t + de_t·entropy_t. */
function refGrads(h: Float32Array, w: Float32Array, tg: Int32Array, T: number, H: number, V: number, temp: number, dl: Float32Array, de?: Float32Array) {
  const r = refLogprobs(h, w, tg, T, H, V, temp);
  const dz = new Float64Array(T * V);
  for (let t = 0; t < T; t++) {
    const ez = r.lse[t]! - r.entropy[t]!;
    for (let v = 0; v < V; v++) {
      const z = r.z[t * V + v]!;
      const p = Math.exp(z - r.lse[t]!);
      const g = tg[t]! < 0 ? 0 : dl[t]!;
      let d = g * ((v === tg[t] ? 1 : 0) - p);
      if (de) d += -de[t]! * p * (z - ez);
      dz[t * V + v] = d / temp;
    }
  }
  const dh = new Float64Array(T * H);
  const dw = new Float64Array(V * H);
  for (let t = 0; t < T; t++)
    for (let v = 0; v < V; v++) {
      const d = dz[t * V + v]!;
      if (d === 0) continue;
      for (let k = 0; k < H; k++) {
        dh[t * H + k]! += d * w[v * H + k]!;
        dw[v * H + k]! += d * h[t * H + k]!;
      }
    }
  return { dh, dw };
}

test('tokenLogprobs matches float64 for awkward sizes and chunkings', () => {
  const cases: [number, number, number, number, number][] = [
    // T, H, V, chunk (0 = default), temperature
    [1, 7, 1, 0, 1],
    [7, 16, 257, 100, 1],
    [113, 33, 257, 128, 0.7],
    [7, 64, 1000, 1, 1.3],
    [13, 8, 513, 0, 1],
    [5, 24, 300, 299, 2],
  ];
  let seed = 100;
  for (const [T, H, V, chunk, temp] of cases) {
    const h = uniformSym(T * H, seed++, 1, true);
    const w = uniformSym(V * H, seed++, 0.5, true);
    const tg = targetsFor(T, V, seed++, chunk || V);
    const r = tokenLogprobs(
      Tensor.from(h, [T, H], { dtype: 'bf16', device: dev }),
      Tensor.from(w, [V, H], { dtype: 'bf16', device: dev }),
      Tensor.from(tg, [T], { device: dev }),
      { temperature: temp, chunk },
    );
    const ref = refLogprobs(h, w, tg, T, H, V, temp);
    const what = `T${T} H${H} V${V} chunk${chunk} temp${temp}`;
    assertClose(r.logprobs.toFloat32(), ref.logprobs, 2e-5, 2e-5, `logprobs ${what}`);
    assertClose(r.entropy.toFloat32(), ref.entropy, 2e-5, 2e-5, `entropy ${what}`);
    assertClose(r.lse.toFloat32(), ref.lse, 2e-5, 2e-5, `lse ${what}`);
  }
});

test('tokenLogprobsBackward matches the float64 gradient (with and without the entropy term)', () => {
  const cases: [number, number, number, number, number][] = [
    [1, 7, 5, 0, 1],
    [7, 16, 257, 100, 0.8],
    [113, 9, 130, 64, 1],
  ];
  let seed = 300;
  for (const [T, H, V, chunk, temp] of cases) {
    const h = uniformSym(T * H, seed++, 1, true);
    const w = uniformSym(V * H, seed++, 0.5, true);
    const tg = targetsFor(T, V, seed++, chunk || V);
    if (T > 3) tg[3] = -1; // ignored position
    const dl = uniformSym(T, seed++);
    const de = uniformSym(T, seed++);
    const th = Tensor.from(h, [T, H], { dtype: 'bf16', device: dev });
    const tw = Tensor.from(w, [V, H], { dtype: 'bf16', device: dev });
    const tt = Tensor.from(tg, [T], { device: dev });
    const f = tokenLogprobs(th, tw, tt, { temperature: temp, chunk });
    if (T > 3) assert.equal(f.logprobs.toFloat32()[3], 0);
    const dLogprobs = Tensor.from(dl, [T], { device: dev });
    const what = `T${T} H${H} V${V} chunk${chunk}`;
    const g = tokenLogprobsBackward(th, tw, tt, f.lse, dLogprobs, { temperature: temp, chunk });
    const ref = refGrads(h, w, tg, T, H, V, temp, dl);
    assertClose(g.dHidden.toFloat32(), ref.dh, 1e-5, 1e-4, `dHidden ${what}`);
    assertClose(g.dLmHead.toFloat32(), ref.dw, 1e-5, 1e-4, `dLmHead ${what}`);
    // Entropy term, accumulated into an existing dLmHead.
    const acc = Tensor.from(new Float32Array(V * H).fill(1), [V, H], { device: dev });
    const ge = tokenLogprobsBackward(th, tw, tt, f.lse, dLogprobs, {
      temperature: temp,
      chunk,
      dLmHead: acc,
      dEntropy: Tensor.from(de, [T], { device: dev }),
      entropy: f.entropy,
    });
    assert.equal(ge.dLmHead, acc);
    const refe = refGrads(h, w, tg, T, H, V, temp, dl, de);
    assertClose(ge.dHidden.toFloat32(), refe.dh, 1e-5, 1e-4, `dHidden+entropy ${what}`);
    assertClose(ge.dLmHead.toFloat32(), refe.dw.map((x) => x + 1), 1e-5, 1e-4, `dLmHead+entropy (accumulated) ${what}`);
  }
});

test('tokenLogprobsBackward agrees with finite differences (f32 inputs)', () => {
  const T = 3, H = 5, V = 37, chunk = 10, temp = 0.9;
  const h = uniformSym(T * H, 501), w = uniformSym(V * H, 502);
  const tg = Int32Array.from([36, 10, 9]);
  const dl = Float32Array.from([0.7, -1.2, 0.4]);
  const de = Float32Array.from([0.3, 0.5, -0.8]);
  const tw = Tensor.from(w, [V, H], { device: dev });
  const tt = Tensor.from(tg, [T], { device: dev });
  const lossAt = (hs: Float32Array, ws: Float32Array): number => {
    const r = tokenLogprobs(Tensor.from(hs, [T, H], { device: dev }), Tensor.from(ws, [V, H], { device: dev }), tt, { temperature: temp, chunk });
    const lp = r.logprobs.toFloat32(), en = r.entropy.toFloat32();
    let s = 0;
    for (let t = 0; t < T; t++) s += dl[t]! * lp[t]! + de[t]! * en[t]!;
    return s;
  };
  const th = Tensor.from(h, [T, H], { device: dev });
  const f = tokenLogprobs(th, tw, tt, { temperature: temp, chunk });
  const g = tokenLogprobsBackward(th, tw, tt, f.lse, Tensor.from(dl, [T], { device: dev }), {
    temperature: temp,
    chunk,
    dEntropy: Tensor.from(de, [T], { device: dev }),
    entropy: f.entropy,
  });
  const dh = g.dHidden.toFloat32(), dw = g.dLmHead.toFloat32();
  const eps = 1e-2;
  for (const i of [0, 4, 7, 14]) {
    const p = Float32Array.from(h), m = Float32Array.from(h);
    p[i]! += eps;
    m[i]! -= eps;
    const fd = (lossAt(p, w) - lossAt(m, w)) / (2 * eps);
    assert.ok(Math.abs(fd - dh[i]!) < 2e-3 * (1 + Math.abs(fd)), `dHidden[${i}]: fd ${fd} vs ${dh[i]}`);
  }
  for (const i of [0, 49, 50, 36 * H + 4, 9 * H + 2]) {
    const p = Float32Array.from(w), m = Float32Array.from(w);
    p[i]! += eps;
    m[i]! -= eps;
    const fd = (lossAt(h, p) - lossAt(h, m)) / (2 * eps);
    assert.ok(Math.abs(fd - dw[i]!) < 2e-3 * (1 + Math.abs(fd)), `dLmHead[${i}]: fd ${fd} vs ${dw[i]}`);
  }
});

test('logits() gives the full f32 [T, V] product', () => {
  const T = 3, H = 4, V = 6;
  const h = uniformSym(T * H, 7, 1, true), w = uniformSym(V * H, 8, 1, true);
  const z = logits(Tensor.from(h, [T, H], { dtype: 'bf16', device: dev }), Tensor.from(w, [V, H], { dtype: 'bf16', device: dev }));
  assert.deepEqual(z.shape, [T, V]);
  assert.equal(z.dtype, 'f32');
  assertClose(z.toFloat32(), refLogprobs(h, w, new Int32Array(T), T, H, V, 1).z, 1e-6, 1e-6, 'logits');
});

test('tokenLogprobs rejects bad inputs', () => {
  const h = Tensor.zeros([2, 4], { dtype: 'bf16', device: dev });
  const w = Tensor.zeros([10, 4], { dtype: 'bf16', device: dev });
  const t = Tensor.from(new Int32Array([1, 10]), [2], { device: dev });
  assert.throws(() => tokenLogprobs(h, w, t), /target 10 at position 1 is out of range for vocabulary 10/);
  const ok = Tensor.from(new Int32Array([1, 2]), [2], { device: dev });
  assert.throws(() => tokenLogprobs(h, Tensor.zeros([10, 5], { dtype: 'bf16', device: dev }), ok), /lmHead must be bf16 \[V, 4\] with V > 0, got bf16\[10, 5\]/);
  assert.throws(() => tokenLogprobs(h, w, Tensor.from(new Int32Array([1]), [1], { device: dev })), /targets must have shape \[2\], got i32\[1\]/);
  assert.throws(() => tokenLogprobs(h, w, ok, { temperature: 0 }), /temperature must be > 0/);
  assert.throws(() => tokenLogprobs(h, w, Tensor.zeros([2], { device: dev })), /targets must be i32/);
  const f = tokenLogprobs(h, w, ok);
  assert.throws(() => tokenLogprobsBackward(h, w, ok, f.lse, Tensor.zeros([3], { device: dev })), /dLogprobs must have shape \[2\]/);
  assert.throws(() => tokenLogprobsBackward(h, w, ok, f.lse, f.lse, { dLmHead: Tensor.zeros([10, 4], { dtype: 'bf16', device: dev }) }), /dLmHead must be f32/);
  assert.throws(() => tokenLogprobsBackward(h, w, ok, f.lse, f.lse, { dEntropy: f.lse }), /dEntropy and entropy must be given together/);
});

test('lmHeadChunk: the largest of 16384/8192/4096 whose backward buffers fit 1.5 GiB, else the 256 MiB fp32 rule; at most V', () => {
  const V = 201088; // gpt-oss
  assert.equal(LM_HEAD_CHUNK_BUDGET_BYTES, 16384 * 16384 * 6);
  assert.equal(lmHeadChunk(16384, V), 16384);
  assert.equal(lmHeadChunk(16385, V), 8192);
  assert.equal(lmHeadChunk(32768, V), 8192);
  assert.equal(lmHeadChunk(65536, V), 4096);
  // Beyond 64k tokens no candidate fits: a 256 MiB fp32 buffer, in multiples of 128 rows (2^28 / (4 x 65537) =
  // 1023.98 -> 896; 512 at 128k tokens), at least 128.
  assert.equal(lmHeadChunk(65537, V), 896);
  assert.equal(lmHeadChunk(131072, V), 512);
  assert.equal(lmHeadChunk(1 << 20, V), 128);
  assert.equal(lmHeadChunk(1 << 22, V), 128);
  // Few tokens: the 256 MiB rule gives more than 16384 rows (fewer chunks), capped at V.
  assert.equal(lmHeadChunk(2048, V), 32768);
  assert.equal(lmHeadChunk(100, V), V);
  assert.equal(lmHeadChunk(0, 256), 256);
  // Within the budget everywhere up to 64k tokens.
  for (const T of [1, 100, 1000, 4096, 9216, 16384, 20000, 32768, 50000, 65536]) {
    assert.ok(lmHeadChunkBytes(T, lmHeadChunk(T, V), V) <= LM_HEAD_CHUNK_BUDGET_BYTES, `${T}`);
  }
  assert.throws(() => lmHeadChunk(-1, V), /tokens must be an integer >= 0, got -1/);
  assert.throws(() => lmHeadChunk(8, 0), /vocab must be a positive integer, got 0/);
});

test('tokenLogprobs without a chunk uses lmHeadChunk: same bits as passing it', () => {
  const T = 9, H = 16, V = 300;
  const h = Tensor.from(uniformSym(T * H, 31), [T, H], { device: dev });
  const w = Tensor.from(uniformSym(V * H, 32), [V, H], { device: dev });
  const tg = Tensor.from(targetsFor(T, V, 33, 128), [T], { device: dev, dtype: 'i32' });
  const a = tokenLogprobs(h, w, tg);
  const b = tokenLogprobs(h, w, tg, { chunk: lmHeadChunk(T, V) });
  assert.deepEqual(a.logprobs.toFloat32(), b.logprobs.toFloat32());
  assert.deepEqual(a.lse.toFloat32(), b.lse.toFloat32());
  const dl = Tensor.from(uniformSym(T, 34), [T], { device: dev });
  const ga = tokenLogprobsBackward(h, w, tg, a.lse, dl);
  const gb = tokenLogprobsBackward(h, w, tg, a.lse, dl, { chunk: lmHeadChunk(T, V) });
  assert.deepEqual(ga.dHidden.toFloat32(), gb.dHidden.toFloat32());
  assert.deepEqual(ga.dLmHead.toFloat32(), gb.dLmHead.toFloat32());
  for (const t of [h, w, tg, dl, a.logprobs, a.entropy, a.lse, b.logprobs, b.entropy, b.lse, ga.dHidden, ga.dLmHead, gb.dHidden, gb.dLmHead]) t.dispose();
});
