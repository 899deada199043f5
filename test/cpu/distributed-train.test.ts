// `npm run train` over N CPU processes, colocated (src/trainer/distributed-run.ts): world 2 with two tp=1 engines
// against world 1 on the synthetic task, 3 GRPO steps from an SFT'd model (made once here by `npm run sft`, 100
// steps: its held-out reward is about 0.1, so the groups' rewards vary and every step has a real gradient):
//   - step 1's rollouts (tokens, sampler log-probs, finish reasons) and rewards identical to world 1's;
//   - loss and grad norm of every step equal to fp32 reduction noise; the engine weights after the last sync equal
//     up to that noise (see the weights test);
//   - the engines' log-probs after each sync == the trainer's (the loop's logprob_gap metric at steps 2 and 3,
//     and fresh samples after the run; without the sync the gap is ~0.3-2.7);
//   - every metrics row records the world size and the engine layout;
// world 2 with the fused LM-head backward (default; the loss inputs travel with each forward) bitwise the recomputing one;
// world 2 with one tp=2 engine, and world 4 with two tp=2 engines (each over its own sub-group of the processes):
// the same step-1 tokens but where split reductions flip a draw (counted), and the engines' log-probs after each
// sync within that reduction noise of the trainer's;
// and: the train CLI itself over 2 processes; Ctrl-C saves on every rank and the same command resumes exactly; a
// rank killed mid-run ends the job naming it; a rank stuck inside a phase ends it within trainer.nccl_timeout_s,
// naming the rank and the phase; refused layouts.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, launch } from '../../src/distributed/launch.ts';
import { engineBlocks } from '../../src/trainer/distributed-run.ts';
import { parseMetricsJsonl } from '../../src/log/metrics.ts';

process.env.GPTOSS_PROGRESS = 'off';
const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
const WORKER = fileURLToPath(new URL(`../helpers/dist-train-worker${ext}`, import.meta.url));
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLI = (name: string) => join(ROOT, 'src', 'cli', `${name}.ts`);

const dir = mkdtempSync(join(tmpdir(), 'dist-train-'));
const SFT_MODEL = join(dir, 'sft-model');
const LR = 1e-3;

/**
 * 3 GRPO steps of 8 prompts x 8 samples, no evaluation, no checkpoints. `world` trainer processes; colocated, world/tp
 * engines on them; `apart`: that many engines of tp on their own processes after the trainer's.
 */
function grpoArgs(name: string, world: number, tp = 1, apart?: { engines: number }): string[] {
  return [
    `trainer.policy.model.path=${SFT_MODEL}`,
    'trainer.sft.warm_start=false',
    'trainer.max_steps=3',
    'trainer.train_batch_size=8',
    'trainer.policy_mini_batch_size=8',
    // The same global micro-batch (16 sequences) in both worlds: world N gives each rank 16/N per forward call.
    `trainer.micro_train_batch_size_per_gpu=${16 / world}`,
    'trainer.eval_interval=0',
    'trainer.eval_before_train=false',
    'trainer.ckpt_interval=-1',
    'trainer.resume_mode=none',
    'generator.n_samples_per_prompt=8',
    `trainer.policy.optimizer_config.lr=${LR}`,
    `trainer.ckpt_path=${join(dir, `ck-${name}`)}`,
    `trainer.metrics_path=${join(dir, `${name}.jsonl`)}`,
    `trainer.placement.policy_num_gpus_per_node=${world}`,
    `generator.num_inference_engines=${apart ? apart.engines : world / tp}`,
    `generator.inference_engine_tensor_parallel_size=${tp}`,
    ...(apart ? ['trainer.placement.colocate_all=false', 'generator.weight_sync_backend=nccl'] : []),
  ];
}

interface WorkerOut {
  steps: number;
  first: { tokens: number[]; logprobs: number[]; finishReason: string }[];
  gap: number;
  concurrentSame: boolean;
  weights: Record<string, number[]>;
  optimizerOnHost: (boolean | null)[];
}

