// scheduler.ts: continuous batching over the paged KV cache (host only; no tensors).
//
// A waiting queue and a running set of sequences. Each engine step:
//   1. every running sequence whose prompt is computed decodes one token (its last sampled token goes through
//      the model); when its table needs a block and none is free, the NEWEST running sequence is preempted
//      (its blocks freed, back to the front of the queue; it is recomputed later from its prompt plus the tokens
//      it generated, which gives the same tokens: sampling noise is keyed by (seed, tokens generated so far));
//   2. what is left of the token budget (max_num_batched_tokens) goes to prefill chunks: first sequences whose
//      prompt is partly computed, then waiting ones (up to max_num_seqs running), each taking the leading blocks
//      the prefix cache already has. A sequence's last prompt chunk samples its first token.
// A sequence leaves on a stop token, after max new tokens, or when it reaches the model length; waiting ones join
// the next step. Sequences of one prompt (a request's n samples, or equal prompts: one `group`) share it: only one
// of them prefills the prompt while the others wait for its full blocks to be registered, then take them from the
// cache (each recomputes only the part of the prompt after the last full block: at most blockSize tokens).
//
// KV spaces: layers that see every position (window 0) and sliding-window layers keep their blocks in separate
// pools (KvSpace: a BlockManager and the window), with the same block size, so each sequence has one block table
// per space. A sliding space's table releases blocks once the window has moved past them (after each step), so a
// sliding layer holds about window + one chunk of positions per sequence instead of all of them. Growing a
// sequence takes blocks in every space or in none; the prefix cache is looked up in every space (a sliding space
// needs only the blocks inside the window of the first position to compute).
import { BlockManager, type BlockTable } from './block-manager.ts';

/** One KV pool and the attention window of the layers that use it (0 = all positions). */
export interface KvSpace {
  blocks: BlockManager;
  window: number;
}

/** Sampling parameters of one sequence (a sample of a request). */
export interface SequenceSampling {
  temperature: number;
  topP: number;
  /** 0 = off. */
  topK: number;
  /** The sample's seed (request seed + sample index), as u32. */
  seed: number;
}

export type FinishReason = 'stop' | 'length' | 'abort' | 'error';

export class Sequence {
  /** Prompt, then the generated tokens. */
  readonly tokens: number[];
  readonly promptLength: number;
  readonly generated: number[] = [];
  readonly logprobs: number[] = [];
  /** Tokens whose keys/values are in the cache. */
  computed = 0;
  /** One block table per KV space (Scheduler.spaces order). */
  readonly tables: BlockTable[] = [];
  finishReason: FinishReason | null = null;
  /** Preemptions so far (stats). */
  preemptions = 0;

  constructor(
    readonly id: number,
    /** Sequences of one prompt share a group (the request and its n samples). */
    readonly group: number,
    prompt: readonly number[],
    readonly sampling: SequenceSampling,
    readonly maxNewTokens: number,
    readonly stopTokens: ReadonlySet<number>,
  ) {
    this.tokens = [...prompt];
    this.promptLength = prompt.length;
  }

  /** True once every token but the last sampled one is computed: the sequence decodes one token per step. */
  get decoding(): boolean {
    return this.generated.length > 0 && this.computed === this.tokens.length - 1;
  }
}

/** One sequence's share of a step: `count` tokens from position `start` (rows of the step's query). */
export interface ScheduledChunk {
  seq: Sequence;
  start: number;
  count: number;
  /** The chunk ends at the sequence's last token: the step samples the sequence's next token from it. */
  sample: boolean;
}

export interface SchedulerOptions {
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  /** Longest sequence (prompt + generated). */
  maxModelLen: number;
}

export interface SchedulerStats {
  preemptions: number;
  steps: number;
  prefillTokens: number;
  decodeTokens: number;
  /** Shareable prompt blocks looked up in the prefix cache, and found. */
  prefixLookups: number;
  prefixHits: number;
}

export class Scheduler {
  readonly waiting: Sequence[] = [];
  /** In admission order: the newest (preempted first) is last. */
  readonly running: Sequence[] = [];
  readonly stats: SchedulerStats = { preemptions: 0, steps: 0, prefillTokens: 0, decodeTokens: 0, prefixLookups: 0, prefixHits: 0 };
  readonly blockSize: number;

  constructor(
    readonly spaces: readonly KvSpace[],
    readonly opts: SchedulerOptions,
  ) {
    for (const k of ['maxNumSeqs', 'maxNumBatchedTokens', 'maxModelLen'] as const) {
      if (!Number.isInteger(opts[k]) || opts[k] < 1) throw new Error(`Scheduler: ${k} must be a positive integer, got ${opts[k]}`);
    }
    if (spaces.length === 0) throw new Error('Scheduler: no KV space');
    this.blockSize = spaces[0]!.blocks.blockSize;
    if (spaces.some((sp) => sp.blocks.blockSize !== this.blockSize)) throw new Error('Scheduler: the KV spaces have different block sizes');
  }

  add(seq: Sequence): void {
    while (seq.tables.length < this.spaces.length) seq.tables.push({ blocks: [], hashes: [] });
    this.waiting.push(seq);
  }

