// GPU machine: ShardedPolicy at N = 2 and 4 over NCCL (one GPU per rank, test/helpers/fsdp-worker.ts under the
// launcher; skipped with fewer GPUs or without NCCL) and at N = 1 on CUDA (in-process group of one; NCCL when the addon has it) against the
// single-process GptOssPolicy over 3 optimizer steps with gradient accumulation and clipping: loss, grad norm and
// fp32 masters relative 1e-5 (deterministic attention backward on both, so only accumulation order differs); the
// host paths: cpuOffload (AdamW on the host) against the device optimizer (bitwise), and the KL reference kept on the host;
// offloadAfterStep (the state in pinned host memory between steps, built from a checkpoint's byte ranges): bitwise.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cudaDeviceCount, memoryStats, synchronize } from '../../src/tensor.ts';
import { native } from '../../src/native.ts';
import { Checkpoint, paramSpecs, randomModel } from '../../src/model/index.ts';
import { initDistributed, launch } from '../../src/distributed/launch.ts';
import { GptOssPolicy } from '../../src/trainer/gptoss-policy.ts';
import { ShardedPolicy, rankMicroBatches, shardSequences } from '../../src/trainer/sharded-policy.ts';
import type { Policy } from '../../src/trainer/policy.ts';
import { CFG, SEED, MICRO, MAX_NORM, HYPER, stepBatch, normTokens, pgLoss, type WorkerResult } from '../helpers/fsdp-common.ts';
import { hasCuda } from '../helpers/cuda.ts';

const skip = hasCuda ? false : 'no CUDA device (addon built without CUDA or no GPU visible)';
const DEV = 'cuda:0';

async function train(p: Policy, afterStep?: (step: number) => Promise<void>): Promise<{ loss: number; norm: number; clipped: boolean }[]> {
  const out = [];
  for (const step of [1, 2, 3]) {
    const mb = stepBatch(step);
    const norm = normTokens(mb);
    p.zeroGrad();
    let loss = 0;
    for (const idx of rankMicroBatches(shardSequences(mb.sequences.map((s) => s.length), 1), MICRO)[0]!) {
      const fwd = await p.forward({ sequences: idx.map((i) => mb.sequences[i]!), promptLens: idx.map((i) => mb.promptLens[i]!) });
      const l = pgLoss(fwd.logprobs, idx.map((i) => mb.advantages[i]!), norm);
      loss += l.loss;
      await fwd.backward(l.d);
    }
    const clip = await p.clipGradNorm(MAX_NORM);
    p.optimizerStep(HYPER, step);
    out.push({ loss, norm: clip.norm, clipped: clip.clipped });
    await afterStep?.(step);
  }
  return out;
}

test('ShardedPolicy N = 1 on CUDA equals GptOssPolicy (3 steps, accumulation, clipping)', { skip }, async () => {
  const single = new GptOssPolicy(randomModel(CFG, { device: DEV, seed: SEED, deterministic: true }));
  const want = await train(single);
  const dir = mkdtempSync(join(tmpdir(), 'fsdp-gpu-'));
  await single.save(dir);
  single.dispose();

  const ctx = await initDistributed();
  const m = randomModel(CFG, { device: DEV, seed: SEED });
  const sharded = ShardedPolicy.fromWeights(m.weights, ctx.collectives, { deterministic: true });
  m.dispose();
  const got = await train(sharded);
  const masters = (await sharded.gatherMasters())!;
  sharded.dispose();
  await ctx.destroy();

  for (let i = 0; i < 3; i++) {
    assert.ok(want[i]!.clipped && got[i]!.clipped, `step ${i + 1} should clip`);
    assert.ok(Math.abs(got[i]!.loss - want[i]!.loss) <= 1e-5 * Math.abs(want[i]!.loss), `step ${i + 1} loss ${got[i]!.loss} vs ${want[i]!.loss}`);
    assert.ok(Math.abs(got[i]!.norm - want[i]!.norm) <= 1e-5 * want[i]!.norm, `step ${i + 1} grad norm ${got[i]!.norm} vs ${want[i]!.norm}`);
  }
  const ck = Checkpoint.open(join(dir, 'optimizer'));
  for (const s of paramSpecs(CFG)) {
    const t = ck.load(`master.${s.name}`, { device: 'cpu', dtype: 'f32', shape: s.shape });
    const w = t.toFloat32();
    t.dispose();
    const g = masters.get(s.name)!;
    let d = 0, n = 0;
    for (let i = 0; i < w.length; i++) (d += (g[i]! - w[i]!) ** 2), (n += w[i]! ** 2);
    assert.ok(Math.sqrt(d) <= 1e-5 * Math.sqrt(n), `master ${s.name}: relative difference ${Math.sqrt(d / n)}`);
  }
  ck.close();
});

