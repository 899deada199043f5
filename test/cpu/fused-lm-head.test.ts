// The fused LM-head backward (trainer.fused_lm_head_backward) against the recomputing one, on CPU over the tiny
// random GPT-OSS model: GRPO micro-batches through GptOssPolicy and LoraPolicy (with and without an lm_head adapter,
// i.e. a trained merged head and a frozen head) give the same log-probs, gradients, grad norm and updated weights
// bit for bit with one token chunk (the default at this size), and with 3-token chunks the same bits everywhere but
// the LM head's gradient (its sum over tokens split into chunks: relative 1e-6; first step only, as the updated
// weights may then differ by a bf16 ulp). trainGrpo with the key on == off
// (loss, grad norm, weights: bitwise); the key refused for a policy without the fused path. The loss gradient's
// inputs as data (policyTokenGradient's source, lossRows) and DriverPolicy's refusals of a gradient without them
// (its runs: test/cpu/distributed-train.test.ts; ShardedPolicy's: test/cpu/sharded-policy.test.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomModel, presetConfig, LoraAdapters, LORA_TARGETS, packSequences, disposeBatch, type GptOssModel } from '../../src/model/index.ts';
import { GptOssPolicy } from '../../src/trainer/gptoss-policy.ts';
import { LoraPolicy } from '../../src/trainer/lora-policy.ts';
import type { SequenceBatch, Policy, TrainForwardOptions } from '../../src/trainer/policy.ts';
import type { Tensor } from '../../src/tensor.ts';
import { lossRows, policyLoss, policyTokenGradient, type PolicyLossOptions } from '../../src/rl/loss.ts';
import { DriverPolicy } from '../../src/trainer/distributed-run.ts';
import { loadConfig, type ConfigInput } from '../../src/config/index.ts';
import { trainGrpo } from '../../src/trainer/grpo.ts';
import { MetricsLogger, parseMetricsJsonl } from '../../src/log/metrics.ts';
import { ToyGenerator, ToyPolicy, toyTask } from '../helpers/toy.ts';
import { assertClose } from '../helpers/numeric.ts';

process.env.GPTOSS_PROGRESS = 'off';

const cfg = presetConfig('gpt-oss-tiny-256');
const micros: SequenceBatch[] = [
  { sequences: [Int32Array.from([1, 5, 9, 13, 17, 21]), Int32Array.from([2, 4, 6, 8])], promptLens: [3, 1] },
  { sequences: [Int32Array.from([3, 7, 11, 15, 19, 23, 27, 31, 35]), Int32Array.from([40, 41, 42])], promptLens: [5, 2] },
];
const hyper = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 };
const lossOpts: PolicyLossOptions = { epsClipLow: 0.2, epsClipHigh: 0.28, policyLossType: 'dual_clip', clipRatioC: 3, lossReduction: 'sequence_mean', maxSeqLen: 8, klCoef: 0.05, norm: { tokens: 13, sequences: 4 } };

function grads(p: Policy): Map<string, Tensor> {
  return (p as unknown as { grads: Map<string, Tensor> }).grads;
}

/** Fixed old/ref log-probs and advantages per micro-batch (old near the policy's so some ratios clip). */
function lossInputs(mb: SequenceBatch, k: number) {
  const lens = mb.sequences.map((s, i) => s.length - mb.promptLens[i]!);
  return {
    oldLogprobs: lens.map((n, i) => Float32Array.from({ length: n }, (_, t) => -5.5 + 0.3 * Math.sin(7 * k + 3 * i + t))),
    refLogprobs: lens.map((n, i) => Float32Array.from({ length: n }, (_, t) => -5.5 + 0.2 * Math.cos(5 * k + i + 2 * t))),
    advantages: lens.map((_, i) => (i + k) % 2 ? 0.7 : -1.1),
    mask: lens.map((n) => Uint8Array.from({ length: n }, (_, t) => (t === 1 ? 0 : 1))),
  };
}

