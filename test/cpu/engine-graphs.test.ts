// The engine's graph path (enforceEager: false) on the CPU: decode-only steps run padded to a bucket over static
// buffers (src/inference/cuda-graphs.ts; a CUDA device captures and replays them, the CPU runs them eagerly), so the
// padding rows (slot -1: no KV written; a context of 1 token in block 0; greedy) and the static layout are checked
// here: tokens and log-probs equal the eager engine's, with sequences finishing mid-run and requests joining.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadModel } from '../../src/model/index.ts';
import type { GptOssModel } from '../../src/model/gptoss.ts';
import { createEngine, type GenerateRequest, type GenerateResponse } from '../../src/inference/engine.ts';
import { blockTableWidth, graphBucket, isDecodeStep, largestGraphBucket } from '../../src/inference/cuda-graphs.ts';
import { FIXTURE_DIR } from '../helpers/fixtures.ts';

let modelP: Promise<GptOssModel> | null = null;
const fixture = (): Promise<GptOssModel> => (modelP ??= loadModel(FIXTURE_DIR, { device: 'cpu' }));

function prompts(lengths: number[], seed = 777): number[][] {
  let s = seed;
  const rnd = (): number => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) >>> 8) % 250;
  return lengths.map((n) => Array.from({ length: n }, rnd));
}

/** Two waves: 3 requests (padded to 4), then 2 more joining while they run; greedy and sampled rows mixed. */
async function run(enforceEager: boolean): Promise<{ out: GenerateResponse[]; stats: ReturnType<Awaited<ReturnType<typeof createEngine>>['stats']> }> {
  const model = await fixture();
  const engine = await createEngine(model, { blockSize: 4, numBlocks: 96, maxNumSeqs: 8, maxNumBatchedTokens: 32, enforceEager });
  const ps = prompts([5, 9, 3, 7, 12]);
  const maxNew = [6, 21, 13, 9, 4];
  const req = (i: number): GenerateRequest => ({ prompt: ps[i]!, maxNewTokens: maxNew[i]!, temperature: i % 2 ? 0.8 : 0, topK: i === 3 ? 5 : undefined, seed: 100 + i, stopTokens: [] });
  const first = engine.generate([0, 1, 2].map(req));
  // Join after a few steps of the first wave.
  const second = new Promise<GenerateResponse[]>((res) => setTimeout(() => res(engine.generate([3, 4].map(req))), 0));
  const out = [...(await first), ...(await second)];
  const stats = engine.stats();
  engine.dispose();
  return { out, stats };
}

test('graph path (CPU: eager over the padded static buffers) == eager engine: tokens and log-probs', async () => {
  const eager = await run(true);
  const graph = await run(false);
  assert.equal(eager.stats.graphs, null);
  const g = graph.stats.graphs!;
  assert.ok(g.replays > 10, `decode steps through the graph path: ${g.replays}`);
  assert.ok(g.eager > 0, 'prefill steps stay eager');
  assert.equal(g.captures, 0, 'nothing is captured on the CPU');
  // The graph path runs decode steps ahead (the engine launches step N + 1 before reading step N back, the tokens fed
  // from step N's outputs); the eager engine never does.
  assert.equal(eager.stats.stepsAhead, 0);
  assert.ok(graph.stats.stepsAhead > 5, `steps run ahead: ${graph.stats.stepsAhead}`);
  for (let i = 0; i < eager.out.length; i++) {
    const a = eager.out[i]!.samples[0]!;
    const b = graph.out[i]!.samples[0]!;
    assert.equal(b.finishReason, 'length');
    assert.deepEqual(b.tokens, a.tokens, `request ${i}: tokens`);
    assert.deepEqual(b.logprobs, a.logprobs, `request ${i}: log-probs`);
  }
});

