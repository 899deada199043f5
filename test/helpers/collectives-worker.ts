// collectives-worker.ts: a worker started by the launcher in test/cpu/collectives.test.ts and
// test/gpu/nccl.test.ts. argv[2] names the scenario; argv[3] the backend (cpu | nccl | auto); argv[4] (optional)
// the collective timeout in ms given to initDistributed (NCCL: the native watchdog). Prints
// "PASS <check>" lines; any failed check throws, so the process exits non-zero.
import assert from 'node:assert/strict';
import { initDistributed, type DistContext } from '../../src/distributed/launch.ts';
import { Tensor, type DType } from '../../src/tensor.ts';

const scenario = process.argv[2] ?? 'basic';
const backend = (process.argv[3] ?? 'auto') as 'cpu' | 'nccl' | 'auto';
const collectiveTimeoutMs = process.argv[4] ? Number(process.argv[4]) : undefined;

function pass(ctx: DistContext, name: string): void {
  console.log(`PASS ${name} (rank ${ctx.rank}/${ctx.worldSize} ${ctx.backend} ${ctx.device})`);
}

function values(t: Tensor): number[] {
  return [...t.toFloat32()];
}

async function basic(ctx: DistContext): Promise<void> {
  const { rank, worldSize: n, device, collectives: c } = ctx;
  const tri = (n * (n + 1)) / 2;
  for (const dtype of ['f32', 'bf16', 'i32'] as DType[]) {
    // all-reduce sum / max / min / avg: rank r holds (r + 1) * (i % 8 + 1) (sums stay exact in bf16).
    const len = 37;
    const mk = () => Tensor.from(Array.from({ length: len }, (_, i) => (rank + 1) * ((i % 8) + 1)), [len], { dtype, device });
    const s = mk();
    await c.allReduce(s, 'sum');
    assert.deepEqual(values(s), Array.from({ length: len }, (_, i) => tri * ((i % 8) + 1)), `allReduce sum ${dtype}`);
    const mx = mk();
    await c.allReduce(mx, 'max');
    assert.deepEqual(values(mx), Array.from({ length: len }, (_, i) => n * ((i % 8) + 1)), `allReduce max ${dtype}`);
    const mn = mk();
    await c.allReduce(mn, 'min');
    assert.deepEqual(values(mn), Array.from({ length: len }, (_, i) => (i % 8) + 1), `allReduce min ${dtype}`);
    if (dtype !== 'i32') {
      // avg of (r + 1) * 2 over r = n + 1 exactly.
      const av = Tensor.from(new Array(5).fill(2 * (rank + 1)), [5], { dtype, device });
      await c.allReduce(av, 'avg');
      assert.deepEqual(values(av), new Array(5).fill(n + 1), `allReduce avg ${dtype}`);
    }
    // all-gather: rank r contributes [3, 2] of r * 10 + i.
    const gin = Tensor.from(Array.from({ length: 6 }, (_, i) => rank * 10 + i), [3, 2], { dtype, device });
    const gout = Tensor.zeros([n * 3, 2], { dtype, device });
    await c.allGather(gout, gin);
    assert.deepEqual(values(gout), Array.from({ length: n * 6 }, (_, k) => Math.floor(k / 6) * 10 + (k % 6)), `allGather ${dtype}`);
    // reduce-scatter: input [n * 4], element j = r + j; chunk r of the sum goes to rank r.
    const rin = Tensor.from(Array.from({ length: n * 4 }, (_, j) => rank + j), [n * 4], { dtype, device });
    const rout = Tensor.zeros([4], { dtype, device });
    await c.reduceScatter(rout, rin, 'sum');
    assert.deepEqual(values(rout), Array.from({ length: 4 }, (_, j) => tri - n + n * (rank * 4 + j)), `reduceScatter ${dtype}`);
    // broadcast from the last rank.
    const root = n - 1;
    const b = Tensor.from(Array.from({ length: 9 }, (_, i) => (rank === root ? 42 + i : -1)), [9], { dtype, device });
    await c.broadcast(b, root);
    assert.deepEqual(values(b), Array.from({ length: 9 }, (_, i) => 42 + i), `broadcast ${dtype}`);
  }
  pass(ctx, 'allReduce/allGather/reduceScatter/broadcast f32 bf16 i32');

  // send/recv around a ring (grouped, so every rank sends and receives at once).
  const next = (rank + 1) % n;
  const prev = (rank + n - 1) % n;
  const out = Tensor.from([rank, rank * 2, 7], [3], { device });
  const inp = Tensor.zeros([3], { device });
  await c.sendRecv([
    { op: 'send', tensor: out, peer: next },
    { op: 'recv', tensor: inp, peer: prev },
  ]);
  assert.deepEqual(values(inp), [prev, prev * 2, 7], 'ring sendRecv');
  // Plain send/recv between ranks 0 and 1 (bf16), in opposite orders.
  if (rank === 0) {
    await c.send(Tensor.from([1.5, -2], [2], { dtype: 'bf16', device }), 1);
    const r = Tensor.zeros([2], { dtype: 'bf16', device });
    await c.recv(r, 1);
    assert.deepEqual(values(r), [3, 4], 'recv on rank 0');
  } else if (rank === 1) {
    const r = Tensor.zeros([2], { dtype: 'bf16', device });
    await c.recv(r, 0);
    assert.deepEqual(values(r), [1.5, -2], 'recv on rank 1');
    await c.send(Tensor.from([3, 4], [2], { dtype: 'bf16', device }), 0);
  }
  pass(ctx, 'send/recv');

  // Ordering against other work on the device stream: an asynchronous copy then an all-reduce of its
  // destination, no host synchronisation in between.
  const big = 1 << 20;
  const src = Tensor.from(new Float32Array(big).fill(rank + 1), [big], { device });
  const dst = Tensor.zeros([big], { device });
  dst.copyFrom(src);
  await c.allReduce(dst, 'sum');
  await c.allReduce(dst, 'sum');
  const got = dst.toFloat32();
  assert.ok(got.every((v) => v === tri * n), `ordered copy + allReduce: got ${got[0]}..${got[big - 1]}, want ${tri * n}`);
  pass(ctx, 'ordering against the stream');

  const objs = await ctx.group.allGatherObject({ rank, device });
  assert.deepEqual(objs.map((o) => o.rank), Array.from({ length: n }, (_, i) => i));
  // Typed arrays travel as their bytes (MessagePack): the same kind, bitwise (NaN, -0, Infinity, subnormals).
  const rowOf = (r: number) => new Float32Array([r, NaN, -0, Infinity, 1.4e-45, -r / 3]);
  const rows = await ctx.group.allGatherObject({ rank, f: rowOf(rank), ids: Int32Array.from([rank, -1, 2 ** 31 - 1]) });
  rows.forEach((o, r) => {
    assert.ok(o.f instanceof Float32Array && o.ids instanceof Int32Array, `rank ${r}'s arrays came back as ${o.f?.constructor.name}, ${o.ids?.constructor.name}`);
    assert.deepEqual(new Uint8Array(o.f.buffer, o.f.byteOffset, o.f.byteLength), new Uint8Array(rowOf(r).buffer));
    assert.deepEqual(Array.from(o.ids), [r, -1, 2 ** 31 - 1]);
  });
  const cmd = await ctx.group.broadcastObject(rank === 0 ? { op: 'backward', d: [rowOf(7), new Float32Array(0)] } : null, 0);
  assert.equal(cmd.op, 'backward');
  assert.deepEqual(new Uint8Array(cmd.d[0]!.buffer, cmd.d[0]!.byteOffset, 24), new Uint8Array(rowOf(7).buffer));
  assert.equal(cmd.d[1]!.length, 0);
  await c.barrier();
  await c.synchronize();
  pass(ctx, 'barrier, allGatherObject and broadcastObject');
}