/** Two optimizer steps of two micro-batches each; returns per step the log-probs, losses, grads and grad norm. */
async function run(p: Policy, fused: boolean) {
  const steps: { logprobs: Float32Array[]; loss: number; grads: Map<string, Float32Array>; norm: number }[] = [];
  for (let step = 1; step <= 2; step++) {
    p.zeroGrad();
    const lps: Float32Array[] = [];
    let loss = 0;
    for (let k = 0; k < micros.length; k++) {
      const inp = lossInputs(micros[k]!, k + step);
      const fwd = await p.forward(micros[k]!, { lossGradient: fused ? policyTokenGradient(inp, lossOpts) : undefined });
      const res = policyLoss({ logprobs: fwd.logprobs, ...inp }, lossOpts);
      if (fused) await fwd.backward();
      else await fwd.backward(res.dLogprobs);
      lps.push(...fwd.logprobs);
      loss += res.loss;
    }
    const g = new Map([...grads(p)].map(([n, t]) => [n, t.toFloat32()] as const));
    const clip = await p.clipGradNorm(0.5);
    p.optimizerStep(hyper, step);
    steps.push({ logprobs: lps, loss, grads: g, norm: clip.norm });
  }
  return steps;
}

function weights(m: GptOssModel, lora?: LoraAdapters): Map<string, Float32Array> {
  const src = lora ? lora.params : m.weights.params;
  return new Map([...src].map(([n, t]) => [n, t.toFloat32()] as const));
}

const lmName = cfg.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';

async function compare(make: () => { p: Policy; m: GptOssModel; lora?: LoraAdapters }, tokenChunk: number | undefined, what: string): Promise<void> {
  const a = make();
  const b = make();
  b.m.lmHeadTokenChunk = tokenChunk;
  const ra = await run(a.p, false);
  const rb = await run(b.p, true);
  const exact = tokenChunk === undefined;
  // With several token chunks the first step's head gradient differs in its last bits, so the updated bf16 weights
  // may differ by an ulp: only the first step is compared then.
  for (let s = 0; s < (exact ? ra.length : 1); s++) {
    const x = ra[s]!, y = rb[s]!;
    assert.deepEqual(y.logprobs, x.logprobs, `${what} step ${s + 1} log-probs`);
    assert.equal(y.loss, x.loss, `${what} step ${s + 1} loss`);
    assert.deepEqual([...y.grads.keys()].sort(), [...x.grads.keys()].sort(), `${what} gradient names`);
    for (const [n, g] of x.grads) {
      // The head's gradient (and an lm_head adapter's, made from it) is a sum over token chunks.
      const headGrad = n === lmName || n.startsWith('lm_head.');
      if (exact || !headGrad) assert.deepEqual(y.grads.get(n), g, `${what} step ${s + 1} grad ${n}`);
      else assertClose(y.grads.get(n)!, g, 1e-6, 1e-6, `${what} step ${s + 1} grad ${n}`);
    }
    if (exact) assert.equal(y.norm, x.norm, `${what} step ${s + 1} grad norm`);
    else assert.ok(Math.abs(y.norm - x.norm) <= 1e-6 * x.norm, `${what} step ${s + 1} grad norm ${y.norm} vs ${x.norm}`);
  }
  if (exact) assert.deepEqual(weights(b.m, b.lora), weights(a.m, a.lora), `${what} updated weights`);
  a.p.dispose();
  b.p.dispose();
}

test('GptOssPolicy: fused LM-head backward == recomputing one (bitwise; 3-token chunks: head gradient to 1e-6)', async () => {
  const make = () => {
    const m = randomModel(cfg, { device: 'cpu', seed: 21 });
    return { p: new GptOssPolicy(m), m };
  };
  await compare(make, undefined, 'full');
  await compare(make, 3, 'full, 3-token chunks');
});

