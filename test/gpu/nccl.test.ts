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
