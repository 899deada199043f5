// CPU collectives and the launcher: 2-4 worker processes started with launch(), collectives with known sums,
// argument errors, cross-rank mismatches, rank failure, the CLI's rank-prefixed output.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { launch, initDistributed, distEnv } from '../../src/distributed/launch.ts';
import { reduceBuffers } from '../../src/distributed/tcp-group.ts';
import { packValue, unpackValue } from '../../src/distributed/wire.ts';
import { parseLaunchArgs } from '../../src/cli/launch.ts';
import { Tensor, f32ToBf16Bits, bf16BitsToF32 } from '../../src/tensor.ts';
import { WORKER as worker, runWorker, passes, BASIC_PASSES, type WorkerRun } from '../helpers/collectives-run.ts';

const cli = fileURLToPath(new URL('../../src/cli/launch.ts', import.meta.url));

function run(nproc: number, scenario: string, killGraceMs = 5000): Promise<WorkerRun> {
  return runWorker(nproc, scenario, 'cpu', { killGraceMs });
}

for (const n of [2, 3, 4]) {
  test(`collectives with known sums on ${n} CPU processes`, async () => {
    const r = await run(n, 'basic');
    assert.equal(r.exitCode, 0, r.text);
    for (let rank = 0; rank < n; rank++) {
      assert.deepEqual(passes(r, rank), BASIC_PASSES, r.text);
      assert.ok(r.lines.some((l) => l.rank === rank && l.line === `rank ${rank} done`), r.text);
    }
  });
}

test('sub-groups on 4 CPU processes: independent collectives and command channels, ranks in the sub-group numbering', async () => {
  const r = await run(4, 'subgroups');
  assert.equal(r.exitCode, 0, r.text);
  for (let rank = 0; rank < 4; rank++) assert.deepEqual(passes(r, rank), ['PASS sub-groups'], r.text);
});

test('a rank stuck outside a collective ends the job within the collective timeout, naming it and its phase', async () => {
  const t0 = Date.now();
  const r = await runWorker(3, 'hang-in-phase', 'cpu', { killGraceMs: 1000, collectiveTimeoutMs: 1500 });
  assert.equal(r.failedRank, 1, r.text);
  assert.notEqual(r.exitCode, 0);
  assert.match(r.reason ?? '', /^rank 1 did not reach a collective of the group within 1\.5 s \(trainer\.nccl_timeout_s\): rank 0, 2 wait in barrier \(rank 0 in phase 'train' for [\d.]+ s\); rank 1 in phase 'sleepy' for [\d.]+ s$/, r.reason);
  assert.ok(r.lines.some((l) => l.rank === 0 && /saw the timeout/.test(l.line)) || r.ranks[0]!.signal, r.text);
  assert.ok(Date.now() - t0 < 15_000, `took ${Date.now() - t0} ms`);
});

test('bad inputs fail with messages naming the collective and the shapes, on every rank', async () => {
  const r = await run(3, 'bad-input');
  assert.equal(r.exitCode, 0, r.text);
  for (let rank = 0; rank < 3; rank++) {
    assert.deepEqual(passes(r, rank), ['PASS local argument errors', 'PASS cross-rank mismatch errors', 'PASS group usable after errors'], r.text);
  }
});

test('a failing rank tears the group down and its exit code is reported', async () => {
  const t0 = Date.now();
  const r = await run(3, 'fail');
  assert.equal(r.failedRank, 1, r.text);
  assert.equal(r.exitCode, 3, r.text);
  assert.match(r.reason ?? '', /rank 1/);
  assert.ok(r.lines.some((l) => l.rank === 1 && l.stream === 'stderr' && l.line === 'rank 1 fails on purpose'), r.text);
  for (const e of r.ranks) if (e.rank !== 1) assert.ok(e.code !== 0 || e.signal, `rank ${e.rank} should not succeed`);
  assert.ok(Date.now() - t0 < 30_000);
});

test('ranks that hang after a failure are killed by the launcher', async () => {
  const t0 = Date.now();
  const r = await run(3, 'hang', 2000);
  assert.equal(r.failedRank, 1, r.text);
  assert.equal(r.exitCode, 3, r.text);
  for (const e of r.ranks) if (e.rank !== 1) assert.ok(e.signal === 'SIGTERM' || e.signal === 'SIGKILL', JSON.stringify(r.ranks));
  assert.ok(Date.now() - t0 < 30_000);
});

