// Smoke test of `npm run bench:generate` on the CPU (its tiny defaults): it runs, and its JSON has both parts with
// sane numbers (every drawn output length produced, the engine's log-probs equal to the trainer's).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

test('bench:generate runs on the CPU with the tiny preset and writes its table and JSON', () => {
  const out = join(mkdtempSync(join(tmpdir(), 'bench-generate-')), 'out.json');
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'bench/generate.ts', '--json', out, '--num-blocks', '256'], {
    encoding: 'utf8',
    env: { ...process.env, GPTOSS_DEVICE: 'cpu' },
  });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /\| batch \| engine \| static path \| transformers \|/);
  assert.match(r.stdout, /log-prob gap engine vs tokenLogprobs/);
  const j = JSON.parse(readFileSync(out, 'utf8'));
  assert.equal(j.preset, 'gpt-oss-tiny-256');
  assert.deepEqual(j.fixed.rows.map((x: { batch: number }) => x.batch), [1, 4]);
  for (const row of j.fixed.rows) assert.ok(row.engineTokS > 0 && row.staticTokS > 0);
  assert.equal(j.grpo.sequences, 9);
  assert.ok(j.grpo.engine.tokS > 0 && j.grpo.static.tokS > 0);
  assert.ok(j.grpo.logprobGap.tokens > 0 && j.grpo.logprobGap.meanAbs < 1e-2, `gap ${j.grpo.logprobGap.meanAbs}`);
});

test('bench:generate --cuda-graphs runs both engines on the CPU (the graph path eagerly over its padded buffers)', () => {
  const out = join(mkdtempSync(join(tmpdir(), 'bench-generate-graphs-')), 'out.json');
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'bench/generate.ts', '--json', out, '--num-blocks', '256', '--cuda-graphs', '--no-grpo', '--no-static'], {
    encoding: 'utf8',
    env: { ...process.env, GPTOSS_DEVICE: 'cpu' },
  });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /\| batch \| engine \(eager\) \| engine \+ CUDA graphs \| graphs speedup \|/);
  const j = JSON.parse(readFileSync(out, 'utf8'));
  assert.equal(j.cudaGraphs, true);
  for (const row of j.fixed.rows) {
    assert.ok(row.engineTokS > 0 && row.engineGraphsTokS > 0);
    assert.ok(row.graphs.replays > 0, JSON.stringify(row.graphs));
  }
});