  /** Blocks held by sequences, over all spaces. */
  get heldBlocks(): number {
    return this.spaces.reduce((n, sp) => n + sp.blocks.numHeldBlocks, 0);
  }

  get idle(): boolean {
    return this.waiting.length === 0 && this.running.length === 0;
  }

  /**
   * The next step's chunks: decodes first, then prefill chunks. Empty only when idle: when nothing fits, the newest
   * running sequence is preempted and the step planned again (a lone sequence always fits: the engine refuses
   * requests whose sequence the pools cannot hold).
   */
  schedule(): ScheduledChunk[] {
    for (;;) {
      const planned = this.plan();
      if (planned.length > 0 || this.running.length === 0) {
        this.stats.steps++;
        for (const c of planned) {
          if (c.seq.decoding) this.stats.decodeTokens += c.count;
          else this.stats.prefillTokens += c.count;
        }
        return planned;
      }
      this.preempt(this.running[this.running.length - 1]!);
    }
  }

  private plan(): ScheduledChunk[] {
    const planned: ScheduledChunk[] = [];
    const inStep = new Set<Sequence>();
    let budget = this.opts.maxNumBatchedTokens;
    // 1. Decodes, oldest first (running is in admission order); a sequence that cannot get a slot preempts the
    //    newest running ones (the end of the list, not yet planned), itself last.
    for (let i = 0; i < this.running.length && budget > 0; i++) {
      const s = this.running[i]!;
      if (!s.decoding) continue;
      let preemptedSelf = false;
      while (!this.grow(s, s.tokens.length)) {
        const victim = this.running[this.running.length - 1]!;
        this.preempt(victim);
        if (victim === s) {
          preemptedSelf = true;
          break;
        }
      }
      if (preemptedSelf) break; // s was the newest: nothing after it is left to decode
      planned.push({ seq: s, start: s.computed, count: 1, sample: true });
      inStep.add(s);
      budget--;
    }
    // 2. Prefill chunks of running sequences whose prompt (or recompute) is partly done.
    for (const s of this.running) {
      if (budget <= 0) break;
      if (s.decoding || inStep.has(s)) continue;
      const c = this.prefillChunk(s, budget);
      if (!c) break;
      planned.push(c);
      inStep.add(s);
      budget -= c.count;
    }
    // 3. Waiting sequences join while there is budget, a running slot and blocks. A sequence whose group has a
    //    running member still computing the shareable part of the prompt waits (it takes those blocks later).
    const prefilling = new Set<number>();
    for (const r of this.running) if (r.computed < this.shareableTokens(r)) prefilling.add(r.group);
    for (let i = 0; i < this.waiting.length && budget > 0 && this.running.length < this.opts.maxNumSeqs; ) {
      const s = this.waiting[i]!;
      if (prefilling.has(s.group)) {
        i++;
        continue;
      }
      s.computed = this.acquireCachedPrefix(s);
      const c = this.prefillChunk(s, budget);
      if (!c) {
        this.releaseAll(s);
        s.computed = 0;
        break; // no blocks: wait for running sequences to finish
      }
      this.waiting.splice(i, 1);
      this.running.push(s);
      if (s.computed < this.shareableTokens(s)) prefilling.add(s.group);
      planned.push(c);
      budget -= c.count;
    }
    return planned;
  }

  /**
   * After the step ran: chunks' tokens are computed, sampled tokens appended (`sampled[i]` for the i-th chunk with
   * sample = true). Returns the sequences that finished (they have left the running set, their blocks released).
   */
  complete(chunks: readonly ScheduledChunk[], sampled: readonly { token: number; logprob: number }[]): Sequence[] {
    const finished: Sequence[] = [];
    let k = 0;
    for (const c of chunks) {
      const s = c.seq;
      s.computed = c.start + c.count;
      this.spaces.forEach((sp, i) => {
        sp.blocks.registerComputed(s.tables[i]!, s.tokens, s.computed);
        // The next query (position s.computed) reads keys from s.computed - window + 1 on.
        if (sp.window > 0) sp.blocks.releaseBefore(s.tables[i]!, s.computed - sp.window + 1);
      });
      if (!c.sample) continue;
      const r = sampled[k++];
      if (!r) throw new Error(`Scheduler.complete: ${k} sampled tokens for more sampling chunks`);
      s.tokens.push(r.token);
      s.generated.push(r.token);
      s.logprobs.push(r.logprob);
      if (s.stopTokens.has(r.token)) s.finishReason = 'stop';
      else if (s.generated.length >= s.maxNewTokens || s.tokens.length >= this.opts.maxModelLen) s.finishReason = 'length';
      if (s.finishReason) {
        this.remove(s);
        finished.push(s);
      }
    }
    if (k !== sampled.length) throw new Error(`Scheduler.complete: ${sampled.length} sampled tokens for ${k} sampling chunks`);
    return finished;
  }