async function runWorld(name: string, world: number, killAtSync?: number, tp = 1, hang?: { sleepAt: string; timeoutS: number }, apart?: { engines: number; syncBucketBytes: number }, extra: string[] = []) {
  const lines: string[] = [];
  const out = join(dir, `${name}.json`);
  const overrides = [...grpoArgs(name, world, tp, apart), ...extra];
  if (hang) overrides.push(`trainer.nccl_timeout_s=${hang.timeoutS}`);
  const r = await launch({
    script: WORKER,
    args: [JSON.stringify({ overrides, out, killAtSync, sleepAt: hang?.sleepAt, syncBucketBytes: apart?.syncBucketBytes })],
    nprocPerNode: world + (apart ? apart.engines * tp : 0),
    device: 'cpu',
    killGraceMs: 3000,
    // As `npm run train` passes it (trainer.nccl_timeout_s) to the launcher's hub.
    collectiveTimeoutMs: hang ? hang.timeoutS * 1000 : undefined,
    onOutput: (rank, _s, line) => lines.push(`[rank ${rank}] ${line}`),
  });
  const text = lines.join('\n');
  const rows = () => parseMetricsJsonl(readFileSync(join(dir, `${name}.jsonl`), 'utf8')).filter((x) => x.kind === 'train');
  return { ...r, text, result: () => JSON.parse(readFileSync(out, 'utf8')) as WorkerOut, rows };
}

let one: Awaited<ReturnType<typeof runWorld>>;
let two: Awaited<ReturnType<typeof runWorld>>;
let twoTp: Awaited<ReturnType<typeof runWorld>>;
let twoOffload: Awaited<ReturnType<typeof runWorld>>;
let twoUnfused: Awaited<ReturnType<typeof runWorld>>;
let fourTp: Awaited<ReturnType<typeof runWorld>>;
let apartOne: Awaited<ReturnType<typeof runWorld>>;
let apartTp: Awaited<ReturnType<typeof runWorld>>;

before(async () => {
  // The SFT'd starting point both worlds load (the same bf16 weights, so step 1 must sample the same tokens).
  const sft = spawnSync(process.execPath, ['--import', 'tsx', CLI('sft'), '-c', 'demo-cpu', 'trainer.sft.steps=100', 'trainer.sft.lr=3e-3', 'trainer.sft.stop_at_reward=null', 'trainer.sft.eval_interval=100', 'trainer.eval_batch_size=16', `trainer.ckpt_path=${join(dir, 'sft-ck')}`, `trainer.metrics_path=${join(dir, 'sft.jsonl')}`, 'trainer.ckpt_interval=-1', `trainer.sft.output_dir=${SFT_MODEL}`], { encoding: 'utf8', cwd: ROOT });
  assert.equal(sft.status, 0, sft.stderr);
  one = await runWorld('world1', 1);
  assert.equal(one.exitCode, 0, one.text);
  two = await runWorld('world2', 2);
  assert.equal(two.exitCode, 0, two.text);
  // offload_after_step: the optimizer state in host memory while the engines generate, back for training.
  twoOffload = await runWorld('world2-offload', 2, undefined, 1, undefined, undefined, ['trainer.policy.optimizer_config.offload_after_step=true']);
  assert.equal(twoOffload.exitCode, 0, twoOffload.text);
  // trainer.fused_lm_head_backward (default 'auto': on, the loss inputs travel with each forward command and each
  // rank takes its rows) against the recomputing LM-head backward.
  twoUnfused = await runWorld('world2-unfused', 2, undefined, 1, undefined, undefined, ['trainer.fused_lm_head_backward=false']);
  assert.equal(twoUnfused.exitCode, 0, twoUnfused.text);
  twoTp = await runWorld('world2-tp2', 2, undefined, 2);
  assert.equal(twoTp.exitCode, 0, twoTp.text);
  fourTp = await runWorld('world4-2xtp2', 4, undefined, 2);
  assert.equal(fourTp.exitCode, 0, fourTp.text);
  // 1 trainer process + 1 engine process; 4 KiB buckets, so the sync takes many broadcasts (the model is 172 KB).
  apartOne = await runWorld('apart-1+1', 1, undefined, 1, undefined, { engines: 1, syncBucketBytes: 4096 });
  assert.equal(apartOne.exitCode, 0, apartOne.text);
  // 1 trainer process + one tp=2 engine on processes 1 and 2 (its own sub-group; each keeps its slice of the buckets).
  apartTp = await runWorld('apart-1+tp2', 1, undefined, 2, undefined, { engines: 1, syncBucketBytes: 4096 });
  assert.equal(apartTp.exitCode, 0, apartTp.text);
});

