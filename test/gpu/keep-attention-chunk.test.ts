// GPU machine: the two training-step defaults the memory planner now counts (src/trainer/memory-plan.ts).
// - keepAttention (default under recompute): on CUDA with gpt-oss-20b's attention shape (Hq 64, Hkv 8, D 64, one
//   sliding and one full layer; fewer experts and a smaller vocabulary so the gradients fit on the host), the
//   gradients are bitwise those of the plain recompute (deterministic attention backward), the attention forward
//   runs once per layer instead of twice, and the kept tensors are the bytes the planner counts.
// - lmHeadChunk: the fused LM head backward at T = 16384 with the real vocabulary takes the chunk the planner counts
//   (16384), and its peak device memory above the inputs is dHidden f32 [T, H] plus the planner's chunk buffers
//   (fp32 logits + bf16 dlogits), up to one cuBLAS workspace (32 MiB) of slack. The exact figures are printed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor, emptyCache, memoryStats, resetPeakMemory, synchronize } from '../../src/tensor.ts';
import { presetConfig } from '../../src/model/config.ts';
import { GptOssModel } from '../../src/model/gptoss.ts';
import { GptOssWeights } from '../../src/model/weights.ts';
import { packSequences } from '../../src/model/batch.ts';
import { DecoderLayer } from '../../src/model/layer.ts';
import { tokenLogprobs, tokenLogprobsBackward, lmHeadChunk, lmHeadChunkBytes } from '../../src/ops/logprob.ts';
import { activationTerms, trainingActivations } from '../../src/trainer/memory-plan.ts';
import { hasCuda } from '../helpers/cuda.ts';

const skip = hasCuda ? false : 'no CUDA device (addon built without CUDA or no GPU visible)';
const DEV = 'cuda:0';
const BYTES: Record<string, number> = { bf16: 2, f32: 4 };
const bytesOf = (t: Tensor): number => t.numel * BYTES[t.dtype]!;

test('cuda keepAttention (the default under recompute): bitwise the plain recompute, one attention forward per layer, the planner\'s bytes', { skip, timeout: 600_000 }, () => {
  const cfg = presetConfig('gpt-oss-20b', { numLayers: 2, vocabSize: 8192, numExperts: 8, topK: 4 });
  const seqs = [1536, 2560].map((n, s) => Array.from({ length: n }, (_, i) => (i * 7919 + s * 104729) % cfg.vocabSize));
  const proto = DecoderLayer.prototype as unknown as { attention: (...a: unknown[]) => unknown };
  const orig = proto.attention;
  const run = (keepAttention: boolean | undefined): { grads: Map<string, Float32Array>; calls: number; keptBytes: number } => {
    const w = GptOssWeights.random(cfg, DEV, { seed: 11, fast: true, biasStd: 0.02 });
    const model = new GptOssModel(w, keepAttention === undefined ? { recompute: true, deterministic: true } : { recompute: true, keepAttention, deterministic: true });
    let calls = 0;
    proto.attention = function (this: unknown, ...a: unknown[]) {
      calls++;
      return orig.apply(this, a);
    };
    try {
      const b = packSequences(seqs, DEV);
      const f = model.forward(b, { train: true, releaseBatch: true });
      let keptBytes = 0;
      for (const a of f.state!.attention) if (a) keptBytes += bytesOf(a.attn) + bytesOf(a.lse);
      const T = b.numTokens;
      const d = Tensor.from(Float32Array.from({ length: T }, (_, i) => ((i % 7) - 3) / (7 * T)), [T], { device: DEV });
      const g = model.backward(f.state!, d);
      const grads = new Map<string, Float32Array>();
      for (const [n, t] of g) grads.set(n, t.toFloat32());
      for (const t of new Set(g.values())) t.dispose();
      for (const t of [d, f.logprobs, f.entropy]) t.dispose();
      return { grads, calls, keptBytes };
    } finally {
      proto.attention = orig;
      model.dispose();
    }
  };
  const plain = run(false);
  const byDefault = run(undefined);
  const T = 1536 + 2560;
  // Forward + recompute per layer without kept attention; the forward only with it.
  assert.equal(plain.calls, 4);
  assert.equal(byDefault.calls, 2);
  assert.equal(plain.keptBytes, 0);
  assert.equal(byDefault.keptBytes, T * cfg.numLayers * activationTerms(cfg, 1).keptAttention);
  assert.equal(byDefault.keptBytes, trainingActivations(cfg, T, true, 1.5).keptAttentionBytes);
  assert.deepEqual([...byDefault.grads.keys()].sort(), [...plain.grads.keys()].sort());
  for (const [n, v] of plain.grads) assert.deepEqual(byDefault.grads.get(n), v, `${n}: the default (kept attention) differs from the plain recompute`);
});

test('cuda LM head backward at 16k tokens: the chunk and the buffers the planner counts', { skip, timeout: 600_000 }, () => {
  const cfg = presetConfig('gpt-oss-20b', { numLayers: 1 });
  const w = GptOssWeights.random(cfg, DEV, { seed: 12, fast: true });
  const T = 16384, H = cfg.hiddenSize, V = cfg.vocabSize;
  const chunk = lmHeadChunk(T, V);
  assert.equal(chunk, 16384);
  const act = trainingActivations(cfg, T, true, 1.5);
  assert.equal(act.logprobChunk, chunk);
  assert.equal(act.logprobChunkBytes, lmHeadChunkBytes(T, chunk, V));
  const hidden = Tensor.from(Float32Array.from({ length: T * H }, (_, i) => Math.sin(i * 0.37) * 0.5), [T, H], { device: DEV, dtype: 'bf16' });
  const targets = Tensor.from(Int32Array.from({ length: T }, (_, i) => (i * 7919) % V), [T], { device: DEV, dtype: 'i32' });
  const dl = Tensor.from(new Float32Array(T).fill(-1 / T), [T], { device: DEV });
  const dLmHead = Tensor.zeros([V, H], { device: DEV, dtype: 'f32' });
  // A first pass makes the cuBLAS workspaces and any other first-use state; the measured one then starts from an
  // emptied cache (every block a fresh allocation of its own size).
  const fwd = tokenLogprobs(hidden, w.lmHead, targets);
  tokenLogprobsBackward(hidden, w.lmHead, targets, fwd.lse, dl, { dLmHead }).dHidden.dispose();
  synchronize(DEV);
  emptyCache(DEV);
  resetPeakMemory(DEV);
  const base = memoryStats(DEV).allocated;
  const g = tokenLogprobsBackward(hidden, w.lmHead, targets, fwd.lse, dl, { dLmHead });
  synchronize(DEV);
  const extra = memoryStats(DEV).peakAllocated - base;
  const want = T * H * 4 + act.logprobChunkBytes;
  console.log(`LM head backward, T ${T}, chunk ${chunk}: peak above the inputs ${extra} B; dHidden ${T * H * 4} B + planner's chunk buffers ${act.logprobChunkBytes} B = ${want} B`);
  assert.ok(extra >= want && extra <= want + 32 * 2 ** 20, `peak above the inputs ${extra} B, planner ${want} B`);
  for (const t of [g.dHidden, dLmHead, hidden, targets, dl, fwd.logprobs, fwd.entropy, fwd.lse]) t.dispose();
  w.dispose();
});
