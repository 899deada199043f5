// NCCL on >= 2 GPUs: the collectives of test/cpu/collectives.test.ts through NCCL (one process per GPU, started
// with the launcher), known sums on bf16/f32/i32, ordering against the device stream, argument errors, and a
// failing rank. Skips without NCCL or with fewer than 2 GPUs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { launch, type LaunchResult } from '../../src/dist/launch.ts';
import { native } from '../../src/native.ts';
import { cudaDeviceCount } from '../../src/tensor.ts';

const gpus = cudaDeviceCount();
const skip = !native().features.nccl
  ? 'addon built without NCCL (GPU machine only)'
  : gpus < 2
    ? `needs >= 2 GPUs (${gpus} visible)`
    : false;
// Run the worker the way this file runs: compiled (dist/, plain node) or TypeScript (tsx).
const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
const worker = fileURLToPath(new URL(`../helpers/collectives-worker${ext}`, import.meta.url));

interface Run extends LaunchResult {
  lines: { rank: number; line: string }[];
  text: string;
}

async function run(nproc: number, scenario: string): Promise<Run> {
  const lines: Run['lines'] = [];
  const r = await launch({
    script: worker,
    args: [scenario, 'nccl'],
    nprocPerNode: nproc,
    device: 'cuda',
    killGraceMs: 3000,
    onOutput: (rank, _stream, line) => lines.push({ rank, line }),
  });
  const text = lines.map((l) => `[rank ${l.rank}] ${l.line}`).join('\n');
  console.log(text);
  return { ...r, lines, text };
}

function passes(r: Run, rank: number): string[] {
  return r.lines.filter((l) => l.rank === rank && l.line.startsWith('PASS ')).map((l) => l.line.replace(/ \(rank.*$/, ''));
}

const sizes = [...new Set([2, gpus])].filter((n) => n >= 2 && n <= gpus);
for (const n of sizes.length ? sizes : [2]) {
  test(`NCCL collectives with known sums on ${n} GPUs`, { skip }, async () => {
    const r = await run(n, 'basic');
    assert.equal(r.exitCode, 0, r.text);
    for (let rank = 0; rank < n; rank++) {
      assert.deepEqual(
        passes(r, rank),
        [
          'PASS allReduce/allGather/reduceScatter/broadcast f32 bf16 i32',
          'PASS send/recv',
          'PASS ordering against the stream',
          'PASS barrier and allGatherObject',
        ],
        r.text,
      );
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
