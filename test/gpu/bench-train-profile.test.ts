// GPU smoke test of `npm run bench:train-step -- --profile` (bench/train-profile.ts, bench/op-profile.ts): on a CUDA
// device, the device-side marks split a training step of the tiny preset into the families the CPU cannot show
// (the MoE and LM-head ops' inner phases), the step's readbacks are booked as host syncs, and every GPU millisecond
// of the step lands in a family. The tiny model's kernels are launch-bound, so the host may fall behind the GPU
// here: the test checks that this is reported, not that it does not happen (the 20b shape is what the bench is for).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { hasCuda } from '../helpers/cuda.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

interface Fam {
  phase: string;
  family: string;
  ms: number;
  flops: number;
}

test('bench:train-step --profile on CUDA: inner MoE / LM-head phases, host syncs, every GPU ms in a family', { skip: hasCuda ? false : 'no CUDA device', timeout: 10 * 60_000 }, () => {
  const out = join(mkdtempSync(join(tmpdir(), 'bench-train-profile-gpu-')), 'out.json');
  const bench = import.meta.url.endsWith('.js') ? [join(ROOT, 'bench/train-step.js')] : ['--import', 'tsx', join(ROOT, 'bench/train-step.ts')];
  const r = spawnSync(
    process.execPath,
    [...bench, '--profile', '--preset', 'gpt-oss-tiny-256', '--tokens', '256', '--micro-batches', '2', '--steps', '2', '--spin-ms', '20', '--json', out],
    { encoding: 'utf8', cwd: ROOT },
  );
  assert.equal(r.status, 0, r.stderr);
  console.log(r.stdout);
  const j = JSON.parse(readFileSync(out, 'utf8'));
  assert.deepEqual(j.rows.map((x: { policy: string }) => x.policy), ['single', 'sharded']);
  for (const row of j.rows) {
    const fams = row.families as Fam[];
    const has = (phase: string, family: string): boolean => fams.some((f) => f.phase === phase && f.family === family && f.ms > 0);
    for (const [p, f] of [
      ['forward', 'MoE router'], ['forward', 'MoE experts fwd'], ['forward', 'MoE permute/combine'], ['recompute', 'MoE experts fwd'],
      ['backward', 'MoE experts dgrad'], ['backward', 'MoE experts wgrad'], ['backward', 'MoE bias/router grads'],
      ['forward', 'LM head GEMM (fwd)'], ['forward', 'log-softmax / log-prob / loss'], ['backward', 'LM head GEMM (recompute)'],
      ['backward', 'LM head GEMM (dgrad)'], ['backward', 'LM head GEMM (wgrad)'], ['backward', 'log-softmax / log-prob / loss'],
      ['forward', 'attention fwd'], ['backward', 'attention bwd'], ['forward', 'qkv GEMM (fwd)'], ['backward', 'qkv GEMM (wgrad)'],
      ['optimizer', 'optimizer (AdamW)'],
    ] as const) {
      assert.ok(has(p, f), `${row.policy}: ${p} / ${f} missing: ${JSON.stringify(fams.map((x) => `${x.phase}/${x.family}`))}`);
    }
    assert.ok(!fams.some((f) => f.family.startsWith('(')), `${row.policy}: a spin or host-sync segment booked as a family`);
    assert.ok(Math.abs(fams.reduce((a, f) => a + f.ms, 0) - row.stepGpuMs) < 1e-6 * row.stepGpuMs);
    assert.ok(row.spinGpuMs > 0, 'the spin ran');
    // The log-prob readback of each micro-batch waits for the device: booked as a host sync, then a fresh spin.
    assert.ok(row.syncs.some((s: { op: string; phase: string }) => s.op === 'Tensor.toFloat32' && s.phase === 'forward'), JSON.stringify(row.syncs));
    assert.equal(typeof row.hostAhead, 'boolean');
    if (!row.hostAhead) assert.match(r.stdout, /warning: the host fell behind the GPU/);
    assert.ok(row.expertGemms.length > 0);
  }
});
