// sampling-rows.ts: per-row sampling parameters for sampleRows tests (CPU reference and CUDA parity), one
// description per row turned into the [B] tensors sampleRows takes.
import { Tensor } from '../../src/tensor.ts';
import { combineSampleParts, sampleParts } from '../../src/ops/sampling.ts';

/** One batch row's sampling parameters and noise key (seed, counter). */
export interface SamplingRow {
  temperature: number;
  topP: number;
  topK: number;
  seed: number;
  counter: number;
}

/**
 * sampleRows' per-row tensors on `device`: f32 temperature/topP, i32 topK/seeds/counters, all [B]. Seeds of 2^31 and
 * above wrap to negative i32 (the op reads the bits as u32).
 */
export function samplingRowTensors(rows: readonly SamplingRow[], device: string) {
  const B = rows.length;
  return {
    temperature: Tensor.from(rows.map((r) => r.temperature), [B], { device }),
    topP: Tensor.from(rows.map((r) => r.topP), [B], { device }),
    topK: Tensor.from(Int32Array.from(rows.map((r) => r.topK)), [B], { device }),
    seeds: Tensor.from(Int32Array.from(rows.map((r) => r.seed)), [B], { device }),
    counters: Tensor.from(Int32Array.from(rows.map((r) => r.counter)), [B], { device }),
  };
}

/**
 * The vocabulary-parallel sampler's arithmetic in one process: the logits [B, V] cut into `tp` column slices of
 * ceil(V/tp) (the last one padded with columns of 1e4, which must be ignored: they would win every draw), each
 * summarised by sampleParts (as rank r would), the parts stacked in rank order as the all-gather would, and
 * combined. Returns the combined tokens (-1 for threshold rows) and log-probs (NaN for them).
 */
export function sampleBySlices(
  logits: Float32Array,
  B: number,
  V: number,
  tp: number,
  rows: readonly SamplingRow[],
  opts: { device: string; dtype?: 'f32' | 'bf16' },
): { tokens: Int32Array; logprobs: Float32Array } {
  const W = Math.ceil(V / tp);
  const params = samplingRowTensors(rows, opts.device);
  const parts: Uint8Array[] = [];
  for (let r = 0; r < tp; r++) {
    const slice = new Float32Array(B * W).fill(1e4);
    for (let b = 0; b < B; b++) slice.set(logits.subarray(b * V + r * W, b * V + Math.min(V, (r + 1) * W)), b * W);
    const t = Tensor.from(slice, [B, W], { device: opts.device, dtype: opts.dtype ?? 'f32' });
    const p = sampleParts(t, params, { vocabStart: r * W, vocabSize: V });
    parts.push(p.toUint8());
    t.dispose();
    p.dispose();
  }
  const X = parts[0]!.length / B;
  const all = new Uint8Array(tp * B * X);
  parts.forEach((p, r) => all.set(p, r * B * X));
  const gathered = Tensor.from(all, [tp, B, X], { device: opts.device });
  const out = combineSampleParts(gathered, params, V);
  const res = { tokens: out.tokens.toInt32(), logprobs: out.logprobs.toFloat32() };
  gathered.dispose();
  out.tokens.dispose();
  out.logprobs.dispose();
  for (const t of Object.values(params)) t.dispose();
  return res;
}
