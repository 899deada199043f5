// bench/tp-head.ts: what the vocabulary-parallel LM head costs one rank of a tensor-parallel engine, against the
// replicated head it replaced (rank 0 alone computing the whole LM head and sampling), on one GPU.
//
//   npm run bench:tp-head [-- --tp 2,4,8] [--rows 1,8,64,256,512] [--json out.json] [--iters N]
//
// gpt-oss-20b shapes (hidden 2880, vocabulary 201,088), rows at temperature 1 (GRPO's sampling: no top-k/top-p):
//   replicated       logits [S, V] = rows · Wᵀ (f32) + sampleRows: the work on rank 0 of the replicated layout
//   vocab-parallel   logits [S, V/tp] = rows · W_rᵀ + sampleParts over the slice + combineSampleParts of tp parts:
//                    one rank's work (the all-gather between the last two, S·C·32 bytes per rank, is not timed)
//   top-p rows       the vocabulary-parallel path for rows with a threshold (top-p 0.9): the slice's logits, the
//                    gathered slices joined (concatColumns of [tp, S, V/tp]; the all-gather itself not timed) and
//                    sampleRows on rank 0, on two kinds of gathered rows, since the threshold search's cost depends
//                    on how the mass spreads: flat (every logit equal, 90% of the vocabulary in the nucleus: the worst
//                    case) and peaked (p ∝ rank^-2 over a fixed permutation of the vocabulary: a nucleus of a few
//                    tokens, like a trained model's confident rows; measured at S <= 64, the host builds the rows)
// A decode step waits for its slowest rank, so rank 0's head time is what each layout adds to the step.
import { writeFileSync } from 'node:fs';
import { native } from '../src/native.ts';
import { Tensor, cudaDeviceCount } from '../src/tensor.ts';
import { logits } from '../src/ops/logprob.ts';
import { concatColumns } from '../src/ops/elementwise.ts';
import { combineSampleParts, sampleParts, sampleRows, type SampleRowsParams } from '../src/ops/sampling.ts';
import { msPerCall } from './timing.ts';
import { randBits } from './random.ts';

function args() {
  const a = process.argv.slice(2);
  const get = (k: string) => {
    const i = a.indexOf(k);
    return i >= 0 ? a[i + 1] : undefined;
  };
  return { json: get('--json'), tp: get('--tp'), rows: get('--rows'), iters: Number(get('--iters') ?? 0) };
}

interface Row {
  tp: number;
  S: number;
  replicatedMs: number;
  vocabParallelMs: number;
  topPMs: number;
  /** The same on peaked rows (null above 64 rows). */
  topPPeakedMs: number | null;
  /** replicated / vocab-parallel. */
  speedup: number;
}

function params(S: number, topP: number, device: string): SampleRowsParams {
  return {
    temperature: Tensor.from(new Float32Array(S).fill(1), [S], { device }),
    topP: Tensor.from(new Float32Array(S).fill(topP), [S], { device }),
    topK: Tensor.zeros([S], { dtype: 'i32', device }),
    seeds: Tensor.from(Int32Array.from({ length: S }, (_, i) => 1000 + i), [S], { device }),
    counters: Tensor.from(Int32Array.from({ length: S }, (_, i) => i), [S], { device }),
  };
}

/** [tp, S, V/tp] f32: S copies of one peaked row (logit -2·ln(rank), rank from a fixed permutation), as the
 * gathered slices that concatColumns joins into [S, V]. */
function peakedSlices(tp: number, S: number, V: number, device: string): Tensor {
  const row = new Float32Array(V);
  for (let j = 0; j < V; j++) row[j] = -2 * Math.log(((j * 7919 + 13) % V) + 1);
  const w = V / tp;
  const f = new Float32Array(tp * S * w);
  for (let t = 0; t < tp; t++) for (let s = 0; s < S; s++) f.set(row.subarray(t * w, (t + 1) * w), (t * S + s) * w);
  return Tensor.from(f, [tp, S, w], { device });
}

