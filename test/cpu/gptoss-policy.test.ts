// GptOssPolicy / LocalGenerator over a tiny random GPT-OSS model (vocab 256): response log-prob slicing, backward
// through the Policy against a finite difference of the loss, AdamW steps, save/load round trip (weights and
// optimizer state), the fused grad-clip factor (GptOssPolicy and LoraPolicy), the frozen reference copy, generation.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomModel, presetConfig, loadModel, LoraAdapters, LORA_TARGETS } from '../../src/model/index.ts';
import { GptOssPolicy } from '../../src/trainer/gptoss-policy.ts';
import { LoraPolicy } from '../../src/trainer/lora-policy.ts';
import { scaleGradsInPlace } from '../../src/ops/optim.ts';
import type { Tensor } from '../../src/tensor.ts';
import { LocalGenerator } from '../../src/inference/local-generator.ts';
import type { SequenceBatch } from '../../src/trainer/policy.ts';

const cfg = presetConfig('gpt-oss-tiny-256');
const batch: SequenceBatch = {
  sequences: [Int32Array.from([1, 5, 9, 13, 17, 21]), Int32Array.from([2, 4, 6, 8]), Int32Array.from([3, 7, 11, 15, 19, 23, 27, 31, 35])],
  promptLens: [3, 1, 5],
};
const hyper = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 };

test('response log-probs are the model\'s next-token log-probs of the response tokens', async () => {
  const m = randomModel(cfg, { device: 'cpu', seed: 3 });
  const p = new GptOssPolicy(m);
  const out = await p.logprobs(batch, { entropy: true });
  const full = m.tokenLogprobs(batch.sequences.map((s) => Array.from(s)));
  batch.sequences.forEach((s, i) => {
    assert.equal(out.logprobs[i]!.length, s.length - batch.promptLens[i]!);
    assert.equal(out.entropy![i]!.length, s.length - batch.promptLens[i]!);
    assert.deepEqual(Array.from(out.logprobs[i]!), Array.from(full[i]!.slice(batch.promptLens[i]! - 1)));
  });
  await assert.rejects(p.logprobs({ sequences: [Int32Array.from([1, 2])], promptLens: [0] }), /prompt length 0/);
  p.dispose();
});

test('backward + AdamW lowers the loss; a frozen copy does not move', async () => {
  const p = new GptOssPolicy(randomModel(cfg, { device: 'cpu', seed: 4 }));
  const ref = await p.frozenCopy();
  const nll = (lp: Float32Array[]) => -lp.reduce((a, l) => a + l.reduce((x, y) => x + y, 0), 0);
  const before = nll((await p.logprobs(batch)).logprobs);
  for (let step = 1; step <= 5; step++) {
    p.zeroGrad();
    const f = await p.forward(batch);
    await f.backward(f.logprobs.map((l) => l.map(() => -1)));
    const clip = p.clipGradNorm(1.0);
    assert.ok(clip.finite && clip.norm > 0);
    p.optimizerStep(hyper, step);
  }
  const after = nll((await p.logprobs(batch)).logprobs);
  assert.ok(after < before - 0.5, `NLL ${before} -> ${after}`);
  assert.equal(nll((await ref.logprobs(batch)).logprobs), before);
  ref.dispose();
  p.dispose();
});

test('save/load round trip restores weights and optimizer state (training continues identically)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'pol-'));
  const train = async (p: GptOssPolicy, steps: number[]) => {
    for (const s of steps) {
      p.zeroGrad();
      const f = await p.forward(batch);
      await f.backward(f.logprobs.map((l) => l.map(() => -1)));
      p.clipGradNorm(1.0);
      p.optimizerStep(hyper, s);
    }
  };
  const a = new GptOssPolicy(randomModel(cfg, { device: 'cpu', seed: 5 }));
  await train(a, [1, 2]);
  await a.save(dir);
  assert.ok(existsSync(join(dir, 'config.json')) && existsSync(join(dir, 'optimizer', 'optimizer.json')));
  await train(a, [3, 4]);
  const b = new GptOssPolicy(randomModel(cfg, { device: 'cpu', seed: 99 }));
  await b.load(dir);
  assert.equal(b.optimizerSteps, 2);
  await train(b, [3, 4]);
  assert.deepEqual((await b.logprobs(batch)).logprobs, (await a.logprobs(batch)).logprobs);
  // The saved folder is a model directory.
  const m = await loadModel(dir, { device: 'cpu' });
  assert.equal(m.config.vocabSize, 256);
  m.dispose();
  a.dispose();
  b.dispose();
});