/** The per-step resource and phase metrics every row has (world N: one peak per rank). */
function assertStepMetrics(rows: Record<string, unknown>[], world: number): void {
  for (const r of rows) {
    const where = `step ${r.step} of world ${world}`;
    for (const k of ['time/generate', 'time/train', 'time/train_forward', 'time/train_backward', 'time/optimizer', 'time/weight_sync', 'time/ref_logprobs', 'tokens_per_s/generate', 'tokens_per_s/train_per_gpu']) {
      assert.ok(typeof r[k] === 'number' && (r[k] as number) > 0, `${where}: ${k} = ${r[k]}`);
    }
    const train = (r['time/train_forward'] as number) + (r['time/train_backward'] as number) + (r['time/optimizer'] as number);
    assert.ok(Math.abs((r['time/train'] as number) - train) < 1e-9, `${where}: time/train is the sum of its parts`);
    const peaks = Array.from({ length: world }, (_, rank) => r[`memory/peak_gb/rank_${rank}`] as number);
    // On CPU the peak is the host tensors' (the model, its shard, optimizer state, activations): above 0 everywhere.
    assert.ok(peaks.every((p) => typeof p === 'number' && p > 0), `${where}: peaks ${peaks}`);
    assert.equal(r[`memory/peak_gb/rank_${world}`], undefined, `${where}: one peak per rank`);
    assert.equal(r['memory/peak_gb'], Math.max(...peaks));
    // The KV pool is sized for the batch: nothing is preempted (but the key is there).
    assert.equal(r['engine/preemptions'], 0, where);
  }
}

function rel(a: number, b: number): number {
  return Math.abs(a - b) / Math.max(Math.abs(b), 1e-12);
}

test('world 2 (two tp=1 engines): step 1 rollouts and rewards identical to world 1; loss and grad norm to fp32 noise', () => {
  const a = one.result();
  const b = two.result();
  assert.equal(a.steps, 3);
  assert.equal(b.steps, 3);
  assert.equal(b.first.length, 64);
  assert.deepEqual(b.first, a.first, 'step 1 rollouts');
  const ra = one.rows();
  const rb = two.rows();
  assert.equal(rb.length, 3);
  assert.equal(rb[0]!['reward/mean'], ra[0]!['reward/mean']);
  // Rewards vary within groups (the SFT'd model is right about 1 time in 10): the loss has a real gradient.
  assert.ok((ra[0]!['reward/mean'] as number) > 0 && (ra[0]!['reward/mean'] as number) < 1, `reward ${ra[0]!['reward/mean']}`);
  for (let i = 0; i < 3; i++) {
    for (const k of ['loss', 'grad_norm']) {
      const x = rb[i]![k] as number;
      const y = ra[i]![k] as number;
      assert.ok(rel(x, y) < 2e-4, `step ${i + 1} ${k}: world 2 ${x} vs world 1 ${y}`);
    }
    assert.equal(rb[i]!['dist/world_size'], 2);
    assert.equal(rb[i]!['dist/num_engines'], 2);
    assert.equal(rb[i]!['dist/engine_tp'], 1);
    assert.equal(ra[i]!['dist/world_size'], 1);
  }
  assertStepMetrics(ra, 1);
  assertStepMetrics(rb, 2);
});

test('world 2 with offload_after_step: the optimizer state is in host memory while generating, and the run is bitwise the default\'s', () => {
  const a = two.result();
  const b = twoOffload.result();
  // The loop's generate() calls (steps 1-3, then the checks after the run): the state exists from step 1's update on.
  assert.deepEqual(a.optimizerOnHost.slice(0, 3), [null, false, false]);
  assert.deepEqual(b.optimizerOnHost.slice(0, 3), [null, true, true]);
  assert.deepEqual(b.first, a.first);
  const ra = two.rows();
  const rb = twoOffload.rows();
  for (let i = 0; i < 3; i++) for (const k of ['loss', 'grad_norm', 'reward/mean']) assert.equal(rb[i]![k], ra[i]![k], `step ${i + 1} ${k}`);
  assert.deepEqual(b.weights, a.weights);
});

test('world 2 with the fused LM-head backward (default; loss inputs sent with the forward, rebuilt per rank): bitwise the recomputing backward (=false)', () => {
  const a = two.result();
  const b = twoUnfused.result();
  assert.deepEqual(b.first, a.first);
  const ra = two.rows();
  const rb = twoUnfused.rows();
  assert.equal(rb.length, 3);
  for (let i = 0; i < 3; i++) for (const k of ['loss', 'grad_norm', 'kl', 'clip_frac', 'reward/mean']) assert.equal(rb[i]![k], ra[i]![k], `step ${i + 1} ${k}`);
  assert.deepEqual(b.weights, a.weights);
});

