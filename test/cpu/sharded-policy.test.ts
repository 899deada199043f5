// ShardedPolicy (src/trainer/sharded-policy.ts) over 1-4 CPU processes started by the launcher, against the
// single-process GptOssPolicy: the same loss, grad norm and fp32 masters (relative 1e-5) after 3 optimizer steps with
// gradient accumulation, clipping and ranks that run empty micro-batches; sharded save -> resume continues bitwise;
// a checkpoint of another rank count resumes on this one (2 -> 3, 3 -> 1) as the uninterrupted run up to fp32 order; the Hugging Face export loads with loadModel and gives the same
// log-probs; a rank that fails mid-step ends the job, named. Plus the layout and the sequence split.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, existsSync, readdirSync, rmSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { launch, initDistributed, type LaunchResult } from '../../src/distributed/launch.ts';
import { Checkpoint, loadModel, randomModel, paramSpecs, presetConfig, PRESET_NAMES } from '../../src/model/index.ts';
import { paramUnits, shardSize } from '../../src/trainer/memory-plan.ts';
import { GptOssPolicy } from '../../src/trainer/gptoss-policy.ts';
import { liveTensors, trackTensors } from '../../src/tensor.ts';
import { ShardedPolicy, shardLayout, shardSequences, rankMicroBatches, zeroAroundExpertMatrices } from '../../src/trainer/sharded-policy.ts';
import { Tensor } from '../../src/tensor.ts';
import { CFG, SEED, MICRO, MAX_NORM, HYPER, stepBatch, normTokens, pgLoss, type StepRecord, type WorkerResult } from '../helpers/fsdp-common.ts';
import { relNorm } from '../helpers/numeric.ts';

const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
const WORKER = fileURLToPath(new URL(`../helpers/fsdp-worker${ext}`, import.meta.url));

interface Run extends LaunchResult {
  text: string;
}

async function runRanks(n: number, opts: Record<string, unknown>): Promise<Run> {
  const lines: string[] = [];
  const r = await launch({
    script: WORKER,
    args: [JSON.stringify(opts)],
    nprocPerNode: n,
    device: 'cpu',
    killGraceMs: 3000,
    onOutput: (rank, _stream, line) => lines.push(`[rank ${rank}] ${line}`),
  });
  return { ...r, text: lines.join('\n') };
}

function readResult(file: string): WorkerResult {
  return JSON.parse(readFileSync(file, 'utf8')) as WorkerResult;
}

/** The single-process reference: the whole mini-batch in consecutive micro-batches of MICRO sequences. */
async function singleProcess(steps: number[], fused = false): Promise<{ steps: StepRecord[]; masters: Map<string, Float32Array> }> {
  const p = new GptOssPolicy(randomModel(CFG, { device: 'cpu', seed: SEED }));
  const out: StepRecord[] = [];
  for (const step of steps) {
    const mb = stepBatch(step);
    const norm = normTokens(mb);
    p.zeroGrad();
    let loss = 0;
    for (let i = 0; i < mb.sequences.length; i += MICRO) {
      const idx = mb.sequences.slice(i, i + MICRO).map((_, j) => i + j);
      const lossGradient = fused ? (seq: number, _t0: number, lp: Float32Array) => new Float32Array(lp.length).fill(-mb.advantages[idx[seq]!]! / norm) : undefined;
      const fwd = await p.forward({ sequences: idx.map((k) => mb.sequences[k]!), promptLens: idx.map((k) => mb.promptLens[k]!) }, { lossGradient });
      const l = pgLoss(fwd.logprobs, idx.map((k) => mb.advantages[k]!), norm);
      loss += l.loss;
      await (fused ? fwd.backward() : fwd.backward(l.d));
    }
    const clip = await p.clipGradNorm(MAX_NORM);
    p.optimizerStep(HYPER, step);
    out.push({ step, loss, norm: clip.norm, clipped: clip.clipped });
  }
  const dir = mkdtempSync(join(tmpdir(), 'fsdp-ref-'));
  await p.save(dir);
  const ck = Checkpoint.open(join(dir, 'optimizer'));
  const masters = new Map<string, Float32Array>();
  for (const s of paramSpecs(CFG)) {
    const t = ck.load(`master.${s.name}`, { device: 'cpu', dtype: 'f32', shape: s.shape });
    masters.set(s.name, t.toFloat32());
    t.dispose();
  }
  ck.close();
  p.dispose();
  return { steps: out, masters };
}