test('LoraPolicy: fused == recomputing with a trained lm_head adapter (merged head) and with a frozen head', async () => {
  for (const targets of [LORA_TARGETS, ['q_proj', 'v_proj'] as const]) {
    const make = () => {
      const m = randomModel(cfg, { device: 'cpu', seed: 22 });
      const lora = LoraAdapters.init(cfg, { rank: 4, alpha: 8, dropout: 0, targets: [...targets] }, 'cpu', { seed: 23 });
      return { p: new LoraPolicy(m, lora), m, lora };
    };
    await compare(make, undefined, `lora ${targets.join(',')}`);
    await compare(make, 3, `lora ${targets.join(',')}, 3-token chunks`);
  }
});

test('fused forward: backward refuses dLogprobs, a plain one requires them', async () => {
  const p = new GptOssPolicy(randomModel(cfg, { device: 'cpu', seed: 24 }));
  const inp = lossInputs(micros[0]!, 0);
  const f = await p.forward(micros[0]!, { lossGradient: policyTokenGradient(inp, lossOpts) });
  await assert.rejects(f.backward(f.logprobs.map((l) => l.map(() => 0))), /without dLogprobs/);
  const g = await p.forward(micros[0]!);
  await assert.rejects(g.backward(), /dLogprobs missing/);
  g.release();
  // A loss gradient that throws, or gives the wrong number of values: the forward fails with its message.
  await assert.rejects(p.forward(micros[0]!, { lossGradient: () => { throw new Error('loss says no'); } }), /loss says no/);
  await assert.rejects(p.forward(micros[0]!, { lossGradient: () => new Float32Array(1) }), /lossGradient gave 1 values for 3 tokens of sequence 0/);
  // The model-level check: a packed-token gradient of the wrong length.
  const pb = packSequences(micros[0]!.sequences.map((x) => Array.from(x)), 'cpu');
  assert.throws(() => p.model.forward(pb, { train: true, lossGradient: { grad: () => new Float32Array(2), grads: new Map() } }), /lossGradient\.grad gave 2 values for tokens 0\.\.10/);
  assert.throws(() => p.model.forward(pb, { lossGradient: { grad: (_t0, lp) => lp, grads: new Map() } }), /needs train: true/);
  disposeBatch(pb);
  p.zeroGrad();
  p.dispose();
});

test('policyTokenGradient carries its inputs (source); lossRows of them give a subset of sequences the same gradients (global norm); DriverPolicy refuses a loss gradient without them', async () => {
  const inp = lossInputs(micros[1]!, 5);
  const full = policyTokenGradient(inp, lossOpts);
  assert.deepEqual(full.source, { input: inp, opts: lossOpts });
  const lp = (n: number) => Float32Array.from({ length: n }, (_, t) => -5.4 + 0.1 * t);
  // A rank holding sequence 1 only (the mini-batch's normalisers in lossOpts.norm): its row 0 is sequence 1.
  const part = policyTokenGradient(lossRows(inp, [1]), lossOpts);
  const n1 = inp.oldLogprobs[1]!.length;
  assert.deepEqual(part(0, 0, lp(n1)), full(1, 0, lp(n1)));
  assert.throws(() => lossRows(inp, [2]), /lossRows: row 2 of 2/);
  // DriverPolicy checks the loss gradient before any command is sent (no driver needed for the refusals).
  const drv = new DriverPolicy(null as never);
  assert.equal(drv.fusedLmHeadBackward, true);
  await assert.rejects(drv.forward(micros[0]!, { lossGradient: () => new Float32Array(0) }), /lossGradient must carry its loss inputs/);
  await assert.rejects(drv.forward(micros[0]!, { lossGradient: policyTokenGradient(inp, { ...lossOpts, norm: undefined }) }), /need norm/);
  await assert.rejects(drv.forward(micros[0]!, { lossGradient: policyTokenGradient(lossRows(inp, [0]), lossOpts) }), /1 loss rows for 2 sequences/);
});