test('world 2: the engines hold the trained weights (equal to world 1 up to fp32 reduction noise) and sample with the trainer\'s log-probs', () => {
  const a = one.result();
  const b = two.result();
  // bf16 engine weights after 3 AdamW steps. The two worlds sum the gradient in different orders (fp32 noise,
  // ~1e-5 relative): a master that lands near a bf16 rounding boundary moves one bf16 step; and an element whose
  // gradient is itself at the noise level gets a different AdamW direction (m/sqrt(v) scales the noise up to a
  // step of up to lr), so a few elements (observed: 29 of 85,840) differ by up to a fraction of lr per step. A
  // missed unit or a misplaced shard would change thousands of elements, by the whole update.
  let n = 0;
  let equal = 0;
  let beyondUlp = 0;
  const bad: string[] = [];
  for (const [name, wa] of Object.entries(a.weights)) {
    const wb = b.weights[name]!;
    assert.equal(wb.length, wa.length, name);
    wa.forEach((x, i) => {
      n++;
      const y = wb[i]!;
      if (x === y) return void equal++;
      const d = Math.abs(x - y);
      if (d > Math.max(Math.abs(x), Math.abs(y)) * 2 ** -7 && d > 0.05 * LR) beyondUlp++;
      if (d > 3 * LR) bad.push(`${name}[${i}]: ${x} vs ${y}`);
    });
  }
  assert.deepEqual(bad.slice(0, 5), [], `${bad.length} weights differ by more than 3 AdamW steps`);
  assert.ok(equal / n > 0.9, `only ${equal} of ${n} engine weights equal`);
  assert.ok(beyondUlp <= n / 1000, `${beyondUlp} of ${n} weights differ by more than one bf16 step and 0.05 lr`);
  // After each sync the engines' sampler log-probs are the trainer's (steps 2 and 3 sample from synced weights).
  for (const r of two.rows()) assert.ok((r['logprob_gap/abs_max'] as number) < 1e-3, `step ${r.step}: gap ${r['logprob_gap/abs_max']}`);
  assert.ok(b.gap < 1e-3, `after the run: engine vs trainer log-prob gap ${b.gap}`);
  assert.ok(a.gap < 1e-3, `world 1 gap ${a.gap}`);
  // Concurrent generate() calls (multi-turn episodes issue them) are queued by the driver, not interleaved.
  assert.equal(b.concurrentSame, true);
  assert.equal(twoTp.result().concurrentSame, true);
});

for (const [label, engines, run] of [['world 2 with one tp=2 engine', 1, () => twoTp], ['world 4 with two tp=2 engines (sub-groups)', 2, () => fourTp]] as const) {
test(`${label}: step 1 samples the same tokens but where split reductions flip one; the synced engines match the trainer`, () => {
  const a = one.result();
  const b = run().result();
  assert.equal(b.steps, 3);
  // The engine's layers reduce over 2 ranks (other summation order): its sampler log-probs differ in the last
  // bits, and a draw that falls on a boundary between two tokens may flip. Counted; they must be rare.
  let flipped = 0;
  let lpDiff = 0;
  a.first.forEach((x, i) => {
    const y = b.first[i]!;
    if (JSON.stringify(x.tokens) !== JSON.stringify(y.tokens)) return void flipped++;
    x.logprobs.forEach((v, k) => (lpDiff = Math.max(lpDiff, Math.abs(v - y.logprobs[k]!))));
  });
  assert.ok(flipped <= 4, `${flipped} of 64 step-1 rollouts differ from world 1 (observed 0)`);
  assert.ok(lpDiff < 0.02, `sampler log-probs of equal rollouts differ by ${lpDiff} (observed 3.5e-3)`);
  const ra = one.rows();
  const rb = run().rows();
  assert.equal(rb.length, 3);
  if (flipped === 0) {
    assert.equal(rb[0]!['reward/mean'], ra[0]!['reward/mean']);
    for (const k of ['loss', 'grad_norm']) assert.ok(rel(rb[0]![k] as number, ra[0]![k] as number) < 2e-4, `step 1 ${k}`);
  }
  for (const r of rb) {
    assert.equal(r['dist/world_size'], engines * 2);
    assert.equal(r['dist/num_engines'], engines);
    assert.equal(r['dist/engine_tp'], 2);
    // After each sync the engine's slices are the trainer's weights: the gap is the tp=2 reduction noise (observed
    // <= 0.015), against 0.3-2.7 when the engine keeps stale weights.
    assert.ok((r['logprob_gap/abs_max'] as number) < 0.05, `step ${r.step}: gap ${r['logprob_gap/abs_max']}`);
  }
  assertStepMetrics(rb, engines * 2);
  assert.ok(b.gap < 0.05, `after the run: engine vs trainer log-prob gap ${b.gap}`);
});
}

