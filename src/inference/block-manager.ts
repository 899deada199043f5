// block-manager.ts: the paged KV cache's bookkeeping (host only; no tensors).
//
// The pool holds `numBlocks` blocks of `blockSize` token slots each (one pool per device, the same block ids in
// every layer's k and v pools: src/inference/paged-kv-cache.ts). A sequence owns a block table: block ids in
// position order, token p living in block table[floor(p / blockSize)] at slot p % blockSize.
//
// Sharing: a FULL block whose keys and values are computed is registered under a hash chain (hash of the parent
// block's hash and the block's token ids), so any later sequence that starts with the same tokens (the n samples
// of a GRPO prompt, identical prompts, a preempted sequence coming back) takes the block by reference instead of
// recomputing it. A block's reference count is the number of block tables holding it; a block is written only
// by the sequence that allocated it and only before it is registered, so shared blocks are read-only and there is
// nothing to copy on write. The partly filled last block of a sequence is always its own.
//
// With prefix caching on, a registered block whose last reference goes stays in the hash table (evictable, least
// recently freed first) until its slot is needed; with it off, it leaves the table at once (sharing then only
// happens between sequences alive at the same time).

/** A block's identity in the prefix cache: the hash chain up to and including its tokens. */
type BlockHash = string;

export interface BlockManagerOptions {
  numBlocks: number;
  blockSize: number;
  /** Keep freed full blocks for reuse by later sequences (generator.enable_prefix_caching). Default true. */
  enablePrefixCaching?: boolean;
}

/** What a sequence holds: its block table and how many of its blocks are registered in the prefix cache. */
export interface BlockTable {
  /** Block ids in position order. */
  blocks: number[];
  /** The leading blocks whose hashes are known (registered by this sequence or taken from the cache). */
  hashes: BlockHash[];
}

export class BlockManager {
  readonly numBlocks: number;
  readonly blockSize: number;
  readonly enablePrefixCaching: boolean;
  /** Reference count per block (0 = free or evictable). */
  private readonly refs: Int32Array;
  /** Blocks never registered or evicted: free for any use. A stack (LIFO keeps the touched memory small). */
  private readonly free: number[] = [];
  /** Registered blocks with no reference, in the order they became free (Map keeps insertion order): LRU. */
  private readonly evictable = new Map<number, BlockHash>();
  /** hash -> block, for every registered block (referenced or evictable). */
  private readonly byHash = new Map<BlockHash, number>();
  /** block -> its hash, for registered blocks. */
  private readonly hashOf = new Map<number, BlockHash>();
  /** Cache statistics: prompt blocks looked up and found (the engine reports the hit rate). */
  lookups = 0;
  hits = 0;

  constructor(o: BlockManagerOptions) {
    if (!Number.isInteger(o.numBlocks) || o.numBlocks < 1) throw new Error(`BlockManager: numBlocks must be a positive integer, got ${o.numBlocks}`);
    if (!Number.isInteger(o.blockSize) || o.blockSize < 1) throw new Error(`BlockManager: blockSize must be a positive integer, got ${o.blockSize}`);
    this.numBlocks = o.numBlocks;
    this.blockSize = o.blockSize;
    this.enablePrefixCaching = o.enablePrefixCaching ?? true;
    this.refs = new Int32Array(o.numBlocks);
    for (let b = o.numBlocks - 1; b >= 0; b--) this.free.push(b);
  }

  /** Blocks that an allocation can take now (free + evictable). */
  get numFreeBlocks(): number {
    return this.free.length + this.evictable.size;
  }

  /** Blocks needed to hold `tokens` token slots. */
  blocksFor(tokens: number): number {
    return Math.ceil(tokens / this.blockSize);
  }

  /**
   * The longest run of leading full blocks of `tokens` already in the cache, limited to the blocks that end before
   * the last token (the last token is always computed: its logits are what the step samples from). Takes a
   * reference on each and returns them as the start of a new block table; `cachedTokens` of the sequence are then
   * computed. Counts toward the hit rate.
   */
  acquirePrefix(tokens: readonly number[]): { table: BlockTable; cachedTokens: number } {
    const table: BlockTable = { blocks: [], hashes: [] };
    const shareable = Math.floor((tokens.length - 1) / this.blockSize);
    let parent = '';
    for (let i = 0; i < shareable; i++) {
      const h = chainHash(parent, tokens, i * this.blockSize, this.blockSize);
      this.lookups++;
      const b = this.byHash.get(h);
      if (b === undefined) break;
      this.hits++;
      this.ref(b);
      table.blocks.push(b);
      table.hashes.push(h);
      parent = h;
    }
    return { table, cachedTokens: table.blocks.length * this.blockSize };
  }

