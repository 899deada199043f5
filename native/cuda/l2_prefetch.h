// l2_prefetch.h: CUDA L2 prefetch of a tensor's bytes (a hint; see l2_prefetch.cu).
#pragma once
#include "../common/tensor.h"

namespace gptoss::cuda {

// Asks L2 for t's bytes on t's device's compute stream; changes no value. No-op for an empty tensor.
void l2_prefetch(const Tensor& t);

}  // namespace gptoss::cuda