test('not colocated (1 trainer + 1 engine process, weights broadcast in buckets): equal to world 1', () => {
  const a = one.result();
  const b = apartOne.result();
  assert.equal(b.steps, 3);
  // The engine samples from weights equal to the trainer's initial ones with the same seeds: step 1 is identical.
  assert.deepEqual(b.first, a.first, 'step 1 rollouts');
  const ra = one.rows();
  const rb = apartOne.rows();
  assert.equal(rb.length, 3);
  for (let i = 0; i < 3; i++) {
    for (const k of ['loss', 'grad_norm']) assert.ok(rel(rb[i]![k] as number, ra[i]![k] as number) < 2e-4, `step ${i + 1} ${k}: ${rb[i]![k]} vs ${ra[i]![k]}`);
    // After every bucketed sync the engine process samples with the trainer's log-probs (stale weights: 0.3-2.7).
    assert.ok((rb[i]!['logprob_gap/abs_max'] as number) < 1e-3, `step ${i + 1}: gap ${rb[i]!['logprob_gap/abs_max']}`);
    assert.equal(rb[i]!['dist/world_size'], 2);
    assert.equal(rb[i]!['dist/trainer_ranks'], 1);
    assert.equal(rb[i]!['dist/colocated'], 0);
    assert.equal(ra[i]!['dist/colocated'], 1);
  }
  assert.ok(b.gap < 1e-3, `after the run: engine vs trainer log-prob gap ${b.gap}`);
  assert.equal(b.concurrentSame, true);
  assertStepMetrics(rb, 2);
  assert.match(apartOne.text, /\[rank 0\] .*"role":"trainer".*rank ready/);
  assert.match(apartOne.text, /\[rank 1\] .*"role":"engine".*rank ready/);
});

test('not colocated with a tp=2 engine (processes 1, 2): the synced slices match the trainer', () => {
  const a = one.result();
  const b = apartTp.result();
  assert.equal(b.steps, 3);
  let flipped = 0;
  a.first.forEach((x, i) => {
    if (JSON.stringify(x.tokens) !== JSON.stringify(b.first[i]!.tokens)) flipped++;
  });
  assert.ok(flipped <= 4, `${flipped} of 64 step-1 rollouts differ from world 1 (tp=2 reduction noise; observed 0)`);
  const rows = apartTp.rows();
  assert.equal(rows.length, 3);
  for (const r of rows) {
    // After each bucketed sync the engine's slices are the trainer's weights (tp reduction noise; stale: 0.3-2.7).
    assert.ok((r['logprob_gap/abs_max'] as number) < 0.05, `step ${r.step}: gap ${r['logprob_gap/abs_max']}`);
    assert.equal(r['dist/world_size'], 3);
    assert.equal(r['dist/engine_tp'], 2);
  }
  assert.ok(b.gap < 0.05, `after the run: engine vs trainer log-prob gap ${b.gap}`);
  assertStepMetrics(rows, 3);
});

test('a rank killed mid-run ends the whole job, naming it', async () => {
  const r = await runWorld('killed', 2, 2);
  assert.notEqual(r.exitCode, 0);
  assert.equal(r.failedRank, 1, r.reason);
  // The hub sees rank 1's connection drop (or the launcher its exit) first; either names rank 1.
  assert.match(r.reason ?? '', /^rank 1 (exited with signal SIGKILL|disconnected from the process group)/);
  // Rank 0 was waiting in the weight sync (rank 1 died on receiving it): its error names the phase and the rank.
  assert.match(r.text, /\[rank 0\] .*weight sync phase \(syncWeights\) failed: .*rank 1/);
  assert.equal(r.ranks.length, 2);
});

