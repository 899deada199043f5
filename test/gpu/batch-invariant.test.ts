// Batch-invariant mode on CUDA (setBatchInvariant; native/common/device.h): a token's row has the same bits
// whatever else is in the batch, op by op (the linear at M 1..300, attention as a decode, a prefill chunk and a
// packed training forward, the MoE alone and in a batch) and end to end (the engine's log-probs against the
// trainer's tokenLogprobs, eager and from CUDA graphs; the trainer packed against alone). Each op also stays
// within bf16 noise of the default kernels. GPU machine only.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, setBatchInvariant, batchInvariant } from '../../src/tensor.ts';
import { linearForward, matmul } from '../../src/ops/gemm.ts';
import { attentionForward } from '../../src/ops/attention.ts';
import { pagedAttention } from '../../src/ops/paged-attention.ts';
import { moeForward } from '../../src/ops/moe.ts';
import { presetConfig } from '../../src/model/config.ts';
import { GptOssModel } from '../../src/model/gptoss.ts';
import { createEngine } from '../../src/inference/engine.ts';
import { randn } from '../helpers/random.ts';
import { hasCuda } from '../helpers/cuda.ts';

const skip = hasCuda ? false : 'no CUDA device (addon built without CUDA or no GPU visible)';
const DEV = 'cuda:0';

/** Runs f with batch-invariant mode on, and turns it off again whatever happens. */
async function invariant<T>(f: () => T | Promise<T>): Promise<T> {
  setBatchInvariant(true);
  try {
    return await f();
  } finally {
    setBatchInvariant(false);
  }
}

const bf16 = (a: Float32Array, shape: number[]): Tensor => Tensor.from(a, shape, { device: DEV, dtype: 'bf16' });

/** Rows [r0, r1) of a row-major host array with `width` columns. */
const rows = (a: Float32Array, width: number, r0: number, r1: number): Float32Array => a.subarray(r0 * width, r1 * width);

function assertBitwise(a: Float32Array, b: Float32Array, what: string): void {
  assert.equal(a.length, b.length, `${what}: lengths`);
  for (let i = 0; i < a.length; i++) {
    if (!Object.is(a[i], b[i])) assert.fail(`${what}: element ${i} differs (${a[i]} vs ${b[i]})`);
  }
}

/** max |a - b| / max |b|. */
function relErr(a: Float32Array, b: Float32Array): number {
  let d = 0;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
    m = Math.max(m, Math.abs(b[i]!));
  }
  return d / m;
}

test('the mode is process-wide state that reads back', { skip }, () => {
  assert.equal(batchInvariant(), false);
  setBatchInvariant(true);
  assert.equal(batchInvariant(), true);
  setBatchInvariant(false);
  assert.equal(batchInvariant(), false);
});

test('linear: each row of M = 1, 7, 64, 65, 300 is bitwise the row of the 300-row product (bf16 + bias, f32), near cuBLAS', { skip }, async () => {
  const M = 300;
  for (const [K, N] of [[2880, 5120], [512, 32], [576, 1000]] as const) {
    const xh = randn(M * K, K + N, 1);
    const w = bf16(randn(N * K, K * 7 + N, 0.02), [N, K]);
    const b = bf16(randn(N, N + 3, 0.1), [N]);
    const run = (m: number) => {
      const x = bf16(rows(xh, K, 0, m), [m, K]);
      const y = linearForward(x, w, b);
      const z = matmul(x, w, { transB: true, outDtype: 'f32' });
      const out = { y: y.toFloat32(), z: z.toFloat32() };
      for (const t of [x, y, z]) t.dispose();
      return out;
    };
    const ref = run(M); // default kernels (cuBLAS)
    const full = await invariant(() => run(M));
    assert.ok(relErr(full.y, ref.y) < 2e-2, `K ${K} N ${N}: bf16 rows vs cuBLAS ${relErr(full.y, ref.y)}`);
    assert.ok(relErr(full.z, ref.z) < 1e-4, `K ${K} N ${N}: f32 rows vs cuBLAS ${relErr(full.z, ref.z)}`);
    for (const m of [1, 7, 64, 65]) {
      const part = await invariant(() => run(m));
      assertBitwise(part.y, rows(full.y, N, 0, m), `K ${K} N ${N}: bf16 rows of M ${m}`);
      assertBitwise(part.z, rows(full.z, N, 0, m), `K ${K} N ${N}: f32 rows of M ${m}`);
    }
    w.dispose();
    b.dispose();
  }
});

