// logprob.ts: the fused LM head + log-prob of the target token + entropy, chunked over the vocabulary.
//
// GPT-OSS's vocabulary is 201,088 entries: [16k tokens x V] fp32 logits would be 13 GB. These ops compute the
// logits of one vocabulary chunk at a time ([T, chunk] fp32; the chunk from lmHeadChunk below) and keep an online softmax
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
  /** Vocabulary entries per chunk (default: lmHeadChunk(T, V)). */
  chunk?: number;
}

/**
 * The bound on the LM head backward's chunk buffers: fp32 logits [T, chunk] + dlogits [T, chunk] in the hidden
 * dtype (bf16), 6 B per entry. 1.5 GiB is exactly the buffers of chunk 16384 at T = 16384 (the measured faster
 * setting: fewer passes over the f32 dHidden [T, H] the dgrad GEMM accumulates into, one per chunk).
 */
export const LM_HEAD_CHUNK_BUDGET_BYTES = 1.5 * 2 ** 30;
/** The chunks lmHeadChunk tries, largest first (multiples of 128: aligned GEMM widths). */
export const LM_HEAD_CHUNK_SIZES: readonly number[] = [16384, 8192, 4096];

/** Bytes of the LM head backward's chunk buffers: fp32 logits + dlogits in the hidden dtype, [T, min(chunk, V)]. */
export function lmHeadChunkBytes(tokens: number, chunk: number, vocab: number, hiddenDtypeBytes = 2): number {
  return tokens * Math.min(chunk, vocab) * (4 + hiddenDtypeBytes);
}

/**
 * The vocabulary chunk of the fused LM head at `tokens` tokens: the larger of
 *   - the largest of LM_HEAD_CHUNK_SIZES whose backward buffers (lmHeadChunkBytes, bf16) fit
 *     LM_HEAD_CHUNK_BUDGET_BYTES (16384 up to 16k tokens, 8192 up to 32k, 4096 up to 64k), and
 *   - the chunk of a 256 MiB fp32 [T, chunk] buffer in multiples of 128, at least 128 (native/cpu/logprob.h
 *     default_logprob_chunk: larger than 16384 below 4k tokens, and what is left beyond 64k tokens),
 * at most V. Every buffer it gives stays within the budget up to 64k tokens (beyond: 256 MiB + 128 MiB).
 * The ops here, the models (src/model/gptoss.ts, src/trainer/sharded-policy.ts) and the memory planner
 * (src/trainer/memory-plan.ts) all take the chunk from this one function.
 */
export function lmHeadChunk(tokens: number, vocab: number): number {
  if (!(Number.isInteger(tokens) && tokens >= 0)) throw new Error(`lmHeadChunk: tokens must be an integer >= 0, got ${tokens}`);
  if (!(Number.isInteger(vocab) && vocab >= 1)) throw new Error(`lmHeadChunk: vocab must be a positive integer, got ${vocab}`);
  const T = Math.max(tokens, 1);
  let small = Math.floor((256 * 2 ** 20) / (4 * T));
  small = Math.max(128, Math.floor(small / 128) * 128);
  const budgeted = LM_HEAD_CHUNK_SIZES.find((c) => lmHeadChunkBytes(T, c, Infinity) <= LM_HEAD_CHUNK_BUDGET_BYTES) ?? 0;
  return Math.min(Math.max(small, budgeted), vocab);
}

export interface TokenLogprobs {
  /** f32 [T]: log p(target_t) under softmax(z_t). */
  logprobs: Tensor;
  /** f32 [T]: entropy of softmax(z_t). */
  entropy: Tensor;
  /** f32 [T]: log Σ_v e^{z_tv}; saved for the backward. */
  lse: Tensor;
}

/** opts.chunk, else lmHeadChunk(T, V) of hidden [T, H] and lmHead [V, H] (shapes the native op checks). */
function chunkOf(hidden: Tensor, lmHead: Tensor, opts: TokenLogprobsOptions): number {
  if (opts.chunk !== undefined) return opts.chunk;
  return lmHeadChunk(hidden.shape[0] ?? 0, Math.max(lmHead.shape[0] ?? 1, 1));
}

/** hidden bf16 [T, H], lmHead bf16 [V, H] (or both f32), targets i32 [T]. */
export function tokenLogprobs(hidden: Tensor, lmHead: Tensor, targets: Tensor, opts: TokenLogprobsOptions = {}): TokenLogprobs {
  const r = native().ops.tokenLogprobsForward(hidden.native, lmHead.native, targets.native, opts.temperature ?? 1, chunkOf(hidden, lmHead, opts));
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
    hidden.native, lmHead.native, targets.native, lse.native, dLogprobs.native, opts.temperature ?? 1, chunkOf(hidden, lmHead, opts),
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
    chunkOf(hidden, lmHead, opts),
    opts.dLmHead?.native ?? null,
    opts.dEntropy?.native ?? null,
    opts.entropy?.native ?? null,
    true,
  );
  const dLmHead = opts.dLmHead ?? new Tensor(r.dLmHead);
  return { dHidden: new Tensor(r.dHidden), dLmHead };
}

