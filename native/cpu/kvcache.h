// kvcache.h: row scatter into a KV cache (or any [M, R] table) on the CPU.
#pragma once
#include "../common/tensor.h"

namespace gptoss::cpu {

// Throws "<op>: index[i] = r is out of range for M rows" for the first bad index (-1 is allowed: a skipped row).
void check_rows(const char* op, const int32_t* index, int64_t n, int64_t rows);

// dst.view([M, R])[index[n], :] = src.view([N, R])[n, :] for n < N. dst and src share a dtype; index i32 [N]
// (checked: -1 <= index < M; -1 skips the row; duplicate indices: the last write wins).
void scatter_rows(const Tensor& dst, const Tensor& src, const Tensor& index);

}  // namespace gptoss::cpu
