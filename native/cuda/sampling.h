// sampling.h (CUDA): the sampler of native/cpu/sampling.h on the device (same draws for the same inputs).
#pragma once
#include <cstdint>

#include "../common/tensor.h"

namespace gptoss::cuda {

void sample(const Tensor& logits, float temperature, float top_p, int64_t top_k, uint64_t seed, uint64_t step,
            const Tensor& tokens, const Tensor& logprobs);

// Per-row parameters and noise keys (native/cpu/sampling.h, sample_rows); the row values are not checked here.
void sample_rows(const Tensor& logits, const Tensor& temperature, const Tensor& top_p, const Tensor& top_k,
                 const Tensor& seeds, const Tensor& counters, const Tensor& tokens, const Tensor& logprobs);

}  // namespace gptoss::cuda
