// LoRA dropout (PEFT's lora_dropout, src/model/lora.ts + src/model/layer.ts): the dropoutForward op (mask rate,
// exact scaling, seeded reproducibility, distinct masks per salt), dropout 0 leaves today's results bitwise, the
// training forward's adapter gradients against finite differences with the mask fixed, the recompute path, log-prob
// passes without dropout, the config refusals per target, the PEFT file round trip, LoraPolicy's seeds.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  randomModel,
  presetConfig,
  packSequences,
  disposeBatch,
  checkLoraSpec,
  LoraAdapters,
  type GptOssModel,
  type LoraSpec,
  type LoraTarget,
} from '../../src/model/index.ts';
import { loraDropoutSalt } from '../../src/model/layer.ts';
import { Tensor, liveTensors, trackTensors } from '../../src/tensor.ts';
import { dropoutForward } from '../../src/ops/elementwise.ts';
import { loadConfig } from '../../src/config/index.ts';
import { loraSpecOf, setupRun } from '../../src/trainer/setup.ts';
import { LoraPolicy, loraDropoutSeed } from '../../src/trainer/lora-policy.ts';
import { evalLogprobs as evalLogprobsOf } from '../helpers/eval-logprobs.ts';

const cfg = presetConfig('gpt-oss-tiny-256');
const seqs = [
  [1, 5, 9, 13, 17, 21, 30, 41],
  [2, 4, 6, 8, 10],
  [3, 7, 11, 15, 19, 23, 27, 31, 35, 40, 44],
];
const QKVO: LoraTarget[] = ['q_proj', 'k_proj', 'v_proj', 'o_proj'];
const spec = (dropout: number, targets: LoraTarget[] = QKVO): LoraSpec => ({ rank: 4, alpha: 8, dropout, targets });

const randn = (n: number, seed: number): Float32Array => {
  let s = seed;
  return Float32Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648 - 0.5) * 4);
};

test('dropoutForward: mask rate within binomial bounds, kept values scaled exactly, seeded, a mask per salt', () => {
  const n = 200_000;
  const x = randn(n, 3).map((v) => (v === 0 ? 1 : v)); // no zero inputs: a zero output is a dropped element
  for (const dtype of ['f32', 'bf16'] as const) {
    const xt = Tensor.from(x, [400, 500], { dtype, device: 'cpu' });
    const xv = xt.toFloat32(); // the input as stored (bf16-rounded for bf16)
    for (const p of [0.1, 0.3, 0.5]) {
      const y = dropoutForward(xt, p, 1234, 7);
      assert.equal(y.dtype, dtype);
      assert.deepEqual(y.shape, [400, 500]);
      const yv = y.toFloat32();
      const inv = Math.fround(1 / (1 - p));
      // The kept elements' exact value: fp32 x·inv rounded to the dtype (Tensor.from rounds as the op's store does).
      const want = Tensor.from(xv.map((v) => Math.fround(v * inv)), [n], { dtype, device: 'cpu' }).toFloat32();
      let dropped = 0;
      for (let i = 0; i < n; i++) {
        if (yv[i] === 0) dropped++;
        else assert.equal(yv[i], want[i], `${dtype} p ${p}: element ${i} kept as ${yv[i]}, expected ${want[i]}`);
      }
      const sd = Math.sqrt(n * p * (1 - p));
      assert.ok(Math.abs(dropped - n * p) < 5 * sd, `${dtype} p ${p}: ${dropped} dropped of ${n} (expected ${n * p} ± ${5 * sd})`);
      // Same seed and salt: the same output bitwise (and the mask does not depend on the shape).
      const again = dropoutForward(xt, p, 1234, 7);
      assert.deepEqual(again.toFloat32(), yv);
      const flat = xt.view([n]);
      assert.deepEqual(dropoutForward(flat, p, 1234, 7).toFloat32(), yv);
      flat.dispose();
      // Another salt (module / layer) or seed (forward): another mask; agreement ~ p² + (1-p)², far from 1.
      for (const [seed, salt] of [[1234, 8], [1235, 7], [7, 1234]] as const) {
        const o = dropoutForward(xt, p, seed, salt).toFloat32();
        let same = 0;
        for (let i = 0; i < n; i++) if ((o[i] === 0) === (yv[i] === 0)) same++;
        const expect = p * p + (1 - p) * (1 - p);
        assert.ok(Math.abs(same / n - expect) < 0.01, `seed ${seed} salt ${salt}: mask agreement ${same / n} (independent: ${expect})`);
      }
      [y, again].forEach((t) => t.dispose());
    }
    // p = 0: the identity, bitwise.
    const y0 = dropoutForward(xt, 0, 5, 5);
    assert.deepEqual(y0.toFloat32(), xv);
    y0.dispose();
    xt.dispose();
  }
  // The backward (the op on the gradient, same seed and salt) zeroes exactly the forward's dropped elements.
  const a = Tensor.from(x.subarray(0, 4096), [4096], { dtype: 'f32', device: 'cpu' });
  const g = Tensor.from(randn(4096, 9).map((v) => v || 1), [4096], { dtype: 'f32', device: 'cpu' });
  const fa = dropoutForward(a, 0.4, 99, 3).toFloat32(), fg = dropoutForward(g, 0.4, 99, 3).toFloat32();
  for (let i = 0; i < 4096; i++) assert.equal(fa[i] === 0, fg[i] === 0, `element ${i}`);
  // Bad arguments are refused with the argument named.
  assert.throws(() => dropoutForward(a, 1, 1, 1), /dropoutForward: p must be in \[0, 1\), got 1/);
  assert.throws(() => dropoutForward(a, 0.1, -1, 1), /dropoutForward: seed and salt must be non-negative integers/);
  assert.throws(() => dropoutForward(a, 0.1, 1.5, 1), /argument seed must be an integer/);
  const ids = Tensor.from(new Int32Array(4), [4], { dtype: 'i32', device: 'cpu' });
  assert.throws(() => dropoutForward(ids, 0.1, 1, 1), /dropoutForward/);
  [a, g, ids].forEach((t) => t.dispose());
});