async function badInput(ctx: DistContext): Promise<void> {
  const { rank, worldSize: n, device, collectives: c } = ctx;
  // Local checks: the same on both backends.
  await assert.rejects(
    c.allGather(Tensor.zeros([n * 3 + 1], { device }), Tensor.zeros([3], { device })),
    new RegExp(`allGather: out is f32\\[${n * 3 + 1}\\] on ${device} and input is f32\\[3\\] on ${device}; with ${n} ranks out must hold`),
  );
  await assert.rejects(
    c.reduceScatter(Tensor.zeros([2], { device }), Tensor.zeros([2 * n + 2], { device })),
    /reduceScatter: input is f32\[\d+\] .* input must hold/,
  );
  await assert.rejects(c.allReduce(Tensor.zeros([2], { device }), 'prod' as never), /unknown reduction 'prod'/);
  await assert.rejects(c.broadcast(Tensor.zeros([2], { device }), n), new RegExp(`broadcast: root ${n} is not a rank`));
  await assert.rejects(c.send(Tensor.zeros([2], { device }), rank), /is this rank itself/);
  await assert.rejects(
    c.allGather(Tensor.zeros([n * 3], { device, dtype: 'bf16' }), Tensor.zeros([3], { device })),
    /allGather: .* \(dtypes differ\)/,
  );
  if (ctx.backend === 'nccl') {
    await assert.rejects(
      c.allReduce(Tensor.zeros([2], { device: 'cpu' })),
      new RegExp(`ncclAllReduce: send is f32\\[2\\] on cpu but the communicator of rank ${rank} is on ${device}`),
    );
  }
  pass(ctx, 'local argument errors');
  if (ctx.backend === 'cpu') {
    // Across ranks: only the CPU backend can see every rank's tensor; all ranks get the same error.
    await assert.rejects(c.allReduce(Tensor.zeros([rank + 2], { device })), /allReduce: ranks disagree on the tensor: rank 0 f32\[2\], rank 1 f32\[3\]/);
    await assert.rejects(
      c.allReduce(Tensor.zeros([4], { device }), rank === 0 ? 'sum' : 'max'),
      /allReduce: ranks disagree on the reduction: rank 0 sum, rank 1 max/,
    );
    if (rank === 0) await c.send(Tensor.zeros([5], { device }), 1);
    if (rank === 1) await assert.rejects(c.recv(Tensor.zeros([4], { device }), 0), /recv: rank 0 sent f32\[5\] but rank 1 receives into f32\[4\] on cpu/);
    pass(ctx, 'cross-rank mismatch errors');
  }
  // The group still works after those errors.
  const t = Tensor.from([1], [1], { device });
  await c.allReduce(t);
  assert.deepEqual(values(t), [n]);
  pass(ctx, 'group usable after errors');
}

