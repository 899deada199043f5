// Smoke tests of the tensor-parallel split benches on the CPU (their small shapes): bench:tp-moe (how to split the
// MoE) and bench:tp-head (the vocabulary-parallel LM head against the replicated one) run, print their tables and
// write their JSON with a row per (tp, size).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

function runBench(script: string, extra: string[]): { stdout: string; json: Record<string, unknown> } {
  const out = join(mkdtempSync(join(tmpdir(), 'bench-tp-')), 'out.json');
  const r = spawnSync(process.execPath, ['--import', 'tsx', script, '--json', out, ...extra], { encoding: 'utf8', env: { ...process.env, GPTOSS_DEVICE: 'cpu' } });
  assert.equal(r.status, 0, r.stderr);
  return { stdout: r.stdout, json: JSON.parse(readFileSync(out, 'utf8')) as Record<string, unknown> };
}

test('bench:tp-moe runs on the CPU: one row per (tp, tokens), each split timed, the faster named', () => {
  const { stdout, json } = runBench('bench/tp-moe.ts', ['--tp', '2,4', '--tokens', '1,16', '--iters', '1']);
  assert.match(stdout, /\| tp \| T \| intermediate ms \|/);
  const rows = json.rows as { tp: number; T: number; intermediateMs: number; expertsBalancedMs: number; faster: string }[];
  assert.deepEqual(rows.map((r) => [r.tp, r.T]), [[2, 1], [2, 16], [4, 1], [4, 16]]);
  for (const r of rows) assert.ok(r.intermediateMs > 0 && r.expertsBalancedMs > 0 && ['intermediate', 'experts'].includes(r.faster));
});

test('bench:tp-head runs on the CPU: replicated vs vocabulary-parallel head per (rows, tp), and the weights per rank', () => {
  const { stdout, json } = runBench('bench/tp-head.ts', ['--tp', '2,4', '--rows', '1,3', '--iters', '1']);
  assert.match(stdout, /\| rows \| tp \| replicated head ms \(rank 0\) \| vocab-parallel head ms \(one rank\) \|/);
  const rows = json.rows as { tp: number; S: number; replicatedMs: number; vocabParallelMs: number; topPMs: number; topPPeakedMs: number; speedup: number }[];
  assert.deepEqual(rows.map((r) => [r.S, r.tp]), [[1, 2], [1, 4], [3, 2], [3, 4]]);
  for (const r of rows) assert.ok(r.replicatedMs > 0 && r.vocabParallelMs > 0 && r.topPMs > 0 && r.topPPeakedMs > 0 && Math.abs(r.speedup - r.replicatedMs / r.vocabParallelMs) < 1e-9);
  const gb = json.weightGBPerRank as Record<string, number>;
  assert.ok(Math.abs(gb['4']! * 4 - gb['1']!) < 1e-12, 'tp 4 holds a quarter of the embedding and LM head');
});
