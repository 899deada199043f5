// Multi-turn rollouts on the real engine and policy (tiny random GPT-OSS, vocab 256, on CPU): later turns find the
// conversation in the prefix cache instead of prefilling it again; the loss mask gives masked tokens exactly zero
// gradient; a GRPO step over a multi-turn environment runs end to end with the mask and logs the episode metrics.
// The tiny model's vocabulary is 256 ids, so harmony ids are folded into it (id mod 250) on the way in; the
// model's own tokens (< 250) pass unchanged, so a turn's prompt still extends the previous turn's exactly.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomModel, presetConfig } from '../../src/model/index.ts';
import { GptOssPolicy } from '../../src/trainer/gptoss-policy.ts';
import { LocalGenerator } from '../../src/inference/local-generator.ts';
import { isMultiTurn, playEpisodes, type Episode, type MultiTurnTaskEnv } from '../../src/trainer/multiturn.ts';
import { policyLoss } from '../../src/rl/loss.ts';
import { loadConfig } from '../../src/config/index.ts';
import { buildTaskEnv } from '../../src/trainer/env.ts';
import { trainGrpo } from '../../src/trainer/grpo.ts';
import { userMessage } from '../../src/tokenizer/index.ts';
import type { Completion, Generator, LogprobOptions, Policy, SamplingParams, SequenceBatch } from '../../src/trainer/policy.ts';
import type { Tensor } from '../../src/tensor.ts';

process.env.GPTOSS_PROGRESS = 'off';
const cfg = presetConfig('gpt-oss-tiny-256');
const fold = (x: Int32Array): Int32Array => x.map((t) => t % 250);

/** The generator over the tiny model, harmony ids folded into its vocabulary. */
class FoldedGenerator implements Generator {
  constructor(readonly inner: LocalGenerator) {}
  generate(prompts: Int32Array[], p: SamplingParams): Promise<Completion[]> {
    // No stop tokens: turns end at their budget; reported as 'stop' so that the episode goes on to the next turn.
    return this.inner.generate(prompts.map(fold), { ...p, stopTokenIds: [] }).then((cs) => cs.map((c) => ({ ...c, finishReason: 'stop' as const })));
  }
  session<T>(f: () => Promise<T>): Promise<T> {
    return this.inner.session(f);
  }
  async updateWeights(): Promise<void> {}
  dispose(): void {
    this.inner.dispose();
  }
}

/** An episode that asks for more every turn (until the turn limit). */
const chatter = (topic: string): Episode => ({ messages: [userMessage(`Tell me about ${topic}.`)], step: () => ({ done: false, messages: [userMessage('Go on.')] }) });

test('later turns hit the prefix cache: the conversation is not prefilled again (same tokens as without the cache)', async () => {
  const model = randomModel(cfg, { device: 'cpu', seed: 11 });
  const run = async (enablePrefixCaching: boolean) => {
    const lg = new LocalGenerator(model, { blockSize: 4, numBlocks: 512, maxNumSeqs: 8, enablePrefixCaching });
    const gen = new FoldedGenerator(lg);
    const params: SamplingParams = { maxTokens: 6, temperature: 0, seed: 3, stopTokenIds: [] };
    const rs = await playEpisodes(gen, [chatter('owls'), chatter('rivers'), chatter('clouds')], { maxTurns: 4, maxTurnTokens: 6, maxTotalTokens: null }, params);
    const stats = lg.stats()!;
    lg.dispose();
    return { rs, stats };
  };
  const cached = await run(true);
  const plain = await run(false);
  // Every turn's prompt is the whole conversation: without the cache each is prefilled in full.
  const turnPrompts = cached.rs.reduce((a, r) => {
    let len = r.prompt.length;
    let sum = 0;
    // Turn k's prompt ends where turn k's sampled tokens start: walk the mask's runs of model tokens.
    for (let i = 0; i < r.mask.length; i++) {
      if (r.mask[i] === 1 && (i === 0 || r.mask[i - 1] === 0)) sum += len + i;
    }
    return a + sum;
  }, 0);
  assert.deepEqual(cached.rs.map((r) => [r.turns, r.end]), [[4, 'max_turns'], [4, 'max_turns'], [4, 'max_turns']]);
  assert.deepEqual(cached.rs.map((r) => Array.from(r.completion.tokens)), plain.rs.map((r) => Array.from(r.completion.tokens)), 'the cache changes no token');
  // Without the cache every turn's prompt is prefilled in full.
  assert.ok(plain.stats.prefillTokens >= turnPrompts, `no-cache prefill ${plain.stats.prefillTokens} vs prompts ${turnPrompts}`);
  // With it: later turns take the earlier turns' blocks (prompt and sampled tokens) from the cache.
  assert.ok(cached.stats.prefixCacheHitRate > 0.6, `hit rate ${cached.stats.prefixCacheHitRate}`);
  assert.ok(cached.stats.prefillTokens < 0.5 * plain.stats.prefillTokens, `prefill with cache ${cached.stats.prefillTokens}, without ${plain.stats.prefillTokens}`);
  console.log(`prefill tokens: ${cached.stats.prefillTokens} with the prefix cache, ${plain.stats.prefillTokens} without (turn prompts ${turnPrompts}); hit rate ${cached.stats.prefixCacheHitRate.toFixed(2)}`);
  model.dispose();
});

