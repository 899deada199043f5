// Recompute with keepAttention (ModelOptions / ShardedModelOptions.keepAttention): the training forward keeps each
// layer's attention output and LSE, and the backward's recompute of the layer takes them instead of running the
// attention forward again. It is the default under recompute (both options left out keep the attention). The
// gradients are bitwise those of the plain recompute (and of no recompute), for the single-process model and the
// sharded policy at N = 1, by default and when asked for; nothing is left undisposed; the kept tensors are the
// bytes the memory planner counts (activationTerms.keptAttention).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GptOssModel } from '../../src/model/gptoss.ts';
import { GptOssWeights } from '../../src/model/weights.ts';
import { presetConfig } from '../../src/model/config.ts';
import { packSequences } from '../../src/model/batch.ts';
import { DecoderLayer } from '../../src/model/layer.ts';
import { Tensor, liveTensors, trackTensors } from '../../src/tensor.ts';
import { initDistributed } from '../../src/distributed/launch.ts';
import { ShardedPolicy } from '../../src/trainer/sharded-policy.ts';
import { activationTerms } from '../../src/trainer/memory-plan.ts';

const cfg = presetConfig('gpt-oss-tiny-256', { numLayers: 2 });
const seqs = [Array.from({ length: 40 }, (_, i) => (i * 7 + 3) % cfg.vocabSize), Array.from({ length: 23 }, (_, i) => (i * 11 + 5) % cfg.vocabSize)];

/** Counts DecoderLayer.attention calls (the attention forward) while f runs. */
function countAttention<R>(f: () => R): { r: R; calls: number } {
  const proto = DecoderLayer.prototype as unknown as { attention: (...a: unknown[]) => unknown };
  const orig = proto.attention;
  let calls = 0;
  proto.attention = function (this: unknown, ...a: unknown[]) {
    calls++;
    return orig.apply(this, a);
  };
  try {
    return { r: f(), calls };
  } finally {
    proto.attention = orig;
  }
}

const BYTES: Record<string, number> = { bf16: 2, f32: 4 };

function grads(opts: { recompute: boolean; keepAttention?: boolean }): { g: Map<string, Float32Array>; attentionCalls: number } {
  const model = new GptOssModel(GptOssWeights.random(cfg, 'cpu', { seed: 3, biasStd: 0.02 }), opts);
  // The model's default: keep the attention whenever it recomputes.
  const keeps = opts.recompute && (opts.keepAttention ?? true);
  assert.equal(model.keepAttention, opts.keepAttention ?? true);
  const { r: g, calls } = countAttention(() => {
    const out = new Map<string, Float32Array>();
    let acc = new Map<string, Tensor>();
    for (let m = 0; m < 2; m++) {
      const b = packSequences(seqs, 'cpu');
      const f = model.forward(b, { train: true, releaseBatch: true });
      if (keeps) {
        assert.ok(f.state!.attention.every((a) => a !== null), 'every layer kept its attention');
        // What the planner counts per layer: out bf16 [T, Hq·D] + lse f32 [Hq, T].
        for (const a of f.state!.attention) {
          const bytes = [a!.attn, a!.lse].reduce((s, t) => s + t.shape.reduce((x, y) => x * y, 1) * BYTES[t.dtype]!, 0);
          assert.equal(bytes, b.numTokens * activationTerms(cfg, 1).keptAttention);
        }
      } else assert.ok(f.state!.attention.every((a) => a === null));
      const d = Tensor.from(Float32Array.from({ length: b.numTokens }, (_, i) => ((i % 5) - 2) / 10), [b.numTokens], { device: 'cpu' });
      acc = model.backward(f.state!, d, acc);
      for (const t of [d, f.logprobs, f.entropy]) t.dispose();
    }
    for (const [n, t] of acc) out.set(n, t.toFloat32());
    for (const t of new Set(acc.values())) t.dispose();
    return out;
  });
  model.dispose();
  return { g, attentionCalls: calls };
}