function rel(a: number, b: number): number {
  return Math.abs(a - b) / Math.max(Math.abs(b), 1e-30);
}

let reference: Promise<{ steps: StepRecord[]; masters: Map<string, Float32Array> }> | undefined;
const results = new Map<number, { out: string; exportDir: string }>();

test('layout: units padded to a multiple of N cover every parameter once; sequences balanced by tokens', () => {
  const specs = paramSpecs(CFG);
  for (const n of [1, 2, 3, 4, 7]) {
    const units = shardLayout(CFG, n);
    assert.equal(units.length, CFG.numLayers + 2);
    const names = units.flatMap((u) => u.entries.map((e) => e.name));
    assert.deepEqual([...names].sort(), specs.map((s) => s.name).sort());
    for (const u of units) {
      assert.equal(u.padded % n, 0);
      assert.ok(u.padded - u.span < n);
      assert.ok(u.span - u.numel < 8 * u.entries.length);
      // 16-byte aligned views of the gathered bf16 unit (k/v follow q: the fused projection is one view).
      for (const e of u.entries) if (!/\.(k|v)_proj\./.test(e.name)) assert.equal(e.offset % 8, 0, e.name);
      assert.equal(u.shard * n, u.padded);
    }
  }
  assert.throws(() => shardLayout(CFG, 0), /world size 0/);
  assert.throws(() => shardLayout(presetConfig('gpt-oss-tiny-256', { tieWordEmbeddings: true }), 2), /tied word embeddings/);
  // Longest first to the lightest rank: token loads 12+3 / 10+4 / 9+5.
  const split = shardSequences([3, 12, 10, 9, 4, 5], 3);
  assert.deepEqual(split, [[0, 1], [2, 4], [3, 5]]);
  assert.deepEqual(shardSequences([5, 5], 4), [[0], [1], [], []]);
  assert.deepEqual(rankMicroBatches([[0, 1, 2], [3], []], 2), [[[0, 1], [2]], [[3], []], [[], []]]);
  assert.throws(() => rankMicroBatches([[0]], 0), /micro-batch size 0/);
});

test('a fresh layer gradient buffer is zeroed around the expert matrices only (the backward writes those: freshExpertGrads)', () => {
  for (const n of [1, 3]) {
    const units = shardLayout(CFG, n);
    for (const u of units) {
      const flat = Tensor.from(new Float32Array(u.padded).fill(NaN), [u.padded], { device: 'cpu' });
      const fresh = zeroAroundExpertMatrices(u, flat);
      assert.equal(fresh, u.kind === 'layer');
      const v = flat.toFloat32();
      const expert = new Uint8Array(u.padded);
      for (const e of u.entries) if (/\.mlp\.experts\.(gate_up_proj|down_proj)$/.test(e.name)) expert.fill(1, e.offset, e.offset + e.numel);
      assert.equal(expert.some((x) => x === 1), u.kind === 'layer');
      for (let i = 0; i < u.padded; i++) {
        if (expert[i] ? !Number.isNaN(v[i]!) : v[i] !== 0) assert.fail(`unit ${u.kind} ${u.layer}, N ${n}: element ${i} is ${v[i]} (expert range: ${expert[i] === 1})`);
      }
      flat.dispose();
    }
  }
});

test('the memory planner plans the shards ShardedPolicy makes (units and per-rank sizes, every preset)', () => {
  for (const name of PRESET_NAMES) {
    const c = presetConfig(name);
    const planned = paramUnits(c);
    for (const n of [1, 3, 8]) {
      const units = shardLayout(c, n);
      assert.deepEqual(units.map((u) => u.numel), [planned.embedding, ...planned.layers, planned.head], name);
      // Per-rank shards: the planner counts parameters; the layout adds < 8 alignment elements per tensor (bytes).
      for (const u of units) assert.ok(u.shard - shardSize(u.numel, n) <= Math.ceil((8 * u.entries.length) / n), name);
    }
  }
});

