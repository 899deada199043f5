// rope.h: CUDA RoPE (declarations; see native/cpu/rope.h for the math).
#pragma once
#include "../common/tensor.h"

namespace gptoss::cuda {

void rope_apply(const Tensor& x, const Tensor& positions, const Tensor& inv_freq, float scaling, float sign,
                const Tensor& y);

}  // namespace gptoss::cuda