test('loraDropoutSalt: one mask per (layer, module) of q/k/v/o; refused for the other targets', () => {
  const salts = new Set<number>();
  for (let l = 0; l < 24; l++) for (const t of QKVO) salts.add(loraDropoutSalt(l, t));
  assert.equal(salts.size, 24 * 4);
  assert.throws(() => loraDropoutSalt(0, 'router'), /no dropout mask for target 'router'/);
});

/** A training forward (train: true, the given dropout seed) and its loss Σ c·logp; with grads, the backward's. */
function trainLoss(m: GptOssModel, c: Float32Array, seed: number | undefined, withGrads: boolean): { loss: number; lp: Float32Array; grads?: Map<string, Tensor> } {
  const b = packSequences(seqs, 'cpu');
  const r = m.forward(b, { train: true, releaseBatch: true, dropoutSeed: seed });
  const lp = r.logprobs.toFloat32();
  r.logprobs.dispose();
  r.entropy.dispose();
  let loss = 0;
  for (let i = 0; i < lp.length; i++) loss += c[i]! * lp[i]!;
  if (!withGrads) {
    r.state!.dispose();
    return { loss, lp };
  }
  const d = Tensor.from(c, [c.length], { dtype: 'f32', device: 'cpu' });
  const grads = m.backward(r.state!, d);
  d.dispose();
  return { loss, lp, grads };
}

const evalLogprobs = (m: GptOssModel): Float32Array => evalLogprobsOf(m, seqs);

const numTokens = seqs.reduce((a, s) => a + s.length, 0);
const coef = Float32Array.from({ length: numTokens }, (_, i) => (i % 3 === 0 ? 0 : Math.cos(i)));
const gradsOf = (g: Map<string, Tensor>): Map<string, number[]> => new Map([...g].map(([n, t]) => [n, Array.from(t.toFloat32())]));
const disposeGrads = (g: Map<string, Tensor> | undefined): void => g?.forEach((t) => t.dispose());