for (const n of [1, 2, 3, 4]) {
  test(`${n} rank(s) x 3 steps (accumulation, clipping) equal the single-process policy`, async (t) => {
    reference ??= singleProcess([1, 2, 3]);
    const dir = mkdtempSync(join(tmpdir(), `fsdp-${n}-`));
    const out = join(dir, 'result.json');
    const exportDir = join(dir, 'export');
    // Some ranks run an empty micro-batch: 9 sequences over 4 ranks in micro-batches of 2.
    const shape = rankMicroBatches(shardSequences(stepBatch(1).sequences.map((s) => s.length), n), MICRO);
    if (n === 4) assert.ok(shape.some((r) => r.some((m) => m.length === 0)), 'the test should exercise empty micro-batches');
    const r = await runRanks(n, { steps: [1, 2, 3], out, export: n === 2 ? exportDir : undefined });
    assert.equal(r.exitCode, 0, r.text);
    results.set(n, { out, exportDir });
    const got = readResult(out);
    const ref = await reference;
    for (let i = 0; i < 3; i++) {
      const g = got.steps[i]!;
      const w = ref.steps[i]!;
      assert.ok(w.clipped && g.clipped, `step ${i + 1} should clip (norm ${w.norm} > ${MAX_NORM})`);
      assert.ok(rel(g.loss, w.loss) <= 1e-5, `step ${i + 1} loss ${g.loss} vs ${w.loss}`);
      assert.ok(rel(g.norm, w.norm) <= 1e-5, `step ${i + 1} grad norm ${g.norm} vs ${w.norm}`);
    }
    let worst = 0;
    for (const [name, want] of ref.masters) {
      const have = got.masters[name];
      assert.ok(have && have.length === want.length, `master ${name} missing or of another size`);
      const e = relNorm(have, want);
      worst = Math.max(worst, e);
      assert.ok(e <= 1e-5, `master ${name}: relative difference ${e}`);
    }
    const worstStep = Math.max(...got.steps.flatMap((g, i) => [rel(g.loss, ref.steps[i]!.loss), rel(g.norm, ref.steps[i]!.norm)]));
    t.diagnostic(`N=${n}: worst relative difference: loss/grad norm ${worstStep.toExponential(2)}, masters ${worst.toExponential(2)}`);
  });
}

// The fused LM-head backward (trainer.fused_lm_head_backward): each rank's forward takes its micro-batch's loss
// gradient (rank-local sequence -> mini-batch advantage, the global token normaliser) and writes the LM head's
// gradient into the head unit's gradient buffer. With one token chunk (the tiny model's vocabulary) the fused head
// gives the recomputing one's bits, so the run equals the key-off run of the same N bit for bit; against the
// single-process fused run the tolerance of the tests above (fp32 reduction order of the ranks' gradients).
let fusedReference: Promise<{ steps: StepRecord[]; masters: Map<string, Float32Array> }> | undefined;
for (const n of [1, 2, 3]) {
  test(`${n} rank(s), fused LM-head backward: == the key-off run bitwise (loss, grad norm, masters), == the single-process fused run`, async () => {
    const off = results.get(n);
    assert.ok(off, `needs the ${n}-rank run`);
    const dir = mkdtempSync(join(tmpdir(), `fsdp-fused-${n}-`));
    const out = join(dir, 'result.json');
    const r = await runRanks(n, { steps: [1, 2, 3], out, fused: true });
    assert.equal(r.exitCode, 0, r.text);
    const got = readResult(out);
    const want = readResult(off.out);
    assert.deepEqual(got.steps, want.steps);
    assert.deepEqual(got.masters, want.masters);
    fusedReference ??= singleProcess([1, 2, 3], true);
    const ref = await fusedReference;
    // The single-process policy's fused path is its recomputing one bit for bit (test/cpu/fused-lm-head.test.ts).
    assert.deepEqual(ref, await (reference ??= singleProcess([1, 2, 3])));
    for (let i = 0; i < 3; i++) {
      assert.ok(rel(got.steps[i]!.loss, ref.steps[i]!.loss) <= 1e-5, `step ${i + 1} loss`);
      assert.ok(rel(got.steps[i]!.norm, ref.steps[i]!.norm) <= 1e-5, `step ${i + 1} grad norm`);
    }
    for (const [name, w] of ref.masters) assert.ok(relNorm(got.masters[name]!, w) <= 1e-5, `master ${name}: relative difference ${relNorm(got.masters[name]!, w)}`);
  });
}

