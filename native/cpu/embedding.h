// embedding.h: token embedding lookup (gather) and its scatter-add backward on the CPU.
#pragma once
#include <cstdint>

#include "../common/tensor.h"

namespace gptoss::cpu {

// Throws "<op>: ids[i] = id is out of range for vocabulary size V" for the first bad id.
void check_ids(const char* op, const int32_t* ids, int64_t n, int64_t vocab);

// out[t, :] = weight[ids[t], :]. weight bf16|f32 [V, H], ids i32 [T] (checked), out same dtype as weight [T, H].
void embedding_forward(const Tensor& weight, const Tensor& ids, const Tensor& out);

// The lookup of a vocabulary-parallel rank: weight bf16|f32 [W, H] holds vocabulary rows vocab_start ..
// vocab_start + W - 1; out[t, :] = weight[ids[t] - vocab_start, :] for the ids in that range and zeros for the
// others (ids of other ranks' rows), so the sum over the ranks' outputs is the full lookup, exactly.
void embedding_forward_slice(const Tensor& weight, const Tensor& ids, int64_t vocab_start, const Tensor& out);

// dweight[v, :] = sum over t with ids[t] == v of dout[t, :] (fp32, summed in token order so the result is
// deterministic). dout bf16|f32 [T, H], dweight f32 [V, H]: overwritten, or with accumulate each row's sum is added
// to it (rows without tokens untouched; the same bits as adding a fresh gradient to it).
void embedding_backward(const Tensor& dout, const Tensor& ids, const Tensor& dweight, bool accumulate = false);

}  // namespace gptoss::cpu
