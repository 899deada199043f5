// temporary-cpu-paged-ops.ts: TEMPORARY stand-ins for helper E1's native ops `pagedAttention`
// (src/ops/paged-attention.ts) and `sampleRows` (src/ops/sampling.ts), with their exact TypeScript signatures, so
// the engine is written and tested against the contract before the ops are merged. Delete this file and switch the
// two imports in src/inference/paged-kv-cache.ts and src/inference/model-runner.ts once main has the ops.
//
// pagedAttention here is a host loop (reads the pools back each call: CPU tests only). sampleRows runs the existing
// `sample` op once per row with that row's parameters, its seed and its counter as the step: row-independent on
// any device, but one op call per row.
import { Tensor } from '../tensor.ts';
import { sample } from '../ops/sampling.ts';
import { disposeAll } from '../model/tensor-helpers.ts';

/** Paged attention (see engine-spec): q bf16 [N, Hq, D]; pools bf16 [numBlocks, blockSize, Hkv, D]; out bf16 [N, Hq, D]. */
export function pagedAttention(
  q: Tensor,
  kPool: Tensor,
  vPool: Tensor,
  meta: { blockTables: Tensor; contextLens: Tensor; queryStarts: Tensor },
  opts: { window: number; sinks: Tensor; scale?: number },
): Tensor {
  if (q.device !== 'cpu') throw new Error(`pagedAttention (temporary CPU stand-in): q is on ${q.device}; the CUDA op comes with src/ops/paged-attention.ts`);
  const [N, Hq, D] = q.shape as [number, number, number];
  const [, blockSize, Hkv] = kPool.shape as [number, number, number, number];
  const G = Hq / Hkv;
  const scale = opts.scale ?? 1 / Math.sqrt(D);
  const Q = q.toFloat32(), K = kPool.toFloat32(), V = vPool.toFloat32(), sinks = opts.sinks.toFloat32();
  const tables = meta.blockTables.toInt32(), ctx = meta.contextLens.toInt32(), starts = meta.queryStarts.toInt32();
  const B = ctx.length;
  const maxBlocks = meta.blockTables.shape[1]!;
  const out = new Float32Array(N * Hq * D);
  const acc = new Float32Array(D);
  for (let b = 0; b < B; b++) {
    const qlen = starts[b + 1]! - starts[b]!;
    for (let r = 0; r < qlen; r++) {
      const row = starts[b]! + r;
      const i = ctx[b]! - qlen + r; // this row's position
      const lo = opts.window > 0 ? Math.max(0, i - opts.window + 1) : 0;
      for (let h = 0; h < Hq; h++) {
        const kvh = Math.floor(h / G);
        const qo = (row * Hq + h) * D;
        const s = new Float32Array(i - lo + 1);
        let mx = sinks[h]!;
        const slot = (j: number): number => (tables[b * maxBlocks + Math.floor(j / blockSize)]! * blockSize + (j % blockSize)) * Hkv + kvh;
        for (let j = lo; j <= i; j++) {
          const ko = slot(j) * D;
          let dot = 0;
          for (let d = 0; d < D; d++) dot += Q[qo + d]! * K[ko + d]!;
          s[j - lo] = dot * scale;
          mx = Math.max(mx, s[j - lo]!);
        }
        let sum = Math.exp(sinks[h]! - mx);
        acc.fill(0);
        for (let j = lo; j <= i; j++) {
          const p = Math.exp(s[j - lo]! - mx);
          sum += p;
          const vo = slot(j) * D;
          for (let d = 0; d < D; d++) acc[d]! += p * V[vo + d]!;
        }
        for (let d = 0; d < D; d++) out[qo + d] = acc[d]! / sum;
      }
    }
  }
  return Tensor.from(out, [N, Hq, D], { dtype: 'bf16', device: 'cpu' });
}

/** Per-row sampling (see engine-spec): logits f32 [B, V] -> tokens i32 [B], logprobs f32 [B]. */
export function sampleRows(
  logits: Tensor,
  params: { temperature: Tensor; topP: Tensor; topK: Tensor; seeds: Tensor; counters: Tensor },
): { tokens: Tensor; logprobs: Tensor } {
  const B = logits.shape[0]!;
  const temp = params.temperature.toFloat32(), topP = params.topP.toFloat32(), topK = params.topK.toInt32();
  const seeds = params.seeds.toInt32(), counters = params.counters.toInt32();
  const tokens = new Int32Array(B), logprobs = new Float32Array(B);
  for (let b = 0; b < B; b++) {
    const row = logits.slice(b, b + 1);
    const r = sample(row, { temperature: temp[b]!, topP: topP[b]!, topK: topK[b]!, seed: seeds[b]! >>> 0, step: counters[b]! });
    tokens[b] = r.tokens.toInt32()[0]!;
    logprobs[b] = r.logprobs.toFloat32()[0]!;
    disposeAll(row, r.tokens, r.logprobs);
  }
  return { tokens: Tensor.from(tokens, [B], { device: logits.device }), logprobs: Tensor.from(logprobs, [B], { device: logits.device, dtype: 'f32' }) };
}
