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
