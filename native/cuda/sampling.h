// sampling.h (CUDA): the sampler of native/cpu/sampling.h on the device (same draws for the same inputs).
#pragma once
#include <cstdint>

#include "../common/tensor.h"

namespace gptoss::cuda {

void sample(const Tensor& logits, float temperature, float top_p, int64_t top_k, uint64_t seed, uint64_t step,
            const Tensor& tokens, const Tensor& logprobs);

// How sample_rows lays out its work. Auto: Split when the batch has fewer than one row per 8 SMs, else SingleBlock.
// SingleBlock: one block per row. Split: rows that need no top-k/top-p threshold (greedy, or temperature sampling
// with both off) spread over many blocks and are combined by a second launch; the other rows stay on one block.
// Both draw the same tokens (log-probs equal up to the normaliser's summation order); the explicit values exist so
// the GPU tests can compare the two (sampleRows' test-only `strategy` argument).
enum class SampleStrategy { Auto, SingleBlock, Split };

// Per-row parameters and noise keys (native/cpu/sampling.h, sample_rows); the row values are not checked here.
void sample_rows(const Tensor& logits, const Tensor& temperature, const Tensor& top_p, const Tensor& top_k,
                 const Tensor& seeds, const Tensor& counters, const Tensor& tokens, const Tensor& logprobs,
                 SampleStrategy strategy = SampleStrategy::Auto);

// Vocabulary-parallel sampling (native/cpu/sampling.h, sample_parts / sample_combine) on the device: sample_parts
// writes sample_parts_chunks(S, W, device) chunk summaries per row (parts u8 [S, C * 32], the split layout's pass 1
// over the slice); sample_combine is pass 2 over R slices x C chunks per row. Row values are not checked here.
int64_t sample_parts_chunks(int64_t S, int64_t W, int device);
void sample_parts(const Tensor& logits, const Tensor& temperature, const Tensor& top_p, const Tensor& top_k,
                  const Tensor& seeds, const Tensor& counters, int64_t vocab_start, int64_t vocab_size,
                  const Tensor& parts);
void sample_combine(const Tensor& parts, const Tensor& temperature, const Tensor& top_p, const Tensor& top_k,
                    int64_t vocab_size, const Tensor& tokens, const Tensor& logprobs);

}  // namespace gptoss::cuda