test('clipGradNorm records the factor and AdamW applies it: bitwise the gradients scaled in place (full and LoRA policies)', async () => {
  const kinds = {
    full: () => new GptOssPolicy(randomModel(cfg, { device: 'cpu', seed: 8 })),
    lora: () => new LoraPolicy(randomModel(cfg, { device: 'cpu', seed: 8 }), LoraAdapters.init(cfg, { rank: 4, alpha: 8, dropout: 0, targets: LORA_TARGETS }, 'cpu', { seed: 9 })),
  };
  const gradsOf = (p: GptOssPolicy) => (p as unknown as { grads: Map<string, Tensor> }).grads;
  const backward = async (p: GptOssPolicy, k: number) => {
    const f = await p.forward(batch);
    await f.backward(f.logprobs.map((l) => l.map((_, j) => (j % 2 ? -1 : 0.5) * (k + 1))));
  };
  const weights = (p: GptOssPolicy) => [...(p instanceof LoraPolicy ? p.adapters.params : p.model.weights.params).values()].map((t) => t.toFloat32());
  for (const [kind, mk] of Object.entries(kinds)) {
    // fused: clipGradNorm, then optimizerStep; unfused: the norm without clipping, the factor applied to the
    // gradient buffers by hand (what clipGradNorm did before), then the step.
    const fused = mk(), unfused = mk();
    for (let step = 1; step <= 3; step++) {
      fused.zeroGrad();
      unfused.zeroGrad();
      await backward(fused, step);
      await backward(unfused, step);
      const raw = [...gradsOf(fused).values()].map((t) => t.toFloat32());
      const c = fused.clipGradNorm(0.05);
      assert.ok(c.clipped && c.finite, `${kind} step ${step}: clipped`);
      assert.deepEqual([...gradsOf(fused).values()].map((t) => t.toFloat32()), raw, `${kind}: clipGradNorm leaves the gradient buffers alone`);
      const u = unfused.clipGradNorm(Infinity);
      assert.equal(u.norm, c.norm);
      assert.ok(!u.clipped);
      if (step === 2) {
        // A backward after the clip accumulates onto the clipped gradients (the pending factor is applied first).
        await backward(fused, 7);
        scaleGradsInPlace([...gradsOf(unfused).values()], 0.05 / (c.norm + 1e-6));
        await backward(unfused, 7);
        const c2 = fused.clipGradNorm(0.05), u2 = unfused.clipGradNorm(Infinity);
        assert.equal(c2.norm, u2.norm, `${kind}: the norm after an accumulation onto clipped gradients`);
        scaleGradsInPlace([...gradsOf(unfused).values()], 0.05 / (u2.norm + 1e-6));
      } else scaleGradsInPlace([...gradsOf(unfused).values()], 0.05 / (u.norm + 1e-6));
      fused.optimizerStep(hyper, step);
      unfused.optimizerStep(hyper, step);
      assert.deepEqual(weights(fused), weights(unfused), `${kind} step ${step}: the same weights`);
    }
    // zeroGrad drops the factor: an unclipped step after it reads the raw gradients.
    fused.zeroGrad();
    unfused.zeroGrad();
    await backward(fused, 0);
    await backward(unfused, 0);
    assert.ok(!fused.clipGradNorm(Infinity).clipped);
    fused.optimizerStep(hyper, 4);
    unfused.optimizerStep(hyper, 4);
    assert.deepEqual(weights(fused), weights(unfused), `${kind}: after zeroGrad`);
    fused.dispose();
    unfused.dispose();
  }
});

test('a non-finite backward is skipped: clipGradNorm reports it', async () => {
  const p = new GptOssPolicy(randomModel(cfg, { device: 'cpu', seed: 6 }));
  const f = await p.forward(batch);
  await f.backward(f.logprobs.map((l) => l.map(() => NaN)));
  assert.equal(p.clipGradNorm(1.0).finite, false);
  const g = await p.forward(batch);
  g.release();
  await assert.rejects(g.backward(g.logprobs), /already consumed/);
  p.dispose();
});

test('LocalGenerator: completions with log-probs, stop tokens, at most 2 running sequences', async () => {
  const m = randomModel(cfg, { device: 'cpu', seed: 7 });
  const gen = new LocalGenerator(m, { maxNumSeqs: 2, blockSize: 4, numBlocks: 64 });
  const prompts = [Int32Array.from([1, 2, 3]), Int32Array.from([4, 5]), Int32Array.from([6])];
  const out = await gen.generate(prompts, { maxTokens: 5, temperature: 1, seed: 1, stopTokenIds: [254] });
  assert.equal(out.length, 3);
  for (const c of out) {
    assert.ok(c.tokens.length >= 1 && c.tokens.length <= 5);
    assert.equal(c.logprobs.length, c.tokens.length);
    assert.ok(c.finishReason === 'stop' || c.tokens.length === 5);
  }
  // Greedy: the generator's log-probs equal the trainer's for the same tokens.
  const greedy = await gen.generate(prompts, { maxTokens: 4, temperature: 0, seed: 1, stopTokenIds: [] });
  const p = new GptOssPolicy(m);
  const lp = await p.logprobs({ sequences: prompts.map((q, i) => Int32Array.from([...q, ...greedy[i]!.tokens])), promptLens: prompts.map((q) => q.length) });
  greedy.forEach((c, i) => c.logprobs.forEach((x, t) => assert.ok(Math.abs(x - lp.logprobs[i]![t]!) < 0.05, `seq ${i} token ${t}: generator ${x} vs trainer ${lp.logprobs[i]![t]}`)));
  m.dispose();
});