// ---- token-chunked: the loss gradient formed during the forward ----------------------------------------------------
// Where the loss's gradient with respect to each token's log-prob is known as soon as that token's log-prob is
// (a per-token-local loss, src/rl/loss.ts policyTokenGradient), the LM head can run per chunk of TOKENS instead:
// tokenLogprobsForwardKeep computes a chunk's full-vocabulary logits and keeps them, the host turns the chunk's
// log-probs into dLoss/dlogp, and tokenLogprobsBackwardFromLogits forms dlogits from the kept logits and runs only
// the dgrad and wgrad GEMMs: 3 LM-head GEMMs per token instead of the recomputing backward's 4.

/**
 * The bound on the token-chunked LM head's buffers: fp32 logits [Tc, V] + dlogits [Tc, V] in the hidden dtype (6 B
 * per entry). Larger than LM_HEAD_CHUNK_BUDGET_BYTES because each token chunk's wgrad GEMM reads and writes the
 * whole fp32 dLmHead [V, H] (2.3 GB at gpt-oss-20b): at 1.5 GiB (1334 tokens, 13 passes per 16k tokens) the wgrad
 * took 80.2 ms per 2 x 16k-token step on an H100 (bench/results/train-profile-fused-tc1334-h100.json), at 4 GiB
 * (3559 tokens, 5 passes) 52.4 ms (train-profile-fused-h100.json).
 */
export const LM_HEAD_TOKEN_CHUNK_BUDGET_BYTES = 4 * 2 ** 30;

/**
 * Tokens per chunk of the token-chunked LM head at vocabulary `vocab`: the most rows whose fp32 logits [Tc, V] +
 * dlogits [Tc, V] in the hidden dtype (bf16: 6 B per entry, lmHeadChunkBytes) fit LM_HEAD_TOKEN_CHUNK_BUDGET_BYTES,
 * at least 1 (gpt-oss, V = 201,088: 3559 tokens). The model (src/model/gptoss.ts) takes it from here.
 */
export function lmHeadTokenChunk(vocab: number, hiddenDtypeBytes = 2): number {
  if (!(Number.isInteger(vocab) && vocab >= 1)) throw new Error(`lmHeadTokenChunk: vocab must be a positive integer, got ${vocab}`);
  return Math.max(1, Math.floor(LM_HEAD_TOKEN_CHUNK_BUDGET_BYTES / lmHeadChunkBytes(1, vocab, vocab, hiddenDtypeBytes)));
}

export interface TokenLogprobsKept extends TokenLogprobs {
  /** f32 [T, V]: z = hidden · lmHeadᵀ / temperature, for tokenLogprobsBackwardFromLogits. */
  logits: Tensor;
}

/**
 * tokenLogprobs of a chunk of tokens (hidden [Tc, H], targets i32 [Tc]) that also returns its logits f32 [Tc, V].
 * opts.chunk is the vocabulary chunk the softmax statistics are merged by (default lmHeadChunk(Tc, V)); passing the
 * chunk tokenLogprobs uses over all the tokens gives its log-probs and lse bit for bit (CPU).
 */
export function tokenLogprobsForwardKeep(hidden: Tensor, lmHead: Tensor, targets: Tensor, opts: TokenLogprobsOptions = {}): TokenLogprobsKept {
  const r = native().ops.tokenLogprobsForwardKeep(hidden.native, lmHead.native, targets.native, opts.temperature ?? 1, chunkOf(hidden, lmHead, opts));
  return { logprobs: new Tensor(r.logprobs), entropy: new Tensor(r.entropy), lse: new Tensor(r.lse), logits: new Tensor(r.logits) };
}

export interface FromLogitsOptions extends TokenLogprobsOptions {
  /** f32 [V, H]: the LM-head gradient is accumulated into it; absent = a frozen head (LoRA): no wgrad GEMM. */
  dLmHead?: Tensor;
  /** f32 [Tc, H]: written with dHidden (e.g. rows of the model's [T, H] buffer); default a new tensor. */
  dHidden?: Tensor;
}

/**
 * The backward of tokenLogprobsForwardKeep from its kept logits (f32 [Tc, V]) and lse, given dLogprobs f32 [Tc]:
 * dz = dlogp (onehot - p), dlogits = dz / temperature (on CUDA rounded to the hidden dtype like the recomputing
 * backward's chunks; on CPU fp32 as there), then dHidden = dlogits · lmHead (returned) and dLmHead += dlogitsᵀ ·
 * hidden. No entropy gradient. opts.chunk: the CPU's vocabulary chunk (the recomputing backward's chunk gives its
 * dHidden bit for bit).
 */