test('a rank stuck inside a phase ends the whole job within trainer.nccl_timeout_s, naming the rank and the phase', async () => {
  const t0 = Date.now();
  const r = await runWorld('hung', 2, undefined, 1, { sleepAt: 'forward', timeoutS: 3 });
  assert.notEqual(r.exitCode, 0);
  assert.equal(r.failedRank, 1, r.reason);
  // Rank 1 blocked in the first training forward: rank 0 waits for it in that forward's first all-gather.
  assert.match(r.reason ?? '', /^rank 1 did not reach a collective of the group within 3\.0 s \(trainer\.nccl_timeout_s\): rank 0 waits in allGather \(rank 0 in phase 'train' for [\d.]+ s\); rank 1 in phase 'train' for [\d.]+ s$/);
  assert.match(r.text, /\[rank 0\] .*train phase \(forward\) failed: process group aborted: rank 1 did not reach a collective/);
  assert.ok(Date.now() - t0 < 60_000, `took ${Date.now() - t0} ms`);
});

test('npm run train with trainer.placement.policy_num_gpus_per_node=2 runs 2 processes (rank 0 drives, rank 1 serves)', () => {
  const args = grpoArgs('cli', 2).map((a) => (a === 'trainer.max_steps=3' ? 'trainer.max_steps=1' : a));
  const r = spawnSync(process.execPath, ['--import', 'tsx', CLI('train'), '-c', 'demo-cpu', ...args], { encoding: 'utf8', cwd: ROOT, env: { ...process.env, GPTOSS_LOG_LEVEL: 'info' } });
  assert.equal(r.status, 0, r.stderr + r.stdout);
  const all = r.stdout + r.stderr;
  assert.match(all, /starting 2 processes \(trainer\.device=cpu; 2 inference engine\(s\) of tp 1, colocated\)/);
  assert.match(all, /\[rank 1\] .*rank ready/);
  assert.match(all, /\[rank 0\] .*done: 1 GRPO steps/);
  const rows = parseMetricsJsonl(readFileSync(join(dir, 'cli.jsonl'), 'utf8')).filter((x) => x.kind === 'train');
  assert.equal(rows.length, 1);
  assert.equal(rows[0]!['dist/world_size'], 2);
});

