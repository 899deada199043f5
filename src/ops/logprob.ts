// logprob.ts: the fused LM head + log-prob of the target token + entropy, chunked over the vocabulary.
//
// GPT-OSS's vocabulary is 201,088 entries: [16k tokens x V] fp32 logits would be 13 GB. These ops compute the
// logits of one vocabulary chunk at a time ([T, chunk] fp32, about 256 MB by default) and keep an online softmax
// (running max, Σe^{z-max}, Σe^{z-max}(z-max)) per token, so only [T]-sized results leave the op. The backward
// recomputes each chunk's logits and accumulates dHidden and dLmHead chunk by chunk.
// z = (hidden · lmHeadᵀ) / temperature; logprob = z[target] - lse; entropy = lse - Σ p·z.
// Targets < 0 are ignored (log-prob 0, no gradient). Targets >= V: an error on CPU, NaN on CUDA (no host sync).
import { native } from '../native.ts';
import { Tensor } from '../tensor.ts';
import { matmul } from './gemm.ts';

export interface TokenLogprobsOptions {
  /** Divides the logits (default 1). */
  temperature?: number;
  /** Vocabulary entries per chunk (default: a [T, chunk] fp32 buffer of about 256 MB). */
  chunk?: number;
}

export interface TokenLogprobs {
  /** f32 [T]: log p(target_t) under softmax(z_t). */
  logprobs: Tensor;
  /** f32 [T]: entropy of softmax(z_t). */
  entropy: Tensor;
  /** f32 [T]: log Σ_v e^{z_tv}; saved for the backward. */
  lse: Tensor;
}

/** hidden bf16 [T, H], lmHead bf16 [V, H] (or both f32), targets i32 [T]. */
export function tokenLogprobs(hidden: Tensor, lmHead: Tensor, targets: Tensor, opts: TokenLogprobsOptions = {}): TokenLogprobs {
  const r = native().ops.tokenLogprobsForward(hidden.native, lmHead.native, targets.native, opts.temperature ?? 1, opts.chunk ?? 0);
  return { logprobs: new Tensor(r.logprobs), entropy: new Tensor(r.entropy), lse: new Tensor(r.lse) };
}

export interface TokenLogprobsBackwardOptions extends TokenLogprobsOptions {
  /** f32 [V, H]: the lm_head gradient is accumulated into it. */
  dLmHead?: Tensor;
  /** f32 [T]: gradient of the loss with respect to the entropy (needs `entropy` from the forward). Optional:
   *  GRPO uses the entropy only as a metric. */
  dEntropy?: Tensor;
  entropy?: Tensor;
}

export interface TokenLogprobsGrads {
  /** f32 [T, H]. */
  dHidden: Tensor;
  /** f32 [V, H] (opts.dLmHead when given, accumulated into). */
  dLmHead: Tensor;
}

/**
 * dHidden only, for a frozen LM head (LoRA training): no [V, H] f32 gradient is allocated or computed.
 * Same arguments as tokenLogprobsBackward (opts.dLmHead must be absent).
 */
export function tokenLogprobsBackwardHidden(
  hidden: Tensor,
  lmHead: Tensor,
  targets: Tensor,
  lse: Tensor,
  dLogprobs: Tensor,
  opts: Omit<TokenLogprobsBackwardOptions, 'dLmHead'> = {},
): Tensor {
  if ((opts.dEntropy === undefined) !== (opts.entropy === undefined)) {
    throw new Error('tokenLogprobsBackwardHidden: dEntropy and entropy must be given together');
  }
  const r = native().ops.tokenLogprobsBackward(
    hidden.native, lmHead.native, targets.native, lse.native, dLogprobs.native, opts.temperature ?? 1, opts.chunk ?? 0,
    null, opts.dEntropy?.native ?? null, opts.entropy?.native ?? null, true, false,
  );
  return new Tensor(r.dHidden);
}

/** Gradients of the log-probs (and optionally the entropy) with respect to hidden and lmHead. dLogprobs f32 [T]. */
export function tokenLogprobsBackward(
  hidden: Tensor,
  lmHead: Tensor,
  targets: Tensor,
  lse: Tensor,
  dLogprobs: Tensor,
  opts: TokenLogprobsBackwardOptions = {},
): TokenLogprobsGrads {
  if ((opts.dEntropy === undefined) !== (opts.entropy === undefined)) {
    throw new Error('tokenLogprobsBackward: dEntropy and entropy must be given together');
  }
  const r = native().ops.tokenLogprobsBackward(
    hidden.native,
    lmHead.native,
    targets.native,
    lse.native,
    dLogprobs.native,
    opts.temperature ?? 1,
    opts.chunk ?? 0,
    opts.dLmHead?.native ?? null,
    opts.dEntropy?.native ?? null,
    opts.entropy?.native ?? null,
    true,
  );
  const dLmHead = opts.dLmHead ?? new Tensor(r.dLmHead);
  return { dHidden: new Tensor(r.dHidden), dLmHead };
}

/** Full f32 logits [T, V] = hidden · lmHeadᵀ (small cases: tests, generation of a few rows). */
export function logits(hidden: Tensor, lmHead: Tensor): Tensor {
  return matmul(hidden, lmHead, { transB: true, outDtype: 'f32' });
}
