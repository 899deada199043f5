// NCCL on >= 2 GPUs: the collectives of test/cpu/collectives.test.ts through NCCL (one process per GPU, started
// with the launcher), known sums on bf16/f32/i32, ordering against the device stream, argument errors, and a
// failing rank. Skips without NCCL or with fewer than 2 GPUs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { native } from '../../src/native.ts';
import { cudaDeviceCount } from '../../src/tensor.ts';
import { runWorker, passes, BASIC_PASSES, type WorkerRun } from '../helpers/collectives-run.ts';

const gpus = cudaDeviceCount();
const skip = !native().features.nccl
  ? 'addon built without NCCL (GPU machine only)'
  : gpus < 2
    ? `needs >= 2 GPUs (${gpus} visible)`
    : false;
function run(nproc: number, scenario: string): Promise<WorkerRun> {
  return runWorker(nproc, scenario, 'nccl', { killGraceMs: 3000, log: true });
}

const sizes = [...new Set([2, gpus])].filter((n) => n >= 2 && n <= gpus);
for (const n of sizes.length ? sizes : [2]) {
  test(`NCCL collectives with known sums on ${n} GPUs`, { skip }, async () => {
    const r = await run(n, 'basic');
    assert.equal(r.exitCode, 0, r.text);
    for (let rank = 0; rank < n; rank++) {
      assert.deepEqual(passes(r, rank), BASIC_PASSES, r.text);
      assert.ok(r.lines.some((l) => l.rank === rank && new RegExp(`backend=nccl device=cuda:${rank}`).test(l.line)), r.text);
    }
  });
}

test('NCCL argument errors name the collective and the shapes', { skip }, async () => {
  const r = await run(2, 'bad-input');
  assert.equal(r.exitCode, 0, r.text);
  for (let rank = 0; rank < 2; rank++) {
    assert.deepEqual(passes(r, rank), ['PASS local argument errors', 'PASS group usable after errors'], r.text);
  }
});

test('a failing rank tears the NCCL group down', { skip }, async () => {
  const r = await run(2, 'fail');
  assert.equal(r.failedRank, 1, r.text);
  assert.equal(r.exitCode, 3, r.text);
});

test('NCCL sub-groups on 4 GPUs: a communicator per sub-group, independent of the others', { skip: skip || (gpus < 4 ? `needs 4 GPUs (${gpus} visible)` : false) }, async () => {
  const r = await run(4, 'subgroups');
  assert.equal(r.exitCode, 0, r.text);
  for (let rank = 0; rank < 4; rank++) assert.deepEqual(passes(r, rank), ['PASS sub-groups'], r.text);
});

test('the NCCL watchdog ends a rank blocked behind a hung all-reduce, naming the collective and the phase', { skip }, async () => {
  const t0 = Date.now();
  const r = await runWorker(2, 'nccl-hang', 'nccl', { killGraceMs: 2000, log: true, workerTimeoutMs: 3000 });
  assert.equal(r.failedRank, 0, r.text);
  assert.equal(r.exitCode, 124, r.text);
  assert.match(r.text, /\[rank 0\] error: NCCL watchdog: process rank 0 \(rank 0 of this 2-rank communicator, cuda:0\): ncclAllReduce\(.*\) \(phase 'train'\) has not completed \d+ s after it was enqueued/);
  assert.ok(Date.now() - t0 < 30_000, `took ${Date.now() - t0} ms`);
});
