// sampling.h (CUDA): the sampler of native/cpu/sampling.h on the device (same draws for the same inputs).
#pragma once
#include <cstdint>

#include "../common/tensor.h"

namespace gptoss::cuda {

void sample(const Tensor& logits, float temperature, float top_p, int64_t top_k, uint64_t seed, uint64_t step,
            const Tensor& tokens, const Tensor& logprobs);

}  // namespace gptoss::cuda
