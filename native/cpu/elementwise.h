// elementwise.h: elementwise float ops on the CPU (fp32 math, results rounded to the output dtype).
#pragma once
#include "../common/tensor.h"

namespace gptoss::cpu {

// out = a + b. a, b, out: bf16|f32 with the same numel (any mix of the two dtypes). out may alias a.
void ew_add(const Tensor& a, const Tensor& b, const Tensor& out);
// out = a * s. a, out: bf16|f32 with the same numel; out may alias a.
void ew_scale(const Tensor& a, float s, const Tensor& out);
// out = a converted: bf16 <-> f32, i32 -> f32 (exact below 2^24), or a plain copy when the dtypes agree.
void ew_cast(const Tensor& a, const Tensor& out);
// Inverted dropout: out[i] = x[i]·1/(1-p) where element i is kept, 0 where dropped; the mask is the counter-based
// hash of (seed, salt, i) (dropout_rng.h), the same on CUDA. x, out: bf16|f32 of one dtype and numel (any shape);
// p in [0, 1); out may alias x. The backward is the same call on the gradient (same seed and salt).
void ew_dropout(const Tensor& x, double p, uint64_t seed, uint64_t salt, const Tensor& out);
// out [S, N] = the R column slices parts[r] [S, W] side by side (out[s, r·W + j] = parts[r, s, j]), cut at N <= R·W
// columns (the padding of an uneven last slice dropped); any dtype, the same in both. What a vocabulary-parallel
// LM head's all-gathered logits [R, S, W] become as whole rows [S, V].
void concat_columns(const Tensor& parts, const Tensor& out);
// every element = value (bf16/f32 rounded; i32 and u8 take the integer value).
void ew_fill(const Tensor& a, double value);

}  // namespace gptoss::cpu