test('dropout 0: forward and adapter gradients bitwise as without dropout (a seed changes nothing)', () => {
  const m = randomModel(cfg, { device: 'cpu', seed: 21, biasStd: 0.02 });
  m.lora = LoraAdapters.init(cfg, spec(0), 'cpu', { seed: 22, bStd: 0.05 });
  const plain = trainLoss(m, coef, undefined, true);
  const seeded = trainLoss(m, coef, 77, true);
  assert.deepEqual(Array.from(seeded.lp), Array.from(plain.lp));
  assert.deepEqual(gradsOf(seeded.grads!), gradsOf(plain.grads!));
  // The training forward's log-probs are the eval forward's (no dropout anywhere).
  assert.deepEqual(Array.from(evalLogprobs(m)), Array.from(plain.lp));
  [plain.grads, seeded.grads].forEach(disposeGrads);
  m.lora.dispose();
  m.dispose();
});

test('dropout > 0: training forwards drop (seeded, reproducible), log-prob passes do not; seeds are required and checked', () => {
  const m = randomModel(cfg, { device: 'cpu', seed: 23, biasStd: 0.02 });
  const a0 = LoraAdapters.init(cfg, spec(0), 'cpu', { seed: 24, bStd: 0.2 });
  const ap = LoraAdapters.init(cfg, spec(0.3), 'cpu', { seed: 24, bStd: 0.2 });
  m.lora = a0;
  const lp0 = evalLogprobs(m);
  m.lora = ap;
  // Eval (log-probs, tokenLogprobs) ignores p: bitwise the dropout-0 model.
  assert.deepEqual(Array.from(evalLogprobs(m)), Array.from(lp0));
  assert.deepEqual(m.tokenLogprobs(seqs).map((x) => Array.from(x)), (() => { m.lora = a0; const r = m.tokenLogprobs(seqs).map((x) => Array.from(x)); m.lora = ap; return r; })());
  const s1 = trainLoss(m, coef, 5, false).lp, s1b = trainLoss(m, coef, 5, false).lp, s2 = trainLoss(m, coef, 6, false).lp;
  assert.deepEqual(Array.from(s1b), Array.from(s1));
  const d = (x: Float32Array, y: Float32Array) => x.reduce((mx, v, i) => Math.max(mx, Math.abs(v - y[i]!)), 0);
  assert.ok(d(s1, lp0) > 1e-3, `dropout changes the training forward (${d(s1, lp0)})`);
  assert.ok(d(s1, s2) > 1e-3, `another seed, other masks (${d(s1, s2)})`);
  const b = packSequences(seqs, 'cpu');
  assert.throws(() => m.forward(b, { train: true }), /dropout 0\.3 \(trainer\.policy\.model\.lora\.dropout\): a training forward needs opts\.dropoutSeed/);
  assert.throws(() => m.forward(b, { dropoutSeed: 3 }), /dropoutSeed is for training forwards/);
  assert.throws(() => m.forward(b, { train: true, dropoutSeed: -1 }), /dropoutSeed must be an integer in \[0, 2\^53\)/);
  disposeBatch(b);
  // The base (withoutAdapters: the KL reference) has no adapters and so no dropout.
  m.lora = ap;
  a0.dispose();
  ap.dispose();
  m.lora = null;
  m.dispose();
});