function grpoConfig(dir: string, fused: boolean | 'auto') {
  const base: ConfigInput = {
    trainer: {
      ckpt_path: join(dir, 'ckpts'),
      resume_mode: 'none',
      train_batch_size: 4,
      policy_mini_batch_size: 2,
      micro_train_batch_size_per_gpu: 3,
      micro_forward_batch_size_per_gpu: 8,
      eval_interval: -1,
      eval_before_train: false,
      ckpt_interval: -1,
      epochs: 1,
      max_steps: 2,
      fused_lm_head_backward: fused,
      policy: { optimizer_config: { lr: 0.01, weight_decay: 0 } },
      algorithm: { use_kl_loss: true, kl_loss_coef: 0.01 },
    },
    generator: { n_samples_per_prompt: 4, sampling_params: { max_generate_length: 3 }, eval_sampling_params: { max_generate_length: 3 } },
  };
  return loadConfig({ config: null, base });
}

test("trainGrpo with trainer.fused_lm_head_backward on == off (loss, grad norm, weights bitwise); true refused without the fused path, 'auto' runs the recomputing one there", async () => {
  const out: { rows: Record<string, unknown>[]; w: Map<string, Float32Array> }[] = [];
  for (const fused of [false, true]) {
    const dir = mkdtempSync(join(tmpdir(), 'fused-lm-'));
    const m = randomModel(cfg, { device: 'cpu', seed: 25 });
    const policy = new GptOssPolicy(m);
    // Count the forwards that took a loss gradient: the training forwards with the key on, none with it off.
    let withGrad = 0, forwards = 0;
    const forward = policy.forward.bind(policy);
    policy.forward = (mb, opts) => {
      forwards++;
      if (opts?.lossGradient) withGrad++;
      return forward(mb, opts);
    };
    const metrics = new MetricsLogger({ path: join(dir, 'm.jsonl'), console: false });
    const r = await trainGrpo({ config: grpoConfig(dir, fused), policy, generator: new ToyGenerator(new ToyPolicy(3)), env: toyTask(16, 4), metrics });
    assert.equal(r.steps, 2);
    assert.ok(forwards > 0);
    if (fused) assert.ok(withGrad > 0, 'key on: the training forwards take the loss gradient');
    else assert.equal(withGrad, 0, 'key off: no forward takes a loss gradient');
    out.push({ rows: parseMetricsJsonl(readFileSync(join(dir, 'm.jsonl'), 'utf8')).filter((x) => x.kind === 'train'), w: weights(m) });
    policy.dispose();
  }
  const [off, on] = out as [(typeof out)[0], (typeof out)[0]];
  assert.equal(on.rows.length, 2);
  for (let s = 0; s < 2; s++) {
    for (const k of ['loss', 'grad_norm', 'kl', 'clip_frac']) {
      assert.equal(typeof off.rows[s]![k], 'number', `metric ${k}`);
      assert.equal(on.rows[s]![k], off.rows[s]![k], `step ${s + 1} ${k}`);
    }
  }
  assert.deepEqual(on.w, off.w);
  const dir = mkdtempSync(join(tmpdir(), 'fused-lm-'));
  const toy = new ToyPolicy(3);
  await assert.rejects(
    trainGrpo({ config: grpoConfig(dir, true), policy: toy, generator: new ToyGenerator(toy), env: toyTask(16, 4) }),
    /trainer\.fused_lm_head_backward=true: this policy has no fused LM-head backward/,
  );
  // 'auto' (the default): the recomputing backward for a policy without the fused path (no forward gets a gradient).
  const toy3 = new ToyPolicy(3);
  let withGrad = 0;
  const fwd3 = toy3.forward.bind(toy3);
  toy3.forward = (mb, opts?: TrainForwardOptions) => {
    if (opts?.lossGradient) withGrad++;
    return fwd3(mb, opts);
  };
  const r3 = await trainGrpo({ config: grpoConfig(mkdtempSync(join(tmpdir(), 'fused-lm-')), 'auto'), policy: toy3, generator: new ToyGenerator(toy3), env: toyTask(16, 4) });
  assert.equal(r3.steps, 2);
  assert.equal(withGrad, 0);
});