test('the CLI sets the torchrun variables and prefixes output with the rank', () => {
  const p = spawnSync(process.execPath, ['--import', 'tsx', cli, '--nproc-per-node', '2', '--device', 'cpu', worker, 'env', 'cpu'], {
    encoding: 'utf8',
    env: { ...process.env, NCCL_NVLS_ENABLE: '0' },
  });
  assert.equal(p.status, 0, p.stdout + p.stderr);
  const envs = p.stdout
    .split('\n')
    .map((l) => /^\[rank (\d+)\] ENV (.*)$/.exec(l))
    .filter((m): m is RegExpExecArray => !!m)
    .map((m) => ({ prefix: Number(m[1]), env: JSON.parse(m[2]!) as Record<string, string> }))
    .sort((a, b) => a.prefix - b.prefix);
  assert.equal(envs.length, 2, p.stdout);
  envs.forEach(({ prefix, env }, i) => {
    assert.equal(prefix, i);
    assert.equal(env.RANK, String(i));
    assert.equal(env.LOCAL_RANK, String(i));
    assert.equal(env.WORLD_SIZE, '2');
    assert.equal(env.LOCAL_WORLD_SIZE, '2');
    assert.equal(env.NODE_RANK, '0');
    assert.equal(env.NNODES, '1');
    assert.equal(env.MASTER_ADDR, '127.0.0.1');
    assert.match(env.MASTER_PORT ?? '', /^\d+$/);
    assert.equal(env.NCCL_NVLS_ENABLE, '0');
  });
  const bad = spawnSync(process.execPath, ['--import', 'tsx', cli, '--nprocs', '2', worker], { encoding: 'utf8' });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /unknown launcher flag --nprocs/);
});

test('launcher argument parsing and validation', async () => {
  assert.deepEqual(parseLaunchArgs(['--nproc_per_node=4', '--nnodes', '2', '--node-rank', '1', '--master-addr', 'h0', '--master-port', '29501', 'w.js', '--lr', '1']), {
    nprocPerNode: 4,
    nnodes: 2,
    nodeRank: 1,
    masterAddr: 'h0',
    masterPort: 29501,
    script: 'w.js',
    args: ['--lr', '1'],
  });
  assert.throws(() => parseLaunchArgs(['--nnodes', 'x', 'w.js']), /--nnodes needs a non-negative integer/);
  assert.throws(() => parseLaunchArgs([]), /no script to launch/);
  await assert.rejects(launch({ script: worker, device: 'cpu', nprocPerNode: 2, nnodes: 2, nodeRank: 2 }), /nodeRank 2 is not in \[0, 2\)/);
  await assert.rejects(launch({ script: worker, device: 'cpu', nprocPerNode: 0 }), /nprocPerNode must be a positive integer/);
  assert.deepEqual(distEnv({ RANK: '3', WORLD_SIZE: '8', LOCAL_RANK: '1', LOCAL_WORLD_SIZE: '4', NODE_RANK: '0', MASTER_PORT: '1' }).localRank, 1);
  assert.throws(() => distEnv({ RANK: '8', WORLD_SIZE: '8' }), /RANK=8 is not in \[0, WORLD_SIZE=8\)/);
});

test('a process started without the launcher is a group of one', async () => {
  const ctx = await initDistributed({ backend: 'cpu' });
  assert.equal(ctx.worldSize, 1);
  assert.equal(ctx.rank, 0);
  assert.equal(ctx.backend, 'cpu');
  const t = Tensor.from([1, 2, 3], [3], { device: 'cpu' });
  await ctx.collectives.allReduce(t, 'sum');
  assert.deepEqual([...t.toFloat32()], [1, 2, 3]);
  const g = Tensor.zeros([3], { device: 'cpu' });
  await ctx.collectives.allGather(g, t);
  assert.deepEqual([...g.toFloat32()], [1, 2, 3]);
  await ctx.destroy();
});