test('attention: a decode, a prefill chunk and the packed training forward give a token the same bits (GQA 8, window 128 and full, sinks)', { skip }, async () => {
  const Hq = 16, Hkv = 2, D = 64, L = 300, bs = 16, other = 77;
  const qh = randn(L * Hq * D, 11, 1.5), kh = randn(L * Hkv * D, 12, 1.5), vh = randn(L * Hkv * D, 13);
  const oqh = randn(other * Hq * D, 14, 1.5), okh = randn(other * Hkv * D, 15, 1.5), ovh = randn(other * Hkv * D, 16);
  const sinks = bf16(randn(Hq, 17), [Hq]);
  // The pool: the sequence's positions in blocks 3, 4, ... (block b holds positions (b - 3)·16 ..).
  const nb = 3 + Math.ceil(L / bs) + 1;
  const pk = new Float32Array(nb * bs * Hkv * D), pv = new Float32Array(nb * bs * Hkv * D);
  pk.set(kh, 3 * bs * Hkv * D);
  pv.set(vh, 3 * bs * Hkv * D);
  const kPool = bf16(pk, [nb, bs, Hkv, D]), vPool = bf16(pv, [nb, bs, Hkv, D]);
  const table = Tensor.from(Int32Array.from({ length: nb - 3 }, (_, j) => 3 + j), [1, nb - 3], { device: DEV });
  const i32 = (a: number[]) => Tensor.from(Int32Array.from(a), [a.length], { device: DEV });
  const rowW = Hq * D;
  for (const window of [128, 0]) {
    const { train, packed, decode, chunk } = await invariant(() => {
      // Training forward: the sequence alone, and packed after another one.
      const q = bf16(qh, [L, Hq, D]), k = bf16(kh, [L, Hkv, D]), v = bf16(vh, [L, Hkv, D]);
      const alone = attentionForward(q, k, v, { cuSeqlens: i32([0, L]), maxSeqlen: L, window, sinks });
      const cat = (a: Float32Array, b: Float32Array) => { const c = new Float32Array(a.length + b.length); c.set(a); c.set(b, a.length); return c; };
      const q2 = bf16(cat(oqh, qh), [other + L, Hq, D]), k2 = bf16(cat(okh, kh), [other + L, Hkv, D]), v2 = bf16(cat(ovh, vh), [other + L, Hkv, D]);
      const pk2 = attentionForward(q2, k2, v2, { cuSeqlens: i32([0, other, other + L]), maxSeqlen: L, window, sinks });
      // Decodes at positions 0, 130, 200, 299 (one query row, context t + 1) and a prefill chunk of rows 150..236.
      const dec: Float32Array[] = [];
      for (const t of [0, 130, 200, 299]) {
        const qt = bf16(rows(qh, rowW, t, t + 1), [1, Hq, D]);
        const o = pagedAttention(qt, kPool, vPool, { blockTables: table, contextLens: i32([t + 1]), queryStarts: i32([0, 1]) }, { window, sinks });
        dec.push(o.toFloat32());
        qt.dispose();
        o.dispose();
      }
      const qc = bf16(rows(qh, rowW, 150, 237), [87, Hq, D]);
      const oc = pagedAttention(qc, kPool, vPool, { blockTables: table, contextLens: i32([237]), queryStarts: i32([0, 87]) }, { window, sinks });
      const out = { train: alone.out.toFloat32(), packed: pk2.out.toFloat32().subarray(other * rowW), decode: dec, chunk: oc.toFloat32() };
      for (const t of [q, k, v, q2, k2, v2, alone.out, alone.lse, pk2.out, pk2.lse, qc, oc]) t.dispose();
      return out;
    });
    assertBitwise(packed, train, `window ${window}: packed vs alone`);
    [0, 130, 200, 299].forEach((t, i) => assertBitwise(decode[i]!, rows(train, rowW, t, t + 1), `window ${window}: decode at ${t}`));
    assertBitwise(chunk, rows(train, rowW, 150, 237), `window ${window}: prefill chunk 150..236`);
    // The default training kernel agrees within bf16 noise (out) and fp32 noise (lse).
    const q = bf16(qh, [L, Hq, D]), k = bf16(kh, [L, Hkv, D]), v = bf16(vh, [L, Hkv, D]);
    const d = attentionForward(q, k, v, { cuSeqlens: i32([0, L]), maxSeqlen: L, window, sinks });
    assert.ok(relErr(train, d.out.toFloat32()) < 2e-2, `window ${window}: out vs the default kernel`);
    const lseInv = await invariant(() => {
      const a = attentionForward(q, k, v, { cuSeqlens: i32([0, L]), maxSeqlen: L, window, sinks });
      const l = a.lse.toFloat32();
      a.out.dispose();
      a.lse.dispose();
      return l;
    });
    assert.ok(relErr(lseInv, d.lse.toFloat32()) < 1e-4, `window ${window}: lse vs the default kernel`);
    for (const t of [q, k, v, d.out, d.lse]) t.dispose();
  }
  for (const t of [sinks, kPool, vPool, table]) t.dispose();
});