test('keepAttention (the default under recompute): the recompute skips the attention forward and the gradients are bitwise the same', () => {
  const plain = grads({ recompute: true, keepAttention: false });
  const kept = grads({ recompute: true, keepAttention: true });
  const byDefault = grads({ recompute: true });
  const none = grads({ recompute: false });
  // 2 micro-batches x 2 layers: forward only with kept attention; forward + recompute without.
  assert.equal(plain.attentionCalls, 8);
  assert.equal(kept.attentionCalls, 4);
  assert.equal(byDefault.attentionCalls, 4);
  assert.equal(none.attentionCalls, 4);
  assert.deepEqual([...kept.g.keys()].sort(), [...plain.g.keys()].sort());
  assert.deepEqual([...byDefault.g.keys()].sort(), [...plain.g.keys()].sort());
  for (const [n, v] of plain.g) {
    assert.deepEqual(kept.g.get(n), v, `${n}: kept attention differs from the plain recompute`);
    assert.deepEqual(byDefault.g.get(n), v, `${n}: the default differs from the plain recompute`);
    assert.deepEqual(none.g.get(n), v, `${n}: recompute differs from no recompute`);
  }
});

test('keepAttention leaves no undisposed tensors (a backward, and a forward state disposed without one)', () => {
  trackTensors(true);
  try {
    const model = new GptOssModel(GptOssWeights.random(cfg, 'cpu', { seed: 4 }), { recompute: true }); // keeps by default
    const step = (): void => {
      const b = packSequences(seqs, 'cpu');
      const f = model.forward(b, { train: true, releaseBatch: true });
      const d = Tensor.from(new Float32Array(b.numTokens).fill(-0.1), [b.numTokens], { device: 'cpu' });
      for (const t of model.backward(f.state!, d).values()) t.dispose();
      const f2 = model.forward(packSequences(seqs, 'cpu'), { train: true, releaseBatch: true });
      f2.state!.dispose();
      for (const t of [d, f.logprobs, f.entropy, f2.logprobs, f2.entropy]) t.dispose();
    };
    step();
    const before = new Set(liveTensors().map((x) => x.tensor));
    step();
    const leaked = liveTensors().filter((x) => !before.has(x.tensor));
    assert.equal(leaked.length, 0, leaked.slice(0, 3).map((x) => `${x.tensor.toString()}\n${x.stack.split('\n').slice(2, 6).join('\n')}`).join('\n'));
    model.dispose();
  } finally {
    trackTensors(false);
  }
});

test('keepAttention on the sharded policy (N = 1; the default): two steps bitwise equal to the plain recompute', async () => {
  const ctx = await initDistributed({ backend: 'cpu' });
  try {
    // undefined: the policy's defaults (recompute on, attention kept).
    const run = async (keepAttention: boolean | undefined): Promise<Float32Array[]> => {
      const w = GptOssWeights.random(cfg, 'cpu', { seed: 5, biasStd: 0.02 });
      const p = ShardedPolicy.fromWeights(w, ctx.collectives, keepAttention === undefined ? {} : { recompute: true, keepAttention });
      w.dispose();
      const { r: lps } = await (async () => {
        const out: Float32Array[] = [];
        for (let step = 1; step <= 2; step++) {
          p.zeroGrad();
          const f = await p.forward({ sequences: seqs.map((s) => Int32Array.from(s)), promptLens: [1, 1] });
          out.push(...f.logprobs);
          await f.backward(f.logprobs.map((l) => Float32Array.from(l, (_, i) => ((i % 3) - 1) / 7)));
          await p.clipGradNorm(1.0);
          p.optimizerStep({ lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 }, step);
        }
        const f = await p.forward({ sequences: seqs.map((s) => Int32Array.from(s)), promptLens: [1, 1] });
        out.push(...f.logprobs);
        await f.backward(f.logprobs.map((l) => new Float32Array(l.length)));
        return { r: out };
      })();
      p.dispose();
      return lps;
    };
    const proto = DecoderLayer.prototype as unknown as { attention: (...a: unknown[]) => unknown };
    const orig = proto.attention;
    let calls = 0;
    proto.attention = function (this: unknown, ...a: unknown[]) {
      calls++;
      return orig.apply(this, a);
    };
    let a: Float32Array[], b: Float32Array[], d: Float32Array[];
    const counts: number[] = [];
    try {
      a = await run(false);
      counts.push(calls);
      calls = 0;
      b = await run(true);
      counts.push(calls);
      calls = 0;
      d = await run(undefined);
      counts.push(calls);
    } finally {
      proto.attention = orig;
    }
    // 3 forwards x 2 layers, each recomputed in its backward unless the attention was kept.
    assert.deepEqual(counts, [12, 6, 6]);
    assert.equal(a.length, b.length);
    assert.equal(a.length, d.length);
    a.forEach((x, i) => assert.deepEqual(b[i], x, `log-probs ${i} after the steps differ`));
    a.forEach((x, i) => assert.deepEqual(d[i], x, `log-probs ${i} after the steps differ (the default)`));
  } finally {
    await ctx.destroy();
  }
});