test('sharded fused forward: backward refuses dLogprobs, a plain one requires them, zeroGrad() in between is refused; a failing loss gradient frees everything', async () => {
  const ctx = await initDistributed({ backend: 'cpu' });
  const model = randomModel(CFG, { device: 'cpu', seed: SEED });
  const p = ShardedPolicy.fromWeights(model.weights, ctx.collectives);
  model.dispose();
  assert.equal(p.fusedLmHeadBackward, true);
  trackTensors(true);
  const before = new Set(liveTensors().map((x) => x.tensor));
  const mb = stepBatch(1);
  const b = { sequences: mb.sequences.slice(0, 2), promptLens: mb.promptLens.slice(0, 2) };
  const g = (_s: number, _t0: number, lp: Float32Array) => new Float32Array(lp.length).fill(-0.1);
  let f = await p.forward(b, { lossGradient: g });
  await assert.rejects(f.backward([new Float32Array(1)]), /call backward\(\) without dLogprobs/);
  await f.backward();
  f = await p.forward(b);
  await assert.rejects(f.backward(), /dLogprobs missing/);
  f.release();
  f = await p.forward(b, { lossGradient: g });
  p.zeroGrad();
  await assert.rejects(f.backward(), /zeroGrad\(\) ran between this forward \(lossGradient\) and its backward/);
  await assert.rejects(p.forward(b, { lossGradient: () => new Float32Array(1) }), /lossGradient gave 1 values for \d+ tokens of sequence 0/);
  await assert.rejects(p.forward(b, { lossGradient: () => { throw new Error('loss says no'); } }), /loss says no/);
  p.zeroGrad();
  // An empty micro-batch (a rank without sequences) takes part with the key on too.
  f = await p.forward({ sequences: [], promptLens: [] }, { lossGradient: g });
  await f.backward();
  p.zeroGrad();
  const leaked = liveTensors().filter((x) => !before.has(x.tensor));
  trackTensors(false);
  assert.equal(leaked.length, 0, `undisposed tensors:\n${leaked.slice(0, 5).map((x) => `${x.tensor.toString()}\n${x.stack.split('\n').slice(2, 6).join('\n')}`).join('\n')}`);
  p.dispose();
  await ctx.destroy();
});

test('the Hugging Face export loads with loadModel and gives the sharded policy\'s log-probs', async () => {
  const r = results.get(2);
  assert.ok(r, 'needs the 2-rank run');
  assert.ok(existsSync(join(r.exportDir, 'config.json')));
  assert.ok(readdirSync(r.exportDir).filter((f) => f.endsWith('.safetensors')).length > 1, 'expected several safetensors shards');
  const got = readResult(r.out);
  const m = await loadModel(r.exportDir, { device: 'cpu' });
  const b = stepBatch(1);
  const lp = m.tokenLogprobs(b.sequences.map((s) => Array.from(s)));
  b.sequences.forEach((_, i) => assert.deepEqual(Array.from(lp[i]!.slice(b.promptLens[i]! - 1)), got.logprobs![i]!, `sequence ${i}`));
  // The export is the bf16 rounding of the trained masters.
  for (const [name, t] of m.weights.params) {
    const want = Float32Array.from(got.masters[name]!);
    const bf = t.toFloat32();
    assert.ok(relNorm(bf, want) < 1e-2, name);
  }
  m.dispose();
  // The export also starts a sharded run (tensor by tensor): the same log-probs.
  const ctx = await initDistributed({ backend: 'cpu' });
  const p = ShardedPolicy.fromCheckpoint(CFG, r.exportDir, 'cpu', ctx.collectives);
  assert.deepEqual((await p.logprobs(b)).logprobs.map((a) => [...a]), got.logprobs);
  p.dispose();
  await ctx.destroy();
  assert.throws(() => ShardedPolicy.fromCheckpoint(presetConfig('gpt-oss-tiny-256', { numLayers: 3 }), r.exportDir, 'cpu', ctx.collectives), /lacks model\.layers\.2\./);
});

test('sharded save -> resume on the same N continues bitwise', async () => {
  const full = results.get(2);
  assert.ok(full, 'needs the uninterrupted 2-rank run');
  const dir = mkdtempSync(join(tmpdir(), 'fsdp-resume-'));
  const ckpt = join(dir, 'ckpt');
  const a = await runRanks(2, { steps: [1, 2], save: ckpt });
  assert.equal(a.exitCode, 0, a.text);
  assert.ok(existsSync(join(ckpt, 'fsdp.json')));
  assert.deepEqual(readdirSync(ckpt).filter((f) => f.startsWith('rank-')).sort(), ['rank-00000', 'rank-00001']);
  const out = join(dir, 'resumed.json');
  const b = await runRanks(2, { steps: [3], load: ckpt, out });
  assert.equal(b.exitCode, 0, b.text);
  const resumed = readResult(out);
  const uninterrupted = readResult(full.out);
  assert.deepEqual(resumed.steps[0], uninterrupted.steps[2]);
  assert.deepEqual(resumed.masters, uninterrupted.masters);
});

