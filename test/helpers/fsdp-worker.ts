// fsdp-worker.ts: one rank of a ShardedPolicy run, started by the launcher from test/cpu/sharded-policy.test.ts.
// argv[2]: JSON options (steps to run; optionally load / save / export folders, the output file, a rank and step
// that fail on purpose). Each step: the mini-batch is split over the ranks by token count, every rank runs the same
// number of micro-batches (some empty), the loss is normalised by the whole mini-batch's tokens, then clipping and
// AdamW. Rank 0 writes the per-step loss / grad norm and the fp32 masters as JSON.
import { writeFileSync } from 'node:fs';
import { initDistributed } from '../../src/distributed/launch.ts';
import { randomModel } from '../../src/model/index.ts';
import { ShardedPolicy, shardSequences, rankMicroBatches } from '../../src/trainer/sharded-policy.ts';
import { CFG, SEED, MICRO, MAX_NORM, HYPER, stepBatch, normTokens, pgLoss, type StepRecord, type WorkerResult } from './fsdp-common.ts';

interface Opts {
  steps: number[];
  out?: string;
  load?: string;
  save?: string;
  export?: string;
  failRank?: number;
  failStep?: number;
  cpuOffload?: boolean;
  /** ShardedModelOptions.offloadAfterStep (trainer.policy.optimizer_config.offload_after_step). */
  offloadAfterStep?: boolean;
  /** ShardedModelOptions.prefetch / collectivesAtOne. */
  prefetch?: boolean;
  collectivesAtOne?: boolean;
  /**
   * The fused LM-head backward (forward's lossGradient): each rank's loss gradient maps its micro-batch's sequence
   * index to the mini-batch's (its advantage), normalised by the whole mini-batch's tokens (pgLoss's gradient).
   */
  fused?: boolean;
  /** 'nccl': one GPU per rank (test/gpu/sharded-policy.test.ts); default 'cpu' (CPU processes). */
  backend?: 'cpu' | 'nccl';
  /** ShardedModelOptions.deterministic (the deterministic attention backward, as the single-GPU reference uses). */
  deterministic?: boolean;
}

const o = JSON.parse(process.argv[2] ?? '{}') as Opts;
const ctx = await initDistributed({ backend: o.backend ?? 'cpu' });
const { rank, worldSize } = ctx;
const model = randomModel(CFG, { device: ctx.device, seed: SEED });
const policy = ShardedPolicy.fromWeights(model.weights, ctx.collectives, { cpuOffload: o.cpuOffload, offloadAfterStep: o.offloadAfterStep, prefetch: o.prefetch, collectivesAtOne: o.collectivesAtOne, deterministic: o.deterministic });
model.dispose();
if (o.load) await policy.load(o.load);
const loadedOnHost = o.load && o.offloadAfterStep ? policy.optimizerOnHost : undefined;

const steps: StepRecord[] = [];
const onHost: [boolean, boolean][] = [];
for (const step of o.steps) {
  const mb = stepBatch(step);
  const norm = normTokens(mb);
  const mine = rankMicroBatches(shardSequences(mb.sequences.map((s) => s.length), worldSize), MICRO)[rank]!;
  policy.zeroGrad();
  let loss = 0;
  for (const idx of mine) {
    const lossGradient = o.fused ? (seq: number, _t0: number, lp: Float32Array) => new Float32Array(lp.length).fill(-mb.advantages[idx[seq]!]! / norm) : undefined;
    const fwd = await policy.forward({ sequences: idx.map((i) => mb.sequences[i]!), promptLens: idx.map((i) => mb.promptLens[i]!) }, { lossGradient });
    if (rank === o.failRank && step === o.failStep) throw new Error(`rank ${rank} fails on purpose in step ${step}`);
    const l = pgLoss(fwd.logprobs, idx.map((i) => mb.advantages[i]!), norm);
    loss += l.loss;
    await (o.fused ? fwd.backward() : fwd.backward(l.d));
  }
  const losses = await ctx.group.allGatherObject(loss);
  const clip = await policy.clipGradNorm(MAX_NORM);
  policy.optimizerStep(HYPER, step);
  if (o.offloadAfterStep) {
    // Between steps (the generation phase) the state is on the host; the next training forward brings it back.
    const after = policy.optimizerOnHost;
    const probe = await policy.forward({ sequences: [], promptLens: [] });
    probe.release();
    onHost.push([after, policy.optimizerOnHost]);
  }
  steps.push({ step, loss: losses.reduce((a, b) => a + b, 0), norm: clip.norm, clipped: clip.clipped });
}
if (o.save) await policy.save(o.save);
const masters = await policy.gatherMasters();
let logprobs: number[][] | undefined;
if (o.export) {
  await policy.exportHf(o.export, { maxShardBytes: 64 * 1024 });
  // Every rank asks for the whole batch (collective; each computes it), rank 0 reports.
  logprobs = (await policy.logprobs(stepBatch(1))).logprobs.map((a) => [...a]);
}
if (rank === 0 && o.out) {
  const res: WorkerResult = { steps, masters: Object.fromEntries([...masters!].map(([k, v]) => [k, [...v]])), logprobs, ...(o.offloadAfterStep ? { onHost } : {}), ...(loadedOnHost !== undefined ? { loadedOnHost } : {}) };
  writeFileSync(o.out, JSON.stringify(res));
}
policy.dispose();
await ctx.destroy();
console.log(`rank ${rank} done`);