test('dropout > 0: adapter gradients match finite differences with the masks fixed (same seed)', () => {
  // top-k = all experts: a routing flip under a perturbation would swamp the difference (as in lora.test.ts).
  const c4 = presetConfig('gpt-oss-tiny-256', { topK: 4 });
  const m = randomModel(c4, { device: 'cpu', seed: 25, biasStd: 0.02 });
  const a = LoraAdapters.init(c4, spec(0.3), 'cpu', { seed: 26, bStd: 0.05 });
  m.lora = a;
  const SEED = 4242;
  const { grads } = trainLoss(m, coef, SEED, true);
  assert.deepEqual([...grads!.keys()].sort(), a.names().sort());
  // The gradients differ from the no-dropout ones (the masks matter), and from another seed's.
  const a0 = LoraAdapters.init(c4, spec(0), 'cpu', { seed: 26, bStd: 0.05 });
  m.lora = a0;
  const g0 = trainLoss(m, coef, undefined, true).grads!;
  m.lora = a;
  const name = 'model.layers.0.self_attn.q_proj.lora_A';
  assert.notDeepEqual(Array.from(grads!.get(name)!.toFloat32()), Array.from(g0.get(name)!.toFloat32()));
  disposeGrads(g0);
  a0.dispose();
  // Directional derivatives (±1 directions, as lora.test.ts) of the fixed-mask loss against the gradient.
  const fds: number[] = [], dots: number[] = [];
  for (const n of a.names()) {
    const p = a.params.get(n)!;
    const g = grads!.get(n)!.toFloat32();
    const p0 = p.toFloat32();
    const dir = Float32Array.from(p0, (_, i) => (Math.sin(i * 12.9898 + n.length) >= 0 ? 1 : -1));
    const dot = g.reduce((acc, v, i) => acc + v * dir[i]!, 0);
    const eps = 0.03;
    const at = (sgn: number) => {
      p.copyFrom(Float32Array.from(p0, (v, i) => v + sgn * eps * dir[i]!));
      return trainLoss(m, coef, SEED, false).loss;
    };
    const fd = (at(1) - at(-1)) / (2 * eps);
    p.copyFrom(p0);
    assert.ok(Math.abs(fd - dot) < 0.15 * Math.abs(dot) + 0.06, `${n}: finite difference ${fd} vs gradient·direction ${dot}`);
    fds.push(fd);
    dots.push(dot);
  }
  assert.equal(fds.length, 2 * 4 * c4.numLayers);
  const mean = (v: number[]) => v.reduce((x, y) => x + y, 0) / v.length;
  const [mf, md] = [mean(fds), mean(dots)];
  const cov = fds.reduce((acc, f, i) => acc + (f - mf) * (dots[i]! - md), 0);
  const corr = cov / Math.sqrt(fds.reduce((acc, f) => acc + (f - mf) ** 2, 0) * dots.reduce((acc, x) => acc + (x - md) ** 2, 0));
  assert.ok(corr > 0.97, `correlation of finite differences and gradients ${corr}`);
  disposeGrads(grads);
  a.dispose();
  m.dispose();
});

test('dropout > 0: the recompute path (with and without kept attention) gives the same gradients bitwise', () => {
  const m = randomModel(cfg, { device: 'cpu', seed: 27, biasStd: 0.02 });
  m.lora = LoraAdapters.init(cfg, spec(0.25), 'cpu', { seed: 28, bStd: 0.05 });
  const want = trainLoss(m, coef, 31, true);
  for (const keep of [false, true]) {
    m.recompute = true;
    m.keepAttention = keep;
    const got = trainLoss(m, coef, 31, true);
    assert.deepEqual(Array.from(got.lp), Array.from(want.lp));
    assert.deepEqual(gradsOf(got.grads!), gradsOf(want.grads!), `keepAttention ${keep}`);
    disposeGrads(got.grads);
  }
  disposeGrads(want.grads);
  m.lora.dispose();
  m.dispose();
});

test('dropout > 0: a training step (with and without recompute) leaves no undisposed tensors behind', () => {
  trackTensors(true);
  try {
    const m = randomModel(cfg, { device: 'cpu', seed: 33, biasStd: 0.02 });
    m.lora = LoraAdapters.init(cfg, spec(0.2), 'cpu', { seed: 34, bStd: 0.05 });
    const step = (): void => {
      for (const rec of [false, true]) {
        m.recompute = rec;
        disposeGrads(trainLoss(m, coef, 8, true).grads);
      }
      evalLogprobs(m);
    };
    step();
    const before = new Set(liveTensors().map((x) => x.tensor));
    step();
    const leaked = liveTensors().filter((x) => !before.has(x.tensor));
    const where = leaked.slice(0, 5).map((x) => `${x.tensor.toString()}\n${x.stack.split('\n').slice(2, 6).join('\n')}`);
    assert.equal(leaked.length, 0, `undisposed tensors after a step:\n${where.join('\n')}`);
    m.lora.dispose();
    m.dispose();
  } finally {
    trackTensors(false);
  }
});