test('loss mask: masked tokens get exactly zero dLoss/dlogp and do not change the parameter gradients at all', async () => {
  const p = new GptOssPolicy(randomModel(cfg, { device: 'cpu', seed: 5 }));
  const batch: SequenceBatch = { sequences: [Int32Array.from([1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 41])], promptLens: [3], lossMasks: [Uint8Array.from([1, 1, 0, 0, 0, 1, 1, 0])] };
  const old = (await p.logprobs(batch)).logprobs;
  const opts = { epsClipLow: 0.2, epsClipHigh: 0.2, policyLossType: 'regular' as const, clipRatioC: 3, lossReduction: 'token_mean' as const, maxSeqLen: 8, klCoef: 0 };
  const grads = async (oldRow: Float32Array, mask: Uint8Array | undefined) => {
    p.zeroGrad();
    const f = await p.forward(batch);
    const res = policyLoss({ logprobs: f.logprobs, oldLogprobs: [oldRow], advantages: [1.5], mask: mask ? [mask] : undefined }, opts);
    await f.backward(res.dLogprobs);
    const g = (p as unknown as { grads: Map<string, Tensor> }).grads;
    const flat = [...g.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([, t]) => t.toFloat32());
    return { d: res.dLogprobs[0]!, flat };
  };
  const mask = batch.lossMasks![0]!;
  const a = await grads(old[0]!, mask);
  mask.forEach((m, i) => (m ? assert.notEqual(a.d[i], 0, `token ${i} is in the loss`) : assert.equal(a.d[i], 0, `token ${i} is masked`)));
  // Change the masked tokens' old log-probs (their ratios, hence their would-be gradients) arbitrarily: the gradient
  // is bit-for-bit the same.
  const otherOld = old[0]!.map((x, i) => (mask[i] ? x : x - 3 + i));
  const b = await grads(otherOld, mask);
  assert.equal(a.flat.length, b.flat.length);
  a.flat.forEach((t, k) => assert.deepEqual(t, b.flat[k], `gradient tensor ${k}`));
  // Without the mask the same change does move the gradients (the check above is not vacuous).
  const c = await grads(old[0]!, undefined);
  const d = await grads(otherOld, undefined);
  assert.ok(c.flat.some((t, k) => t.some((x, j) => x !== d.flat[k]![j])), 'unmasked tokens move the gradient');
  p.dispose();
});