// Saved by N ranks, resumed on M: each rank reads its slices of the saved ranks' flat unit buffers (weights,
// masters, moments). Steps 1-2 ran on N ranks, step 3 on M: the same as an uninterrupted run up to the fp32
// reduction order of step 3's gradient (the tolerance of the N-rank vs single-process tests).
for (const [from, to] of [[2, 3], [3, 1]] as const) {
  test(`sharded save on ${from} ranks -> resume on ${to} continues like the uninterrupted run (fp32 reduction order)`, async () => {
    const full = results.get(from);
    assert.ok(full, `needs the uninterrupted ${from}-rank run`);
    const dir = mkdtempSync(join(tmpdir(), `fsdp-reshard-${from}-${to}-`));
    const ckpt = join(dir, 'ckpt');
    const a = await runRanks(from, { steps: [1, 2], save: ckpt });
    assert.equal(a.exitCode, 0, a.text);
    const out = join(dir, 'resumed.json');
    const b = await runRanks(to, { steps: [3], load: ckpt, out });
    assert.equal(b.exitCode, 0, b.text);
    assert.match(b.text, /resharding a checkpoint saved by another number of ranks/);
    const resumed = readResult(out);
    const want = readResult(full.out);
    const g = resumed.steps[0]!;
    const w = want.steps[2]!;
    assert.equal(g.step, 3);
    assert.ok(rel(g.loss, w.loss) <= 1e-5, `step 3 loss ${g.loss} vs ${w.loss}`);
    assert.ok(rel(g.norm, w.norm) <= 1e-5, `step 3 grad norm ${g.norm} vs ${w.norm}`);
    assert.equal(g.clipped, w.clipped);
    for (const [name, v] of Object.entries(want.masters)) {
      const have = resumed.masters[name];
      assert.ok(have && have.length === v.length, `master ${name} missing or of another size`);
      assert.ok(relNorm(have, v) <= 1e-5, `master ${name}: relative difference ${relNorm(have, v)}`);
    }
    if (from === 2) {
      // A saved rank's files missing: named.
      rmSync(join(ckpt, 'rank-00001'), { recursive: true });
      const c = await runRanks(to, { steps: [3], load: ckpt });
      assert.notEqual(c.exitCode, 0);
      assert.match(c.text, /ckpt lacks rank-00001 \(saved by 2 ranks\)/);
    }
  });
}

test('cpuOffload (masters and moments in host memory; a no-op on the CPU) trains bitwise like the default', async () => {
  const full = results.get(2);
  assert.ok(full, 'needs the 2-rank run');
  const out = join(mkdtempSync(join(tmpdir(), 'fsdp-offload-')), 'result.json');
  const r = await runRanks(2, { steps: [1, 2, 3], out, cpuOffload: true });
  assert.equal(r.exitCode, 0, r.text);
  const a = readResult(out);
  const b = readResult(full.out);
  assert.deepEqual(a.steps, b.steps);
  assert.deepEqual(a.masters, b.masters);
});

test('offloadAfterStep (offload_after_step): the masters and moments go to host memory after each step and come back for training, bitwise like the default', async () => {
  const full = results.get(2);
  assert.ok(full, 'needs the 2-rank run');
  const dir = mkdtempSync(join(tmpdir(), 'fsdp-offload-after-'));
  const out = join(dir, 'result.json');
  const r = await runRanks(2, { steps: [1, 2, 3], out, offloadAfterStep: true });
  assert.equal(r.exitCode, 0, r.text);
  const a = readResult(out);
  const b = readResult(full.out);
  assert.deepEqual(a.steps, b.steps);
  assert.deepEqual(a.masters, b.masters);
  assert.deepEqual(a.onHost, [[true, false], [true, false], [true, false]]);
  // Saved and resumed with the key on: continues as the uninterrupted run.
  const ckpt = join(dir, 'ckpt');
  const s = await runRanks(2, { steps: [1, 2], save: ckpt, offloadAfterStep: true });
  assert.equal(s.exitCode, 0, s.text);
  const out2 = join(dir, 'resumed.json');
  const c = await runRanks(2, { steps: [3], load: ckpt, out: out2, offloadAfterStep: true });
  assert.equal(c.exitCode, 0, c.text);
  assert.deepEqual(readResult(out2).steps[0], b.steps[2]);
  assert.deepEqual(readResult(out2).masters, b.masters);
  // Loaded into host memory (the resumed run's first phase is a generation), back for step 3's training.
  assert.equal(readResult(out2).loadedOnHost, true);
});