async function failing(ctx: DistContext, hang: boolean): Promise<void> {
  await ctx.collectives.barrier();
  if (ctx.rank === 1) {
    console.error('rank 1 fails on purpose');
    process.exit(3);
  }
  if (hang) {
    // Never returns: the launcher must take this rank down.
    setInterval(() => {}, 1000);
    await new Promise(() => {});
  }
  // The others notice through the group: the pending barrier fails naming rank 1.
  await assert.rejects(ctx.collectives.barrier(), /rank 1 disconnected/);
  console.log(`rank ${ctx.rank} saw the failure`);
  process.exit(5);
}

/**
 * World 4: the sub-groups {0, 1} and {2, 3} (and {1, 3} across them) run their own collectives, independently of
 * each other and interleaved with the world's; ranks and roots are in the sub-group's numbering.
 */
async function subGroups(ctx: DistContext): Promise<void> {
  const { rank, device, collectives: c, group } = ctx;
  assert.equal(ctx.worldSize, 4, 'the subgroups scenario runs on 4 ranks');
  const pair = rank < 2 ? [0, 1] : [2, 3];
  assert.throws(() => group.subGroup([1, 0]), /must be ascending distinct ranks/);
  assert.throws(() => group.subGroup(rank < 2 ? [2, 3] : [0, 1]), new RegExp(`rank ${rank} is not among the ranks`));
  const sub = await c.subGroup(pair);
  const channel = group.subGroup(pair);
  assert.equal(sub.rank, rank % 2);
  assert.equal(sub.worldSize, 2);
  // Pair {2, 3} runs three all-reduces while pair {0, 1} runs one: neither waits for the other.
  for (let k = 0; k < (rank < 2 ? 1 : 3); k++) {
    const t = Tensor.from([rank + 1, 10 * (rank + 1)], [2], { device });
    await sub.allReduce(t, 'sum');
    assert.deepEqual(values(t), rank < 2 ? [3, 30] : [7, 70], `sub-group allReduce ${k}`);
  }
  const b = Tensor.from([rank, rank], [2], { device, dtype: 'bf16' });
  await sub.broadcast(b, 1); // sub-rank 1: global rank 1 or 3
  assert.deepEqual(values(b), rank < 2 ? [1, 1] : [3, 3], 'sub-group broadcast from sub-rank 1');
  const g = Tensor.zeros([4], { device });
  await sub.allGather(g, Tensor.from([rank, rank + 10], [2], { device }));
  assert.deepEqual(values(g), rank < 2 ? [0, 10, 1, 11] : [2, 12, 3, 13], 'sub-group allGather');
  const rs = Tensor.zeros([1], { device });
  await sub.reduceScatter(rs, Tensor.from([rank, 100 + rank], [2], { device }), 'sum');
  assert.deepEqual(values(rs), rank < 2 ? [[1, 201][rank % 2]!] : [[5, 205][rank % 2]!], 'sub-group reduceScatter');
  // A world collective between the sub-groups' work.
  const w = Tensor.from([1], [1], { device });
  await c.allReduce(w, 'sum');
  assert.deepEqual(values(w), [4], 'world allReduce between');
  // Point to point inside the sub-group (peer = the other sub-rank).
  const got = Tensor.zeros([1], { device });
  await sub.sendRecv([
    { op: 'send', tensor: Tensor.from([rank], [1], { device }), peer: 1 - sub.rank },
    { op: 'recv', tensor: got, peer: 1 - sub.rank },
  ]);
  assert.deepEqual(values(got), [pair[1 - sub.rank]!], 'sub-group sendRecv');
  // The command channel: sub-rank 0's bytes.
  const bytes = await channel.broadcastBytes(channel.rank === 0 ? Buffer.from(`from ${rank}`) : null, 0);
  assert.equal(bytes.toString(), `from ${pair[0]}`);
  assert.deepEqual(await channel.allGatherObject(rank), pair);
  // A sub-group across the pairs, at the same time as the pairs' own.
  if (rank === 1 || rank === 3) {
    const cross = await c.subGroup([1, 3]);
    const t = Tensor.from([rank], [1], { device });
    await cross.allReduce(t, 'max');
    assert.deepEqual(values(t), [3], 'cross sub-group allReduce');
    await cross.destroy();
  }
  await sub.barrier();
  await sub.destroy();
  pass(ctx, 'sub-groups');
}

