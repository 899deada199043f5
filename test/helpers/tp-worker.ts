// tp-worker.ts: one rank of a tensor-parallel model, started by the launcher in test/cpu/tensor-parallel.test.ts
// (CPU processes, CPU collectives) and test/gpu/tensor-parallel.test.ts (one GPU each, NCCL). argv[2] names the
// scenario, argv[3] the backend (cpu | nccl). Prints "PASS <check>" lines; a failed check throws, so the process
// exits non-zero.
import assert from 'node:assert/strict';
import { initDistributed } from '../../src/distributed/launch.ts';
import { loadModel } from '../../src/model/index.ts';
import { TensorParallelModel, shardForTensorParallel } from '../../src/model/tensor-parallel.ts';
import { packSequences, disposeBatch } from '../../src/model/batch.ts';
import { generate } from '../../src/inference/generate.ts';
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
  const lg = model.logits(h).toFloat32();
  h.dispose();
  const V = model.config.vocabSize;
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
  const lg = tpModel.logits(h).toFloat32();
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

switch (scenario) {
  case 'model':
    await modelScenario();
    break;
  default:
    throw new Error(`tp-worker: unknown scenario ${scenario}`);
}
await ctx.destroy();
console.log(`rank ${ctx.rank} done`);