test('config: dropout > 0 accepted with q/k/v/o targets, refused with each other target (key and reason named)', () => {
  const withTargets = (d: number, t: string) =>
    loraSpecOf(loadConfig({ config: 'demo-cpu', overrides: ['trainer.policy.model.lora.rank=4', `trainer.policy.model.lora.dropout=${d}`, `trainer.policy.model.lora.target_modules=[${t}]`] }))!;
  checkLoraSpec(withTargets(0.1, 'q_proj,k_proj,v_proj,o_proj'));
  assert.equal(withTargets(0.1, 'q_proj').dropout, 0.1);
  const reasons: Record<string, RegExp> = {
    gate_up_proj: /lora\.ParamWrapper\) does not work with lora_dropout != 0/,
    down_proj: /lora\.ParamWrapper\) does not work with lora_dropout != 0/,
    router: /lora\.ParamWrapper, how the router weight is adapted\) does not work with lora_dropout != 0/,
    lm_head: /merges the LM-head adapter into the head of the fused log-prob op.*no per-token input mask/,
    embed_tokens: /PEFT's Embedding LoRA applies no dropout.*silently ignore/,
  };
  for (const [t, why] of Object.entries(reasons)) {
    const s = withTargets(0.1, `q_proj,${t}`);
    assert.throws(() => checkLoraSpec(s), (e: Error) => {
      assert.match(e.message, new RegExp(`^trainer\\.policy\\.model\\.lora\\.dropout=0\\.1 with target '${t}' in trainer\\.policy\\.model\\.lora\\.target_modules: `));
      assert.match(e.message, why);
      return true;
    });
    assert.throws(() => LoraAdapters.init(cfg, s, 'cpu'), why);
    checkLoraSpec({ ...s, dropout: 0 }); // dropout 0: every target as before
  }
  assert.throws(() => checkLoraSpec(spec(1)), /trainer\.policy\.model\.lora\.dropout must be in \[0, 1\), got 1/);
  assert.throws(() => checkLoraSpec(spec(-0.1)), /lora\.dropout must be in \[0, 1\)/);
});

