// elementwise.h: CUDA add/scale/cast/fill (declarations; see native/cpu/elementwise.h).
#pragma once
#include "../common/tensor.h"

namespace gptoss::cuda {

void ew_add(const Tensor& a, const Tensor& b, const Tensor& out);
void ew_scale(const Tensor& a, float s, const Tensor& out);
void ew_cast(const Tensor& a, const Tensor& out);
void ew_fill(const Tensor& a, double value);
void ew_dropout(const Tensor& x, double p, uint64_t seed, uint64_t salt, const Tensor& out);

}  // namespace gptoss::cuda