// N = 2 and 4 GPUs: each rank a process on its own GPU (NCCL all-gathers and reduce-scatters, the comm stream's
// overlap), against the single-GPU GptOssPolicy of the same seed: loss, grad norm and fp32 masters relative 1e-5
// after 3 steps with accumulation and clipping (only the reduction order differs), as the CPU processes of
// test/cpu/sharded-policy.test.ts are held to.
const gpus = hasCuda ? cudaDeviceCount() : 0;
const WORKER = fileURLToPath(new URL(`../helpers/fsdp-worker${import.meta.url.endsWith('.ts') ? '.ts' : '.js'}`, import.meta.url));
for (const n of [2, 4]) {
  const nskip = skip || (!native().features.nccl ? 'addon built without NCCL' : gpus < n ? `needs ${n} GPUs (${gpus} visible)` : false);
  test(`ShardedPolicy over ${n} GPUs (NCCL) equals GptOssPolicy on one GPU (3 steps, accumulation, clipping)`, { skip: nskip }, async () => {
    const single = new GptOssPolicy(randomModel(CFG, { device: DEV, seed: SEED, deterministic: true }));
    const want = await train(single);
    const dir = mkdtempSync(join(tmpdir(), `fsdp-gpu-${n}-`));
    await single.save(dir);
    single.dispose();

    const out = join(dir, 'result.json');
    const lines: string[] = [];
    const r = await launch({
      script: WORKER,
      args: [JSON.stringify({ steps: [1, 2, 3], out, backend: 'nccl', deterministic: true })],
      nprocPerNode: n,
      device: 'cuda',
      killGraceMs: 3000,
      onOutput: (rank, _s, line) => lines.push(`[rank ${rank}] ${line}`),
    });
    assert.equal(r.exitCode, 0, lines.join('\n'));
    const got = JSON.parse(readFileSync(out, 'utf8')) as WorkerResult;
    for (let i = 0; i < 3; i++) {
      assert.equal(got.steps[i]!.clipped, want[i]!.clipped, `step ${i + 1} clipping`);
      assert.ok(Math.abs(got.steps[i]!.loss - want[i]!.loss) <= 1e-5 * Math.abs(want[i]!.loss), `N=${n} step ${i + 1} loss ${got.steps[i]!.loss} vs ${want[i]!.loss}`);
      assert.ok(Math.abs(got.steps[i]!.norm - want[i]!.norm) <= 1e-5 * want[i]!.norm, `N=${n} step ${i + 1} grad norm ${got.steps[i]!.norm} vs ${want[i]!.norm}`);
    }
    const ck = Checkpoint.open(join(dir, 'optimizer'));
    for (const s of paramSpecs(CFG)) {
      const t = ck.load(`master.${s.name}`, { device: 'cpu', dtype: 'f32', shape: s.shape });
      const w = t.toFloat32();
      t.dispose();
      const g = got.masters[s.name]!;
      let d = 0, nn = 0;
      for (let i = 0; i < w.length; i++) (d += (g[i]! - w[i]!) ** 2), (nn += w[i]! ** 2);
      assert.ok(Math.sqrt(d) <= 1e-5 * Math.sqrt(nn), `N=${n} master ${s.name}: relative difference ${Math.sqrt(d / nn)}`);
    }
    ck.close();
    console.log(`ShardedPolicy N=${n} (NCCL): ${JSON.stringify(got.steps.map((x, i) => ({ step: x.step, loss: x.loss, norm: x.norm, relLoss: Math.abs(x.loss - want[i]!.loss) / Math.abs(want[i]!.loss) })))}`);
  });
}

// cpuOffload runs AdamW on the host (native/cpu/optim.cc) where the default runs it on the device (optim.cu). Both
// use optim.h's adamw_element (explicit fmas, every other operation rounded on its own), so the updated masters,
// moments and bf16 shards are bitwise equal; the forward and backward (deterministic: true) then see bitwise-equal
// weights at every step, so the whole run is bitwise equal. (Before, gcc and nvcc contracted v = beta2 v + (1-beta2)
// g^2 into different fmas: one-ulp differences, and after 3 steps the masters were 5.9e-5 apart.) The masters are
// compared after every step so a failure names the first step that differs.
test('ShardedPolicy on CUDA: cpuOffload trains bitwise like the device optimizer; a reference on the host gives its log-probs', { skip }, async () => {
  const ctx = await initDistributed();
  const run = async (cpuOffload: boolean) => {
    const m = randomModel(CFG, { device: DEV, seed: SEED });
    const p = ShardedPolicy.fromWeights(m.weights, ctx.collectives, { deterministic: true, cpuOffload, referenceOnHost: true });
    m.dispose();
    const ref = await p.frozenCopy();
    const b = stepBatch(1);
    assert.deepEqual((await ref.logprobs(b)).logprobs, (await p.logprobs(b)).logprobs, 'reference on the host');
    ref.dispose();
    const masters: Map<string, Float32Array>[] = [];
    const steps = await train(p, async () => {
      masters.push((await p.gatherMasters())!);
    });
    p.dispose();
    return { steps, masters };
  };
  const dev = await run(false);
  const host = await run(true);
  for (let i = 0; i < 3; i++) {
    assert.equal(host.steps[i]!.norm, dev.steps[i]!.norm, `step ${i + 1} grad norm`);
    assert.equal(host.steps[i]!.loss, dev.steps[i]!.loss, `step ${i + 1} loss`);
    for (const [name, w] of dev.masters[i]!) {
      const g = host.masters[i]!.get(name)!;
      let differ = 0, d = 0, n = 0;
      for (let j = 0; j < w.length; j++) {
        if (g[j] !== w[j]) differ++;
        (d += (g[j]! - w[j]!) ** 2), (n += w[j]! ** 2);
      }
      assert.equal(differ, 0, `after step ${i + 1}, master ${name}: ${differ} of ${w.length} elements differ (relative L2 ${Math.sqrt(d / n)})`);
    }
  }
  await ctx.destroy();
});