/** The policy over the tiny model, harmony ids folded into its vocabulary (log-probs of the folded sequence). */
function foldedPolicy(p: GptOssPolicy): Policy {
  const f = (b: SequenceBatch): SequenceBatch => ({ ...b, sequences: b.sequences.map(fold) });
  return new Proxy(p, {
    get(target, key, recv) {
      if (key === 'logprobs') return (b: SequenceBatch, o?: LogprobOptions) => target.logprobs(f(b), o);
      if (key === 'forward') return (b: SequenceBatch, o?: LogprobOptions) => target.forward(f(b), o);
      const v = Reflect.get(target, key, recv);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

test('GRPO over a multi-turn environment: episodes, masked loss, episode metrics (synthetic_tools, tiny model)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mt-grpo-'));
  const c = loadConfig({
    config: null,
    overrides: [
      'environment.env_class=synthetic_tools', 'generator.max_turns=3', 'generator.max_input_length=400', 'data.max_train_samples=4', 'data.max_val_samples=2',
      'trainer.train_batch_size=2', 'trainer.policy_mini_batch_size=2', 'trainer.micro_train_batch_size_per_gpu=2', 'trainer.micro_forward_batch_size_per_gpu=2',
      'trainer.max_steps=1', 'trainer.eval_interval=0', 'trainer.ckpt_interval=-1', `trainer.ckpt_path=${join(dir, 'ck')}`, 'trainer.resume_mode=none',
      'trainer.algorithm.zero_variance_filter=false', 'trainer.algorithm.use_kl_loss=false', 'trainer.max_prompt_length=400',
      'generator.n_samples_per_prompt=2', 'generator.sampling_params.max_generate_length=5',
    ],
  });
  const tools = await buildTaskEnv(c);
  assert.ok(isMultiTurn(tools));
  // The environment's openings, but every turn is answered with a follow-up until the last, which is rewarded by the
  // parity of its first token (the random model writes no tool calls; this gives the update rewards that differ).
  const env: MultiTurnTaskEnv = {
    ...tools,
    startEpisode: (ex) => ({
      messages: tools.startEpisode(ex).messages,
      step: (turn) => (turn.index < 3 ? { done: false, messages: [userMessage('Go on.')] } : { done: true, reward: turn.tokens[0]! % 2, correct: turn.tokens[0]! % 2 === 1 }),
    }),
  };
  const model = randomModel(cfg, { device: 'cpu', seed: 7 });
  const policy = new GptOssPolicy(model);
  const gen = new FoldedGenerator(new LocalGenerator(model, { blockSize: 4, numBlocks: 1024, maxNumSeqs: 8 }));
  const steps: Array<Record<string, number>> = [];
  const r = await trainGrpo({ config: c, policy: foldedPolicy(policy), generator: gen, env, onStep: (_s, m) => steps.push(m as Record<string, number>) });
  assert.equal(r.steps, 1);
  const m = steps[0]!;
  assert.equal(m['episode/turns'], 3);
  assert.equal(m['episode/answered_frac'], 1);
  assert.equal(m['episode/model_tokens'], 15);
  assert.ok(m['episode/env_tokens']! > 0);
  for (const k of ['loss', 'entropy', 'logprob_gap/abs_mean', 'episode/tool_calls', 'episode/tool_errors', 'episode/answered_frac']) assert.ok(Number.isFinite(m[k]), `${k}=${m[k]}`);
  // The generator's and the trainer's log-probs of the model's own tokens agree (bf16 engine vs trainer forward);
  // counting the injected tokens (generator log-prob 0, trainer about -5 at entropy 5.5) would put it near 2.
  assert.ok(m['logprob_gap/abs_mean']! < 0.05, `gap ${m['logprob_gap/abs_mean']}`);
  assert.ok(Number.isFinite(m.grad_norm) && m.grad_norm! > 0, 'rewards differ within groups: a real update');
  gen.dispose();
  policy.dispose();
});

test('SFT on multi-turn references: the tool result and framing the environment injects get zero gradient', async () => {
  const c = loadConfig({ config: null, overrides: ['environment.env_class=synthetic_tools', 'generator.max_turns=2', 'data.max_train_samples=4', 'data.max_val_samples=1', 'trainer.micro_train_batch_size_per_gpu=2'] });
  const env = await buildTaskEnv(c);
  const policy = new GptOssPolicy(randomModel(cfg, { device: 'cpu', seed: 9 }));
  const inner = foldedPolicy(policy);
  const seen: Array<{ d: Float32Array; refLen: number; promptLen: number; seq: Int32Array }> = [];
  const spy = new Proxy(inner, {
    get(target, key, recv) {
      if (key !== 'forward') return Reflect.get(target, key, recv);
      return async (b: SequenceBatch, o?: LogprobOptions) => {
        const f = await target.forward(b, o);
        const backward = f.backward.bind(f);
        return { ...f, backward: (d: Float32Array[]) => (d.forEach((row, i) => seen.push({ d: row, refLen: b.sequences[i]!.length - b.promptLens[i]!, promptLen: b.promptLens[i]!, seq: b.sequences[i]! })), backward(d)), release: f.release.bind(f) };
      };
    },
  });
  const { trainSft } = await import('../../src/trainer/sft.ts');
  const r = await trainSft({ config: c, policy: spy, env }, { steps: 2, batchSize: 4, lr: 1e-3, evalEvery: 0 });
  assert.equal(r.steps, 2);
  assert.ok(Number.isFinite(r.finalLoss));
  assert.equal(seen.length, 8);
  for (const s of seen) {
    const ex = env.train.find((e) => e.prompt.length === s.promptLen && e.reference!.every((t, i) => t === s.seq[s.promptLen + i]))!;
    const mask = ex.referenceMask!;
    assert.equal(s.d.length, mask.length);
    s.d.forEach((v, i) => (mask[i] ? assert.ok(v < 0) : assert.equal(v, 0)));
  }
  policy.dispose();
});