test('host-channel values are binary: f32 rows and token batches cost their bytes, not text', () => {
  // A backward command of 64 rows x 300 f32 gradients and a batch of 64 sequences of 400 tokens.
  const d = Array.from({ length: 64 }, (_, i) => Float32Array.from({ length: 300 }, (_, k) => Math.sin(i * 300 + k) / 7));
  const sequences = Array.from({ length: 64 }, (_, i) => Int32Array.from({ length: 400 }, (_, k) => (i * 7919 + k * 104729) % 201088));
  const raw = 64 * 300 * 4 + 64 * 400 * 4;
  const packed = packValue({ op: 'forward', id: 1, d, batch: { sequences, promptLens: sequences.map(() => 100) } });
  assert.ok(packed.length < raw + 64 * 2 * 16 + 1024, `packed ${packed.length} B for ${raw} B of arrays`);
  const back = unpackValue<{ d: Float32Array[]; batch: { sequences: Int32Array[] } }>(packed);
  assert.deepEqual(back.d, d);
  assert.deepEqual(back.batch.sequences, sequences);
});

test('hub reductions: rank-order fp64 accumulation, bf16 rounding, integer avg and wrap-around', () => {
  const f = (a: number[]) => new Uint8Array(Float32Array.from(a).buffer);
  assert.deepEqual([...new Float32Array(reduceBuffers('f32', 'avg', [f([1, -3]), f([2, 5])]).buffer.slice(0))], [1.5, 1]);
  const i = (a: number[]) => new Uint8Array(Int32Array.from(a).buffer);
  const avg = reduceBuffers('i32', 'avg', [i([1, -3]), i([2, -4])]);
  assert.deepEqual([...new Int32Array(avg.buffer, avg.byteOffset, 2)], [1, -3]);
  const wrap = reduceBuffers('i32', 'sum', [i([2 ** 31 - 1]), i([1])]);
  assert.equal(new Int32Array(wrap.buffer, wrap.byteOffset, 1)[0], -(2 ** 31));
  const b = (a: number[]) => new Uint8Array(f32ToBf16Bits(Float32Array.from(a)).buffer);
  const bs = reduceBuffers('bf16', 'sum', [b([256]), b([1])]); // 257 is not a bf16: rounds to even (256)
  assert.deepEqual([...bf16BitsToF32(new Uint16Array(bs.buffer, bs.byteOffset, 1))], [256]);
});

test('NCCL ops say clearly when the addon was built without NCCL', async () => {
  const { native } = await import('../../src/native.ts');
  if (native().features.nccl) return;
  assert.throws(() => native().ops.ncclGetUniqueId(), /ncclGetUniqueId: this addon was built without NCCL/);
  await assert.rejects(initDistributed({ backend: 'nccl' }), /backend nccl but this addon was built without NCCL/);
});

test('a forwarded Ctrl-C waits signalGraceMs for workers that stop at a safe point; a second one kills after killGraceMs', async () => {
  const { mkdtempSync, writeFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  const { tmpdir } = await import('node:os');
  // The worker acknowledges SIGINT and exits 0 only 3 s later (a phase finishing, then a checkpoint).
  const script = join(mkdtempSync(join(tmpdir(), 'launch-sigint-')), 'w.mjs');
  writeFileSync(script, `process.on('SIGINT', () => { console.log('stopping'); setTimeout(() => process.exit(0), 3000); }); console.log('ready'); setInterval(() => {}, 1000);`);
  const once = async (signalGraceMs: number | undefined, second: boolean) => {
    const lines: string[] = [];
    let ready!: () => void;
    const up = new Promise<void>((r) => (ready = r));
    const done = launch({ script, nprocPerNode: 1, device: 'cpu', killGraceMs: 300, signalGraceMs, onOutput: (_r, _s, l) => (lines.push(l), l === 'ready' && ready()) });
    await up;
    process.kill(process.pid, 'SIGINT');
    if (second) setTimeout(() => process.kill(process.pid, 'SIGINT'), 1100); // past the 1 s window of a repeated delivery
    return { r: await done, lines };
  };
  const waited = await once(10_000, false);
  assert.deepEqual(waited.r.ranks.map((x) => [x.code, x.signal]), [[0, null]], waited.lines.join('\n'));
  assert.ok(waited.lines.includes('stopping'));
  const short = await once(undefined, false); // the default: killGraceMs (300 ms) for the first signal too
  assert.deepEqual(short.r.ranks.map((x) => x.signal), ['SIGKILL']);
  const twice = await once(10_000, true);
  assert.deepEqual(twice.r.ranks.map((x) => x.signal), ['SIGKILL']);
});
