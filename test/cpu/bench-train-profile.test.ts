// Smoke test of `npm run bench:train-step -- --profile` on the CPU (tiny preset): it runs both policies, prints a
// table per policy and writes JSON whose families cover a training step, split into forward / recompute /
// backward / optimizer, with the GEMM FLOPs of each family as the shapes give them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { presetConfig } from '../../src/model/config.ts';
import { launch } from '../../src/distributed/launch.ts';

interface Fam {
  phase: string;
  family: string;
  ms: number;
  calls: number;
  flops: number;
  pct: number;
}

test('bench:train-step --profile runs on the CPU with the tiny preset and splits the step by family and phase', () => {
  const out = join(mkdtempSync(join(tmpdir(), 'bench-train-profile-')), 'out.json');
  const T = 32, micro = 2;
  const r = spawnSync(
    process.execPath,
    ['--import', 'tsx', 'bench/train-step.ts', '--profile', '--preset', 'gpt-oss-tiny-256', '--tokens', String(T), '--micro-batches', String(micro), '--steps', '1', '--json', out],
    { encoding: 'utf8', env: { ...process.env, GPTOSS_DEVICE: 'cpu' } },
  );
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /single policy, 2 micro-batch\(es\) of 32 tokens/);
  assert.match(r.stdout, /sharded policy, 2 micro-batch\(es\) of 32 tokens/);
  assert.match(r.stdout, /\| family \| forward ms \| recompute ms \| backward ms \| optimizer ms \| total ms \| % of step \| TFLOP\/s \| GB\/s \|/);
  const j = JSON.parse(readFileSync(out, 'utf8'));
  assert.equal(j.preset, 'gpt-oss-tiny-256');
  assert.deepEqual(j.rows.map((x: { policy: string }) => x.policy), ['single', 'sharded']);
  const c = presetConfig('gpt-oss-tiny-256');
  const qkvRows = (c.numHeads + 2 * c.numKvHeads) * c.headDim;
  for (const row of j.rows) {
    const fams = row.families as Fam[];
    const at = (phase: string, family: string): Fam | undefined => fams.find((f) => f.phase === phase && f.family === family);
    const need: [string, string][] = [
      ['forward', 'embedding'], ['forward', 'rmsnorm'], ['forward', 'qkv GEMM (fwd)'], ['forward', 'rope'], ['forward', 'attention fwd'],
      ['forward', 'o_proj GEMM (fwd)'], ['forward', 'MoE fwd (whole op, CPU)'], ['forward', 'LM head + log-prob fwd (whole op, CPU)'],
      ['recompute', 'qkv GEMM (fwd)'], ['recompute', 'MoE fwd (whole op, CPU)'],
      ['backward', 'attention bwd'], ['backward', 'qkv GEMM (dgrad)'], ['backward', 'qkv GEMM (wgrad)'], ['backward', 'o_proj GEMM (dgrad)'],
      ['backward', 'o_proj GEMM (wgrad)'], ['backward', 'bias grads (GEMV)'], ['backward', 'MoE bwd (whole op, CPU)'], ['backward', 'rmsnorm'],
      // The fused LM-head backward (the default) runs the LM head's backward in the forward, per token chunk.
      ['forward', 'LM head + log-prob bwd (whole op, CPU)'], ['backward', 'embedding'], ['optimizer', 'optimizer (AdamW)'], ['optimizer', 'grad-norm clip'],
    ];
    for (const [p, f] of need) assert.ok((at(p, f)?.ms ?? 0) > 0, `${row.policy}: ${p} / ${f} missing: ${JSON.stringify(fams.map((x) => `${x.phase}/${x.family}`))}`);
    // The recompute takes the attention output kept by the forward (keepAttention, the default) instead of running it again.
    assert.equal(at('recompute', 'attention fwd'), undefined, `${row.policy}: the recompute ran the attention forward`);
    // Nothing unattributed, and no LM head or attention backward counted as forward.
    assert.equal(at('forward', 'attention bwd'), undefined);
    assert.equal(at('', 'GEMM (other)'), undefined);
    assert.ok(!fams.some((f) => f.family === 'GEMM (other)'), `${row.policy}: a GEMM without a family`);
    // The fused q/k/v projection: 2·T·H·(Hq + 2·Hkv)·D FLOPs per layer and micro-batch, in forward and again in the recompute.
    const qkvFlops = 2 * T * c.hiddenSize * qkvRows * c.numLayers * micro;
    assert.equal(at('forward', 'qkv GEMM (fwd)')!.flops, qkvFlops);
    assert.equal(at('recompute', 'qkv GEMM (fwd)')!.flops, qkvFlops);
    assert.equal(at('backward', 'qkv GEMM (wgrad)')!.flops, qkvFlops);
    assert.equal(at('forward', 'qkv GEMM (fwd)')!.calls, c.numLayers * micro);
    const sum = fams.reduce((a, f) => a + f.ms, 0);
    assert.ok(Math.abs(sum - row.stepGpuMs) < 1e-6 * Math.max(1, sum));
    assert.ok(Math.abs(fams.reduce((a, f) => a + f.pct, 0) - 100) < 1e-6);
    assert.equal(row.hostAhead, true);
    assert.equal(row.steps, 1);
  }
});

test('bench:train-step --profile on 2 ranks (CPU): the sharded policy only, rank 0 writes', async () => {
  const bench = fileURLToPath(new URL('../../bench/train-step.ts', import.meta.url));
  const out = join(mkdtempSync(join(tmpdir(), 'bench-train-profile-2-')), 'out.json');
  const r = await launch({ script: bench, args: ['--profile', '--preset', 'gpt-oss-tiny-256', '--tokens', '16', '--steps', '1', '--json', out], nprocPerNode: 2, device: 'cpu', onOutput: () => {} });
  assert.equal(r.exitCode, 0);
  const j = JSON.parse(readFileSync(out, 'utf8'));
  assert.equal(j.worldSize, 2);
  assert.deepEqual(j.rows.map((x: { policy: string }) => x.policy), ['sharded']);
  const fams = j.rows[0].families as Fam[];
  for (const f of ['attention bwd', 'MoE bwd (whole op, CPU)', 'optimizer (AdamW)']) assert.ok(fams.some((x) => x.family === f && x.ms > 0), f);
});
