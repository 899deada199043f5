// rmsnorm_row.cuh: one RMSNorm row in one thread block, the code whose partition and summation order define the
// bits of rmsnormForward and addRmsnorm on CUDA (rmsnorm.cu). Shared with the decode MoE's fused router (moe.cu),
// which norms the residual sum in each of its blocks and must give addRmsnorm's bits.
#pragma once
#include "common.cuh"
#include "vec_io.cuh"

namespace gptoss::cuda::rms {

// Threads a row takes: one per value (or group of 8 with vec), a multiple of 32, at most 256.
inline int row_threads(int64_t h, bool vec) {
  int64_t work = vec ? h / 8 : h;
  int64_t t = (work + 31) / 32 * 32;
  return static_cast<int>(t < 32 ? 32 : (t > 256 ? 256 : t));
}

// The values a norm row reads. RowIn: a row of x. RowSum: the residual sum h = round_to_X(x + o) of the fused
// add+norm, computed in registers (rounded as elementwise.cu's add rounds it: fp32 sum, one RN rounding to X);
// `first` also stores it to h (unless h is null), `again` recomputes it (re-reading h written by this kernel would need non-__ldg
// loads; x and o are still in L1/L2). ld16: x and o are 16-byte aligned (else a group of 8 loads element by
// element, keeping the group partition that decides the summation order).
template <typename X>
struct RowIn {
  const X* __restrict__ x;
  __device__ __forceinline__ void first8(int64_t c, float (&v)[8]) const { load8(x + c, v); }
  __device__ __forceinline__ void again8(int64_t c, float (&v)[8]) const { load8(x + c, v); }
  __device__ __forceinline__ float first1(int64_t c) const { return ldf(x + c); }
  __device__ __forceinline__ float again1(int64_t c) const { return ldf(x + c); }
};

__device__ __forceinline__ float round_to(const __nv_bfloat16*, float v) { return __bfloat162float(__float2bfloat16(v)); }
__device__ __forceinline__ float round_to(const float*, float v) { return v; }

template <typename X, typename O>
struct RowSum {
  const X* __restrict__ x;
  const O* __restrict__ o;
  X* __restrict__ h;
  bool ld16;
  __device__ __forceinline__ void again8(int64_t c, float (&v)[8]) const {
    float b[8];
    if (ld16) {
      load8(x + c, v);
      load8(o + c, b);
    } else {
#pragma unroll
      for (int k = 0; k < 8; k++) v[k] = ldf(x + c + k), b[k] = ldf(o + c + k);
    }
#pragma unroll
    for (int k = 0; k < 8; k++) v[k] = round_to(h, v[k] + b[k]);
  }
  __device__ __forceinline__ void first8(int64_t c, float (&v)[8]) const {
    again8(c, v);
    if (h) store8(h + c, v);  // v holds X-representable values: the store is exact
  }
  __device__ __forceinline__ float again1(int64_t c) const { return round_to(h, ldf(x + c) + ldf(o + c)); }
  __device__ __forceinline__ float first1(int64_t c) const {
    const float v = again1(c);
    if (h) stf(h + c, v);
    return v;
  }
};

// Groups of 8 values a thread that norm_row keeps in registers (rows up to 2 x 8 x 256 = 4096 values; more would
// cost the many-row norms of training their occupancy).
constexpr int kRowCacheGroups = 2;

// One block per row: rstd = 1/sqrt(mean(v^2) + eps), y = round(w * (v * rstd)) over the row's values v from `src`,
// written to yr and, when not null, yr2 (the fused router: its shared-memory copy and the op's output); the rstd to
// *rstd when not null.
// vec: groups of 8 per thread (16-byte w and y; H % 8 == 0), else one value per thread per step. The partition
// and the sum's order depend only on (vec, blockDim.x), so rmsnormForward and addRmsnorm (same vec and threads
// for the same h, w, y) give the same bits.
template <typename Src, typename W, typename Y>
__device__ __forceinline__ void norm_row(const Src& src, const W* __restrict__ w, Y* __restrict__ yr, Y* __restrict__ yr2,
                                         float* __restrict__ rstd, int64_t h, float eps, bool vec) {
  float ss = 0.f;
  if (vec && h <= int64_t{kRowCacheGroups} * 8 * blockDim.x) {
    // The row fits kRowCacheGroups groups of 8 a thread (gpt-oss's H 2880: 2 of them at 256 threads): keep the
    // values in registers and load w with them, so the weight's load (cold in HBM at decode) overlaps the row's and
    // the block sum, instead of following it, and the row is not read twice. The same partition, order and
    // arithmetic as the loop below, so the same bits.
    float v[kRowCacheGroups][8], wv[kRowCacheGroups][8];
#pragma unroll
    for (int g = 0; g < kRowCacheGroups; g++) {
      const int64_t c = (threadIdx.x + int64_t{g} * blockDim.x) * 8;
      if (c < h) {
        load8(w + c, wv[g]);
        src.first8(c, v[g]);
#pragma unroll
        for (int k = 0; k < 8; k++) ss += v[g][k] * v[g][k];
      }
    }
    ss = block_sum(ss);
    const float rs = 1.f / sqrtf(ss / float(h) + eps);
    if (threadIdx.x == 0 && rstd) *rstd = rs;
#pragma unroll
    for (int g = 0; g < kRowCacheGroups; g++) {
      const int64_t c = (threadIdx.x + int64_t{g} * blockDim.x) * 8;
      if (c < h) {
#pragma unroll
        for (int k = 0; k < 8; k++) v[g][k] = wv[g][k] * (v[g][k] * rs);
        store8(yr + c, v[g]);
        if (yr2) store8(yr2 + c, v[g]);
      }
    }
    return;
  }
  if (vec) {
    for (int64_t c = threadIdx.x * 8; c < h; c += blockDim.x * 8) {
      float v[8];
      src.first8(c, v);
#pragma unroll
      for (int k = 0; k < 8; k++) ss += v[k] * v[k];
    }
  } else {
    for (int64_t c = threadIdx.x; c < h; c += blockDim.x) {
      float v = src.first1(c);
      ss += v * v;
    }
  }
  ss = block_sum(ss);
  float rs = 1.f / sqrtf(ss / float(h) + eps);
  if (threadIdx.x == 0 && rstd) *rstd = rs;
  if (vec) {
    for (int64_t c = threadIdx.x * 8; c < h; c += blockDim.x * 8) {
      float v[8], wv[8];
      src.again8(c, v);
      load8(w + c, wv);
#pragma unroll
      for (int k = 0; k < 8; k++) v[k] = wv[k] * (v[k] * rs);
      store8(yr + c, v);
      if (yr2) store8(yr2 + c, v);
    }
  } else {
    for (int64_t c = threadIdx.x; c < h; c += blockDim.x) {
      const float v = ldf(w + c) * (src.again1(c) * rs);
      stf(yr + c, v);
      if (yr2) stf(yr2 + c, v);
    }
  }
}

}  // namespace gptoss::cuda::rms
