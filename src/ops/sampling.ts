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
  const r = native().ops.sampleRows(
    logits.native,
    params.temperature.native,
    params.topP.native,
    params.topK.native,
    params.seeds.native,
    params.counters.native,
    opts.strategy,
  );
  return { tokens: new Tensor(r.tokens), logprobs: new Tensor(r.logprobs) };
}
