// A training run as `npm run train` runs it on each process (src/cli/train.ts: setupDistributedRun, rank 0 drives
// runTraining, the others serve), started by the test through the launcher, with what the test compares written by
// rank 0 to opts.out:
//   first     the completions of the run's first generate() call (step 1's rollouts)
//   weights   the engine model's bf16 parameters after the run (world > 1: rank 0's engine, synced after each step)
//   gap       after the run: the largest |engine log-prob - trainer log-prob| over fresh samples of 4 held-out prompts
//   concurrentSame  two generate() calls in flight at once give the tokens they give one after the other
//   optimizerOnHost per generate() of the loop, where rank 0's optimizer state was (null before the first step)
// argv[2]: JSON { overrides: string[], out: string, killAtSync?: number, sleepAt?: string, syncBucketBytes?: number }
// (syncBucketBytes: the weight-sync bucket of engines that are not colocated; killAtSync: rank 1
// SIGKILLs itself when the n-th weight sync command reaches it; sleepAt: rank 1 blocks its thread for two minutes, as
// a hung kernel would, when the first command of that op reaches it).
import { writeFileSync } from 'node:fs';
import { loadConfig, processCount } from '../../src/config/load.ts';
import { runTraining } from '../../src/trainer/run.ts';
import { interruptSignal, setupRun } from '../../src/trainer/setup.ts';
import { setupDistributedRun } from '../../src/trainer/distributed-run.ts';
import type { Completion, Generator } from '../../src/trainer/policy.ts';

process.env.GPTOSS_PROGRESS = 'off';
const opts = JSON.parse(process.argv[2]!) as { overrides: string[]; out: string; killAtSync?: number; sleepAt?: string; syncBucketBytes?: number };
const config = loadConfig({ config: 'demo-cpu', overrides: opts.overrides });
const drun = processCount(config) > 1 ? await setupDistributedRun(config, { syncBucketBytes: opts.syncBucketBytes }) : null;
if (drun && !drun.pieces) {
  let syncs = 0;
  await drun.serve((op) => {
    if (op === 'syncWeights' && drun.dist.rank === 1 && ++syncs === opts.killAtSync) process.kill(process.pid, 'SIGKILL');
    if (op === opts.sleepAt && drun.dist.rank === 1) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 120_000);
  });
  await drun.close();
  process.exit(0);
}
const run = drun ? drun.pieces! : await setupRun(config);
const inner = run.generator;
let first: { tokens: number[]; logprobs: number[]; finishReason: string }[] | null = null;
// Per generate() call of the loop: where rank 0's optimizer state was when it returned (null: no state yet) — host
// memory under trainer.policy.optimizer_config.offload_after_step, the device otherwise.
const optimizerOnHost: (boolean | null)[] = [];
const recording: Generator = {
  async generate(prompts, params, onProgress) {
    const out = await inner.generate(prompts, params, onProgress);
    optimizerOnHost.push(drun?.shard && drun.shard.optimizerSteps > 0 ? drun.shard.optimizerOnHost : null);
    first ??= out.map((c: Completion) => ({ tokens: Array.from(c.tokens), logprobs: Array.from(c.logprobs), finishReason: c.finishReason }));
    return out;
  },
  updateWeights: (p) => inner.updateWeights(p),
  dispose: () => inner.dispose(),
};
// As train.ts: SIGINT/SIGTERM (the launcher's, when another rank fails) end the loop rather than the process.
const intr = interruptSignal();
const r = await runTraining(config, { ...run, generator: recording }, { consoleMetrics: false, signal: intr.signal });
intr.dispose();

// The engines sample from the synced weights: their log-probs must be the trainer's (bf16 compute noise apart).
const prompts = run.env.val.slice(0, 4).flatMap((e) => [e.prompt, e.prompt]);
const samples = await inner.generate(prompts, { maxTokens: 8, temperature: 1, seed: 99, stopTokenIds: run.env.stopTokenIds });
const lp = await run.policy.logprobs(
  { sequences: samples.map((c, i) => Int32Array.from([...prompts[i]!, ...c.tokens])), promptLens: prompts.map((p) => p.length) },
  { temperature: 1 },
);
let gap = 0;
samples.forEach((c, i) => c.logprobs.forEach((v, k) => (gap = Math.max(gap, Math.abs(v - lp.logprobs[i]![k]!)))));

// Two generate() calls in flight at once (as multi-turn episodes issue them) give what they give one after the other.
const params = { maxTokens: 6, temperature: 1, seed: 7, stopTokenIds: run.env.stopTokenIds };
const halves = [prompts.slice(0, 4), prompts.slice(4)];
const together = await Promise.all(halves.map((p) => inner.generate(p, params)));
const apart = [await inner.generate(halves[0]!, params), await inner.generate(halves[1]!, params)];
const tokensOf = (cs: Completion[][]) => JSON.stringify(cs.map((c) => c.map((x) => Array.from(x.tokens))));
const concurrentSame = tokensOf(together) === tokensOf(apart);

const weights: Record<string, number[]> = {};
// rank 0's whole engine model (tp 1); a tp>1 engine's rank 0 holds only its slice (nothing recorded).
for (const [name, t] of run.model?.weights.params ?? []) weights[name] = Array.from(t.toFloat32());
writeFileSync(opts.out, JSON.stringify({ steps: r.grpo?.steps ?? 0, first, gap, concurrentSame, weights, optimizerOnHost }));
await drun?.close();
process.exit(0);