test('a run: dropout > 0 with q/k/v/o builds a LoraPolicy seeded by trainer.seed; an unsupported target is refused before the model loads', async () => {
  const lora = (d: number, t: string) => ['trainer.policy.model.lora.rank=4', `trainer.policy.model.lora.dropout=${d}`, `trainer.policy.model.lora.target_modules=[${t}]`, 'trainer.seed=7'];
  const run = await setupRun(loadConfig({ config: 'demo-cpu', overrides: lora(0.1, 'q_proj,v_proj') }));
  assert.ok(run.policy instanceof LoraPolicy);
  assert.equal(run.policy.adapters.spec.dropout, 0.1);
  assert.equal(run.policy.dropoutRunSeed, 7);
  run.generator.dispose();
  run.policy.dispose();
  await assert.rejects(setupRun(loadConfig({ config: 'demo-cpu', overrides: lora(0.1, 'q_proj,embed_tokens') })), /lora\.dropout=0\.1 with target 'embed_tokens'.*PEFT's Embedding LoRA applies no dropout/);
});

test('PEFT files: adapter_config.json writes lora_dropout and loading keeps it', () => {
  const a = LoraAdapters.init(cfg, spec(0.05), 'cpu', { seed: 29, bStd: 0.05 });
  const dir = mkdtempSync(join(tmpdir(), 'lora-drop-'));
  a.savePeft(dir);
  assert.equal(JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8')).lora_dropout, 0.05);
  const b = LoraAdapters.loadPeft(dir, cfg, 'cpu');
  assert.equal(b.spec.dropout, 0.05);
  assert.deepEqual(b.spec.targets, QKVO);
  // A PEFT adapter trained with dropout on a target we refuse it for still loads (merge, serving: no dropout there).
  const h = LoraAdapters.init(cfg, spec(0, ['q_proj', 'lm_head']), 'cpu', { seed: 30 });
  const hd = mkdtempSync(join(tmpdir(), 'lora-drop-h-'));
  h.savePeft(hd);
  const cj = join(hd, 'adapter_config.json');
  const raw = JSON.parse(readFileSync(cj, 'utf8'));
  raw.lora_dropout = 0.1;
  writeFileSync(cj, JSON.stringify(raw));
  const hl = LoraAdapters.loadPeft(hd, cfg, 'cpu');
  assert.equal(hl.spec.dropout, 0.1);
  raw.lora_dropout = 'x';
  writeFileSync(cj, JSON.stringify(raw));
  assert.throws(() => LoraAdapters.loadPeft(hd, cfg, 'cpu'), /adapter_config\.json: lora_dropout must be a number/);
  [a, b, h, hl].forEach((x) => x.dispose());
});

test('LoraPolicy: dropout seeds from (run seed, optimizer step, micro-batch); training is reproducible and resumes bitwise', async () => {
  // The seed function: distinct across micro-batches and steps, deterministic.
  const seen = new Set<number>();
  for (let s = 0; s < 20; s++) for (let mb = 0; mb < 20; mb++) {
    const v = loraDropoutSeed(42, s, mb);
    assert.ok(Number.isSafeInteger(v) && v >= 0);
    seen.add(v);
  }
  assert.equal(seen.size, 400);
  assert.equal(loraDropoutSeed(42, 3, 1), loraDropoutSeed(42, 3, 1));
  assert.notEqual(loraDropoutSeed(42, 3, 1), loraDropoutSeed(43, 3, 1));
  const batch = { sequences: seqs.map((s) => Int32Array.from(s)), promptLens: [2, 2, 3] };
  const hyper = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 };
  const mk = () => new LoraPolicy(randomModel(cfg, { device: 'cpu', seed: 31 }), LoraAdapters.init(cfg, spec(0.3), 'cpu', { seed: 32, bStd: 0.05 }), { dropoutSeed: 42 });
  const train = async (q: LoraPolicy, steps: number[]) => {
    for (const s of steps) {
      q.zeroGrad();
      for (let mb = 0; mb < 2; mb++) {
        const f = await q.forward(batch);
        await f.backward(f.logprobs.map((l) => l.map(() => -1)));
      }
      q.optimizerStep(hyper, s);
    }
  };
  const p = mk(), q = mk();
  await train(p, [1, 2]);
  const dir = mkdtempSync(join(tmpdir(), 'lora-drop-pol-'));
  await p.save(dir);
  await train(p, [3, 4]);
  // A fresh policy loading the step-2 save and training steps 3, 4 draws the same masks: the same adapters bitwise.
  await q.load(dir);
  await train(q, [3, 4]);
  for (const [n, t] of p.adapters.params) assert.deepEqual(Array.from(q.adapters.params.get(n)!.toFloat32()), Array.from(t.toFloat32()), n);
  // Log-probs (the GRPO old log-probs, eval) have no dropout: equal to the dropout-0 copy of the adapters.
  const lp = (await p.logprobs(batch)).logprobs.map((x) => Array.from(x));
  const z = LoraAdapters.init(cfg, spec(0), 'cpu');
  z.copyFrom(p.adapters);
  p.model.lora = z;
  assert.deepEqual((await p.logprobs(batch)).logprobs.map((x) => Array.from(x)), lp);
  p.model.lora = p.adapters;
  z.dispose();
  // Two forwards of one step draw different masks; a zeroGrad starts the micro-batch count again.
  const r = mk();
  const f1 = await r.forward(batch), f2 = await r.forward(batch);
  assert.notDeepEqual(f1.logprobs.map((x) => Array.from(x)), f2.logprobs.map((x) => Array.from(x)));
  r.zeroGrad();
  const f3 = await r.forward(batch);
  assert.deepEqual(f3.logprobs.map((x) => Array.from(x)), f1.logprobs.map((x) => Array.from(x)));
  [f1, f2, f3].forEach((f) => f.release());
  // The policy refuses what the adapters could not train with.
  assert.throws(() => new LoraPolicy(randomModel(cfg, { device: 'cpu' }), LoraAdapters.loadPeft(dir, cfg, 'cpu'), { dropoutSeed: 1.5 }), /dropoutSeed must be an integer/);
  [p, q, r].forEach((x) => x.dispose());
});
