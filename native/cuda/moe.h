// moe.h (CUDA): the MoE block on the GPU. Same MoeSaved layout as the CPU reference (native/cpu/moe.h).
// Requires H and I to be multiples of 8 and 16-byte aligned tensors (checked).
#pragma once
#include "../cpu/moe.h"

namespace gptoss::cuda {

// Which expert-GEMM kernels the forward runs. kAuto: plan_expert_gemms (moe.cu) decides from the sizes and the
// routing, as in training and generation. kDecode / kGrouped force the split-K GEMV kernels (moe_decode.cu) or the
// grouped mma.sync kernels (moe_gemm.cuh) at any size, so tests and benchmarks can compare the two.
enum class ExpertGemmChoice { kAuto, kDecode, kGrouped };

// lora (optional): expert adapters (MoeLora); forward and backward then run the per-expert path with the adapters'
// products (moe.cu, "expert adapters"), whatever `choice` says.
void moe_forward(const Tensor& x, const MoeWeights& w, int64_t top_k, float limit, const Tensor* residual, Tensor& y,
                 MoeSaved& saved, ExpertGemmChoice choice = ExpertGemmChoice::kAuto, const MoeLora* lora = nullptr);
// moeForward's preNorm: x is the residual stream; h = x + pre.o, normed = rmsnorm(h)·pre.w (addRmsnorm's bits),
// y = h + moe(normed); saved.x is normed. At decode sizes the fused router computes the add + norm in its own
// launch (moe.cu, RouterPreNorm); else addRmsnorm runs first.
void moe_forward_prenorm(const Tensor& x, const MoePreNorm& pre, const MoeWeights& w, int64_t top_k, float limit,
                         Tensor& y, Tensor& h, Tensor& normed, Tensor& rstd, MoeSaved& saved,
                         ExpertGemmChoice choice = ExpertGemmChoice::kAuto, const MoeLora* lora = nullptr);
void moe_backward(const Tensor& dy, const MoeWeights& w, const MoeSaved& saved, MoeGrads& g,
                  const MoeLora* lora = nullptr);

}  // namespace gptoss::cuda