// offloadAfterStep (trainer.policy.optimizer_config.offload_after_step): after every optimizer step the masters and
// moments (12 B per shard element) leave the GPU for pinned host memory, and come back at the next forward: the
// device's allocated bytes drop by at least that between steps, and training is bitwise the default's. The policy is
// built with fromCheckpoint (only its byte ranges, straight to the device) from the same weights saved as HF.
test('ShardedPolicy on CUDA: offloadAfterStep frees the optimizer state between steps and trains bitwise like the default', { skip }, async () => {
  const ctx = await initDistributed();
  const dir = mkdtempSync(join(tmpdir(), 'fsdp-gpu-offload-after-'));
  const m0 = randomModel(CFG, { device: 'cpu', seed: SEED });
  m0.weights.save(dir, { maxShardBytes: 64 * 1024 });
  m0.dispose();
  const run = async (offloadAfterStep: boolean) => {
    const p = ShardedPolicy.fromCheckpoint(CFG, dir, DEV, ctx.collectives, { deterministic: true, offloadAfterStep });
    const stateBytes = 12 * p.units.reduce((a, u) => a + u.shard, 0);
    const masters: Map<string, Float32Array>[] = [];
    const allocated: number[] = [];
    const onHost: boolean[] = [];
    const steps = await train(p, async () => {
      synchronize(DEV);
      allocated.push(memoryStats(DEV).allocated);
      onHost.push(p.optimizerOnHost);
      masters.push((await p.gatherMasters())!);
    });
    p.dispose();
    return { steps, masters, allocated, onHost, stateBytes };
  };
  const dev = await run(false);
  const off = await run(true);
  assert.deepEqual(dev.onHost, [false, false, false]);
  assert.deepEqual(off.onHost, [true, true, true]);
  for (let i = 0; i < 3; i++) {
    assert.equal(off.steps[i]!.loss, dev.steps[i]!.loss, `step ${i + 1} loss`);
    assert.equal(off.steps[i]!.norm, dev.steps[i]!.norm, `step ${i + 1} grad norm`);
    for (const [name, w] of dev.masters[i]!) assert.deepEqual(off.masters[i]!.get(name), w, `after step ${i + 1}, master ${name}`);
    assert.ok(dev.allocated[i]! - off.allocated[i]! >= off.stateBytes, `after step ${i + 1}: ${off.allocated[i]} B allocated with the state offloaded vs ${dev.allocated[i]} B (state ${off.stateBytes} B)`);
  }
  await ctx.destroy();
});

// The overlap machinery on one GPU: with collectivesAtOne the single rank still gathers and reduce-scatters
// through NCCL (a copy each), so prefetch on runs every gather one unit ahead and every reduce-scatter on the comm
// stream, ordered by events; prefetch off runs them on the compute stream in program order. Same math, so the
// losses, grad norms and masters are bitwise equal; exposedTiming reports how long compute waited (>= 0).
test('ShardedPolicy on CUDA: prefetch/overlap on the comm stream trains bitwise like prefetch off (N = 1 through NCCL)', { skip }, async () => {
  const ctx = await initDistributed();
  const run = async (prefetch: boolean) => {
    const m = randomModel(CFG, { device: DEV, seed: SEED });
    const p = ShardedPolicy.fromWeights(m.weights, ctx.collectives, { deterministic: true, prefetch, collectivesAtOne: true, exposedTiming: true });
    m.dispose();
    const steps = await train(p);
    const stats = p.stats();
    const masters = (await p.gatherMasters())!;
    p.dispose();
    return { steps, masters, stats };
  };
  const on = await run(true);
  const off = await run(false);
  assert.deepEqual(on.steps, off.steps, 'losses, grad norms, clipping');
  for (const [name, w] of off.masters) assert.deepEqual(on.masters.get(name), w, `master ${name}`);
  assert.ok(on.stats.exposedGatherMs >= 0 && on.stats.exposedReduceScatterMs >= 0, JSON.stringify(on.stats));
  // Prefetch off never waits on the comm stream (its collectives are on the compute stream).
  assert.equal(off.stats.exposedGatherMs + off.stats.exposedReduceScatterMs, 0, JSON.stringify(off.stats));
  await ctx.destroy();
});
