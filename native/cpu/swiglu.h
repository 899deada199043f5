// swiglu.h: the GPT-OSS SwiGLU with clamp on the CPU. For row n and j < I, with interleaved columns
//   gate = min(gu[n, 2j], limit), up = clamp(gu[n, 2j+1], -limit, limit)
//   h[n, j] = (up + 1) * gate * sigmoid(alpha * gate)
// Backward follows torch.clamp's convention: the gradient passes where min <= x <= max (bounds inclusive) and
// is zero where the input was clamped (and for NaN inputs).
#pragma once
#include "../common/tensor.h"

namespace gptoss::cpu {

// gu bf16|f32 [N, 2I], h bf16|f32 [N, I].
void swiglu_forward(const Tensor& gu, float limit, float alpha, const Tensor& h);
// dh bf16|f32 [N, I], gu as above, dgu f32 [N, 2I].
void swiglu_backward(const Tensor& dh, const Tensor& gu, float limit, float alpha, const Tensor& dgu);

}  // namespace gptoss::cpu
