// moe.h (CUDA): the MoE block on the GPU. Same MoeSaved layout as the CPU reference (native/cpu/moe.h).
// Requires H and I to be multiples of 8 and 16-byte aligned tensors (checked).
#pragma once
#include "../cpu/moe.h"

namespace gptoss::cuda {

// lora (optional): expert adapters (MoeLora); forward and backward then run the per-expert path with the adapters'
// products (moe.cu, "expert adapters").
void moe_forward(const Tensor& x, const MoeWeights& w, int64_t top_k, float limit, const Tensor* residual, Tensor& y,
                 MoeSaved& saved, const MoeLora* lora = nullptr);
void moe_backward(const Tensor& dy, const MoeWeights& w, const MoeSaved& saved, MoeGrads& g,
                  const MoeLora* lora = nullptr);

}  // namespace gptoss::cuda
