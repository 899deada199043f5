// The chart of a metrics file with an SFT phase and a GRPO phase: separate series per phase, overlapping series
// visible (dashes; identical ones merged into one legend entry naming both).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { plotMetrics, renderSvg, seriesFromMetrics } from '../../src/cli/plot.ts';

type Row = Record<string, number | string | null>;

/** An SFT run (steps, then evaluations at SFT steps 25 and 50) followed by GRPO (steps 1..4, evaluations 0 and 4). */
function sftThenGrpo(): Row[] {
  const rows: Row[] = [];
  for (let s = 1; s <= 50; s += 10) rows.push({ step: s, kind: 'sft', loss: 1 / s });
  rows.push({ step: 25, kind: 'sft_eval', 'eval/reward': 0.1, 'eval/accuracy': 0.1 });
  rows.push({ step: 50, kind: 'sft_eval', 'eval/reward': 0.3, 'eval/accuracy': 0.3 });
  rows.push({ step: 0, kind: 'eval', 'eval/reward': 0.3, 'eval/accuracy': 0.3 });
  // Strict reward: reward/mean equals reward/accuracy at every step.
  [0.25, 0.375, 0.5, 0.5].forEach((r, i) => rows.push({ step: i + 1, kind: 'train', 'reward/mean': r, 'reward/accuracy': r, loss: 0.1 }));
  rows.push({ step: 4, kind: 'eval', 'eval/reward': 0.55, 'eval/accuracy': 0.55 });
  return rows;
}

test('SFT and GRPO evaluations are separate series; identical series share one legend entry', () => {
  const series = seriesFromMetrics(sftThenGrpo());
  const byName = new Map(series.map((s) => [s.name, s]));
  assert.deepEqual([...byName.keys()], ['GRPO train reward = accuracy', 'GRPO eval reward = accuracy', 'SFT eval reward = accuracy']);
  assert.deepEqual(byName.get('SFT eval reward = accuracy')!.points, [[25, 0.1], [50, 0.3]]);
  assert.deepEqual(byName.get('GRPO eval reward = accuracy')!.points, [[0, 0.3], [4, 0.55]]);
  assert.deepEqual(byName.get('GRPO train reward = accuracy')!.points.map((p) => p[0]), [1, 2, 3, 4]);
  assert.equal(new Set(series.map((s) => s.color)).size, series.length, 'one colour per series');
});

test('series that differ stay apart, reward solid and accuracy dashed', () => {
  const rows = sftThenGrpo().map((r) => (r.kind === 'train' ? { ...r, 'reward/mean': (r['reward/mean'] as number) - 0.05 } : r));
  const series = seriesFromMetrics(rows);
  const reward = series.find((s) => s.name === 'GRPO train reward')!;
  const acc = series.find((s) => s.name === 'GRPO train accuracy')!;
  assert.equal(reward.dash, '');
  assert.notEqual(acc.dash, '');
  const svg = renderSvg(series);
  assert.ok(svg.includes(`stroke="${acc.color}" stroke-width="2" stroke-dasharray="${acc.dash}"`), 'the dashed stroke is drawn');
  for (const s of series) assert.ok(svg.includes(`>${s.name}</text>`), `legend entry ${s.name}`);
});

test('rows without a kind count as GRPO training; --keys picks metrics over every kind', () => {
  const series = seriesFromMetrics([{ step: 1, 'reward/mean': 0.5 }, { step: 2, 'reward/mean': 0.7 }]);
  assert.deepEqual(series.map((s) => s.name), ['GRPO train reward']);
  const loss = seriesFromMetrics(sftThenGrpo(), ['loss']);
  assert.equal(loss.length, 1);
  assert.equal(loss[0]!.points.length, 9);
});

test('plotMetrics writes the SVG of a file, or of several files on one chart', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'gptoss-plot-'));
  try {
    const file = join(dir, 'm.jsonl');
    writeFileSync(file, sftThenGrpo().map((r) => JSON.stringify(r)).join('\n') + '\n');
    assert.equal(await plotMetrics(file, join(dir, 'c.svg')), 3);
    assert.match(readFileSync(join(dir, 'c.svg'), 'utf8'), /SFT eval reward = accuracy/);
    // A run's two files (`<run>-sft.jsonl`, `<run>.jsonl`) on one chart: the same series as the one file above.
    const rows = sftThenGrpo();
    const sftFile = join(dir, 'run-sft.jsonl');
    const grpoFile = join(dir, 'run.jsonl');
    writeFileSync(sftFile, rows.filter((r) => String(r.kind).startsWith('sft')).map((r) => JSON.stringify(r)).join('\n') + '\n');
    writeFileSync(grpoFile, rows.filter((r) => !String(r.kind).startsWith('sft')).map((r) => JSON.stringify(r)).join('\n') + '\n');
    assert.equal(await plotMetrics([sftFile, grpoFile], join(dir, 'both.svg')), 3);
    const both = readFileSync(join(dir, 'both.svg'), 'utf8');
    for (const name of ['GRPO train reward = accuracy', 'GRPO eval reward = accuracy', 'SFT eval reward = accuracy']) assert.ok(both.includes(`>${name}</text>`), name);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
