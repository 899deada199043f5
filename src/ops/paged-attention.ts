// paged-attention.ts: attention with sinks over a paged KV cache, the inference engine's attention. One call
// serves every sequence of an engine step: decodes (one query row each) and prefill chunks (several rows) mixed.
// Native kernels: native/cpu/paged_attention.cc (fp32 reference), native/cuda/paged_attention.cu.
//
// The cache of one layer is a pool of fixed-size blocks, kPool/vPool [numBlocks, blockSize, Hkv, D]; the token at
// position p of sequence b is in block blockTables[b][floor(p / blockSize)], slot p % blockSize. K/V rows are
// written before the call with scatterRows(pool.view([numBlocks * blockSize, Hkv, D]), k, slots), slot = block *
// blockSize + offset. The query at position i sees keys j <= i (and j > i - window when window > 0); query head h
// reads kv head h / (Hq / Hkv); each head's sink logit joins the softmax with no value, as in attentionForward.
import { native } from '../native.ts';
import { Tensor } from '../tensor.ts';
import { attentionScale } from './attention.ts';

/** Where each sequence's queries and cached tokens are (all i32, on the device of q). */
export interface PagedAttentionMeta {
  /** i32 [B, maxBlocksPerSeq]: each sequence's blocks in order; entries past what it reads are never read. */
  blockTables: Tensor;
  /** i32 [B]: tokens cached for each sequence, this step's (already written) tokens included. */
  contextLens: Tensor;
  /**
   * i32 [B+1]: sequence b's query rows are queryStarts[b] .. queryStarts[b+1]-1 (queryStarts[0] = 0,
   * queryStarts[B] = N); they are its last qlen positions, contextLens[b]-qlen .. contextLens[b]-1. qlen 0 skips b.
   */
  queryStarts: Tensor;
}

export interface PagedAttentionOptions {
  /** 0 = full causal; W > 0: the query at position i sees keys i-W+1..i (gpt-oss sliding layers: 128). */
  window: number;
  /** f32 or bf16 [Hq]: one sink logit per query head. */
  sinks: Tensor;
  /** Score scale, default 1/sqrt(D). */
  scale?: number;
}

/**
 * q [N, Hq, D] (the step's query rows, sequences concatenated), kPool/vPool [numBlocks, blockSize, Hkv, D]
 * -> out [N, Hq, D], q's dtype. bf16 everywhere on CUDA (head_dim 64 or 128); the CPU also takes f32.
 * The CPU checks the metadata values (a clear error names the first bad entry); the CUDA kernels read the
 * metadata on the device and trust it (the CPU op is the place to test new metadata code).
 */
export function pagedAttention(
  q: Tensor,
  kPool: Tensor,
  vPool: Tensor,
  meta: PagedAttentionMeta,
  opts: PagedAttentionOptions,
): Tensor {
  if (!Number.isInteger(opts.window) || opts.window < 0) {
    throw new Error(`pagedAttention: window must be a non-negative integer (0 = full causal), got ${opts.window}`);
  }
  return new Tensor(
    native().ops.pagedAttention(
      q.native,
      kPool.native,
      vPool.native,
      meta.blockTables.native,
      meta.contextLens.native,
      meta.queryStarts.native,
      opts.sinks.native,
      opts.window,
      attentionScale(q, opts.scale),
    ),
  );
}
