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
  for (let i = 0; i < eager.out.length; i++) {
    const a = eager.out[i]!.samples[0]!;
    const b = graph.out[i]!.samples[0]!;
    assert.equal(b.finishReason, 'length');
    assert.deepEqual(b.tokens, a.tokens, `request ${i}: tokens`);
    assert.deepEqual(b.logprobs, a.logprobs, `request ${i}: log-probs`);
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
