// elementwise.h: CUDA add/scale/cast/fill (declarations; see native/cpu/elementwise.h).
#pragma once
#include "../common/tensor.h"

namespace gptoss::cuda {

void ew_add(const Tensor& a, const Tensor& b, const Tensor& out);
void ew_scale(const Tensor& a, float s, const Tensor& out);
void ew_cast(const Tensor& a, const Tensor& out);
void ew_fill(const Tensor& a, double value);
// See cpu::concat_columns: one strided 2-D copy per slice on the device's stream.
void concat_columns(const Tensor& parts, const Tensor& out);
void ew_dropout(const Tensor& x, double p, uint64_t seed, uint64_t salt, const Tensor& out);

}  // namespace gptoss::cuda