test('a layout that does not fit is refused before any process starts, naming the keys', () => {
  const run = (over: string[]) => spawnSync(process.execPath, ['--import', 'tsx', CLI('train'), '-c', 'demo-cpu', ...over], { encoding: 'utf8', cwd: ROOT });
  const a = run(['trainer.placement.policy_num_gpus_per_node=2', 'generator.num_inference_engines=1']);
  assert.equal(a.status, 2);
  assert.match(a.stderr, /generator\.num_inference_engines=1 x generator\.inference_engine_tensor_parallel_size=1 = 1 engine ranks, but trainer\.placement\.colocate_all=true puts one engine rank on each of the 2 training processes .*make engines x tp = 2/);
  assert.doesNotMatch(a.stderr + a.stdout, /\[rank \d\]/, 'no process was started');
  // tp must divide the model's heads (tiny: 4 heads, 2 kv heads): 2 engines of tp 4 do not fit.
  const b = run(['trainer.placement.policy_num_gpus_per_node=8', 'generator.num_inference_engines=2', 'generator.inference_engine_tensor_parallel_size=4']);
  assert.equal(b.status, 2);
  assert.match(b.stderr, /generator\.inference_engine_tensor_parallel_size=4 does not divide the model's 2 key\/value heads/);
  assert.doesNotMatch(b.stderr + b.stdout, /\[rank \d\]/, 'no process was started');
  const c = run(['trainer.placement.policy_num_gpus_per_node=2', 'generator.num_inference_engines=2', 'trainer.placement.colocate_all=false', 'generator.weight_sync_backend=ipc']);
  assert.equal(c.status, 2);
  assert.match(c.stderr, /generator\.weight_sync_backend=ipc: engines on their own processes \(trainer\.placement\.colocate_all=false\) receive the weights by a broadcast from trainer rank 0 \(use nccl/);
  assert.doesNotMatch(c.stderr + c.stdout, /\[rank \d\]/, 'no process was started');
});

/** The train CLI over 2 processes, 5 steps (checkpoints at Ctrl-C only); `interruptAfter`: SIGINT once that many steps are logged. */
function trainCli(name: string, interruptAfter?: number, world = 2): Promise<{ code: number | null; out: string }> {
  // World 3: micro-batches of 5 per rank (16 does not divide by 3; the loss is normalised by the whole mini-batch).
  const args = grpoArgs(name, world).map((a) => (a.startsWith('trainer.micro_train_batch_size_per_gpu=') && world === 3 ? 'trainer.micro_train_batch_size_per_gpu=5' : a)).map((a) => (a === 'trainer.max_steps=3' ? 'trainer.max_steps=5' : a === 'trainer.ckpt_interval=-1' ? 'trainer.ckpt_interval=100' : a === 'trainer.resume_mode=none' ? 'trainer.resume_mode=latest' : a));
  const metrics = join(dir, `${name}.jsonl`);
  return new Promise((resolve) => {
    const c = spawn(process.execPath, ['--import', 'tsx', CLI('train'), '-c', 'demo-cpu', ...args], { cwd: ROOT });
    let out = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (out += d));
    const poll = setInterval(() => {
      if (interruptAfter === undefined || !existsSync(metrics)) return;
      if (parseMetricsJsonl(readFileSync(metrics, 'utf8')).filter((x) => x.kind === 'train').length >= interruptAfter) {
        clearInterval(poll);
        c.kill('SIGINT'); // the launcher forwards it to every rank
      }
    }, 50);
    c.on('close', (code) => {
      clearInterval(poll);
      resolve({ code, out });
    });
  });
}

test('Ctrl-C over 2 processes saves a checkpoint and the same command resumes it exactly; on 3 processes, to fp32 reduction order', async () => {
  const cut = await trainCli('ctrlc', 2);
  assert.equal(cut.code, 130, cut.out);
  assert.match(cut.out, /\[rank 0\] .*interrupted; checkpoint .*global_step_\d/);
  const stoppedAt = Number(/interrupted: saving a checkpoint at step (\d+)/.exec(cut.out)?.[1]);
  assert.ok(stoppedAt >= 2 && stoppedAt < 5, `stopped at step ${stoppedAt}`);
  // The same checkpoint, to be resumed on 3 processes below.
  cpSync(join(dir, 'ck-ctrlc'), join(dir, 'ck-ctrlc3'), { recursive: true });
  cpSync(join(dir, 'ctrlc.jsonl'), join(dir, 'ctrlc3.jsonl'));
  const resumed = await trainCli('ctrlc');
  assert.equal(resumed.code, 0, resumed.out);
  assert.match(resumed.out, new RegExp(`GRPO: resumed from step ${stoppedAt}`));
  const straight = await trainCli('straight');
  assert.equal(straight.code, 0, straight.out);
  const rows = (name: string) => parseMetricsJsonl(readFileSync(join(dir, `${name}.jsonl`), 'utf8')).filter((x) => x.kind === 'train');
  const a = rows('ctrlc');
  const b = rows('straight');
  assert.deepEqual(a.map((r) => r.step), [1, 2, 3, 4, 5]);
  for (let i = 0; i < 5; i++) {
    for (const k of ['loss', 'grad_norm', 'reward/mean', 'kl']) assert.equal(a[i]![k], b[i]![k], `step ${i + 1} ${k}`);
  }
  // Resumed on 3 processes (3 engines): each rank reads its slices of the 2 saved shards. The first resumed step
  // samples from the same bf16 weights (same rollouts and rewards); the updates then differ from the 2-process run
  // only by the fp32 reduction order.
  const three = await trainCli('ctrlc3', undefined, 3);
  assert.equal(three.code, 0, three.out);
  assert.match(three.out, new RegExp(`GRPO: resumed from step ${stoppedAt}`));
  const c = rows('ctrlc3');
  assert.deepEqual(c.map((r) => r.step), [1, 2, 3, 4, 5]);
  assert.equal(c[stoppedAt]!['dist/world_size'], 3);
  assert.equal(c[stoppedAt]!['reward/mean'], b[stoppedAt]!['reward/mean'], `step ${stoppedAt + 1} reward/mean`);
  for (let i = stoppedAt; i < 5; i++) {
    for (const k of ['loss', 'grad_norm']) assert.ok(rel(c[i]![k] as number, b[i]![k] as number) < 2e-4, `step ${i + 1} ${k}: resumed on 3 ${c[i]![k]} vs 2 ${b[i]![k]}`);
  }
});

test('a random-weight model (the demo\'s `tiny`): every rank draws its shard and engine per tensor, world 2 samples and steps as world 1', async () => {
  // World 1 builds the whole model (GptOssWeights.random); in world 2 each rank reads only its shard and its engine's
  // weights from the seeded source: the same values, so step 1 samples the same tokens and steps to fp32 noise.
  const extra = ['trainer.policy.model.path=tiny', 'trainer.max_steps=1'];
  const r1 = await runWorld('random-world1', 1, undefined, 1, undefined, undefined, extra);
  assert.equal(r1.exitCode, 0, r1.text);
  const r2 = await runWorld('random-world2', 2, undefined, 1, undefined, undefined, extra);
  assert.equal(r2.exitCode, 0, r2.text);
  const a = r1.result();
  const b = r2.result();
  assert.equal(b.first.length, 64);
  assert.deepEqual(b.first, a.first, 'step 1 rollouts');
  const [ra] = r1.rows();
  const [rb] = r2.rows();
  assert.equal(rb!['reward/mean'], ra!['reward/mean']);
  for (const k of ['loss', 'grad_norm']) assert.ok(rel(rb![k] as number, ra![k] as number) < 2e-4, `${k}: world 2 ${rb![k]} vs world 1 ${ra![k]}`);
});

test('engine blocks: contiguous request ranges, the first n % engines one longer, every request once', () => {
  assert.deepEqual(engineBlocks(8, 2), [[0, 4], [4, 8]]);
  assert.deepEqual(engineBlocks(7, 3), [[0, 3], [3, 5], [5, 7]]);
  assert.deepEqual(engineBlocks(1, 2), [[0, 1], [1, 1]]);
});

test('two nodes (policy_num_nodes=2, here both on localhost): npm run train on each with NODE_RANK, MASTER_ADDR, MASTER_PORT', async () => {
  const port = await freePort();
  const args = grpoArgs('nodes', 1).map((a) => (a === 'trainer.max_steps=3' ? 'trainer.max_steps=1' : a.startsWith('generator.num_inference_engines=') ? 'generator.num_inference_engines=2' : a));
  args.push('trainer.placement.policy_num_nodes=2');
  // Without the rendezvous variables: refused before anything starts, naming them.
  const bare = spawnSync(process.execPath, ['--import', 'tsx', CLI('train'), '-c', 'demo-cpu', ...args], { encoding: 'utf8', cwd: ROOT, env: { ...process.env, NODE_RANK: '', MASTER_ADDR: '', MASTER_PORT: '' } });
  assert.equal(bare.status, 2, bare.stderr);
  assert.match(bare.stderr, /trainer\.placement\.policy_num_nodes=2: run `npm run train` on every node .*NODE_RANK=.*MASTER_ADDR=\(unset\).*MASTER_PORT=/s);
  const node = (rank: number) =>
    new Promise<{ code: number | null; out: string }>((resolve) => {
      const c = spawn(process.execPath, ['--import', 'tsx', CLI('train'), '-c', 'demo-cpu', ...args], { cwd: ROOT, env: { ...process.env, GPTOSS_LOG_LEVEL: 'info', NODE_RANK: String(rank), MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port) } });
      let out = '';
      c.stdout.on('data', (d) => (out += d));
      c.stderr.on('data', (d) => (out += d));
      c.on('close', (code) => resolve({ code, out }));
    });
  const [n0, n1] = await Promise.all([node(0), node(1)]);
  assert.equal(n0.code, 0, n0.out);
  assert.equal(n1.code, 0, n1.out);
  assert.match(n0.out, /starting 1 of 2 processes .*node 0 of 2 \(rendezvous 127\.0\.0\.1:\d+\)/);
  assert.match(n1.out, /starting 1 of 2 processes .*node 1 of 2/);
  assert.match(n1.out, /\[rank 1\] .*rank ready/);
  assert.match(n0.out, /\[rank 0\] .*done: 1 GRPO steps/);
  const rows = parseMetricsJsonl(readFileSync(join(dir, 'nodes.jsonl'), 'utf8')).filter((x) => x.kind === 'train');
  assert.equal(rows.length, 1);
  assert.equal(rows[0]!['dist/world_size'], 2);
  assert.equal(rows[0]!['dist/trainer_ranks'], 2);
});
