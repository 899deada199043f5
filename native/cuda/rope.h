// rope.h: CUDA RoPE (declarations; see native/cpu/rope.h for the math).
#pragma once
#include "../common/tensor.h"

namespace gptoss::cuda {

void rope_apply(const Tensor& x, const Tensor& positions, const Tensor& inv_freq, float scaling, float sign,
                const Tensor& y);

// The fused q/k/v layout (see native/cpu/rope.h): split (pack = false) or pack (pack = true) in one launch.
void rope_qkv(const Tensor& qkv, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions,
              const Tensor& inv_freq, float scaling, float sign, bool pack);

}  // namespace gptoss::cuda
