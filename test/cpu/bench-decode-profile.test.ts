// Smoke test of `npm run bench:decode-profile` on the CPU (tiny preset): it runs, prints its table and writes JSON
// with every decode step measured and the op families of a step present.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

test('bench:decode-profile runs on the CPU with the tiny preset and writes its table and JSON', () => {
  const out = join(mkdtempSync(join(tmpdir(), 'bench-decode-profile-')), 'out.json');
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'bench/decode-profile.ts', '--json', out], {
    encoding: 'utf8',
    env: { ...process.env, GPTOSS_DEVICE: 'cpu' },
  });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /\| family \| batch 1 \| batch 4 \|/);
  assert.match(r.stdout, /\| host enqueue ms \|/);
  const j = JSON.parse(readFileSync(out, 'utf8'));
  assert.equal(j.preset, 'gpt-oss-tiny-256');
  assert.deepEqual(j.rows.map((x: { batch: number }) => x.batch), [1, 4]);
  for (const row of j.rows) {
    assert.equal(row.steps, 3);
    // The rope pass writes the KV cache (ropeQkvSplit with the pools): no separate kv write.
    for (const f of ['embedding', 'rmsnorm', 'qkv GEMM', 'rope', 'paged attention', 'o_proj', 'moe (whole op)', 'LM head', 'sampling']) {
      assert.ok(row.familyMs[f] > 0, `batch ${row.batch}: family ${f} missing: ${JSON.stringify(row.familyMs)}`);
    }
    assert.ok(row.gpuMsPerStep > 0 && row.hostEnqueueMs > 0);
    assert.ok(!(row.familyMs['kv write'] > 0), `batch ${row.batch}: a separate kv write: ${JSON.stringify(row.familyMs)}`);
    // The residual add and the post-attention norm are inside the MoE op (moeForward's preNorm): no separate add.
    assert.ok(!(row.familyMs['residual add'] > 0), `batch ${row.batch}: a separate residual add: ${JSON.stringify(row.familyMs)}`);
    // 2 layers x (rmsnorm, the fused q/k/v projection's call (on the CPU it declines), qkv GEMM, rope (+ kv write),
    // paged attention, o_proj, add + norm + moe) + embed + norm + head + sampling
    assert.equal(row.opCallsPerStep, 2 * 7 + 4);
  }
});

test('bench:decode-profile --phase prefill measures the prefill steps of fresh prompts', () => {
  const out = join(mkdtempSync(join(tmpdir(), 'bench-prefill-profile-')), 'out.json');
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'bench/decode-profile.ts', '--phase', 'prefill', '--steps', '2', '--batches', '1,2', '--json', out], {
    encoding: 'utf8',
    env: { ...process.env, GPTOSS_DEVICE: 'cpu' },
  });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^prefill step profile: /m);
  const j = JSON.parse(readFileSync(out, 'utf8'));
  assert.equal(j.phase, 'prefill');
  for (const row of j.rows) {
    assert.equal(row.steps, 2); // one prefill step per generate call, each of new prompts
    for (const f of ['embedding', 'qkv GEMM', 'paged attention', 'moe (whole op)', 'LM head', 'sampling']) {
      assert.ok(row.familyMs[f] > 0, `batch ${row.batch}: family ${f} missing: ${JSON.stringify(row.familyMs)}`);
    }
  }
  const bad = spawnSync(process.execPath, ['--import', 'tsx', 'bench/decode-profile.ts', '--phase', 'both'], { encoding: 'utf8', env: { ...process.env, GPTOSS_DEVICE: 'cpu' } });
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr, /--phase must be decode or prefill, got both/);
});
