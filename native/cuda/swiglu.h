// swiglu.h: CUDA clamped SwiGLU (declarations; see native/cpu/swiglu.h for the math and clamp gradients).
#pragma once
#include "../common/tensor.h"

namespace gptoss::cuda {

void swiglu_forward(const Tensor& gu, float limit, float alpha, const Tensor& h);
void swiglu_backward(const Tensor& dh, const Tensor& gu, float limit, float alpha, const Tensor& dgu);

}  // namespace gptoss::cuda
