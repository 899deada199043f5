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
import { BlockManager, type BlockTable } from './block-manager.ts';

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
  readonly table: BlockTable = { blocks: [], hashes: [] };
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
}

export class Scheduler {
  readonly waiting: Sequence[] = [];
  /** In admission order: the newest (preempted first) is last. */
  readonly running: Sequence[] = [];
  readonly stats: SchedulerStats = { preemptions: 0, steps: 0, prefillTokens: 0, decodeTokens: 0 };

  constructor(
    readonly blocks: BlockManager,
    readonly opts: SchedulerOptions,
  ) {
    for (const k of ['maxNumSeqs', 'maxNumBatchedTokens', 'maxModelLen'] as const) {
      if (!Number.isInteger(opts[k]) || opts[k] < 1) throw new Error(`Scheduler: ${k} must be a positive integer, got ${opts[k]}`);
    }
  }

  add(seq: Sequence): void {
    this.waiting.push(seq);
  }

  get idle(): boolean {
    return this.waiting.length === 0 && this.running.length === 0;
  }

  /**
   * The next step's chunks: decodes first, then prefill chunks. Empty only when idle (a non-empty queue that cannot
   * be admitted into an empty running set is a pool too small for its head: an error, see admission checks).
   */
  schedule(): ScheduledChunk[] {
    const planned: ScheduledChunk[] = [];
    const inStep = new Set<Sequence>();
    let budget = this.opts.maxNumBatchedTokens;
    // 1. Decodes, oldest first (running is in admission order); a sequence that cannot get a slot preempts the
    //    newest running ones (the end of the list, not yet planned), itself last.
    for (let i = 0; i < this.running.length && budget > 0; i++) {
      const s = this.running[i]!;
      if (!s.decoding) continue;
      let preemptedSelf = false;
      while (!this.blocks.ensureCapacity(s.table, s.tokens.length)) {
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
      const { table, cachedTokens } = this.blocks.acquirePrefix(s.tokens);
      s.table.blocks.push(...table.blocks);
      s.table.hashes.push(...table.hashes);
      s.computed = cachedTokens;
      const c = this.prefillChunk(s, budget);
      if (!c) {
        this.blocks.release(s.table);
        s.computed = 0;
        break; // no blocks: wait for running sequences to finish
      }
      this.waiting.splice(i, 1);
      this.running.push(s);
      if (s.computed < this.shareableTokens(s)) prefilling.add(s.group);
      planned.push(c);
      budget -= c.count;
    }
    this.stats.steps++;
    for (const c of planned) {
      if (c.seq.decoding) this.stats.decodeTokens += c.count;
      else this.stats.prefillTokens += c.count;
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
      this.blocks.registerComputed(s.table, s.tokens, s.computed);
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

  /** Removes a sequence wherever it is (finished, aborted or failed), releasing its blocks. */
  remove(s: Sequence): void {
    const r = this.running.indexOf(s);
    if (r >= 0) this.running.splice(r, 1);
    const w = this.waiting.indexOf(s);
    if (w >= 0) this.waiting.splice(w, 1);
    this.blocks.release(s.table);
  }

  /** The next prefill chunk of s within `budget` tokens (growing its table), or null when no blocks are free. */
  private prefillChunk(s: Sequence, budget: number): ScheduledChunk | null {
    const count = Math.min(s.tokens.length - s.computed, budget);
    if (!this.blocks.ensureCapacity(s.table, s.computed + count)) return null;
    return { seq: s, start: s.computed, count, sample: s.computed + count === s.tokens.length };
  }

  /** Tokens of s's prompt in full blocks before the block of its last prompt token: what siblings can share. */
  private shareableTokens(s: Sequence): number {
    const bs = this.blocks.blockSize;
    return Math.floor((s.promptLength - 1) / bs) * bs;
  }

  /** Frees s's blocks and puts it first in the queue; it recomputes prompt + generated tokens when it rejoins. */
  private preempt(s: Sequence): void {
    this.running.splice(this.running.lastIndexOf(s), 1);
    this.blocks.release(s.table);
    s.computed = 0;
    s.preemptions++;
    this.stats.preemptions++;
    this.waiting.unshift(s);
  }
}
