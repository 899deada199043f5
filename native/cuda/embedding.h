// embedding.h: CUDA embedding gather / scatter-add backward (declarations; no CUDA headers, for the bindings).
#pragma once
#include <cstdint>

#include "../common/tensor.h"

namespace gptoss::cuda {

// out[t, :] = weight[ids[t], :]; an id outside [0, V) gives a zero row (the binding range-checks ids on the host
// unless asked not to: the engine's steps, whose ids it has validated, must not wait for the device).
// vocab_start > 0: weight holds vocabulary rows vocab_start .. (a vocabulary-parallel rank's slice), out[t, :] =
// weight[ids[t] - vocab_start, :], zeros for ids outside the slice (see cpu::embedding_forward_slice).
void embedding_forward(const Tensor& weight, const Tensor& ids, const Tensor& out, int64_t vocab_start = 0);
// Deterministic scatter-add: host_ids (the same ids, already copied to the host and range-checked) are grouped
// by id on the host (stable counting sort), uploaded, and one thread block per distinct id sums its tokens'
// rows in token order into dweight (f32 [V, H], zeroed here; with accumulate not zeroed: each id's sum, formed from
// zero, is added to its row, the same bits as adding a fresh gradient). No atomics, so the result is bitwise
// reproducible.
void embedding_backward(const Tensor& dout, const int32_t* host_ids, int64_t n, const Tensor& dweight,
                        bool accumulate = false);

}  // namespace gptoss::cuda
