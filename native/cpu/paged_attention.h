// paged_attention.h: the fp32 reference for attention with sinks over a paged KV cache (the inference engine's
// attention: one op for every sequence of an engine step, prefill chunks and decodes mixed).
//
// Layouts:
//   q            [N, Hq, D]                      the step's query rows, sequences concatenated
//   kPool, vPool [numBlocks, blockSize, Hkv, D]  one layer's pool; the token at position p of sequence b sits in
//                                                block blockTables[b][p / blockSize], slot p % blockSize
//   blockTables  i32 [B, maxBlocksPerSeq]        entries past what a sequence reads are never read
//   contextLens  i32 [B]                         tokens cached for b, this step's (already written) ones included
//   queryStarts  i32 [B+1]                       b's query rows are queryStarts[b] .. queryStarts[b+1]-1, the last
//                                                qlen_b positions contextLens[b]-qlen_b .. contextLens[b]-1
//                                                (qlen 1 = a decode, qlen 0 = b is skipped)
// The query at position i sees keys j <= i and, when window > 0, j > i - window. Query head h reads kv head
// h / (Hq/Hkv). Each head's sink logit joins the softmax with no value, as in attention.h:
//   O_i = sum_j e^{s_ij} v_j / (sum_j e^{s_ij} + e^{sink_h}),  s_ij = scale * q_i.k_j
#pragma once
#include "../common/tensor.h"

namespace gptoss::cpu {

// Checks the metadata values (queryStarts covers the N rows in order, every sequence's context holds its query
// rows and fits its block-table row, every block id it reads is in the pool) and throws a gptoss::Error naming
// the first bad entry. The CPU op calls it; the CUDA op cannot read device metadata without a sync and trusts it.
void check_paged_metadata(const char* op, int64_t N, int64_t num_blocks, int64_t block_size, int window,
                          const Tensor& block_tables, const Tensor& context_lens, const Tensor& query_starts);

// q/kPool/vPool bf16 or f32 (one dtype); sinks f32 or bf16 [Hq] or null; out [N, Hq, D] of q's dtype.
void paged_attention(const Tensor& q, const Tensor& k_pool, const Tensor& v_pool, const Tensor& block_tables,
                     const Tensor& context_lens, const Tensor& query_starts, const Tensor* sinks, int window,
                     float scale, const Tensor& out);

}  // namespace gptoss::cpu
