// tp-worker.ts: one rank of a tensor-parallel model, started by the launcher in test/cpu/tensor-parallel.test.ts
// (CPU processes, CPU collectives) and test/gpu/tensor-parallel.test.ts (one GPU each, NCCL). argv[2] names the
// scenario, argv[3] the backend (cpu | nccl). Prints "PASS <check>" lines; a failed check throws, so the process
// exits non-zero.
import assert from 'node:assert/strict';
import { initDistributed } from '../../src/distributed/launch.ts';
import { Tensor } from '../../src/tensor.ts';
import { loadModel } from '../../src/model/index.ts';
import { presetConfig } from '../../src/model/config.ts';
import { GptOssModel } from '../../src/model/gptoss.ts';
import { TensorParallelModel, shardForTensorParallel } from '../../src/model/tensor-parallel.ts';
import { packSequences, disposeBatch } from '../../src/model/batch.ts';
import { generate } from '../../src/inference/generate.ts';
import { createEngine, type Engine, type GenerateRequest, type GenerateResponse } from '../../src/inference/engine.ts';
import { createTensorParallelEngine } from '../../src/inference/tensor-parallel-runner.ts';
import { GptOssWeights } from '../../src/model/weights.ts';
import { FIXTURE_DIR } from './fixtures.ts';
import { localTensorParallelGroups } from './local-tp-group.ts';
import { argmaxRows, fixtureReference, tpWithinBf16Noise } from './tp-reference.ts';

const scenario = process.argv[2] ?? 'model';
const backend = (process.argv[3] ?? 'cpu') as 'cpu' | 'nccl';
const ctx = await initDistributed({ backend });
const device = ctx.device;
const pass = (name: string): void => console.log(`PASS ${name} (rank ${ctx.rank}/${ctx.worldSize})`);

/** Final-position logits of each sequence through the tensor-parallel model (a collective: every rank calls it). */
async function lastLogits(model: TensorParallelModel, seqs: number[][]): Promise<Float32Array> {
  const b = packSequences(seqs, model.device);
  const h = await model.forwardHidden(b);
  const lgT = await model.gatherLogits(h);
  const lg = lgT.toFloat32();
  lgT.dispose();
  h.dispose();
  const V = model.fullConfig.vocabSize;
  const out = new Float32Array(seqs.length * V);
  b.offsets.forEach((o, i) => out.set(lg.subarray((o + b.lengths[i]! - 1) * V, (o + b.lengths[i]!) * V), i * V));
  disposeBatch(b);
  return out;
}