function main() {
  const o = args();
  const gpu = native().features.cuda && cudaDeviceCount() > 0;
  const device = gpu ? 'cuda:0' : 'cpu';
  // Without a GPU: a small shape, so the script runs (and is checked) anywhere.
  const H = gpu ? 2880 : 64, V = gpu ? 201088 : 4096;
  const tps = (o.tp ?? '2,4,8').split(',').map(Number);
  const sizes = (o.rows ?? (gpu ? '1,8,64,256,512' : '1,8')).split(',').map(Number);
  const name = gpu ? native().ops.deviceName(0) : 'cpu';
  console.log(`tensor-parallel LM head + sampling on ${name}: hidden ${H}, vocabulary ${V}; one rank's work (collectives not timed)`);
  const time = (iters: number, fn: () => void): number => msPerCall(device, iters, fn);
  const head = Tensor.from(randBits(V * H, 1 / Math.sqrt(H), 3), [V, H], { dtype: 'bf16', device });
  const out: Row[] = [];
  for (const S of sizes) {
    const iters = o.iters || (gpu ? 50 : 2);
    const x = Tensor.from(randBits(S * H, 1, 5 + S), [S, H], { dtype: 'bf16', device });
    const plain = params(S, 1, device);
    const nucleus = params(S, 0.9, device);
    const replicatedMs = time(iters, () => {
      const lg = logits(x, head);
      const r = sampleRows(lg, plain);
      for (const t of [lg, r.tokens, r.logprobs]) t.dispose();
    });
    for (const tp of tps) {
      if (V % tp) throw new Error(`--tp ${tp} does not divide the vocabulary ${V}`);
      const slice = head.slice(0, V / tp); // rank 0's rows: a view, the same cost as any rank's
      // The all-gathered parts, as the combine sees them (their values do not change its cost).
      const probe = sampleParts(logits(x, slice), plain, { vocabStart: 0, vocabSize: V });
      const gathered = Tensor.zeros([tp, ...probe.shape], { dtype: 'u8', device });
      probe.dispose();
      const vocabParallelMs = time(iters, () => {
        const lg = logits(x, slice);
        const parts = sampleParts(lg, plain, { vocabStart: 0, vocabSize: V });
        const r = combineSampleParts(gathered, plain, V);
        for (const t of [lg, parts, r.tokens, r.logprobs]) t.dispose();
      });
      const topPTime = (slices: Tensor) => {
        const ms = time(iters, () => {
          const lg = logits(x, slice);
          const whole = concatColumns(slices, V);
          const r = sampleRows(whole, nucleus);
          for (const t of [lg, whole, r.tokens, r.logprobs]) t.dispose();
        });
        slices.dispose();
        return ms;
      };
      const topPMs = topPTime(Tensor.zeros([tp, S, V / tp], { dtype: 'f32', device }));
      const topPPeakedMs = S <= 64 ? topPTime(peakedSlices(tp, S, V, device)) : null;
      const row: Row = { tp, S, replicatedMs, vocabParallelMs, topPMs, topPPeakedMs, speedup: replicatedMs / vocabParallelMs };
      out.push(row);
      console.log(`  S ${S} tp ${tp}: replicated ${replicatedMs.toFixed(3)} ms, vocab-parallel ${vocabParallelMs.toFixed(3)} ms (${row.speedup.toFixed(2)}x), top-p rows ${topPMs.toFixed(3)} ms flat, ${topPPeakedMs?.toFixed(3) ?? '-'} ms peaked`);
      for (const t of [slice, gathered]) t.dispose();
    }
    for (const t of [x, ...Object.values(plain), ...Object.values(nucleus)]) t.dispose();
  }
  head.dispose();

  console.log('\n| rows | tp | replicated head ms (rank 0) | vocab-parallel head ms (one rank) | replicated / vocab-parallel | top-p rows ms, flat (rank 0) | top-p rows ms, peaked |');
  console.log('| --- | --- | --- | --- | --- | --- | --- |');
  for (const r of out) {
    console.log(`| ${r.S} | ${r.tp} | ${r.replicatedMs.toFixed(3)} | ${r.vocabParallelMs.toFixed(3)} | ${r.speedup.toFixed(2)}x | ${r.topPMs.toFixed(3)} | ${r.topPPeakedMs?.toFixed(3) ?? '-'} |`);
  }
  const weightGB = (tp: number) => (2 * 2 * V * H) / tp / 1e9;
  console.log(`\nembedding + LM head per rank: replicated ${weightGB(1).toFixed(2)} GB; vocab-parallel ${tps.map((tp) => `tp ${tp}: ${weightGB(tp).toFixed(2)} GB`).join(', ')}`);
  if (o.json) {
    writeFileSync(o.json, JSON.stringify({ device: name, hidden: H, vocab: V, rows: out, weightGBPerRank: Object.fromEntries([1, ...tps].map((tp) => [tp, weightGB(tp)])) }, null, 1));
    console.log(`wrote ${o.json}`);
  }
}

main();
