// sampling.ts: next-token sampling from logits with temperature, top-k and top-p, seeded.
//
// The draw is the Gumbel-max trick with counter-based noise hashed from (seed, step, row, token id), and the top-k /
// top-p thresholds come from the same integer-key searches on both backends, so the CPU and CUDA samplers pick the
// same tokens for the same logits. Ties at a top-k/top-p threshold are all kept. See native/cpu/sampling.h.
import { native } from '../native.ts';
import { Tensor } from '../tensor.ts';

export interface SampleOptions {
  /** 0 = greedy (argmax, ties to the lowest id). */
  temperature: number;
  /** Nucleus mass in (0, 1]; 1 (default) = off. */
  topP?: number;
  /** Keep the k most likely entries; 0 or undefined = off. */
  topK?: number;
  /** Non-negative integer (up to 2^53). */
  seed: number;
  /** Decoding step (or any counter): a new draw per step with the same seed. Default 0. */
  step?: number;
}

export interface SampleResult {
  /** i32 [B]. */
  tokens: Tensor;
  /** f32 [B]: log p of the sampled token under the processed distribution (temperature, top-k, top-p); for
   *  greedy, under the unscaled softmax of the logits. */
  logprobs: Tensor;
}

/** logits f32 [B, V] -> one token per row. */
export function sample(logits: Tensor, opts: SampleOptions): SampleResult {
  const r = native().ops.sample(logits.native, opts.temperature, opts.topP ?? 1, opts.topK ?? 0, opts.seed, opts.step ?? 0);
  return { tokens: new Tensor(r.tokens), logprobs: new Tensor(r.logprobs) };
}

/** Per-row sampling parameters, one entry per row of the logits (all on the logits' device). */
export interface SampleRowsParams {
  /** f32 [B]: 0 = greedy for that row. */
  temperature: Tensor;
  /** f32 [B]: nucleus mass in (0, 1]; 1 = off. */
  topP: Tensor;
  /** i32 [B]: keep the k most likely entries; 0 = off. */
  topK: Tensor;
  /** i32 [B]: each row's seed, its 32 bits read as unsigned (Int32Array.from wraps seeds up to 2^32 - 1). */
  seeds: Tensor;
  /** i32 [B], >= 0: each row's draw counter (e.g. tokens generated so far), a new draw per value. */
  counters: Tensor;
}

/** How the CUDA sampler lays out its work (CUDA logits only; the CPU has one layout and refuses the option).
 *  'auto' (default): 'split' when the batch has fewer rows than the GPU has SMs / 8 (decode at batch 1-16),
 *  else 'single'. 'single': one block per row. 'split': rows with top-k and top-p off (greedy or plain temperature
 *  sampling) are spread over many blocks and combined by a second launch; rows with a threshold stay on one block.
 *  Both layouts draw the same tokens (log-probs equal up to the normaliser's summation order); forcing one is for
 *  tests and benchmarks that compare them. */
export interface SampleRowsOptions {
  strategy?: 'auto' | 'single' | 'split';
}

/**
 * logits f32 or bf16 [B, V] -> one token per row, each row with its own parameters and its own noise key
 * (seed_b, counter_b): a row draws the same token whichever batch row it occupies and whatever else is in the
 * batch, and equals `sample` of that row alone with seed = seed_b, step = counter_b. Same method as `sample`
 * (and the same tokens on CPU and CUDA). The CPU checks every row's values; the CUDA kernel reads them on the device.
 */
export function sampleRows(logits: Tensor, params: SampleRowsParams, opts: SampleRowsOptions = {}): SampleResult {
  const r = native().ops.sampleRows(logits.native, ...rowArgs(params), opts.strategy);
  return { tokens: new Tensor(r.tokens), logprobs: new Tensor(r.logprobs) };
}

/** The per-row tensors in the addon's argument order. */
function rowArgs(p: SampleRowsParams) {
  return [p.temperature.native, p.topP.native, p.topK.native, p.seeds.native, p.counters.native] as const;
}

/**
 * One rank's share of a vocabulary-parallel sampler (src/model/tensor-parallel.ts): each row of a vocabulary slice's
 * logits summarised for the rows that need no top-k/top-p threshold (greedy, or temperature with both off): the
 * slice's max, normaliser, and Gumbel-max winner under the row's key with its whole-vocabulary id (see
 * native/cpu/sampling_parts.h). All-gathered over the ranks and combined (combineSampleParts), they give the token
 * `sampleRows` draws from the whole row. Threshold rows get a placeholder.
 * @param logits f32|bf16 [S, W]: vocabulary ids vocabStart .. vocabStart + W - 1
 * @param vocabSize the whole vocabulary (a row's top-k is off when >= it, as in sampleRows)
 * @returns u8 [S, C·32] (C chunks per row: 1 on the CPU; on CUDA the split layout's, alike on like GPUs)
 */
export function sampleParts(logits: Tensor, params: SampleRowsParams, slice: { vocabStart: number; vocabSize: number }): Tensor {
  return new Tensor(native().ops.sampleParts(logits.native, ...rowArgs(params), slice.vocabStart, slice.vocabSize));
}

/**
 * Combines the slices' summaries: parts u8 [R, S, C·32] (sampleParts of R vocabulary slices in vocabulary order,
 * e.g. all-gathered from R ranks) -> per row the token of `sampleRows` over the whole row and its log-prob (equal up
 * to the normaliser's summation order); token -1 and a NaN log-prob for rows with a top-k/top-p threshold, which
 * need their whole logits.
 */
export function combineSampleParts(parts: Tensor, params: SampleRowsParams, vocabSize: number): SampleResult {
  const r = native().ops.sampleCombine(parts.native, params.temperature.native, params.topP.native, params.topK.native, vocabSize);
  return { tokens: new Tensor(r.tokens), logprobs: new Tensor(r.logprobs) };
}

/** Whether sampleParts decides a row (no threshold search), from the row's host-side parameters. */
export function rowSplits(temperature: number, topP: number, topK: number, vocabSize: number): boolean {
  if (temperature === 0) return true;
  return !(topK > 0 && topK < vocabSize) && !(topP > 0 && topP < 1);
}
