// block-manager.ts: the paged KV cache's bookkeeping (host only; no tensors).
//
// The pool holds `numBlocks` blocks of `blockSize` token slots each (one pool per device and KV space: the same
// block ids in the k and v pools of every layer of the space, src/inference/paged-kv-cache.ts). A sequence owns a
// block table per pool: block ids in position order, token p living in block table[floor(p / blockSize)] at slot
// p % blockSize. In a sliding-window space the blocks behind the window are released (releaseBefore) and their
// entries become RELEASED placeholders.
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
export type BlockHash = string;

/** A block-table entry whose block was released (out of a sliding window): never read. */
export const RELEASED = -1;

export interface BlockManagerOptions {
  numBlocks: number;
  blockSize: number;
  /** Keep freed full blocks for reuse by later sequences (generator.enable_prefix_caching). Default true. */
  enablePrefixCaching?: boolean;
}

/** What a sequence holds in one pool: its block table and the keys of its leading computed full blocks. */
export interface BlockTable {
  /** Block ids in position order (RELEASED where a sliding window no longer needs the block). */
  blocks: number[];
  /** The keys of the leading full blocks whose tokens are computed (registered by this sequence or taken from the cache). */
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
   * The prefix-cache keys of the full blocks of `tokens` that may be shared: every full block that ends before the
   * last token (the last token is always computed: its logits are what the step samples from).
   */
  prefixKeys(tokens: readonly number[]): BlockHash[] {
    const keys: BlockHash[] = [];
    const shareable = Math.floor((tokens.length - 1) / this.blockSize);
    for (let i = 0; i < shareable; i++) keys.push(chainHash(keys[i - 1] ?? '', tokens, i * this.blockSize, this.blockSize));
    return keys;
  }

  /** Whether a computed block with this key is in the cache (held by a sequence or evictable). */
  isCached(key: BlockHash): boolean {
    return this.byHash.has(key);
  }

  /**
   * Starts an empty `table` with the cached blocks keys[from..to) (a reference each), preceded by `from` released
   * placeholders (a sliding-window table does not need the blocks before its window). Every key must be cached.
   */
  acquireCached(table: BlockTable, keys: readonly BlockHash[], from: number, to: number): void {
    if (table.blocks.length > 0) throw new Error('BlockManager.acquireCached: the table is not empty');
    for (let i = 0; i < to; i++) {
      table.hashes.push(keys[i]!);
      if (i < from) {
        table.blocks.push(RELEASED);
        continue;
      }
      const b = this.byHash.get(keys[i]!);
      if (b === undefined) throw new Error(`BlockManager.acquireCached: block ${i} is not cached`);
      this.ref(b);
      table.blocks.push(b);
    }
  }

  /**
   * The longest run of leading shareable blocks of `tokens` in the cache, taken by reference as the start of a new
   * table (one-space use: a model whose layers all see every position); `cachedTokens` are then computed.
   */
  acquirePrefix(tokens: readonly number[]): { table: BlockTable; cachedTokens: number } {
    const keys = this.prefixKeys(tokens);
    let k = 0;
    while (k < keys.length && this.isCached(keys[k]!)) k++;
    const table: BlockTable = { blocks: [], hashes: [] };
    this.acquireCached(table, keys, 0, k);
    return { table, cachedTokens: k * this.blockSize };
  }

  /**
   * Releases the blocks of `table` that hold only positions before `position` (a sliding window has moved past
   * them); their entries become placeholders, so block i still holds positions i*blockSize.. .
   */
  releaseBefore(table: BlockTable, position: number): void {
    const end = Math.min(Math.floor(position / this.blockSize), table.blocks.length);
    for (let i = 0; i < end; i++) {
      const b = table.blocks[i]!;
      if (b === RELEASED) continue;
      this.unref(b);
      table.blocks[i] = RELEASED;
    }
  }

  /** Blocks of `table` that hold a reference (not released placeholders). */
  heldIn(table: BlockTable): number {
    return table.blocks.reduce((n, b) => n + (b === RELEASED ? 0 : 1), 0);
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
      if (b !== RELEASED && !this.byHash.has(h) && !this.hashOf.has(b)) {
        this.byHash.set(h, b);
        this.hashOf.set(b, h);
      }
    }
  }

  /** Drops the sequence's references; its blocks become free (or evictable, when registered and caching is on). */
  release(table: BlockTable): void {
    for (const b of table.blocks) if (b !== RELEASED) this.unref(b);
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

  private unref(b: number): void {
    if (this.refs[b]! <= 0) throw new Error(`BlockManager.release: block ${b} has no reference (released twice?)`);
    if (--this.refs[b]! > 0) return;
    const h = this.hashOf.get(b);
    if (h !== undefined && this.enablePrefixCaching) this.evictable.set(b, h);
    else {
      if (h !== undefined) this.unregister(b, h);
      this.free.push(b);
    }
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