test('prefetch off (no look-ahead, collectives in program order) trains bitwise like the default overlap', async () => {
  const full = results.get(2);
  assert.ok(full, 'needs the 2-rank run');
  const out = join(mkdtempSync(join(tmpdir(), 'fsdp-noprefetch-')), 'result.json');
  const r = await runRanks(2, { steps: [1, 2, 3], out, prefetch: false });
  assert.equal(r.exitCode, 0, r.text);
  const a = readResult(out);
  const b = readResult(full.out);
  assert.deepEqual(a.steps, b.steps);
  assert.deepEqual(a.masters, b.masters);
  // One rank through the collectives (collectivesAtOne), with and without prefetch: the same, bitwise.
  const one = await Promise.all(
    [true, false].map(async (prefetch) => {
      const o = join(mkdtempSync(join(tmpdir(), 'fsdp-atone-')), 'result.json');
      const rr = await runRanks(1, { steps: [1, 2], out: o, prefetch, collectivesAtOne: true });
      assert.equal(rr.exitCode, 0, rr.text);
      return readResult(o);
    }),
  );
  assert.deepEqual(one[0]!.steps, one[1]!.steps);
  assert.deepEqual(one[0]!.masters, one[1]!.masters);
});

test('the KL reference: a frozen sharded copy (in host memory with referenceOnHost) keeps the weights of its time', async () => {
  const ctx = await initDistributed({ backend: 'cpu' }); // a group of one in this process
  const m = randomModel(CFG, { device: 'cpu', seed: SEED });
  const policy = ShardedPolicy.fromWeights(m.weights, ctx.collectives, { referenceOnHost: true });
  m.dispose();
  const b = stepBatch(1);
  const before = await policy.logprobs(b);
  const ref = await policy.frozenCopy();
  assert.deepEqual((await ref.logprobs(b)).logprobs, before.logprobs);
  policy.zeroGrad();
  const fwd = await policy.forward(b);
  await fwd.backward(pgLoss(fwd.logprobs, b.advantages, normTokens(b)).d);
  policy.optimizerStep({ ...HYPER, lr: 1e-2 }, 1);
  const after = await policy.logprobs(b);
  assert.notDeepEqual(after.logprobs, before.logprobs);
  assert.deepEqual((await ref.logprobs(b)).logprobs, before.logprobs);
  ref.dispose();
  policy.dispose();
  await ctx.destroy();
});

test('a rank that fails mid-step ends the job with a message naming it', async () => {
  const t0 = Date.now();
  const r = await runRanks(3, { steps: [1, 2], failRank: 1, failStep: 2 });
  assert.notEqual(r.exitCode, 0, r.text);
  assert.equal(r.failedRank, 1, r.text);
  assert.match(r.reason ?? '', /rank 1/);
  assert.match(r.text, /rank 1 fails on purpose in step 2/);
  assert.ok(Date.now() - t0 < 60_000);
});

