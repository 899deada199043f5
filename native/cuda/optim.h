// optim.h (CUDA): AdamW, sum of squares and in-place scaling on the device (see native/cpu/optim.h).
#pragma once
#include "../common/tensor.h"
#include "../cpu/optim.h"

namespace gptoss::cuda {

void adamw_step(const Tensor& master, const Tensor& grad, const Tensor& m, const Tensor& v, const Tensor* bf16_copy,
                const AdamwConsts& c);
void sum_of_squares_into(const Tensor& t, const Tensor& acc);
void scale_in_place(const Tensor& t, float s);

}  // namespace gptoss::cuda