test('attention: padding rows of a packed batch (seqUsed) get zeros and lse 0, as the default kernel gives', { skip }, async () => {
  const Hq = 8, Hkv = 2, D = 64, L = 96, used = 70;
  const q = bf16(randn(L * Hq * D, 21), [L, Hq, D]), k = bf16(randn(L * Hkv * D, 22), [L, Hkv, D]), v = bf16(randn(L * Hkv * D, 23), [L, Hkv, D]);
  const sinks = bf16(randn(Hq, 24), [Hq]);
  const opts = { cuSeqlens: Tensor.from(Int32Array.from([0, L]), [2], { device: DEV }), maxSeqlen: L, window: 0, sinks, seqUsed: Tensor.from(Int32Array.from([used]), [1], { device: DEV }) };
  const d = attentionForward(q, k, v, opts);
  const inv = await invariant(() => attentionForward(q, k, v, opts));
  const io = inv.out.toFloat32(), il = inv.lse.toFloat32(), dl = d.lse.toFloat32();
  assert.ok(relErr(io, d.out.toFloat32()) < 2e-2);
  for (let i = used * Hq * D; i < L * Hq * D; i++) assert.equal(io[i], 0, `padding output element ${i}`);
  for (let h = 0; h < Hq; h++) for (let t = used; t < L; t++) assert.equal(il[h * L + t], 0, `padding lse ${h}, ${t}`);
  assert.ok(relErr(il, dl) < 1e-4);
  for (const t of [q, k, v, sinks, d.out, d.lse, inv.out, inv.lse]) t.dispose();
});

test('moe: a token alone and in batches of 4, 17 and 300 gets the same bits (router, experts, combine)', { skip }, async () => {
  const cfg = presetConfig('gpt-oss-tiny-large', { vocabSize: 512, eosTokenIds: [511], padTokenId: 0, bosTokenId: null });
  const m = GptOssModel.random(cfg, DEV, { seed: 5, fast: true, biasStd: 0.02 });
  const w = m.weights.layers[1]!;
  const weights = { routerW: w.routerW, routerB: w.routerB, gateUpW: w.gateUpW, gateUpB: w.gateUpB, downW: w.downW, downB: w.downB };
  const H = cfg.hiddenSize, T = 300;
  const xh = randn(T * H, 31, 1);
  const run = (n: number): Float32Array => {
    const x = bf16(rows(xh, H, T - n, T), [n, H]);
    const r = moeForward(x, weights, { topK: cfg.topK, limit: cfg.swigluLimit });
    const y = r.y.toFloat32();
    r.ctx.dispose();
    r.y.dispose();
    x.dispose();
    return y;
  };
  const ref = run(T);
  const full = await invariant(() => run(T));
  assert.ok(relErr(full, ref) < 2e-2, `vs the default kernels ${relErr(full, ref)}`);
  for (const n of [1, 4, 17]) {
    const part = await invariant(() => run(n));
    assertBitwise(part, rows(full, H, T - n, T), `the last ${n} tokens`);
  }
  m.dispose();
});

test('end to end: engine log-probs == tokenLogprobs (eager and CUDA graphs), trainer packed == alone, bitwise hidden states', { skip }, async () => {
  const V = 512;
  const cfg = presetConfig('gpt-oss-tiny-large', { vocabSize: V, eosTokenIds: [V - 1], padTokenId: 0, bosTokenId: null });
  const m = GptOssModel.random(cfg, DEV, { seed: 3, fast: true, biasStd: 0.02 });
  let s = 99;
  const rnd = (): number => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) >>> 8) % (V - 1);
  const ps = [150, 120, 33].map((n) => Array.from({ length: n }, rnd));
  await invariant(async () => {
    for (const enforceEager of [true, false]) {
      const e = await createEngine(m, { blockSize: 16, numBlocks: 256, maxNumBatchedTokens: 96, enforceEager });
      const out = await e.generate(ps.map((prompt, i) => ({ prompt, n: 3, maxNewTokens: 200, temperature: 1, seed: 7 * i, stopTokens: [] })));
      const seqs = out.flatMap((r, i) => r.samples.map((x) => ({ prompt: ps[i]!, s: x })));
      // The trainer over all of them packed in one batch, and over each alone.
      const packed = m.tokenLogprobs(seqs.map(({ prompt, s: x }) => [...prompt, ...x.tokens]));
      let worst = 0;
      let sum = 0;
      let n = 0;
      seqs.forEach(({ prompt, s: x }, j) => {
        const alone = m.tokenLogprobs([[...prompt, ...x.tokens]])[0]!;
        assertBitwise(packed[j]!, alone, `sequence ${j}: trainer packed vs alone`);
        const lp = alone.slice(prompt.length - 1);
        x.logprobs.forEach((v, t) => {
          const d = Math.abs(v - lp[t]!);
          worst = Math.max(worst, d);
          sum += d;
          n++;
        });
      });
      // The layers' bits are the same; what is left is the fp32 log-softmax over the vocabulary, summed by the
      // sampler and by the trainer's log-prob kernel in different orders (~1e-7 relative).
      assert.ok(worst < 1e-4, `enforceEager ${enforceEager}: max |engine - tokenLogprobs| = ${worst} (mean ${sum / n} over ${n} tokens)`);
      e.dispose();
    }
  });
  m.dispose();
});