async function modelScenario(): Promise<void> {
  // Each rank reads the checkpoint and keeps only its slices.
  const tpModel = await TensorParallelModel.load(FIXTURE_DIR, ctx.collectives, { device });
  assert.equal(tpModel.config.numHeads, 4 / ctx.worldSize);
  const one = await loadModel(FIXTURE_DIR, { device });
  const V = one.config.vocabSize;

  // Logits over the fixture's sequences against transformers' fp32 ones, and against the one-device model's.
  const { seqs, logits: truth } = fixtureReference();
  const b = packSequences(seqs, device);
  const h = await tpModel.forwardHidden(b);
  const lgT = await tpModel.gatherLogits(h);
  const lg = lgT.toFloat32();
  lgT.dispose();
  const oneR = one.forward(b, { returnLogits: true });
  const oneLg = oneR.logits!.toFloat32();
  const check = tpWithinBf16Noise(lg, oneLg, truth);
  console.log(`REPORT ${JSON.stringify({ tp: check.tp, one: check.one })}`);
  assert.ok(check.ok, `tensor-parallel error ${check.tp.relL2} vs single-device ${check.one.relL2}`);
  // Every rank holds the same residual stream after the last all-reduce.
  const sums = await ctx.group.allGatherObject(Buffer.from(h.toBuffer()).toString('base64'));
  assert.ok(sums.every((s) => s === sums[0]), 'ranks disagree on the final hidden states');
  pass('logits within bf16 noise of the fp32 reference; ranks agree');

  // The same numbers as the ranks simulated in one process (whose reduction math is the CPU collectives' hub's).
  if (ctx.rank === 0 && backend === 'cpu') {
    const groups = localTensorParallelGroups(ctx.worldSize);
    const sim = groups.map((g) => new TensorParallelModel(shardForTensorParallel(one.weights, g.rank, g.size), g));
    const hs = await Promise.all(sim.map((m) => m.forwardHidden(b)));
    assert.deepEqual(new Uint8Array(hs[0]!.toBuffer()), new Uint8Array(h.toBuffer()), 'multi-process != in-process simulation');
    hs.forEach((t) => t.dispose());
    sim.forEach((m) => m.dispose());
    pass('bitwise equal to the in-process simulation');
  }
  h.dispose();
  for (const t of [oneR.logits!, oneR.logprobs, oneR.entropy]) t.dispose();
  disposeBatch(b);

  // Greedy decoding by recomputation through the shards == the one-device static generator's greedy tokens.
  const prompts = [seqs[0]!.slice(0, 5), seqs[1]!.slice(0, 11), seqs[0]!.slice(7, 10)];
  const steps = 12; // crosses the sliding window (8)
  const ref = generate(one, prompts, { maxNewTokens: steps, temperature: 0, stopTokens: [] });
  const cur = prompts.map((p) => [...p]);
  let minMargin = Infinity;
  for (let s = 0; s < steps; s++) {
    const next = argmaxRows(await lastLogits(tpModel, cur), V);
    next.forEach((n, i) => {
      cur[i]!.push(n.token);
      minMargin = Math.min(minMargin, n.margin);
    });
  }
  cur.forEach((c, i) => assert.deepEqual(c.slice(prompts[i]!.length), ref[i]!.tokens, `prompt ${i}: greedy tokens differ`));
  console.log(`REPORT ${JSON.stringify({ greedyMinMargin: minMargin })}`);
  pass('greedy tokens equal to the one-device generator');
  tpModel.dispose();
  one.dispose();
}

/**
 * The engine over the group (rank 0 schedules, every rank runs its shard) against the one-device engine on the same
 * requests: greedy and seeded sampling, n samples of a prompt, mixed lengths, outputs past the sliding window (8),
 * chunked prefill, requests joining mid-flight, preemption under a small pool; then sleep/wake and updateWeights.
 */