/** Rank 1 blocks (as in native code) inside phase 'sleepy'; the others wait in a barrier of phase 'train'. */
async function hangInPhase(ctx: DistContext): Promise<void> {
  await ctx.collectives.barrier();
  if (ctx.rank === 1) {
    ctx.setPhase('sleepy');
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60_000);
    return;
  }
  ctx.setPhase('train');
  await assert.rejects(ctx.collectives.barrier(), /rank 1 did not reach a collective of the group within/);
  console.log(`rank ${ctx.rank} saw the timeout`);
  process.exit(5);
}

/**
 * NCCL: rank 1 blocks inside phase 'sleepy' while rank 0 enqueues an all-reduce (phase 'train') and reads its result:
 * the read blocks behind the hung kernel, so only the native watchdog can end rank 0 (exit 124, naming the phase).
 */
async function ncclHang(ctx: DistContext): Promise<void> {
  await ctx.collectives.barrier();
  if (ctx.rank === 1) {
    ctx.setPhase('sleepy');
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60_000);
    return;
  }
  ctx.setPhase('train');
  const t = Tensor.from([1], [1], { device: ctx.device });
  await ctx.collectives.allReduce(t);
  t.toFloat32();
  throw new Error('the NCCL watchdog should have ended this process');
}

const ctx = await initDistributed({ backend, collectiveTimeoutMs });
console.log(`joined rank=${ctx.rank} worldSize=${ctx.worldSize} localRank=${ctx.localRank} backend=${ctx.backend} device=${ctx.device}`);
switch (scenario) {
  case 'basic':
    await basic(ctx);
    break;
  case 'bad-input':
    await badInput(ctx);
    break;
  case 'fail':
    await failing(ctx, false);
    break;
  case 'hang':
    await failing(ctx, true);
    break;
  case 'subgroups':
    await subGroups(ctx);
    break;
  case 'hang-in-phase':
    await hangInPhase(ctx);
    break;
  case 'nccl-hang':
    await ncclHang(ctx);
    break;
  case 'env':
    console.log(
      'ENV ' +
        JSON.stringify({
          RANK: process.env.RANK,
          LOCAL_RANK: process.env.LOCAL_RANK,
          WORLD_SIZE: process.env.WORLD_SIZE,
          LOCAL_WORLD_SIZE: process.env.LOCAL_WORLD_SIZE,
          NODE_RANK: process.env.NODE_RANK,
          NNODES: process.env.NNODES,
          MASTER_ADDR: process.env.MASTER_ADDR,
          MASTER_PORT: process.env.MASTER_PORT,
          NCCL_NVLS_ENABLE: process.env.NCCL_NVLS_ENABLE,
        }),
    );
    break;
  default:
    throw new Error(`unknown scenario ${scenario}`);
}
await ctx.destroy();
console.log(`rank ${ctx.rank} done`);