  /**
   * The step after `chunks`, planned while they run (before their sampled tokens are known), or null when it cannot
   * be known yet: it must be the step schedule() would plan once they complete with no sequence ending, i.e. every
   * running sequence decoding in running order, none joining (nothing waits) and none ending by length at `chunks`
   * (a stop token is only seen after the step: the engine then drops that sequence's row of the planned step), and
   * one more position must fit every table without preempting. Each sequence's tables grow by that position; the
   * chunks start at its next position, whose token is the one `chunks` sample.
   */
  planAhead(chunks: readonly ScheduledChunk[]): ScheduledChunk[] | null {
    if (this.waiting.length > 0 || chunks.length !== this.running.length) return null;
    for (let i = 0; i < chunks.length; i++) {
      const c = chunks[i]!;
      const s = c.seq;
      if (s !== this.running[i] || !c.sample || c.count !== 1 || c.start !== s.tokens.length - 1) return null;
      if (s.generated.length + 1 >= s.maxNewTokens || s.tokens.length + 1 >= this.opts.maxModelLen) return null;
    }
    const bs = this.blockSize;
    for (let i = 0; i < this.spaces.length; i++) {
      let need = 0;
      for (const c of chunks) need += Math.max(0, Math.ceil((c.seq.tokens.length + 1) / bs) - c.seq.tables[i]!.blocks.length);
      if (need > this.spaces[i]!.blocks.numFreeBlocks) return null;
    }
    for (const c of chunks) this.grow(c.seq, c.seq.tokens.length + 1);
    this.stats.steps++;
    this.stats.decodeTokens += chunks.length;
    return chunks.map((c) => ({ seq: c.seq, start: c.seq.tokens.length, count: 1, sample: true }));
  }

  /** Removes a sequence wherever it is (finished, aborted or failed), releasing its blocks. */
  remove(s: Sequence): void {
    const r = this.running.indexOf(s);
    if (r >= 0) this.running.splice(r, 1);
    const w = this.waiting.indexOf(s);
    if (w >= 0) this.waiting.splice(w, 1);
    this.releaseAll(s);
  }

  /**
   * The next prefill chunk of s: up to `budget` tokens, fewer when the pools cannot hold them all (growing its
   * tables), or null when not even one token fits.
   */
  private prefillChunk(s: Sequence, budget: number): ScheduledChunk | null {
    let count = Math.min(s.tokens.length - s.computed, budget);
    for (let i = 0; i < this.spaces.length; i++) {
      const m = this.spaces[i]!.blocks;
      count = Math.min(count, (s.tables[i]!.blocks.length + m.numFreeBlocks) * this.blockSize - s.computed);
    }
    if (count < 1 || !this.grow(s, s.computed + count)) return null;
    return { seq: s, start: s.computed, count, sample: s.computed + count === s.tokens.length };
  }

  /** Grows every table of s to hold `tokens` positions, or none of them (false) when a pool is short. */
  private grow(s: Sequence, tokens: number): boolean {
    const bs = this.blockSize;
    for (let i = 0; i < this.spaces.length; i++) {
      if (Math.ceil(tokens / bs) - s.tables[i]!.blocks.length > this.spaces[i]!.blocks.numFreeBlocks) return false;
    }
    this.spaces.forEach((sp, i) => sp.blocks.ensureCapacity(s.tables[i]!, tokens));
    return true;
  }

  /**
   * Starts s's tables with the longest prompt prefix every space has cached (a sliding space: the blocks inside
   * the window of the first position to compute); returns the tokens that are then computed.
   */
  private acquireCachedPrefix(s: Sequence): number {
    const bs = this.blockSize;
    const keys = this.spaces[0]!.blocks.prefixKeys(s.tokens);
    let k = 0;
    while (k < keys.length && this.spaces.every((sp) => sp.window > 0 || sp.blocks.isCached(keys[k]!))) k++;
    const windowStart = (sp: KvSpace, k: number): number => Math.max(0, Math.floor((k * bs - sp.window + 1) / bs));
    const windowsCached = (k: number): boolean =>
      this.spaces.every((sp) => {
        if (sp.window === 0) return true;
        for (let j = windowStart(sp, k); j < k; j++) if (!sp.blocks.isCached(keys[j]!)) return false;
        return true;
      });
    while (k > 0 && !windowsCached(k)) k--;
    this.stats.prefixLookups += keys.length;
    this.stats.prefixHits += k;
    this.spaces.forEach((sp, i) => sp.blocks.acquireCached(s.tables[i]!, keys, sp.window > 0 ? windowStart(sp, k) : 0, k));
    return k * bs;
  }

  private releaseAll(s: Sequence): void {
    this.spaces.forEach((sp, i) => sp.blocks.release(s.tables[i]!));
  }

  /** Tokens of s's prompt in full blocks before the block of its last prompt token: what siblings can share. */
  private shareableTokens(s: Sequence): number {
    const bs = this.blockSize;
    return Math.floor((s.promptLength - 1) / bs) * bs;
  }

  /** Frees s's blocks and puts it first in the queue; it recomputes prompt + generated tokens when it rejoins. */
  private preempt(s: Sequence): void {
    this.running.splice(this.running.lastIndexOf(s), 1);
    this.releaseAll(s);
    s.computed = 0;
    s.preemptions++;
    this.stats.preemptions++;
    this.waiting.unshift(s);
  }
}