async function engineScenario(): Promise<void> {
  const opts = { blockSize: 4, numBlocks: 14, maxNumBatchedTokens: 16, maxNumSeqs: 4 };
  const engine = await createTensorParallelEngine(FIXTURE_DIR, ctx, opts);
  if (ctx.rank !== 0) {
    assert.equal(engine, null);
    pass('served the engine until rank 0 disposed it');
    return;
  }
  const tpEngine = engine!;
  const one = await loadModel(FIXTURE_DIR, { device });
  const oneEngine = await createEngine(one, opts);
  const { seqs } = fixtureReference();
  const prompts = [seqs[0]!.slice(0, 5), seqs[1]!.slice(0, 19), seqs[0]!.slice(9, 12), seqs[1]!.slice(20, 31)];
  const requests: GenerateRequest[] = [
    { prompt: prompts[0]!, maxNewTokens: 14, temperature: 0, stopTokens: [] },
    { prompt: prompts[1]!, maxNewTokens: 6, temperature: 0, stopTokens: [] },
    { prompt: prompts[2]!, maxNewTokens: 12, n: 3, temperature: 1, topP: 0.9, topK: 40, seed: 5, stopTokens: [] },
    { prompt: prompts[3]!, maxNewTokens: 17, temperature: 0.7, seed: 9, stopTokens: [] },
  ];
  /** Two calls: the second joins after the first produced a few tokens. */
  const run = async (e: Engine): Promise<GenerateResponse[]> => {
    let late: Promise<GenerateResponse[]> | null = null;
    let seen = 0;
    const first = e.generate(requests.slice(0, 2), {
      onToken: () => {
        if (++seen === 4) late = e.generate(requests.slice(2));
      },
    });
    const a = await first;
    assert.ok(late, 'the second call joined mid-flight');
    return [...a, ...(await late!)];
  };
  const same = (got: GenerateResponse[], want: GenerateResponse[], what: string): number => {
    let gap = 0;
    got.forEach((r, i) =>
      r.samples.forEach((s, k) => {
        const w = want[i]!.samples[k]!;
        assert.equal(s.finishReason, w.finishReason, `${what}: request ${i} sample ${k} finish`);
        assert.deepEqual(s.tokens, w.tokens, `${what}: request ${i} sample ${k} tokens`);
        s.logprobs.forEach((lp, t) => (gap = Math.max(gap, Math.abs(lp - w.logprobs[t]!))));
      }),
    );
    return gap;
  };
  const want = await run(oneEngine);
  const got = await run(tpEngine);
  const gap = same(got, want, 'tp=2 vs one device');
  // Log-probs within the bf16 noise of the logits (their relative L2 at tp=2: ~1e-2 of logits up to ~4).
  assert.ok(gap < 0.05, `log-prob gap ${gap}`);
  assert.ok(tpEngine.stats().preemptions > 0 && oneEngine.stats().preemptions > 0, 'the small pool preempted');
  console.log(`REPORT ${JSON.stringify({ maxLogprobGap: gap, tpStats: tpEngine.stats(), oneStats: oneEngine.stats() })}`);
  pass('engine tokens equal to the one-device engine, log-probs within noise');

  await tpEngine.sleep();
  await tpEngine.wake();
  same(await run(tpEngine), want, 'after sleep/wake');
  pass('sleep and wake');

  // New whole weights from rank 0 (a random model of the same shape): every rank keeps its slice.
  const fresh = GptOssWeights.random(one.config, 'cpu', { seed: 3, std: 'fanIn', biasStd: 0.1 });
  await tpEngine.updateWeights(fresh.params);
  await oneEngine.updateWeights(fresh.params);
  // Greedy requests only: with random weights the sampling distributions are nearly flat at temperature 1, where
  // bf16 noise in the logits can flip a draw between near-equal candidates.
  const greedy = requests.map((r) => ({ ...r, temperature: 0 }));
  const after = await tpEngine.generate(greedy);
  same(after, await oneEngine.generate(greedy), 'after updateWeights');
  assert.notDeepEqual(after[0]!.samples[0]!.tokens, want[0]!.samples[0]!.tokens, 'the new weights changed the output');
  await assert.rejects(
    tpEngine.updateWeights(new Map([['model.layers.0.self_attn.q_proj.weight', Tensor.zeros([32, 64], { dtype: 'bf16', device: 'cpu' })]])),
    /'model.layers.0.self_attn.q_proj.weight' is \[32, 64\]; a tensor-parallel engine takes whole tensors \(\[64, 64\]\)/,
  );
  pass('updateWeights with whole tensors');
  fresh.dispose();
  oneEngine.dispose();
  tpEngine.dispose();
  one.dispose();
}

/**
 * tp = the world size (4 in the tests; the fixture's 2 key/value heads stop at tp=2): a random model of the fixture's
 * shape with 8 query and 4 key/value heads, drawn on every rank from the same seed, served by an engine over the
 * whole group against the one-device engine on rank 0: greedy tokens equal, log-probs within the bf16 noise of the
 * split reductions (continuous batching, a request joining mid-flight, preemption under a small pool).
 */