test('bench:train-step smoke form: the table and JSON on one process (both policies) and on 2 ranks (sharded only)', async () => {
  const bench = fileURLToPath(new URL('../../bench/train-step.ts', import.meta.url));
  const dir = mkdtempSync(join(tmpdir(), 'bench-ts-'));
  const one = join(dir, 'one.json');
  const p = spawnSync(process.execPath, ['--import', 'tsx', bench, '--preset', 'gpt-oss-tiny-256', '--tokens', '16', '--steps', '1', '--json', one], { encoding: 'utf8' });
  assert.equal(p.status, 0, p.stderr);
  assert.match(p.stdout, /\| policy \| tokens\/micro-batch \| step ms \|/);
  const a = JSON.parse(readFileSync(one, 'utf8')) as {
    worldSize: number;
    keepAttention: boolean;
    lmHeadChunk: number | null;
    rows: { policy: string; stepMs: number; lmHeadChunk: number; split?: Record<string, number>; exposed?: { gatherMs: number; reduceScatterMs: number } }[];
  };
  assert.equal(a.worldSize, 1);
  // The defaults: attention kept under recompute, the LM-head chunk from lmHeadChunk(T, V) (all 256 rows at T 16).
  assert.equal(a.keepAttention, true);
  assert.equal(a.lmHeadChunk, null);
  assert.deepEqual(a.rows.map((r) => r.lmHeadChunk), [256, 256]);
  const no = join(dir, 'no.json');
  const q = spawnSync(process.execPath, ['--import', 'tsx', bench, '--preset', 'gpt-oss-tiny-256', '--tokens', '16', '--steps', '1', '--no-keep-attention', '--lm-head-chunk', '128', '--json', no], { encoding: 'utf8' });
  assert.equal(q.status, 0, q.stderr);
  const n = JSON.parse(readFileSync(no, 'utf8')) as typeof a;
  assert.equal(n.keepAttention, false);
  assert.deepEqual(n.rows.map((r) => r.lmHeadChunk), [128, 128]);
  // The fused LM-head backward is the default (trainer.fused_lm_head_backward 'auto'): both policies take the loss
  // gradient in the forward (said in the header and the JSON); --no-fused-lm-head takes the recomputing backward.
  assert.equal((JSON.parse(readFileSync(one, 'utf8')) as { fusedLmHead: boolean }).fusedLmHead, true);
  const fu = join(dir, 'unfused.json');
  const fr = spawnSync(process.execPath, ['--import', 'tsx', bench, '--preset', 'gpt-oss-tiny-256', '--tokens', '16', '--steps', '1', '--no-fused-lm-head', '--json', fu], { encoding: 'utf8' });
  assert.equal(fr.status, 0, fr.stderr);
  assert.match(fr.stdout, /recomputing LM-head backward \(--no-fused-lm-head\)/);
  const fj = JSON.parse(readFileSync(fu, 'utf8')) as typeof a & { fusedLmHead: boolean };
  assert.equal(fj.fusedLmHead, false);
  const oldFused = spawnSync(process.execPath, ['--import', 'tsx', bench, '--preset', 'gpt-oss-tiny-256', '--tokens', '16', '--fused-lm-head'], { encoding: 'utf8' });
  assert.notEqual(oldFused.status, 0);
  assert.match(oldFused.stderr, /--fused-lm-head is the default now; --no-fused-lm-head turns it off/);
  assert.ok(fj.rows.every((r) => r.stepMs > 0));
  const old = spawnSync(process.execPath, ['--import', 'tsx', bench, '--preset', 'gpt-oss-tiny-256', '--tokens', '16', '--keep-attention'], { encoding: 'utf8' });
  assert.notEqual(old.status, 0);
  assert.match(old.stderr, /--keep-attention is the default now \(with recompute\); --no-keep-attention turns it off/);
  assert.deepEqual(a.rows.map((r) => r.policy), ['single', 'sharded']);
  assert.ok(a.rows.every((r) => r.stepMs > 0));
  assert.ok(a.rows[1]!.split && a.rows[1]!.split.computeMs > 0);
  // One rank uses its shard in place: nothing to gather or reduce-scatter, nothing exposed.
  assert.deepEqual(a.rows[1]!.exposed, { gatherMs: 0, reduceScatterMs: 0 });
  const two = join(dir, 'two.json');
  const r = await launch({ script: bench, args: ['--preset', 'gpt-oss-tiny-256', '--tokens', '16', '--steps', '1', '--json', two], nprocPerNode: 2, device: 'cpu', onOutput: () => {} });
  assert.equal(r.exitCode, 0);
  const b = JSON.parse(readFileSync(two, 'utf8')) as typeof a;
  assert.equal(b.worldSize, 2);
  assert.deepEqual(b.rows.map((x) => x.policy), ['sharded']);
  assert.ok(b.rows[0]!.split!.gatherMs > 0 && b.rows[0]!.split!.reduceScatterMs > 0);
  // On the CPU compute and collectives cannot overlap: the waits are the collectives' time, and not zero.
  assert.ok(b.rows[0]!.exposed!.gatherMs > 0 && b.rows[0]!.exposed!.reduceScatterMs > 0, JSON.stringify(b.rows[0]!.exposed));
});
