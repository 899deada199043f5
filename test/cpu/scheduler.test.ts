// Scheduler: decode-first steps within the token budget, chunked prefill, joining, stopping, preemption, and the
// n samples of a prompt sharing its blocks. A fake model: the "sampled" token is a function of the sequence.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BlockManager } from '../../src/inference/block-manager.ts';
import { Scheduler, Sequence, type KvSpace, type ScheduledChunk } from '../../src/inference/scheduler.ts';

/** One pool for all layers (window 0). */
const one = (numBlocks: number, blockSize: number): KvSpace[] => [{ blocks: new BlockManager({ numBlocks, blockSize }), window: 0 }];

const greedy = { temperature: 0, topP: 1, topK: 0, seed: 0 };
let nextId = 0;
function mkSeq(prompt: number[], maxNew: number, group = nextId, stop: number[] = []): Sequence {
  return new Sequence(nextId++, group, prompt, greedy, maxNew, new Set(stop));
}

/** Runs one step with a fake sampler (next token = 100 + tokens so far), checking the chunks' invariants. */
function runStep(s: Scheduler): { chunks: ScheduledChunk[]; finished: Sequence[] } {
  const chunks = s.schedule();
  const tokens = chunks.reduce((a, c) => a + c.count, 0);
  assert.ok(tokens <= s.opts.maxNumBatchedTokens, 'within the token budget');
  for (const c of chunks) {
    assert.equal(c.start, c.seq.computed, 'a chunk starts at the first uncomputed token');
    assert.ok(c.seq.tables.every((t) => t.blocks.length * s.blockSize >= c.start + c.count), 'its slots are allocated');
  }
  const sampled = chunks.filter((c) => c.sample).map((c) => ({ token: 100 + c.seq.tokens.length, logprob: -1 }));
  return { chunks, finished: s.complete(chunks, sampled) };
}

function drain(s: Scheduler, maxSteps = 1000): number {
  let steps = 0;
  while (!s.idle) {
    runStep(s);
    assert.ok(++steps < maxSteps, 'terminates');
  }
  return steps;
}

