// gemm.h: the CPU GEMM. Row-major C[M,N] = alpha * op(A) * op(B) (+ bias[N]) (+ beta * C) with fp32 accumulation.
// A blocked, multi-threaded kernel (packing into fp32 panels and a register-tiled micro-kernel the compiler
// vectorises); cblas_sgemm for f32 inputs when the build found a system BLAS (GPTOSS_HAVE_CBLAS).
#pragma once
#include <cstdint>

#include "../common/tensor.h"

namespace gptoss::cpu {

// One input operand in row-major storage: op(X) is [rows, cols] of the product; when trans, X is stored as
// [cols, rows]. ld is the row stride of the stored matrix (elements). dtype bf16 or f32.
struct GemmOperand {
  const void* ptr;
  DType dtype;
  int64_t ld;
  bool trans;
};

// C[M,N] (row stride ldc, bf16 or f32) = alpha * op(A)[M,K] * op(B)[K,N] + bias[N] + beta * C.
// bias may be null (bias_dtype then ignored); beta 0 never reads C. A and B may have different dtypes.
void gemm_raw(int64_t M, int64_t N, int64_t K, float alpha, const GemmOperand& A, const GemmOperand& B,
              const void* bias, DType bias_dtype, float beta, void* C, DType c_dtype, int64_t ldc);

// Tensor form (shapes checked by the binding): a [M,K] or [K,M] (transA), b [K,N] or [N,K] (transB),
// out [M,N]; bias [N] or null; accumulate adds to out.
void gemm(const Tensor& a, const Tensor& b, const Tensor* bias, const Tensor& out, bool transA, bool transB,
          float alpha, bool accumulate);

}  // namespace gptoss::cpu
