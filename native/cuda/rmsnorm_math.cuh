// rmsnorm_math.cuh: the RMSNorm arithmetic that rmsnorm.cu's row kernels and gemv.cu's fused decode projection
// (the input norm computed inside the q/k/v GEMV) share, so both give the same bits: the block size a row gets, the
// sum of squares' step (an explicit fma: nvcc decides contraction per call site), rstd, and the scaled value.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace gptoss::cuda::rms_math {

// Threads of rmsnorm's one-block-per-row kernels for a row of h values: one per 8-value group (vec) or per value,
// rounded up to whole warps, 32..256. The row's summation partition (thread t takes groups t, t + threads, ...)
// follows from it.
__host__ __device__ inline int row_threads(int64_t h, bool vec) {
  const int64_t work = vec ? h / 8 : h;
  const int64_t t = (work + 31) / 32 * 32;
  return static_cast<int>(t < 32 ? 32 : (t > 256 ? 256 : t));
}

__device__ __forceinline__ float ss_step(float ss, float v) { return __fmaf_rn(v, v, ss); }

__device__ __forceinline__ float rstd(float ss, int64_t h, float eps) { return 1.f / sqrtf(ss / float(h) + eps); }

// The normed value before its rounding to y's dtype: w · (v · rstd).
__device__ __forceinline__ float scaled(float w, float v, float rs) { return w * (v * rs); }

}  // namespace gptoss::cuda::rms_math
