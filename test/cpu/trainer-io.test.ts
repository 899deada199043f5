// Checkpoint atomicity, metrics JSONL, the plot CLI, the RNG.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, readFileSync, existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { saveTrainingCheckpoint, findLatestCheckpoint, readTrainerState, resolveResume, listCheckpoints, CheckpointError } from '../../src/trainer/checkpoint.ts';
import { MetricsLogger, parseMetricsJsonl } from '../../src/log/metrics.ts';
import { plotMetrics } from '../../src/cli/plot.ts';
import { Rng } from '../../src/trainer/rng.ts';

const state = (step: number) => ({ step, epoch: 0, dataPosition: step * 4, rng: new Rng(1).state() });

test('checkpoints: atomic save, latest, keep, resume modes', async () => {
  const root = join(mkdtempSync(join(tmpdir(), 'ck-')), 'ckpts');
  assert.equal(resolveResume('latest', root, null), null);
  for (const s of [1, 2, 3]) await saveTrainingCheckpoint({ root, state: state(s), writeModel: (d) => writeFileSync(join(d, 'w.bin'), String(s)), keep: 2 });
  assert.deepEqual(listCheckpoints(root).map((c) => c.step), [3, 2]);
  const latest = findLatestCheckpoint(root)!;
  assert.equal(readTrainerState(latest).dataPosition, 12);
  assert.equal(readFileSync(join(latest, 'w.bin'), 'utf8'), '3');
  assert.equal(resolveResume('path', root, join(root, 'global_step_2')), join(root, 'global_step_2'));
  assert.equal(resolveResume('none', root, null), null);
  assert.throws(() => resolveResume('path', root, join(root, 'nope')), /not a complete checkpoint/);
  // Re-saving the same step replaces it atomically.
  await saveTrainingCheckpoint({ root, state: state(3), writeModel: (d) => writeFileSync(join(d, 'w.bin'), 'again') });
  assert.equal(readFileSync(join(findLatestCheckpoint(root)!, 'w.bin'), 'utf8'), 'again');
});

test('checkpoints: a failed write (ENOSPC) leaves the previous checkpoint and `latest` intact', async () => {
  const root = join(mkdtempSync(join(tmpdir(), 'ck-')), 'ckpts');
  await saveTrainingCheckpoint({ root, state: state(1), writeModel: (d) => writeFileSync(join(d, 'w.bin'), 'one') });
  await assert.rejects(
    saveTrainingCheckpoint({
      root,
      state: state(2),
      writeModel: (d) => {
        writeFileSync(join(d, 'w.bin'), 'half');
        const e = new Error('ENOSPC: no space left on device, write') as NodeJS.ErrnoException;
        e.code = 'ENOSPC';
        throw e;
      },
    }),
    (e: Error) => {
      assert.ok(e instanceof CheckpointError);
      assert.match(e.message, /global_step_2 failed: the disk is full \(ENOSPC\); the previous checkpoint .*global_step_1 is intact/);
      return true;
    },
  );
  assert.match(findLatestCheckpoint(root)!, /global_step_1$/);
  assert.equal(readFileSync(join(root, 'global_step_1', 'w.bin'), 'utf8'), 'one');
  assert.ok(!existsSync(join(root, 'global_step_2')));
  assert.deepEqual(readdirSync(root).filter((n) => n.startsWith('.')), []);
  // A folder without the COMPLETE marker (a crash mid-save by an older version) is never picked.
  const { mkdirSync } = await import('node:fs');
  mkdirSync(join(root, 'global_step_9'));
  writeFileSync(join(root, 'latest'), 'global_step_9\n');
  assert.match(findLatestCheckpoint(root)!, /global_step_1$/);
});

test('metrics JSONL and the plot CLI (PNG and SVG)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'plot-'));
  const m = new MetricsLogger({ path: join(dir, 'sub', 'metrics.jsonl'), console: false, wandb: { project: 'p', name: 'n' } });
  delete process.env.WANDB_API_KEY;
  await m.init(); // no key: warns, no W&B
  for (let s = 1; s <= 12; s++) m.log(s, { 'reward/mean': s / 12, 'reward/accuracy': s / 24, loss: s === 3 ? NaN : 0.1 });
  m.log(6, { 'eval/accuracy': 0.3, 'eval/reward': 0.3 }, 'eval');
  await m.close();
  const rows = parseMetricsJsonl(readFileSync(m.path, 'utf8'));
  assert.equal(rows.length, 13);
  assert.equal(rows[2]!.loss, null);
  const png = join(dir, 'chart.png');
  // Train reward and accuracy differ (two series); eval reward and accuracy are the same numbers (one entry).
  assert.equal(await plotMetrics(m.path, png), 3);
  const buf = readFileSync(png);
  assert.deepEqual([...buf.subarray(1, 4)], [0x50, 0x4e, 0x47]);
  assert.equal(await plotMetrics(m.path, join(dir, 'chart.svg')), 3);
  assert.match(readFileSync(join(dir, 'chart.svg'), 'utf8'), /<svg/);
  await assert.rejects(plotMetrics(join(dir, 'none.jsonl'), png), /cannot read metrics file/);
});

test('Rng: deterministic, state round trip, permutations', () => {
  const a = new Rng(7);
  const xs = [a.next(), a.next()];
  const st = a.state();
  const b = Rng.fromState(st);
  assert.equal(a.next(), b.next());
  assert.notEqual(xs[0], xs[1]);
  const p = new Rng(1).permutation(50);
  assert.deepEqual([...p].sort((x, y) => x - y), Array.from({ length: 50 }, (_, i) => i));
  assert.deepEqual(new Rng(1).permutation(50), p);
});
