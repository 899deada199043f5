// Tensor parallelism on 2 GPUs (and an engine over 4) over NCCL (one process per GPU, started with the launcher): the model and engine
// scenarios of test/cpu/tensor-parallel.test.ts's multi-process tests, on CUDA. Skips without NCCL or with < 2 GPUs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { native } from '../../src/native.ts';
import { cudaDeviceCount } from '../../src/tensor.ts';
import { launch } from '../../src/distributed/launch.ts';

const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
const WORKER = fileURLToPath(new URL(`../helpers/tp-worker${ext}`, import.meta.url));
const gpus = cudaDeviceCount();
const skip = !native().features.nccl ? 'addon built without NCCL (GPU machine only)' : gpus < 2 ? `needs >= 2 GPUs (${gpus} visible)` : false;

async function run(scenario: string, nproc = 2): Promise<{ exitCode: number; lines: string[]; text: string }> {
  const lines: string[] = [];
  const r = await launch({ script: WORKER, args: [scenario, 'nccl'], nprocPerNode: nproc, device: 'cuda', onOutput: (rank, _s, line) => lines.push(`[rank ${rank}] ${line}`) });
  const text = lines.join('\n');
  console.log(lines.filter((l) => l.includes('REPORT') || l.includes('PASS')).join('\n'));
  return { exitCode: r.exitCode, lines, text };
}

test('tp=2 over two GPUs (NCCL): each rank loads its slices; logits and greedy tokens match one GPU', { skip }, async () => {
  const r = await run('model');
  assert.equal(r.exitCode, 0, r.text);
  for (const rank of [0, 1]) {
    assert.ok(r.lines.includes(`[rank ${rank}] PASS logits within bf16 noise of the fp32 reference; ranks agree (rank ${rank}/2)`), r.text);
    assert.ok(r.lines.includes(`[rank ${rank}] PASS greedy tokens equal to the one-device generator (rank ${rank}/2)`), r.text);
  }
});

test('the engine over two GPUs (NCCL) == the one-GPU engine (continuous batching, preemption, sleep/wake, updateWeights)', { skip }, async () => {
  const r = await run('engine');
  assert.equal(r.exitCode, 0, r.text);
  for (const pass of ['engine tokens equal to the one-device engine, log-probs within noise', 'sleep and wake', 'updateWeights with whole tensors']) {
    assert.ok(r.lines.includes(`[rank 0] PASS ${pass} (rank 0/2)`), r.text);
  }
  assert.ok(r.lines.includes('[rank 1] PASS served the engine until rank 0 disposed it (rank 1/2)'), r.text);
});

test('an engine over four GPUs (NCCL, tp=4; a random model with 4 key/value heads) == the one-GPU engine: greedy tokens, log-probs within noise', { skip: skip || (gpus < 4 ? `needs 4 GPUs (${gpus} visible)` : false) }, async () => {
  const r = await run('engine-wide', 4);
  assert.equal(r.exitCode, 0, r.text);
  assert.ok(r.lines.includes('[rank 0] PASS tp=4 engine greedy tokens equal to the one-device engine, log-probs within noise (rank 0/4)'), r.text);
  for (const rank of [1, 2, 3]) assert.ok(r.lines.includes(`[rank ${rank}] PASS served the engine until rank 0 disposed it (rank ${rank}/4)`), r.text);
});
