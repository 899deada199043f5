// moe.h (CUDA): the MoE block on the GPU. Same MoeSaved layout as the CPU reference (native/cpu/moe.h).
// Requires H and I to be multiples of 8 and 16-byte aligned tensors (checked).
#pragma once
#include "../cpu/moe.h"

namespace gptoss::cuda {

void moe_forward(const Tensor& x, const MoeWeights& w, int64_t top_k, float limit, const Tensor* residual, Tensor& y,
                 MoeSaved& saved);
void moe_backward(const Tensor& dy, const MoeWeights& w, const MoeSaved& saved, MoeGrads& g);

}  // namespace gptoss::cuda