test('running a step ahead: stop tokens mid-flight drop the planned rows (the eager tokens), a dispose mid-flight aborts cleanly', async () => {
  const model = await fixture();
  const ps = prompts([6, 11, 4, 8], 4242);
  const req = (i: number, stopTokens: number[] = []): GenerateRequest => ({ prompt: ps[i]!, maxNewTokens: 18 + 3 * i, temperature: i % 2 ? 0.9 : 0, seed: 300 + i, stopTokens });
  // The tokens without stops: stop tokens are then taken from the middle of two sequences' outputs.
  const probe = await createEngine(model, { blockSize: 4, numBlocks: 96, maxNumSeqs: 8, maxNumBatchedTokens: 32, enforceEager: true });
  const free = await probe.generate([0, 1, 2, 3].map((i) => req(i)));
  probe.dispose();
  const stops = [[free[0]!.samples[0]!.tokens[5]!], [], [free[2]!.samples[0]!.tokens[9]!], []];
  const runWith = async (enforceEager: boolean) => {
    const engine = await createEngine(model, { blockSize: 4, numBlocks: 96, maxNumSeqs: 8, maxNumBatchedTokens: 32, enforceEager });
    const out = await engine.generate([0, 1, 2, 3].map((i) => req(i, stops[i])));
    const stats = engine.stats();
    engine.dispose();
    return { out, stats };
  };
  const eager = await runWith(true);
  const graph = await runWith(false);
  assert.ok(graph.stats.stepsAhead > 5, `steps run ahead: ${graph.stats.stepsAhead}`);
  assert.ok(graph.stats.rowsDropped >= 2, `the stopped sequences' planned rows were dropped: ${graph.stats.rowsDropped}`);
  for (let i = 0; i < 4; i++) {
    const a = eager.out[i]!.samples[0]!, b = graph.out[i]!.samples[0]!;
    assert.equal(b.finishReason, a.finishReason, `request ${i}: finish reason`);
    assert.deepEqual(b.tokens, a.tokens, `request ${i}: tokens`);
    assert.deepEqual(b.logprobs, a.logprobs, `request ${i}: log-probs`);
  }
  assert.equal(eager.out[0]!.samples[0]!.finishReason, 'stop');
  assert.equal(eager.out[2]!.samples[0]!.finishReason, 'stop');
  // No block is left held: the dropped rows' sequences released theirs.
  assert.equal(graph.stats.heldBlocks, 0);
  // Disposing the engine from a token callback, with a step launched ahead: every sample ends 'abort' with a prefix
  // of its tokens, and nothing throws.
  const engine = await createEngine(model, { blockSize: 4, numBlocks: 96, maxNumSeqs: 8, maxNumBatchedTokens: 32, enforceEager: false });
  let seen = 0;
  const aborted = await engine.generate([0, 1, 2, 3].map((i) => req(i)), {
    onToken: () => {
      if (++seen === 20) engine.dispose();
    },
  });
  for (let i = 0; i < 4; i++) {
    const b = aborted[i]!.samples[0]!;
    assert.equal(b.finishReason, 'abort', `request ${i}`);
    assert.deepEqual(b.tokens, free[i]!.samples[0]!.tokens.slice(0, b.tokens.length), `request ${i}: a prefix of the tokens`);
  }
});

test('graph buckets, block-table widths and decode-step detection', () => {
  assert.deepEqual([1, 2, 3, 4, 5, 64, 65, 512].map(graphBucket), [1, 2, 4, 4, 8, 64, 128, 512]);
  assert.equal(graphBucket(513), null);
  assert.deepEqual([1, 16, 17, 100, 8192].map(blockTableWidth), [16, 16, 32, 128, 8192]);
  // MoE host reads from N = bucket·topK >= 128·E routed rows: gpt-oss-20b (E 32, top-4) captures up to 512,
  // gpt-oss-tiny-large (E 8, top-4) up to 128, the fixture (E 4, top-2) up to 128; and never past maxNumSeqs' bucket.
  assert.equal(largestGraphBucket(32, 4, 512), 512);
  assert.equal(largestGraphBucket(32, 4, 10_000), 512);
  assert.equal(largestGraphBucket(8, 4, 512), 128);
  assert.equal(largestGraphBucket(4, 2, 512), 128);
  assert.equal(largestGraphBucket(32, 4, 3), 4);
  const step = (B: number, N: number) => ({
    tokens: new Int32Array(N),
    positions: new Int32Array(N),
    slots: [new Int32Array(N)],
    queryStarts: Int32Array.from({ length: B + 1 }, (_, i) => Math.min(i, N)),
    contextLens: new Int32Array(B),
    blockTables: [new Int32Array(B)],
    maxBlocksPerSeq: 1,
    sampleRows: Int32Array.from({ length: B }, (_, i) => i),
    temperature: new Float32Array(B),
    topP: new Float32Array(B),
    topK: new Int32Array(B),
    seeds: new Int32Array(B),
    counters: new Int32Array(B),
  });
  assert.equal(isDecodeStep(step(3, 3)), true);
  const mixed = step(2, 3);
  mixed.queryStarts = Int32Array.from([0, 2, 3]);
  mixed.sampleRows = Int32Array.from([1, 2]);
  assert.equal(isDecodeStep(mixed), false);
});