test('prompts prefill in chunks within the budget, then decode one token per step until max new tokens', () => {
  const s = new Scheduler(one(64, 4), { maxNumSeqs: 8, maxNumBatchedTokens: 6, maxModelLen: 100 });
  const a = mkSeq([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 3);
  const b = mkSeq([1, 2, 3], 5);
  s.add(a);
  s.add(b);
  const st1 = runStep(s);
  assert.deepEqual(st1.chunks.map((c) => [c.seq.id, c.start, c.count, c.sample]), [[a.id, 0, 6, false]]);
  const st2 = runStep(s);
  // a finishes its prompt (4 tokens) and samples; b joins with the 2 tokens left of the budget.
  assert.deepEqual(st2.chunks.map((c) => [c.seq.id, c.start, c.count, c.sample]), [[a.id, 6, 4, true], [b.id, 0, 2, false]]);
  const st3 = runStep(s);
  assert.deepEqual(st3.chunks.map((c) => [c.seq.id, c.start, c.count, c.sample]), [[a.id, 10, 1, true], [b.id, 2, 1, true]]);
  drain(s);
  assert.deepEqual(a.generated, [110, 111, 112]);
  assert.equal(a.finishReason, 'length');
  assert.equal(b.generated.length, 5);
  assert.equal(s.heldBlocks, 0, 'finished sequences free their blocks');
});

test('stop tokens and the model length end sequences; waiting ones join as running ones leave (max_num_seqs)', () => {
  const s = new Scheduler(one(64, 4), { maxNumSeqs: 1, maxNumBatchedTokens: 64, maxModelLen: 8 });
  const a = mkSeq([1, 2, 3], 10, undefined, [105]); // samples 103, 104, 105 (stop)
  const b = mkSeq([1, 2, 3, 4, 5], 10); // model length 8: 3 new tokens
  s.add(a);
  s.add(b);
  const first = runStep(s);
  assert.deepEqual(first.chunks.map((c) => c.seq.id), [a.id], 'one running sequence at most');
  drain(s);
  assert.deepEqual(a.generated, [103, 104, 105]);
  assert.equal(a.finishReason, 'stop');
  assert.deepEqual(b.generated, [105, 106, 107]);
  assert.equal(b.finishReason, 'length');
});

test('out of blocks, the newest sequence is preempted and recomputed later with the same tokens', () => {
  const run = (numBlocks: number): { gen: number[][]; preemptions: number } => {
    const s = new Scheduler(one(numBlocks, 2), { maxNumSeqs: 8, maxNumBatchedTokens: 64, maxModelLen: 100 });
    const seqs = [mkSeq([1, 2, 3], 6), mkSeq([4, 5], 7), mkSeq([6, 7, 8, 9], 5)];
    for (const q of seqs) s.add(q);
    drain(s);
    assert.equal(s.heldBlocks, 0);
    return { gen: seqs.map((q) => q.generated), preemptions: s.stats.preemptions };
  };
  const roomy = run(64);
  const tight = run(6); // the longest sequence needs 5 blocks alone
  assert.equal(roomy.preemptions, 0);
  assert.ok(tight.preemptions > 0, 'the tiny pool preempts');
  assert.deepEqual(tight.gen, roomy.gen);
});

test('the n samples of a prompt: one prefills it, the others take its full blocks from the cache', () => {
  const bm = new BlockManager({ numBlocks: 64, blockSize: 4 });
  const s = new Scheduler([{ blocks: bm, window: 0 }], { maxNumSeqs: 8, maxNumBatchedTokens: 64, maxModelLen: 100 });
  const prompt = Array.from({ length: 10 }, (_, i) => i + 1);
  const group = 1000;
  const samples = [0, 1, 2].map(() => mkSeq(prompt, 4, group));
  for (const q of samples) s.add(q);
  const st1 = runStep(s);
  assert.deepEqual(st1.chunks.map((c) => [c.seq.id, c.count]), [[samples[0]!.id, 10]], 'siblings wait for the prompt');
  const st2 = runStep(s);
  // Siblings compute only the tokens after the last full block that ends before the prompt's last token (8, 9).
  assert.deepEqual(st2.chunks.map((c) => [c.seq.id, c.start, c.count]), [[samples[0]!.id, 10, 1], [samples[1]!.id, 8, 2], [samples[2]!.id, 8, 2]]);
  assert.equal(samples[1]!.tables[0]!.blocks[0], samples[0]!.tables[0]!.blocks[0]);
  assert.equal(bm.refCount(samples[0]!.tables[0]!.blocks[1]!), 3);
  drain(s);
  assert.equal(bm.numHeldBlocks, 0);
});

test('bad options are named', () => {
  assert.throws(() => new Scheduler(one(1, 1), { maxNumSeqs: 0, maxNumBatchedTokens: 1, maxModelLen: 1 }), /maxNumSeqs must be a positive integer, got 0/);
});

/** A full-attention pool and a sliding-window pool (window 4), blocks of 2 tokens. */
const twoSpaces = (full: number, sliding: number): KvSpace[] => [
  { blocks: new BlockManager({ numBlocks: full, blockSize: 2 }), window: 0 },
  { blocks: new BlockManager({ numBlocks: sliding, blockSize: 2 }), window: 4 },
];

test('a sliding-window space keeps only the blocks inside the window; results are unchanged', () => {
  const run = (spaces: KvSpace[], budget: number): { gen: number[][]; maxSliding: number } => {
    const s = new Scheduler(spaces, { maxNumSeqs: 8, maxNumBatchedTokens: budget, maxModelLen: 100 });
    const seqs = [mkSeq([1, 2, 3, 4, 5, 6, 7], 12), mkSeq([8, 9], 15), mkSeq([1, 2, 3], 9)];
    for (const q of seqs) s.add(q);
    let maxSliding = 0;
    let steps = 0;
    while (!s.idle) {
      const { chunks } = runStep(s);
      for (const c of chunks) {
        if (!c.seq.decoding || !spaces[1]) continue;
        // A decoding sequence holds the blocks of positions computed-3 .. computed: at most 3 blocks of 2.
        const held = spaces[1].blocks.heldIn(c.seq.tables[1]!);
        maxSliding = Math.max(maxSliding, held);
      }
      assert.ok(++steps < 1000);
    }
    for (const sp of spaces) assert.equal(sp.blocks.numHeldBlocks, 0);
    return { gen: seqs.map((q) => q.generated), maxSliding };
  };
  const ref = run(one(64, 2), 64);
  const two = run(twoSpaces(64, 64), 64);
  assert.deepEqual(two.gen, ref.gen);
  assert.ok(two.maxSliding <= 3, `a decoding sequence held ${two.maxSliding} sliding blocks`);
  // A sliding pool of 4 blocks: prefill chunks shrink to fit and sequences take turns (preemption); same tokens.
  const tiny = run(twoSpaces(64, 4), 64);
  assert.deepEqual(tiny.gen, ref.gen);
});

test('siblings take the window blocks of a shared prompt from the sliding cache', () => {
  const spaces = twoSpaces(64, 64);
  const s = new Scheduler(spaces, { maxNumSeqs: 8, maxNumBatchedTokens: 64, maxModelLen: 100 });
  const prompt = Array.from({ length: 11 }, (_, i) => i + 1);
  const [a, b] = [0, 1].map(() => mkSeq(prompt, 3, 2000));
  s.add(a!);
  s.add(b!);
  runStep(s); // a prefills 11 tokens
  const st = runStep(s);
  // b computes only position 10 (blocks 0-4 are shareable); its sliding table holds the window's blocks 3, 4
  // (positions 6..9; the query at 10 reads 7..10) by reference and placeholders before.
  assert.deepEqual(st.chunks.map((c) => [c.seq.id, c.start, c.count]), [[a!.id, 11, 1], [b!.id, 10, 1]]);
  assert.deepEqual(b!.tables[1]!.blocks.slice(0, 3), [-1, -1, -1]);
  assert.equal(b!.tables[1]!.blocks[4], a!.tables[1]!.blocks[4]);
  assert.equal(b!.tables[0]!.blocks[0], a!.tables[0]!.blocks[0]);
});