async function wideEngineScenario(): Promise<void> {
  const cfg = presetConfig('gpt-oss-tiny-256', { numHeads: 8, numKvHeads: 4 });
  assert.equal(cfg.numKvHeads % ctx.worldSize, 0, `tp=${ctx.worldSize} must divide the ${cfg.numKvHeads} key/value heads`);
  const weights = GptOssWeights.random(cfg, device, { seed: 11, std: 'fanIn', biasStd: 0.1 });
  const opts = { blockSize: 4, numBlocks: 14, maxNumBatchedTokens: 16, maxNumSeqs: 4 };
  const engine = await createTensorParallelEngine(weights, ctx, opts);
  if (ctx.rank !== 0) {
    assert.equal(engine, null);
    weights.dispose();
    pass('served the engine until rank 0 disposed it');
    return;
  }
  const tpEngine = engine!;
  const one = new GptOssModel(weights);
  const oneEngine = await createEngine(one, opts);
  // Greedy only: random weights give nearly flat sampling distributions (see engineScenario's updateWeights part).
  const prompt = (n: number, k: number) => Array.from({ length: n }, (_, i) => (i * 37 + k * 11) % 250);
  const requests: GenerateRequest[] = [
    { prompt: prompt(5, 1), maxNewTokens: 14, temperature: 0, stopTokens: [] },
    { prompt: prompt(19, 2), maxNewTokens: 6, temperature: 0, stopTokens: [] },
    { prompt: prompt(3, 3), maxNewTokens: 12, temperature: 0, stopTokens: [] },
    { prompt: prompt(11, 4), maxNewTokens: 17, temperature: 0, stopTokens: [] },
  ];
  const run = async (e: Engine): Promise<GenerateResponse[]> => {
    let late: Promise<GenerateResponse[]> | null = null;
    let seen = 0;
    const a = await e.generate(requests.slice(0, 2), {
      onToken: () => {
        if (++seen === 4) late = e.generate(requests.slice(2));
      },
    });
    assert.ok(late, 'the second call joined mid-flight');
    return [...a, ...(await late!)];
  };
  const want = await run(oneEngine);
  const got = await run(tpEngine);
  // Greedy tokens equal up to bf16 noise: the two sequences agree until, at most, a position where the one-device
  // model ranks the tp engine's token within NOISE of its own choice (a near-tie that the split reductions' rounding
  // may flip); after a flip the contexts differ, so nothing later is compared. Log-probs within NOISE wherever the
  // context is shared.
  const NOISE = 0.05;
  let gap = 0;
  const flips: { request: number; position: number; margin: number }[] = [];
  got.forEach((r, i) => {
    const s = r.samples[0]!;
    const w = want[i]!.samples[0]!;
    const t = s.tokens.findIndex((tok, k) => tok !== w.tokens[k]);
    const shared = t < 0 ? s.tokens.length : t;
    for (let k = 0; k < shared; k++) gap = Math.max(gap, Math.abs(s.logprobs[k]! - w.logprobs[k]!));
    if (t < 0) {
      assert.equal(s.tokens.length, w.tokens.length, `request ${i}: lengths`);
      return;
    }
    const seq = [...requests[i]!.prompt, ...s.tokens.slice(0, t + 1)];
    const lpAlt = one.tokenLogprobs([seq])[0]![seq.length - 2]!;
    const margin = w.logprobs[t]! - lpAlt;
    flips.push({ request: i, position: t, margin });
    assert.ok(margin < NOISE, `tp=${ctx.worldSize} vs one device: request ${i} differs at output ${t} (token ${s.tokens[t]} vs ${w.tokens[t]}), ${margin} below the one-device choice: not a near-tie`);
  });
  assert.ok(gap < NOISE, `log-prob gap ${gap}`);
  assert.ok(flips.length <= 1, `${flips.length} of ${requests.length} greedy sequences flipped at near-ties: ${JSON.stringify(flips)}`);
  assert.ok(tpEngine.stats().preemptions > 0 && oneEngine.stats().preemptions > 0, 'the small pool preempted');
  console.log(`REPORT ${JSON.stringify({ tp: ctx.worldSize, maxLogprobGap: gap, flips })}`);
  pass(`tp=${ctx.worldSize} engine greedy tokens equal to the one-device engine, log-probs within noise`);
  tpEngine.dispose();
  oneEngine.dispose();
  one.dispose();
}

switch (scenario) {
  case 'model':
    await modelScenario();
    break;
  case 'engine':
    await engineScenario();
    break;
  case 'engine-wide':
    await wideEngineScenario();
    break;
  default:
    throw new Error(`tp-worker: unknown scenario ${scenario}`);
}
await ctx.destroy();
console.log(`rank ${ctx.rank} done`);
