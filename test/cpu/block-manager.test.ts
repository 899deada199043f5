// BlockManager: allocation, reference counts, the prefix cache's hash chain and eviction.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BlockManager } from '../../src/inference/block-manager.ts';

const seq = (n: number, from = 0): number[] => Array.from({ length: n }, (_, i) => from + i);

test('capacity grows block by block and release returns every block', () => {
  const m = new BlockManager({ numBlocks: 4, blockSize: 4 });
  const { table, cachedTokens } = m.acquirePrefix(seq(6));
  assert.equal(cachedTokens, 0);
  assert.ok(m.ensureCapacity(table, 6));
  assert.equal(table.blocks.length, 2);
  assert.ok(m.ensureCapacity(table, 8));
  assert.equal(table.blocks.length, 2);
  assert.ok(m.ensureCapacity(table, 16));
  assert.equal(m.numFreeBlocks, 0);
  assert.equal(m.ensureCapacity(table, 17), false, 'no fifth block');
  assert.equal(table.blocks.length, 4, 'a failed grow takes nothing');
  m.release(table);
  assert.equal(m.numFreeBlocks, 4);
  assert.throws(() => m.release({ blocks: [0], hashes: [] }), /block 0 has no reference/);
});

test('full computed blocks are shared by reference; the block holding the last token never is', () => {
  const m = new BlockManager({ numBlocks: 8, blockSize: 4 });
  const prompt = seq(10); // blocks: [0..3] [4..7] [8,9]
  const a = m.acquirePrefix(prompt).table;
  assert.ok(m.ensureCapacity(a, 10));
  m.registerComputed(a, prompt, 10);
  const b = m.acquirePrefix(prompt);
  assert.equal(b.cachedTokens, 8);
  assert.deepEqual(b.table.blocks, a.blocks.slice(0, 2));
  assert.equal(m.refCount(a.blocks[0]!), 2);
  // A prompt of exactly two blocks shares only the first: the second holds its last token, computed again.
  const c = m.acquirePrefix(seq(8));
  assert.equal(c.cachedTokens, 4);
  // A different first block breaks the chain even where later tokens agree.
  const d = m.acquirePrefix([99, ...prompt.slice(1)]);
  assert.equal(d.cachedTokens, 0);
  for (const t of [a, b.table, c.table, d.table]) m.release(t);
  assert.equal(m.numHeldBlocks, 0);
});

test('prefix caching keeps freed blocks until their slots are needed (LRU); off, they go at once', () => {
  const on = new BlockManager({ numBlocks: 3, blockSize: 2 });
  const p = seq(5);
  const a = on.acquirePrefix(p).table;
  on.ensureCapacity(a, 5);
  on.registerComputed(a, p, 5);
  on.release(a);
  assert.equal(on.numFreeBlocks, 3);
  assert.equal(on.acquirePrefix(p).cachedTokens, 4, 'cached after release');
  const fresh = new BlockManager({ numBlocks: 3, blockSize: 2 });
  const x = fresh.acquirePrefix(p).table;
  fresh.ensureCapacity(x, 5);
  fresh.registerComputed(x, p, 5);
  // Another sequence needing all three blocks evicts the cached ones.
  fresh.release(x);
  const y = fresh.acquirePrefix(seq(6, 100)).table;
  assert.ok(fresh.ensureCapacity(y, 6));
  assert.equal(fresh.acquirePrefix(p).cachedTokens, 0, 'evicted');
  const off = new BlockManager({ numBlocks: 3, blockSize: 2, enablePrefixCaching: false });
  const z = off.acquirePrefix(p).table;
  off.ensureCapacity(z, 5);
  off.registerComputed(z, p, 5);
  const live = off.acquirePrefix(p);
  assert.equal(live.cachedTokens, 4, 'shared while alive');
  off.release(z);
  off.release(live.table);
  assert.equal(off.acquirePrefix(p).cachedTokens, 0, 'gone once free');
});

test('reset forgets the cache and refuses while blocks are held', () => {
  const m = new BlockManager({ numBlocks: 2, blockSize: 2 });
  const t = m.acquirePrefix(seq(3)).table;
  m.ensureCapacity(t, 3);
  assert.throws(() => m.reset(), /2 blocks are still held/);
  m.registerComputed(t, seq(3), 3);
  m.release(t);
  m.reset();
  assert.equal(m.acquirePrefix(seq(3)).cachedTokens, 0);
  assert.throws(() => new BlockManager({ numBlocks: 0, blockSize: 2 }), /numBlocks must be a positive integer, got 0/);
});

test('a sliding-window table releases blocks behind the window; placeholders keep positions; the cache serves the window', () => {
  const m = new BlockManager({ numBlocks: 8, blockSize: 2 });
  const p = seq(9);
  const t = m.acquirePrefix(p).table;
  m.ensureCapacity(t, 9);
  m.registerComputed(t, p, 9);
  m.releaseBefore(t, 5); // positions 0..3 (blocks 0, 1) are behind a window starting at 5
  assert.deepEqual(t.blocks.slice(0, 2), [-1, -1]);
  assert.equal(m.heldIn(t), 3);
  assert.equal(m.numHeldBlocks, 3);
  // Another sequence takes blocks 2..3 of the same prompt (its window) with placeholders before.
  const keys = m.prefixKeys(p);
  assert.equal(keys.length, 4);
  const u = { blocks: [] as number[], hashes: [] as string[] };
  m.acquireCached(u, keys, 2, 4);
  assert.deepEqual(u.blocks, [-1, -1, t.blocks[2], t.blocks[3]]);
  assert.ok(m.isCached(keys[0]!), 'released registered blocks stay cached (evictable)');
  m.release(t);
  m.release(u);
  assert.equal(m.numHeldBlocks, 0);
});