export function tokenLogprobsBackwardFromLogits(
  logits: Tensor,
  hidden: Tensor,
  lmHead: Tensor,
  targets: Tensor,
  lse: Tensor,
  dLogprobs: Tensor,
  opts: FromLogitsOptions = {},
): Tensor {
  const dHidden = opts.dHidden ?? Tensor.empty([hidden.shape[0] ?? 0, hidden.shape[1] ?? 0], { dtype: 'f32', device: hidden.device });
  native().ops.tokenLogprobsBackwardFromLogits(
    logits.native, hidden.native, lmHead.native, targets.native, lse.native, dLogprobs.native,
    opts.temperature ?? 1, chunkOf(hidden, lmHead, opts), dHidden.native, opts.dLmHead?.native ?? null,
  );
  return dHidden;
}

/** Full f32 logits [T, V] = hidden · lmHeadᵀ (small cases: tests, generation of a few rows). */
export function logits(hidden: Tensor, lmHead: Tensor): Tensor {
  return matmul(hidden, lmHead, { transB: true, outDtype: 'f32' });
}

export interface TokenChunkedOptions {
  temperature?: number;
  /** The vocabulary chunk (default lmHeadChunk(T, V) over all T tokens: the recomputing path's, for the same bits). */
  chunk?: number;
  /** Tokens per chunk (default lmHeadTokenChunk(V)). */
  tokenChunk?: number;
  /**
   * dLoss/dlogp f32 [t1 - t0] of tokens t0 .. t1 - 1 from their log-probs: called once per token chunk, in order,
   * after the chunk's log-probs reached the host.
   */
  grad: (t0: number, logprobs: Float32Array) => Float32Array;
  /** f32 [V, H]: the head's gradient is accumulated into it; absent: a frozen head (no wgrad GEMM). */
  dLmHead?: Tensor;
  /** Who calls (error messages), e.g. 'GptOssModel.forward'. */
  who: string;
}

/**
 * The token-chunked LM head with its backward (the fused LM-head backward) over hidden bf16 [T, H], lmHead [V, H]
 * and targets i32 [T]: per token chunk tokenLogprobsForwardKeep, the chunk's log-probs to the host, opts.grad,
 * tokenLogprobsBackwardFromLogits into the chunk's rows of dHidden f32 [T, H] and into opts.dLmHead. Returns the
 * log-probs and entropy f32 [T] and dHidden (the caller's). With one token chunk (and the default vocabulary
 * chunk) the log-probs, dHidden and dLmHead are the recomputing path's bit for bit on CPU. The single-process
 * model (src/model/gptoss.ts) and the sharded one (src/trainer/sharded-policy.ts) both run it.
 */
export function tokenChunkedLmHead(hidden: Tensor, lmHead: Tensor, targets: Tensor, opts: TokenChunkedOptions): { logprobs: Tensor; entropy: Tensor; dHidden: Tensor } {
  const T = hidden.shape[0]!;
  const H = hidden.shape[1]!;
  const V = lmHead.shape[0]!;
  const temperature = opts.temperature ?? 1;
  const chunk = opts.chunk ?? lmHeadChunk(T, V);
  const tc = opts.tokenChunk ?? lmHeadTokenChunk(V);
  const lpHost = new Float32Array(T);
  const enHost = new Float32Array(T);
  const dHidden = Tensor.empty([T, H], { dtype: 'f32', device: hidden.device });
  try {
    for (let t0 = 0; t0 < T; t0 += tc) {
      const t1 = Math.min(T, t0 + tc);
      const hs = hidden.slice(t0, t1);
      const ts = targets.slice(t0, t1);
      const k = tokenLogprobsForwardKeep(hs, lmHead, ts, { temperature, chunk });
      let dT: Tensor | undefined;
      let dhs: Tensor | undefined;
      try {
        const lpc = k.logprobs.toFloat32(); // the host sync of this chunk
        lpHost.set(lpc, t0);
        enHost.set(k.entropy.toFloat32(), t0);
        const d = opts.grad(t0, lpc);
        if (!(d instanceof Float32Array) || d.length !== t1 - t0) {
          throw new Error(`${opts.who}: lossGradient.grad gave ${d instanceof Float32Array ? d.length : typeof d} values for tokens ${t0}..${t1} (want a Float32Array of ${t1 - t0})`);
        }
        dT = Tensor.from(d, [t1 - t0], { dtype: 'f32', device: hidden.device });
        dhs = dHidden.slice(t0, t1);
        tokenLogprobsBackwardFromLogits(k.logits, hs, lmHead, ts, k.lse, dT, { temperature, chunk, dLmHead: opts.dLmHead, dHidden: dhs });
      } finally {
        for (const t of [hs, ts, k.logprobs, k.entropy, k.lse, k.logits, dT, dhs]) if (t && !t.disposed) t.dispose();
      }
    }
  } catch (e) {
    dHidden.dispose();
    throw e;
  }
  return {
    logprobs: Tensor.from(lpHost, [T], { dtype: 'f32', device: hidden.device }),
    entropy: Tensor.from(enHost, [T], { dtype: 'f32', device: hidden.device }),
    dHidden,
  };
}