  /**
   * Grows `table` to hold `tokens` token slots; returns false (and takes nothing) when too few blocks are free.
   */
  ensureCapacity(table: BlockTable, tokens: number): boolean {
    const need = this.blocksFor(tokens) - table.blocks.length;
    if (need <= 0) return true;
    if (need > this.numFreeBlocks) return false;
    for (let i = 0; i < need; i++) table.blocks.push(this.take());
    return true;
  }

  /**
   * Registers the full blocks of `table` whose tokens are computed (the first `computedTokens` of `tokens`), so
   * later sequences can share them. A block whose hash another block already holds stays unregistered (a
   * duplicate computed at the same time; it is freed with its sequence).
   */
  registerComputed(table: BlockTable, tokens: readonly number[], computedTokens: number): void {
    const full = Math.min(Math.floor(computedTokens / this.blockSize), table.blocks.length);
    for (let i = table.hashes.length; i < full; i++) {
      const h = chainHash(table.hashes[i - 1] ?? '', tokens, i * this.blockSize, this.blockSize);
      table.hashes.push(h);
      const b = table.blocks[i]!;
      if (!this.byHash.has(h) && !this.hashOf.has(b)) {
        this.byHash.set(h, b);
        this.hashOf.set(b, h);
      }
    }
  }

  /** Drops the sequence's references; its blocks become free (or evictable, when registered and caching is on). */
  release(table: BlockTable): void {
    for (const b of table.blocks) {
      if (this.refs[b]! <= 0) throw new Error(`BlockManager.release: block ${b} has no reference (released twice?)`);
      if (--this.refs[b]! > 0) continue;
      const h = this.hashOf.get(b);
      if (h !== undefined && this.enablePrefixCaching) this.evictable.set(b, h);
      else {
        if (h !== undefined) this.unregister(b, h);
        this.free.push(b);
      }
    }
    table.blocks.length = 0;
    table.hashes.length = 0;
  }

  /** Forgets every cached block (the pool's contents are gone: sleep, or new weights). Referenced blocks must be none. */
  reset(): void {
    const held = this.refs.reduce((s, r) => s + (r > 0 ? 1 : 0), 0);
    if (held > 0) throw new Error(`BlockManager.reset: ${held} blocks are still held by sequences`);
    this.evictable.clear();
    this.byHash.clear();
    this.hashOf.clear();
    this.free.length = 0;
    for (let b = this.numBlocks - 1; b >= 0; b--) this.free.push(b);
  }

  /** Blocks held by at least one sequence (tests and stats). */
  get numHeldBlocks(): number {
    return this.numBlocks - this.numFreeBlocks;
  }

  refCount(block: number): number {
    return this.refs[block]!;
  }

  private ref(b: number): void {
    if (this.refs[b] === 0) this.evictable.delete(b);
    this.refs[b]!++;
  }

  /** A block for new tokens: a free one, else the least recently freed cached one (evicted). */
  private take(): number {
    let b = this.free.pop();
    if (b === undefined) {
      const first = this.evictable.entries().next();
      if (first.done) throw new Error('BlockManager: no free block (ensureCapacity checks first)');
      const [eb, h] = first.value;
      this.evictable.delete(eb);
      this.unregister(eb, h);
      b = eb;
    }
    this.refs[b] = 1;
    return b;
  }

  private unregister(b: number, h: BlockHash): void {
    this.hashOf.delete(b);
    if (this.byHash.get(h) === b) this.byHash.delete(h);
  }
}

/**
 * The key of the block of `tokens` at [start, start + len) whose parent block has key `parent` ('' for the first):
 * a 64-bit hash (two 32-bit multiplicative lanes) of the parent's key and the block's token ids, followed by the
 * token ids themselves. Two blocks share a key only if their own tokens are equal and their prefixes' 64-bit chain
 * hashes collide.
 */
function chainHash(parent: string, tokens: readonly number[], start: number, len: number): BlockHash {
  let h1 = 0x811c9dc5;
  let h2 = 0x01000193;
  // The parent's 64-bit hash is its key's prefix (before the '.'-joined lanes end at ':').
  const lanes = parent.slice(0, parent.indexOf(':') >>> 0);
  for (let i = 0; i < lanes.length; i++) {
    const c = lanes.charCodeAt(i);
    h1 = Math.imul(h1 ^ c, 0x01000193) >>> 0;
    h2 = Math.imul(h2 ^ (c + 0x9e3779b9), 0x85ebca6b) >>> 0;
  }
  for (let i = start; i < start + len; i++) {
    const t = tokens[i]!;
    h1 = Math.imul(h1 ^ t, 0x01000193) >>> 0;
    h2 = Math.imul(h2 ^ (t + 0x9e3779b9), 0x85ebca6b) >>> 0;
  }
  return `${h1.toString(36)}.${h2.toString(36)}:${tokens.slice(start, start + len).join(',')}`;
}
