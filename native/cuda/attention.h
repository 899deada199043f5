// attention.h (cuda): FlashAttention-2 style attention with sinks for sm_90a. Same semantics as
// native/cpu/attention.h; q/k/v/dout/out bf16, head_dim 16, 32, 64 or 128. Everything is enqueued on the device's
// compute stream. The deterministic backward has no atomics: one kernel for dk/dv (per key block, looping over
// the query heads of its kv group) and one for dq (per query block). deterministic = false (head_dim 64) fuses
// dq into the dk/dv kernel with fp32 atomics instead.
#pragma once
#include "../common/tensor.h"

namespace gptoss::cuda {

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* sinks, const Tensor& cu,
                       const Tensor* used, int max_seqlen, int window, float scale, const Tensor& out,
                       const Tensor& lse);

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor* sinks, const Tensor& cu, const Tensor* used, int max_seqlen,
                        int window, float scale, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                        const Tensor* dsinks, bool deterministic);

void attention_decode(const Tensor& q, const Tensor& kc, const Tensor& vc, const Tensor& seqlens, const Tensor* sinks,
                      int window, float scale, const Tensor& out);

}  // namespace gptoss::cuda
