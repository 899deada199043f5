// paged_attention.h (cuda): attention with sinks over a paged KV cache, the semantics of
// native/cpu/paged_attention.h on the device; q and pools bf16, head_dim 64 or 128. The metadata (block tables,
// context lengths, query starts) is read on the device and not checked (the CPU op checks it).
#pragma once
#include "../common/tensor.h"

namespace gptoss::cuda {

void paged_attention(const Tensor& q, const Tensor& k_pool, const Tensor& v_pool, const Tensor& block_tables,
                     const Tensor& context_lens, const Tensor& query_starts, const Tensor* sinks, int window,
                     float scale, const Tensor& out);

// attention_forward's contract (attention.h: packed q/k/v [T, heads, D] by cu_seqlens, `used` padding, out, lse
// [Hq, T]) on the paged kernel's arithmetic with position-aligned key steps and no key splits: the training forward
// of batch-invariant mode (device.h), whose rows then carry the bits the engine's paged decode and prefill give.
void dense_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* sinks, const Tensor& cu,
                             const Tensor* used, int max_seqlen, int window, float scale, const Tensor& out,
                             const Tensor& lse);

}  // namespace gptoss::cuda
