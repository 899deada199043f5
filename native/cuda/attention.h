// attention.h (cuda): attention with sinks for sm_90a, FlashAttention style. Same semantics as native/cpu/attention.h;
// q/k/v/dout/out bf16, head_dim 16, 32, 64 or 128. Everything is enqueued on the device's compute stream. Which
// kernels run is a function of shapes, mode and device (attention_heuristics.h). deterministic = true gives bitwise
// reproducible gradients (no atomics: dQ recomputes S and dP); false (head_dim 64 on sm_90) lets one fused kernel add
// dQ partials with fp32 reductions instead, so dq's rounding varies from run to run.
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
